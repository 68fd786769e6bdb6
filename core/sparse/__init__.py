"""Sparse fine-tuning: train a few, well-chosen entries of the weights.

    from scalpel.core.sparse import SparseConfig, SparseRegrowth
    model = scalpel.core.apply(model, SparseConfig(density=0.01, scorer="fisher"), data=batches)
    hooks = [SparseRegrowth.from_config(model, total_steps=1000)]   # for regrow_every > 0

Modules: ``config`` (what to train), ``scorers`` (importance scores), ``budget`` (top-k
selection), ``layers`` and ``autograd`` (the index/value delta and its memory-lean
gradients), ``dynamic`` (SpIEL-style regrowth), ``method`` (registration, save and load).
"""

from scalpel.core.sparse.budget import budget_size, per_layer_counts, select_indices
from scalpel.core.sparse.config import SparseConfig
from scalpel.core.sparse.dynamic import SparseRegrowth, regrow_share
from scalpel.core.sparse.layers import SparseDeltaLayer
from scalpel.core.sparse.method import SPARSE, apply_sparse, find_targets, sparse_layers
from scalpel.core.sparse.scorers import SCORERS, ScoringData, default_loss, register_scorer

__all__ = [
    "SCORERS",
    "SPARSE",
    "ScoringData",
    "SparseConfig",
    "SparseDeltaLayer",
    "SparseRegrowth",
    "apply_sparse",
    "budget_size",
    "default_loss",
    "find_targets",
    "per_layer_counts",
    "regrow_share",
    "register_scorer",
    "select_indices",
    "sparse_layers",
]
