"""Layer-wise adaptation: train chosen blocks of a model and keep the others frozen.

    bm = block_map(model); print(bm)                      # stem, blocks 0..N-1, head
    model = apply(model, LayerwiseConfig(blocks=("last 2",), bitfit=False))
    groups = llrd_param_groups(model, decay=0.8)          # layer-wise lr decay, for fit
    lisa = LISA(apply(model, FullConfig()), gamma=2, every=20)   # fit hook
    recalibrate_norm_statistics(model, target_batches)     # AdaBN: the zero-parameter baseline
    fit(model, task, loader, config=..., param_groups=lisa.param_groups(), hooks=(lisa,))

Registers the methods ``"layerwise"`` and ``"full"``.
"""

from scalpel.core.layerwise.adabn import recalibrate_norm_statistics
from scalpel.core.layerwise.blocks import Block, BlockMap, block_map
from scalpel.core.layerwise.config import FullConfig, LayerwiseConfig
from scalpel.core.layerwise.lisa import LISA
from scalpel.core.layerwise.llrd import llrd_param_groups
from scalpel.core.layerwise.method import norm_parameter_names, select_parameters, selected_blocks
from scalpel.core.layerwise.rgn import AutoRGN, relative_gradient_norms, rgn_multipliers, top_blocks

__all__ = [
    "LISA",
    "AutoRGN",
    "Block",
    "BlockMap",
    "FullConfig",
    "LayerwiseConfig",
    "block_map",
    "llrd_param_groups",
    "norm_parameter_names",
    "recalibrate_norm_statistics",
    "relative_gradient_norms",
    "rgn_multipliers",
    "select_parameters",
    "selected_blocks",
    "top_blocks",
]
