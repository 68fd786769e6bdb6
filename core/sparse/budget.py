"""Budgets: how many entries to train, and which ones, from importance scores.

``k`` is ``count`` or ``round(density * n)`` for ``n`` targeted entries (at least one).
``"global"`` allocation keeps the ``k`` highest scores over all targeted weights (exact,
streamed layer by layer so memory stays ``O(k + largest layer)``); ``"per_layer"``
gives weight ``l`` ``k_l`` entries proportional to its size ``n_l`` (largest-remainder
rounding, so ``sum k_l == k`` exactly) and keeps its own ``k_l`` highest scores.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scalpel.core.errors import ConfigError


def budget_size(density: float | None, count: int | None, total: int) -> int:
    """The number of entries to train among ``total`` targeted ones.

    Raises:
        ConfigError: the count is larger than the targeted weights hold.
    """
    if count is not None:
        if count > total:
            raise ConfigError(
                "SparseConfig",
                [f"count={count:,} is larger than the {total:,} entries of the targeted weights; "
                 "lower count, use density, or target more modules"],
            )
        return int(count)
    return max(1, min(total, round(float(density) * total)))


def per_layer_counts(sizes: dict[str, int], k: int) -> dict[str, int]:
    """Split ``k`` over layers proportionally to their sizes, summing to ``k`` exactly."""
    total = sum(sizes.values())
    quotas = {n: k * s / total for n, s in sizes.items()}
    counts = {n: min(sizes[n], math.floor(q)) for n, q in quotas.items()}
    left = k - sum(counts.values())
    by_remainder = sorted(sizes, key=lambda n: (quotas[n] - counts[n], sizes[n]), reverse=True)
    while left > 0:  # one pass suffices unless layers are full; loop for safety
        for n in by_remainder:
            if left == 0:
                break
            if counts[n] < sizes[n]:
                counts[n] += 1
                left -= 1
    return counts


def select_indices(scores: dict[str, Tensor], k: int, allocation: str) -> dict[str, Tensor]:
    """Sorted int64 flat indices of the kept entries of every scored weight (``sum == k``).

    Args:
        scores: weight name -> float scores, any shape; NaN counts as the lowest score.
        k: the total number of entries to keep, ``1 <= k <= total entries``.
        allocation: ``"global"`` or ``"per_layer"``.
    """
    flat = {n: torch.nan_to_num(s.detach().reshape(-1).float(), nan=-math.inf) for n, s in scores.items()}
    if allocation == "per_layer":
        counts = per_layer_counts({n: s.numel() for n, s in flat.items()}, k)
        return {n: torch.topk(s, counts[n], sorted=False).indices.sort().values for n, s in flat.items()}
    return _global_top_k(flat, k)


def _global_top_k(flat: dict[str, Tensor], k: int) -> dict[str, Tensor]:
    names = list(flat)
    device = flat[names[0]].device
    best = torch.empty(0, device=device)
    owner = torch.empty(0, dtype=torch.int64, device=device)
    position = torch.empty(0, dtype=torch.int64, device=device)
    for layer, name in enumerate(names):
        s = flat[name].to(device)
        best = torch.cat([best, s])
        owner = torch.cat([owner, torch.full((s.numel(),), layer, dtype=torch.int64, device=device)])
        position = torch.cat([position, torch.arange(s.numel(), device=device)])
        if best.numel() > k:
            keep = torch.topk(best, k, sorted=False).indices
            best, owner, position = best[keep], owner[keep], position[keep]
    return {
        name: position[owner == layer].sort().values.to(flat[name].device) for layer, name in enumerate(names)
    }
