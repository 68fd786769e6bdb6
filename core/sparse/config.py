"""The configuration of sparse fine-tuning: which weights, how many entries, chosen how,
and whether the chosen set is regrown during training."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from scalpel.core.config import raise_if_problems

#: Module class names adapted when ``target_types`` is not given: every weight matrix.
DEFAULT_TARGET_TYPES = ("Linear", "Conv1D", "Conv1d", "Conv2d", "Conv3d")
#: Module class names the sparse delta layer knows how to adapt.
SUPPORTED_TYPES = (*DEFAULT_TARGET_TYPES, "Embedding", "LayerNorm", "GroupNorm", "BatchNorm1d", "BatchNorm2d", "RMSNorm")
SCHEDULES = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class SparseConfig:
    """Sparse fine-tuning: train ``k`` chosen entries of the targeted weights, nothing else.

    The delta of each targeted weight ``W`` (shape ``S``, ``n = prod(S)`` entries) is a
    pair ``(indices: int64[k_l], values: float[k_l])`` and the layer computes with
    ``W + scatter(values at indices)``. The ``k = sum(k_l)`` entries are those with the
    highest importance score (:mod:`scalpel.core.sparse.scorers`). References: FISH mask
    (Sung et al., NeurIPS 2021), LT-SFT (Ansell et al., ACL 2022), SpIEL (Ansell et al., 2024).

    Example:
        >>> SparseConfig(density=0.01, scorer="fisher", targets=r"intermediate|output\\.dense")
    """

    method: ClassVar[str] = "sparse"

    density: float | None = field(default=0.01, metadata={"help": "fraction of the targeted weights' entries to train, in (0, 1]"})
    """Fraction of the targeted entries to train, in (0, 1]. Ignored when ``count`` is given."""
    count: int | None = field(default=None, metadata={"help": "exact number of entries to train (overrides density)"})
    """Exact number of entries to train over all targeted weights (overrides ``density``)."""
    scorer: str = field(default="fisher", metadata={"help": "importance score: random, magnitude, gradient, fisher, movement, lottery_ticket"})
    """Importance score choosing the entries; the data scorers need ``apply(..., data=batches)``."""
    allocation: Literal["global", "per_layer"] = field(default="global", metadata={"help": "global top-k or the same density in every layer"})
    """``"global"``: the top-k scores over all targeted weights (layers get what they earn);
    ``"per_layer"``: every targeted weight gets the same share of its own entries."""
    targets: str | None = field(default=None, metadata={"help": "regex searched in module names; None: every module of target_types"})
    """Regex searched (``re.search``) in each module's name; None targets every module of ``target_types``."""
    target_types: tuple[str, ...] = field(default=DEFAULT_TARGET_TYPES, metadata={"help": "module class names to adapt"})
    """Class names of the modules to adapt (``"Embedding"`` and norms are opt-in)."""
    blocks: tuple[str, ...] = field(default=(), metadata={"help": "restrict to blocks: 'last 2', 'blocks 3-5', 'encoder.layer.0', ..."})
    """Restrict to modules inside these blocks, as the layer-wise block map resolves them
    (``"last 2"``, ``"blocks 3-5"``, ``"encoder.layer.0"``, ``"head"``); for models without a
    known block map, module-name prefixes. Empty: no restriction."""
    exclude: str | None = field(default=None, metadata={"help": "regex of module names never adapted (e.g. the head)"})
    """Regex of module names never adapted (e.g. a classification head trained in full)."""
    num_batches: int = field(default=8, metadata={"help": "batches the data scorers read"})
    """Batches the data scorers (gradient, fisher, movement) read; lottery_ticket trains for ``lt_steps``."""
    lt_steps: int = 100
    """Lottery-ticket scorer: steps of the short full fine-tune whose weight change is the score."""
    lt_lr: float = 1e-4
    """Lottery-ticket scorer: AdamW learning rate of that short fine-tune."""
    seed: int = 0
    """Seed of the random scorer (and of tie-breaking nowhere else: top-k is deterministic)."""
    regrow_every: int = field(default=0, metadata={"help": "dynamic mask: regrow every N steps (0: static mask)"})
    """Dynamic masks (SpIEL): drop and regrow entries every this many optimizer steps; 0 keeps the mask fixed."""
    regrow_fraction: float = 0.3
    """Share of each layer's entries dropped and regrown at the first regrowth, in (0, 1)."""
    regrow_schedule: Literal["cosine", "linear", "constant"] = "cosine"
    """How the regrown share decays over training (SpIEL: cosine to zero at the last step)."""
    regrow_window: int = 1
    """Steps before each regrowth whose gradients are accumulated to rank the growth candidates."""

    def __post_init__(self) -> None:
        problems = []
        if self.count is None:
            if self.density is None:
                problems.append("give density (a fraction in (0, 1]) or count (a number of entries)")
            elif not 0.0 < float(self.density) <= 1.0:
                problems.append(f"density must be in (0, 1], got {self.density}; e.g. density=0.01 trains 1% of the targeted weights")
        elif self.count < 1:
            problems.append(f"count must be a positive number of entries, got {self.count}")
        if self.allocation not in ("global", "per_layer"):
            problems.append(f"allocation must be 'global' or 'per_layer', got {self.allocation!r}")
        for name in ("targets", "exclude"):
            pattern = getattr(self, name)
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as err:
                    problems.append(f"{name} {pattern!r} is not a valid regular expression: {err}")
        unknown = [t for t in self.target_types if t not in SUPPORTED_TYPES]
        if unknown:
            problems.append(f"target_types {unknown} are not supported; choose from {', '.join(SUPPORTED_TYPES)}")
        if not self.target_types:
            problems.append("target_types is empty; name at least one module type, e.g. ('Linear',)")
        from scalpel.core.sparse.scorers import SCORERS  # here: the scorers module needs no config

        if self.scorer not in SCORERS:
            problems.append(f"unknown scorer {self.scorer!r}; choose from {', '.join(SCORERS.names())}")
        if self.num_batches < 1:
            problems.append(f"num_batches must be >= 1, got {self.num_batches}")
        if self.lt_steps < 1 or self.lt_lr <= 0:
            problems.append(f"lt_steps must be >= 1 and lt_lr > 0, got {self.lt_steps} and {self.lt_lr}")
        if self.regrow_every < 0:
            problems.append(f"regrow_every must be >= 0 (0: static mask), got {self.regrow_every}")
        if not 0.0 < self.regrow_fraction < 1.0:
            problems.append(f"regrow_fraction must be in (0, 1), got {self.regrow_fraction}")
        if self.regrow_schedule not in SCHEDULES:
            problems.append(f"regrow_schedule must be one of {SCHEDULES}, got {self.regrow_schedule!r}")
        if self.regrow_every and not 1 <= self.regrow_window <= self.regrow_every:
            problems.append(f"regrow_window must be in [1, regrow_every={self.regrow_every}], got {self.regrow_window}")
        raise_if_problems("SparseConfig", problems)
