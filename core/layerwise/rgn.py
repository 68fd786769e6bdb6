"""Auto-RGN (Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution
Shifts", ICLR 2023): the relative gradient norm of a block,

    RGN(b) = ||g_b||_2 / ||w_b||_2,   g_b = mean over batches of dL/dw_b,

is large for the blocks the new data most wants to change. It is used two ways: train
the top-k blocks (:func:`top_blocks`, ``LayerwiseConfig(rgn_top_k=k)``), or scale each
block's learning rate by ``RGN(b) / max_b' RGN(b')``, re-measured every epoch
(:class:`AutoRGN`, a ``fit`` hook). The paper computes RGN per parameter tensor; here
it is per block (all its tensors together), the unit of every other layer-wise tool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from scalpel.core.delta import adapter_of
from scalpel.core.errors import DataError, ScalpelError
from scalpel.core.layerwise.blocks import BlockMap, block_map as find_block_map

LossFn = Callable[[nn.Module, Any], Tensor]


def scoring_batches(data: Any, loss_fn: LossFn | None = None) -> tuple[Iterable[Any], LossFn]:
    """Split ``data`` into (batches, loss function).

    ``data`` may be an iterable of batches, or any object with ``batches`` and
    ``loss_fn`` attributes (``scalpel.core.sparse.ScoringData``); a task object with
    ``step(model, batch) -> {"loss": ...}`` may be passed as ``loss_fn``.
    """
    if data is None:
        raise DataError("Auto-RGN measures gradients on data and none was given: pass a few training batches as data")
    if hasattr(data, "batches"):
        loss_fn = loss_fn or getattr(data, "loss_fn", None)
        data = data.batches
    if loss_fn is not None and hasattr(loss_fn, "step"):
        task = loss_fn
        loss_fn = lambda model, batch: task.step(model, batch)["loss"]  # noqa: E731
    return data, loss_fn or default_loss


def default_loss(model: nn.Module, batch: Any) -> Tensor:
    """``model(**batch).loss`` for a dict batch; cross-entropy (integer targets) or MSE
    (float targets) of ``model(x)`` for an ``(x, y)`` pair."""
    if isinstance(batch, Mapping):
        out = model(**batch)
        loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
        if loss is None:
            raise DataError("a batch gave no loss: put the labels in each batch dict, or pass loss_fn=(model, batch) -> loss")
        return loss
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x, y = batch
        out = model(x)
        logits = getattr(out, "logits", out)
        if y.is_floating_point():
            return F.mse_loss(logits, y)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
    raise DataError(f"cannot compute a loss for a batch of type {type(batch).__name__}: give dicts with labels, (x, y) pairs, or a loss_fn")


def relative_gradient_norms(
    model: nn.Module,
    data: Any,
    *,
    block_map: BlockMap | None = None,
    loss_fn: LossFn | None = None,
    num_batches: int = 4,
    trainable_only: bool = False,
) -> dict[str, float]:
    """RGN of every block (map order), from gradients averaged over ``num_batches`` batches.

    Gradients are taken with ``torch.autograd.grad``: ``.grad`` fields, ``requires_grad``
    flags and buffers (BatchNorm running statistics) are left exactly as they were.

    Args:
        trainable_only: measure only parameters that are trainable now (AutoRGN during
            training); otherwise every base parameter (choosing which blocks to train).

    Returns:
        ``{block name: ||g|| / ||w||}``; blocks without (measured) parameters are left out.
    """
    bm = block_map or find_block_map(model)
    batches, loss_fn = scoring_batches(data, loss_fn)
    groups = bm.assign(model, trainable_only=trainable_only)
    owned = [(name, p) for block in bm.names() for name, p in groups[block] if trainable_only or adapter_of(name) is None]
    if not owned:
        raise ScalpelError("no parameters to measure Auto-RGN on: make some parameters trainable first")
    params = [p for _, p in owned]
    flags = [p.requires_grad for p in params]
    buffers = {k: b.detach().clone() for k, b in model.named_buffers()}
    sums: list[Tensor | None] = [None] * len(params)
    seen = 0
    try:
        for p in params:
            p.requires_grad_(True)
        for batch in islice(batches, num_batches):
            loss = loss_fn(model, batch)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            sums = [s if g is None else (g.detach().float() if s is None else s + g.detach().float()) for s, g in zip(sums, grads)]
            seen += 1
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        with torch.no_grad():
            for k, b in model.named_buffers():
                if k in buffers:
                    b.copy_(buffers[k])
    if seen == 0:
        raise DataError("Auto-RGN got no batches: the data iterable is empty")
    result: dict[str, float] = {}
    index = {id(p): i for i, p in enumerate(params)}
    for block in bm.names():
        g2 = w2 = 0.0
        for _, p in groups[block]:
            i = index.get(id(p))
            if i is None:
                continue
            w2 += float(p.detach().float().pow(2).sum())
            if sums[i] is not None:
                g2 += float((sums[i] / seen).pow(2).sum())
        if w2 > 0:
            result[block] = (g2**0.5) / (w2**0.5)
    return result


def top_blocks(rgn: Mapping[str, float], k: int, exclude: Iterable[str] = ()) -> list[str]:
    """The ``k`` block names with the highest RGN (ties: earlier block first)."""
    skip = set(exclude)
    ranked = sorted((name for name in rgn if name not in skip), key=lambda n: -rgn[n])
    return ranked[:k]


def rgn_multipliers(rgn: Mapping[str, float]) -> dict[str, float]:
    """Per-block learning-rate multipliers ``RGN(b) / max RGN`` in [0, 1]."""
    top = max(rgn.values(), default=0.0)
    return {name: (value / top if top > 0 else 1.0) for name, value in rgn.items()}


class AutoRGN:
    """A ``fit`` hook: per-block learning-rate multipliers ``RGN(b) / max RGN``,
    re-measured every ``every`` optimizer steps (once per epoch: steps per epoch).

    Usage:
        >>> rgn = AutoRGN(model, held_batches, every=len(train_loader))
        >>> fit(model, task, train_loader, config=..., param_groups=rgn.param_groups(), hooks=(rgn,))

    Each parameter group holds one block's trainable parameters and its multiplier as
    ``"lr_scale"``; the hook rewrites ``lr_scale`` in place, and the loop multiplies its
    scheduled learning rate by it.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        *,
        every: int,
        block_map: BlockMap | None = None,
        loss_fn: LossFn | None = None,
        num_batches: int = 2,
    ):
        if every < 1:
            raise ScalpelError(f"AutoRGN every must be >= 1 optimizer step, got {every}")
        batches, self.loss_fn = scoring_batches(data, loss_fn)
        self.batches = list(islice(batches, num_batches))  # measured again on the same batches
        self.block_map = block_map or find_block_map(model)
        self.every = every
        self.model = model
        self.scales = rgn_multipliers(self._measure(model))

    def _measure(self, model: nn.Module) -> dict[str, float]:
        return relative_gradient_norms(
            model, self.batches, block_map=self.block_map, loss_fn=self.loss_fn,
            num_batches=len(self.batches), trainable_only=True,
        )

    def param_groups(self) -> list[dict[str, Any]]:
        """One group per block with trainable parameters: ``{"params", "lr_scale", "block"}``."""
        groups = []
        for block, members in self.block_map.assign(self.model, trainable_only=True).items():
            if members:
                groups.append({"params": [p for _, p in members], "lr_scale": self.scales.get(block, 1.0), "block": block})
        return groups

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if step % self.every:
            return
        self.scales = rgn_multipliers(self._measure(self.model))
        for group in optimizer.param_groups:
            if "block" in group:
                group["lr_scale"] = self.scales.get(group["block"], group.get("lr_scale", 1.0))

    def state_dict(self) -> dict[str, Any]:
        return {"scales": dict(self.scales)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scales = {str(k): float(v) for k, v in state["scales"].items()}
