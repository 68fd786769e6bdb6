"""Budgets: how many entries to train, and which ones, from importance scores.

``k`` is ``count`` or ``round(density * n)`` for ``n`` targeted entries (at least one).
``"global"`` allocation keeps the ``k`` highest scores over all targeted weights (exact); ``"per_layer"``
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
    """One top-k over all scores (they are all in memory already, so concatenating them
    costs one more copy and is several times faster than merging per layer)."""
    names = list(flat)
    device = flat[names[0]].device
    sizes = [flat[n].numel() for n in names]
    keep = torch.topk(torch.cat([flat[n].to(device) for n in names]), k, sorted=False).indices.sort().values
    bounds = torch.tensor([0, *sizes], device=device).cumsum(0)
    out = {}
    for layer, name in enumerate(names):
        lo, hi = torch.searchsorted(keep, bounds[layer]), torch.searchsorted(keep, bounds[layer + 1])
        out[name] = (keep[lo:hi] - bounds[layer]).to(flat[name].device)
    return out
