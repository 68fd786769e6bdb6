"""LISA: Layerwise Importance Sampled AdamW (Pan et al., "LISA: Layerwise Importance
Sampling for Memory-Efficient Large Language Model Fine-Tuning", NeurIPS 2024).

Full-parameter fine-tuning where, every ``K`` optimizer steps, only ``gamma`` of the ``N``
middle blocks (sampled uniformly, or proportionally to importance weights) are trained;
the stem (embeddings) and the head always are. Gradients then exist for
``gamma/N`` of the middle blocks only.

The reference implementation toggles ``requires_grad`` and keeps AdamW's state of every
block it ever trained, so optimizer memory grows back towards full fine-tuning. This
hook *frees* the state (``exp_avg``, ``exp_avg_sq``, ``step``) of the blocks it freezes
again, so optimizer memory stays at ``2 x (stem + head + gamma blocks)`` floats; a block
sampled again starts with fresh moments (``free_state=False`` keeps the reference
behaviour, for comparison).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from scalpel.core.errors import ConfigError, ScalpelError
from scalpel.core.layerwise.blocks import BlockMap, block_map as find_block_map


class LISA:
    """A ``fit`` hook that switches the trained middle blocks every ``every`` steps.

    Build it after the model's parameters have been made trainable (e.g.
    ``apply(model, FullConfig())``): those are LISA's candidates. It freezes all middle
    blocks but the first sample at once, so pass its :meth:`param_groups` to ``fit``
    (the optimizer must know every candidate from the start):

        >>> lisa = LISA(model, gamma=2, every=20)
        >>> fit(model, task, loader, config=..., param_groups=lisa.param_groups(), hooks=(lisa,))

    Args:
        gamma: middle blocks trained at a time, 1 <= gamma <= N.
        every: optimizer steps between switches (the paper's K).
        weights: importance of each middle block (sequence of N, or mapping block name ->
            weight, e.g. :func:`relative_gradient_norms`); None samples uniformly.
        free_state: drop the optimizer state of blocks frozen again (default).
        seed: seed of the block sampler (its state is saved by :meth:`state_dict`).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        gamma: int = 2,
        every: int = 20,
        block_map: BlockMap | None = None,
        weights: Sequence[float] | Mapping[str, float] | None = None,
        free_state: bool = True,
        seed: int = 0,
    ):
        self.block_map = block_map or find_block_map(model)
        n = len(self.block_map.blocks)
        problems = []
        if not isinstance(gamma, int) or not 1 <= gamma <= n:
            problems.append(f"gamma must be an integer in [1, {n}] (the model has {n} middle blocks), got {gamma!r}")
        if not isinstance(every, int) or every < 1:
            problems.append(f"every must be >= 1 optimizer step, got {every!r}")
        if problems:
            raise ConfigError("LISA", problems)
        self.gamma, self.every, self.free_state = gamma, every, free_state
        groups = self.block_map.assign(model, trainable_only=True)
        middle = {b.name for b in self.block_map.blocks}
        self.always = [p for name, members in groups.items() if name not in middle for _, p in members]
        self.block_params = {b.name: [p for _, p in groups[b.name]] for b in self.block_map.blocks}
        if not any(self.block_params.values()):
            raise ScalpelError("LISA found no trainable middle-block parameter: apply(model, FullConfig()) before building LISA")
        self.weights = self._normalise_weights(weights)
        self.rng = random.Random(seed)
        self.active: list[str] = []
        self._resample()

    # ------------------------------------------------------------------ sampling

    def _normalise_weights(self, weights: Sequence[float] | Mapping[str, float] | None) -> list[float]:
        names = [b.name for b in self.block_map.blocks]
        if weights is None:
            return [1.0] * len(names)
        if isinstance(weights, Mapping):
            values = [float(weights.get(n, 0.0)) for n in names]
        else:
            values = [float(w) for w in weights]
            if len(values) != len(names):
                raise ConfigError("LISA", [f"weights has {len(values)} entries but the model has {len(names)} middle blocks"])
        if any(v < 0 for v in values) or sum(v > 0 for v in values) < self.gamma:
            raise ConfigError("LISA", [f"weights must be >= 0 with at least gamma={self.gamma} positive; got {values}"])
        return values

    def _sample(self) -> list[str]:
        """``gamma`` distinct middle blocks, each draw proportional to the remaining weights."""
        names = [b.name for b in self.block_map.blocks]
        pool = [(n, w) for n, w in zip(names, self.weights) if w > 0]
        picked = []
        for _ in range(self.gamma):
            total = sum(w for _, w in pool)
            r, acc = self.rng.random() * total, 0.0
            for i, (name, w) in enumerate(pool):
                acc += w
                if r < acc or i == len(pool) - 1:
                    picked.append(name)
                    pool.pop(i)
                    break
        return [n for n in names if n in picked]

    def _resample(self) -> None:
        self.active = self._sample()
        self._apply_flags()

    def _apply_flags(self) -> None:
        for p in self.always:
            p.requires_grad_(True)
        for name, params in self.block_params.items():
            on = name in self.active
            for p in params:
                p.requires_grad_(on)
                if not on:
                    p.grad = None

    # ------------------------------------------------------------------ fit hook

    def param_groups(self) -> list[dict[str, Any]]:
        """One group holding every parameter LISA may train, for ``fit(param_groups=...)``."""
        params = self.always + [p for ps in self.block_params.values() for p in ps]
        return [{"params": params, "lr_scale": 1.0}]

    def after_step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Every ``every`` steps: sample new blocks, freeze the others and (by default)
        free the optimizer state of the parameters just frozen."""
        if step == 1 or step % self.every == 0:
            self._check_optimizer(optimizer)
        if step % self.every:
            return
        self._resample()
        if self.free_state:
            self.free_frozen_state(optimizer)

    def free_frozen_state(self, optimizer: torch.optim.Optimizer) -> int:
        """Drop the optimizer state of every frozen middle-block parameter; returns how many."""
        freed = 0
        for name, params in self.block_params.items():
            if name in self.active:
                continue
            for p in params:
                freed += optimizer.state.pop(p, None) is not None
        return freed

    def _check_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        known = {id(p) for g in optimizer.param_groups for p in g["params"]}
        if any(id(p) not in known for ps in self.block_params.values() for p in ps):
            raise ScalpelError(
                "LISA's blocks are missing from the optimizer, so blocks sampled later would never train: "
                "pass param_groups=lisa.param_groups() to fit (or build the optimizer from them)"
            )

    def state_dict(self) -> dict[str, Any]:
        """JSON-safe: the sampler's RNG state and the active blocks."""
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "active": list(self.active)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        unknown = [n for n in state["active"] if n not in self.block_params]
        if unknown:
            raise ScalpelError(f"LISA state names blocks {unknown} this model does not have; it belongs to another model")
        self.active = list(state["active"])
        self._apply_flags()
