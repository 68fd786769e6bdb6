"""Configs of the layer-wise methods: ``layerwise`` (chosen blocks, BitFit, norm tuning,
Auto-RGN selection) and ``full`` (every parameter, the baseline they are compared with)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from scalpel.core.config import raise_if_problems
from scalpel.core.errors import ConfigError

_SELECTION = re.compile(r"(?i)all|stem|head|(first|last)\s+\d+|(blocks?\s+)?-?\d+(\s*-\s*-?\d+)?|[\w.\-]+")


@dataclass(frozen=True)
class LayerwiseConfig:
    """Train chosen blocks of a model in full and keep the rest frozen.

    What is trained is the union of:

    * every parameter of the blocks in ``blocks`` (or, with ``bitfit``/``norm``, only their
      biases / normalisation affines; with ``blocks`` empty, those of the whole model);
    * the ``rgn_top_k`` blocks with the highest relative gradient norm on ``data``
      (Auto-RGN, Lee et al., "Surgical Fine-Tuning Improves Adaptation to Distribution
      Shifts", ICLR 2023);
    * the head, unless ``train_head=False``.

    ``LayerwiseConfig()`` alone is linear probing (head only). BitFit: Ben Zaken et al.,
    ACL 2022. The delta saved is the full tensors of the trained parameters.

    Example:
        >>> LayerwiseConfig(blocks=("first 2",))
        >>> LayerwiseConfig(blocks=("layer4", "stem"), train_head=False)
        >>> LayerwiseConfig(bitfit=True)                       # biases everywhere + head
        >>> LayerwiseConfig(rgn_top_k=1)  # with apply(..., data=batches)
    """

    method: ClassVar[str] = "layerwise"

    blocks: tuple[str, ...] = field(default=(), metadata={"help": "blocks to train: index, name, 'first N', 'last N', 'blocks 3-5', 'stem', 'head', 'all'"})
    """Selection strings resolved by :meth:`BlockMap.select`."""
    bitfit: bool = field(default=False, metadata={"help": "train only biases (of the selected blocks, or of the whole model)"})
    norm: bool = field(default=False, metadata={"help": "train only LayerNorm/BatchNorm/GroupNorm/RMSNorm affines (selected blocks or whole model)"})
    train_head: bool = field(default=True, metadata={"help": "train the head in full"})
    rgn_top_k: int = field(default=0, metadata={"help": "Auto-RGN: also train the k blocks with the highest relative gradient norm on data"})
    """Needs ``apply(model, config, data=batches)``; 0 disables. Stem and middle blocks compete."""
    rgn_batches: int = field(default=4, metadata={"help": "batches Auto-RGN reads"})
    block_map: tuple[tuple[str, str], ...] | None = field(default=None, metadata={"help": "custom block map: name=regex entries in depth order"})
    """``(name, regex)`` pairs or ``"name=regex"`` strings; None finds the map from the model's structure."""

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.blocks, str):
            object.__setattr__(self, "blocks", (self.blocks,))
        object.__setattr__(self, "blocks", tuple(str(b) for b in self.blocks))
        for text in self.blocks:
            if not _SELECTION.fullmatch(text.strip()):
                problems.append(f"block selection {text!r} is not an index, range ('blocks 3-5'), 'first N', 'last N' or a name")
        if self.block_map is not None:
            from scalpel.core.layerwise.blocks import parse_user_map

            try:
                object.__setattr__(self, "block_map", tuple(parse_user_map(self.block_map)) or None)
            except ConfigError as err:
                problems.extend(err.problems)
        if not isinstance(self.rgn_top_k, int) or self.rgn_top_k < 0:
            problems.append(f"rgn_top_k must be an integer >= 0 (0: no Auto-RGN), got {self.rgn_top_k!r}")
        if not isinstance(self.rgn_batches, int) or self.rgn_batches < 1:
            problems.append(f"rgn_batches must be >= 1, got {self.rgn_batches!r}")
        if not (self.blocks or self.bitfit or self.norm or self.train_head or self.rgn_top_k):
            problems.append("nothing to train: select blocks, or set bitfit, norm, rgn_top_k or train_head=True")
        raise_if_problems("LayerwiseConfig", problems)

    def target_regex(self, model: nn.Module, within: str | None = None) -> str:
        """A regex of the selected blocks' modules, for another method's ``targets``.

        Example:
            >>> sel = LayerwiseConfig(blocks=("last 2",))
            >>> apply(model, LoraConfig(r=8, targets=sel.target_regex(model, within="query|value")))
        """
        from scalpel.core.layerwise.blocks import block_map

        return block_map(model, self.block_map).regex_for(self.blocks, within=within)


@dataclass(frozen=True)
class FullConfig:
    """Full fine-tuning: every base parameter is trained (``exclude`` aside) and saved whole.

    The baseline every parameter-efficient method is measured against; also the starting
    point of LISA (:class:`scalpel.core.layerwise.LISA`), which trains all parameters but
    only a few blocks at a time.
    """

    method: ClassVar[str] = "full"

    exclude: str | None = field(default=None, metadata={"help": "regex searched in parameter names never trained"})

    def __post_init__(self) -> None:
        problems = []
        if self.exclude is not None:
            try:
                re.compile(self.exclude)
            except re.error as err:
                problems.append(f"exclude {self.exclude!r} is not a valid regular expression: {err}")
        raise_if_problems("FullConfig", problems)
