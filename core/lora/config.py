"""The LoRA family's one config: LoRA, rsLoRA and DoRA.

LoRA (Hu et al., 2021, arXiv:2106.09685) learns ``W = W0 + (alpha / r) B A`` with
``A: (r, in)`` and ``B: (out, r)``; rsLoRA (Kalajdzievski, 2023, arXiv:2312.03732)
scales by ``alpha / sqrt(r)`` so larger ranks keep learning; DoRA (Liu et al., 2024,
arXiv:2402.09353) splits ``W`` into a learned magnitude per output feature and a
direction ``(W0 + s B A) / ||W0 + s B A||``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import ClassVar

from scalpel.core.config import raise_if_problems

#: ``targets`` shorthand: every linear layer (``nn.Linear`` and GPT-2 ``Conv1D``) except the output head.
ALL_LINEAR = "all-linear"
INITS = ("kaiming", "gaussian")
BIASES = ("none", "lora_only", "all")
#: Layer type names accepted by ``target_types`` (class names; ``Conv1D`` is transformers' GPT-2 layer).
LAYER_TYPES = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D")


@dataclass(frozen=True)
class LoraConfig:
    """LoRA / rsLoRA / DoRA on chosen layers of any model.

    Name patterns (``targets``, ``exclude``, ``rank_pattern`` and ``alpha_pattern`` keys)
    are regular expressions that must match a module's whole name or a dotted suffix of
    it: ``"query|value"`` hits ``encoder.layer.0.attention.self.query`` but not
    ``query_proj``.
    """

    method: ClassVar[str] = "lora"

    r: int = field(default=8, metadata={"help": "rank of the update B A"})
    """Rank of the low-rank update; > 0."""
    alpha: float = field(default=16.0, metadata={"help": "scale numerator: the update is multiplied by alpha / r"})
    """Scaling numerator: ``scaling = alpha / r`` (or ``alpha / sqrt(r)`` with rsLoRA)."""
    dropout: float = field(default=0.0, metadata={"help": "dropout on the LoRA input branch, in [0, 1)"})
    """Dropout probability on the input of the low-rank branch (not used for embeddings)."""
    use_rslora: bool = field(default=False, metadata={"help": "rank-stabilised scaling alpha / sqrt(r)"})
    use_dora: bool = field(default=False, metadata={"help": "DoRA: learned magnitude over the weight's column norms"})
    init: str = field(default="kaiming", metadata={"help": "init of A: kaiming or gaussian; B starts at zero"})
    """``"kaiming"``: A ~ Kaiming-uniform(a=sqrt(5)); ``"gaussian"``: A ~ N(0, 1/r). B = 0, so the
    adapted model starts equal to the base (embeddings, as in PEFT: A = 0, B ~ N(0, 1))."""
    bias: str = field(default="none", metadata={"help": "train biases: none, lora_only (of adapted layers) or all"})
    rank_pattern: dict[str, int] = field(default_factory=dict, metadata={"help": "name regex -> rank"})
    """Per-module ranks; the first pattern that matches a module wins."""
    alpha_pattern: dict[str, float] = field(default_factory=dict, metadata={"help": "name regex -> alpha"})
    targets: str | None = field(default=None, metadata={"help": "regex on module names, or 'all-linear'"})
    """Which modules to adapt, by name; ``"all-linear"`` = every linear layer but the output head."""
    target_types: tuple[str, ...] = field(default=(), metadata={"help": "layer types to adapt, e.g. Conv2d Linear"})
    """Which modules to adapt, by type (see ``LAYER_TYPES``). With ``targets`` too, a module must match both."""
    exclude: str | None = field(default=None, metadata={"help": "regex on module names never to adapt"})
    modules_to_save: tuple[str, ...] = field(default=(), metadata={"help": "modules trained in full, e.g. classifier"})
    """Modules trained in full, one copy per adapter (task heads); each name matches a module
    whose name equals it or ends with ``"." + name``."""

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            problems.append(f"r must be a positive integer, got {self.r!r}")
        if not _positive_number(self.alpha):
            problems.append(f"alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.init not in INITS:
            problems.append(f"init must be one of {', '.join(INITS)}, got {self.init!r}")
        if self.bias not in BIASES:
            problems.append(f"bias must be one of {', '.join(BIASES)}, got {self.bias!r}")
        if self.targets is None and not self.target_types:
            problems.append("nothing to adapt: give targets (a name regex or 'all-linear') and/or target_types")
        if self.targets is not None and self.targets != ALL_LINEAR:
            problems.append(_regex_problem("targets", self.targets))
        if self.exclude is not None:
            problems.append(_regex_problem("exclude", self.exclude))
        unknown = [t for t in self.target_types if t not in LAYER_TYPES]
        if unknown:
            problems.append(f"target_types {unknown} unknown; choose from {', '.join(LAYER_TYPES)}")
        for key, value in self.rank_pattern.items():
            problems.append(_regex_problem(f"rank_pattern key {key!r}", key))
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"rank_pattern[{key!r}] must be a positive integer, got {value!r}")
        for key, value in self.alpha_pattern.items():
            problems.append(_regex_problem(f"alpha_pattern key {key!r}", key))
            if not _positive_number(value):
                problems.append(f"alpha_pattern[{key!r}] must be a positive number, got {value!r}")
        if isinstance(self.modules_to_save, str):
            problems.append("modules_to_save must be a list of module names, not one string")
        raise_if_problems("LoraConfig", problems)

    def rank_for(self, module_name: str) -> int:
        return _first_match(self.rank_pattern, module_name, self.r)

    def alpha_for(self, module_name: str) -> float:
        return _first_match(self.alpha_pattern, module_name, self.alpha)

    def scaling(self, r: int, alpha: float) -> float:
        """``alpha / r``, or ``alpha / sqrt(r)`` with rsLoRA."""
        return alpha / math.sqrt(r) if self.use_rslora else alpha / r


def name_matches(pattern: str, name: str) -> bool:
    """True when ``pattern`` matches the whole of ``name`` or a dotted suffix of it."""
    return re.fullmatch(rf"(?:.*\.)?(?:{pattern})", name) is not None


def _first_match(patterns: dict, name: str, default):
    return next((value for key, value in patterns.items() if name_matches(key, name)), default)


def _regex_problem(what: str, pattern: str) -> str:
    try:
        re.compile(pattern)
    except (re.error, TypeError) as err:
        return f"{what} is not a valid regular expression ({err}): {pattern!r}"
    return ""


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 and math.isfinite(value)
