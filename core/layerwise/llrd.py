"""Layer-wise learning-rate decay (Howard & Ruder, ULMFiT, 2018; Clark et al., ELECTRA,
2020; Bao et al., BEiT, 2022): blocks near the input change less.

For a map of ``E`` entries (stem, blocks 0..N-1, head) the entry at position ``i``
(0 = stem) gets

    lr_i = lr * decay ** (E - 1 - i)

so the head trains at ``lr``, the last block at ``lr * decay``, ..., the stem at
``lr * decay ** (N + 1)``. Parameters no entry claims train at ``lr``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from scalpel.core.errors import ConfigError
from scalpel.core.layerwise.blocks import BlockMap, block_map as find_block_map


def llrd_param_groups(model: nn.Module, decay: float, block_map: BlockMap | None = None) -> list[dict[str, Any]]:
    """Parameter groups of the trainable parameters with ``"lr_scale" = decay ** depth``.

    Args:
        decay: in (0, 1]; 1 gives every block the same rate.
        block_map: the model's map (default: found from its structure).

    Returns:
        ``[{"params": [...], "lr_scale": float, "block": name}, ...]`` in map order, one per
        entry that has trainable parameters, for ``fit(..., param_groups=...)``.
    """
    if not 0.0 < decay <= 1.0:
        raise ConfigError("layer-wise lr decay", [f"decay must be in (0, 1], got {decay}; typical values are 0.65-0.95"])
    bm = block_map or find_block_map(model)
    groups = []
    by_name = {b.name: b for b in bm.entries}
    for name, members in bm.assign(model, trainable_only=True).items():
        if not members:
            continue
        depth = bm.depth_from_top(by_name.get(name))
        groups.append({"params": [p for _, p in members], "lr_scale": decay**depth, "block": name or "unassigned"})
    if not groups:
        raise ConfigError("layer-wise lr decay", ["the model has no trainable parameter; apply a method first"])
    return groups
