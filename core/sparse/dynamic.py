"""Dynamic sparse masks: drop and regrow entries during training (SpIEL, Ansell et al., 2024).

Every ``every`` optimizer steps, each sparse layer with ``k_l`` entries

1. drops the ``d = round(f(t) * k_l)`` entries whose delta ``|values_i|`` is smallest
   (they returned nearest to the base weight), resetting them to zero;
2. grows ``d`` new entries, outside the current set, with the largest accumulated
   squared gradient ``sum_s g_s^2`` over the last ``window`` steps;
3. reuses the dropped slots for the grown entries and zeroes their optimizer state
   (AdamW ``exp_avg``/``exp_avg_sq``, any per-entry state), so the values parameter, its
   optimizer state and ``k_l`` never change size.

``f(t)`` decays from ``fraction`` at step 0 to 0 at ``total_steps`` (cosine, linear) or
stays constant. The accumulation is cheap in memory: during the window each layer's dense
gradient, already computed transiently in backward, is folded into SM3-style row and
column maxima (Anil et al., 2019; ``O(rows + cols)`` per layer, as SpIEL-AG does), and on
the last step of the window the candidates are ranked on ``min(row_i, col_j) + g_ij^2``
and only their indices are kept. On the other steps nothing extra is computed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from scalpel.core.delta import state_of
from scalpel.core.errors import ScalpelError
from scalpel.core.sparse.config import SparseConfig
from scalpel.core.sparse.layers import SparseDeltaLayer
from scalpel.core.sparse.method import sparse_layers


def regrow_share(step: int, total_steps: int, fraction: float, schedule: str) -> float:
    """The share of each layer's entries regrown at ``step`` (SpIEL's decaying drop rate)."""
    t = min(max(step / max(total_steps, 1), 0.0), 1.0)
    if schedule == "cosine":
        return fraction * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "linear":
        return fraction * (1.0 - t)
    return fraction


class _LayerGrowth:
    """Gradient statistics and pending growth candidates of one layer."""

    def __init__(self, layer: SparseDeltaLayer, adapter: str):
        self.layer, self.adapter = layer, adapter
        shape = layer.weight.shape
        self.rows, self.cols = shape[0], layer.weight.numel() // shape[0]
        device = layer.weight.device
        self.row = torch.zeros(self.rows, device=device)
        self.col = torch.zeros(self.cols, device=device)
        self.candidates: Tensor | None = None
        self.grow = 0  # how many candidates to pick at the end of this window

    def observe(self, grad: Tensor, last: bool) -> None:
        """Fold one dense gradient ``[rows, cols]`` in; on the window's last step also rank the
        candidates (again on each micro-batch under gradient accumulation, each ranking
        including the earlier ones through the row/column maxima)."""
        square = grad.detach().float().reshape(self.rows, self.cols).square()
        estimate = torch.minimum(self.row[:, None], self.col[None, :]).add_(square)
        del square
        self.row = torch.maximum(self.row, estimate.amax(1))
        self.col = torch.maximum(self.col, estimate.amax(0))
        if last and self.grow:
            flat = estimate.view(-1)
            flat[self.layer.indices(self.adapter)] = -math.inf
            self.candidates = torch.topk(flat, self.grow, sorted=False).indices

    def reset(self) -> None:
        self.row.zero_()
        self.col.zero_()
        self.candidates = None


class SparseRegrowth:
    """A ``fit`` hook regrowing the sparse entries of one adapter; see the module docstring.

    Example:
        >>> hook = SparseRegrowth(model, every=50, total_steps=1000)
        >>> fit(model, task, loader, config=FitConfig(max_steps=1000), hooks=[hook])
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int,
        total_steps: int,
        fraction: float = 0.3,
        schedule: str = "cosine",
        window: int = 1,
        adapter_name: str | None = None,
    ):
        if every < 1 or total_steps < 1 or not 1 <= window <= every or not 0 < fraction < 1:
            raise ScalpelError(
                f"SparseRegrowth needs every >= 1, total_steps >= 1, 1 <= window <= every and 0 < fraction < 1; "
                f"got every={every}, total_steps={total_steps}, window={window}, fraction={fraction}"
            )
        self.adapter = adapter_name or state_of(model).active
        self.layers = {n: _LayerGrowth(layer, self.adapter) for n, layer in sparse_layers(model, self.adapter).items()}
        if not self.layers:
            raise ScalpelError(f"adapter {self.adapter!r} has no sparse delta to regrow; apply a SparseConfig first")
        self.every, self.total_steps, self.fraction, self.schedule, self.window = every, total_steps, fraction, schedule, window
        self.regrowths = 0
        self.changed = 0  # entries moved in total, for logs and tests
        self._arm(1)

    @classmethod
    def from_config(cls, model: nn.Module, total_steps: int, adapter_name: str | None = None) -> SparseRegrowth | None:
        """The hook the adapter's :class:`SparseConfig` asks for (None when ``regrow_every`` is 0)."""
        state = state_of(model)
        name = adapter_name or state.active
        configs = [c for c in state.adapters[name].configs if isinstance(c, SparseConfig)] if name in state.adapters else []
        if not configs or not configs[0].regrow_every:
            return None
        c = configs[0]
        return cls(
            model, every=c.regrow_every, total_steps=total_steps, fraction=c.regrow_fraction,
            schedule=c.regrow_schedule, window=c.regrow_window, adapter_name=name,
        )

    # ----------------------------------------------------------------- fit hook

    def after_step(self, step: int, model: nn.Module, optimizer: Any) -> None:
        """Called after optimizer step ``step`` (1-based): regrow if it ended a window, arm the next."""
        if step % self.every == 0:
            self._regrow(optimizer)
        self._arm(step + 1)

    def _arm(self, step: int) -> None:
        """Observe gradients during ``step`` iff it is in a window ending at a regrowth that moves entries."""
        end = math.ceil(step / self.every) * self.every
        share = regrow_share(end, self.total_steps, self.fraction, self.schedule)
        active = end <= self.total_steps and end - step < self.window and share > 0
        for growth in self.layers.values():
            k = growth.layer.values(self.adapter).numel()
            growth.grow = min(round(share * k), growth.layer.weight.numel() - k)
            last = step == end
            observe = active and growth.grow > 0
            growth.layer.grad_observer = (lambda g, gr=growth, last=last: gr.observe(g, last)) if observe else None

    @torch.no_grad()
    def _regrow(self, optimizer: Any) -> None:
        state = _optimizer_state(optimizer)
        for growth in self.layers.values():
            grown = growth.candidates
            growth.reset()
            if grown is None or grown.numel() == 0:
                continue
            layer, n = growth.layer, grown.numel()
            values, indices = layer.values(self.adapter), layer.indices(self.adapter)
            slots = torch.topk(values.detach().abs(), n, largest=False, sorted=False).indices
            indices[slots] = grown.to(indices.dtype)
            _broadcast(indices)
            values[slots] = 0
            for tensor in state.get(values, {}).values():
                if isinstance(tensor, Tensor) and tensor.shape == values.shape:
                    tensor[slots] = 0
            self.changed += n
        self.regrowths += 1

    # ------------------------------------------------------------------- resume

    def state_dict(self) -> dict[str, Tensor]:
        """Current indices and gradient statistics of every layer (safetensors-friendly)."""
        out = {"regrowths": torch.tensor(self.regrowths), "changed": torch.tensor(self.changed)}
        for name, g in self.layers.items():
            out[f"indices.{name}"] = g.layer.indices(self.adapter).clone()
            out[f"row.{name}"], out[f"col.{name}"] = g.row.clone(), g.col.clone()
        return out

    def load_state_dict(self, state: dict[str, Tensor], step: int | None = None) -> None:
        """Restore what :meth:`state_dict` saved; ``step`` (the last finished step) re-arms the window."""
        missing = [n for n in self.layers if f"indices.{n}" not in state]
        if missing:
            raise ScalpelError(f"the regrowth state lacks layers {missing[:3]}; it belongs to another run")
        wrong = [n for n, g in self.layers.items() if state[f"indices.{n}"].shape != g.layer.indices(self.adapter).shape]
        if wrong:
            raise ScalpelError(
                f"the regrowth state has other entry counts for layers {wrong[:3]} than this model; "
                "rebuild the adapter from the same checkpoint before resuming"
            )
        self.regrowths, self.changed = int(state["regrowths"]), int(state["changed"])
        for name, g in self.layers.items():
            g.layer.indices(self.adapter).copy_(state[f"indices.{name}"])
            g.row.copy_(state[f"row.{name}"])
            g.col.copy_(state[f"col.{name}"])
        if step is not None:
            self._arm(step + 1)

    def remove(self) -> None:
        """Stop observing gradients (call when training ends early)."""
        for g in self.layers.values():
            g.layer.grad_observer = None


def _optimizer_state(optimizer: Any) -> dict:
    while not hasattr(optimizer, "state") and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer  # accelerate's AcceleratedOptimizer and similar wrappers
    if hasattr(optimizer, "optimizer") and isinstance(getattr(optimizer.optimizer, "state", None), dict):
        optimizer = optimizer.optimizer
    return getattr(optimizer, "state", {}) if optimizer is not None else {}


def _broadcast(indices: Tensor) -> None:
    """Under DDP every rank ranks candidates on its own gradients; rank 0's choice wins."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        torch.distributed.broadcast(indices, src=0)
