"""Block maps: a model's blocks in depth order (stem, block 0..N-1, head).

Layer-wise selection, layer-wise learning-rate decay, Auto-RGN and LISA all need to
know which parameters form which block, and in which order the input meets them. A
:class:`BlockMap` is an ordered list of entries ``(name, regex)``; a parameter belongs
to the first entry whose regex is found (``re.search``) in its base name (the name in
the unadapted model, ``.base_layer`` segments removed).

Maps are found automatically by *structure* (attribute paths, not class names), so a
model wrapped in another module, a task head or a detection framework is still found:

=======================  =====================================================
family                   recognised by (at any depth)
=======================  =====================================================
transformers encoder     ``embeddings`` + ``encoder.layer`` (BERT, MiniLM, RoBERTa, ViT)
DistilBERT               ``embeddings`` + ``transformer.layer``
GPT-2                    ``wte`` + ``h``
Llama-style decoder      ``embed_tokens`` + ``layers`` (Llama, Mistral, Qwen, ...)
ResNet                   ``conv1`` + ``layer1``.. (torchvision ResNet and the ResNet
                         backbones of Faster R-CNN, RetinaNet, FCOS, DeepLabV3, FCN)
MobileNet features       children ``0..n`` that are inverted-residual ``block``\\ s
                         (MobileNetV2/V3, and their detection/LR-ASPP/DeepLab backbones)
SSDlite                  ``features`` (two MobileNet halves) + ``extra``
MONAI UNet               ``model`` = (down, SkipConnection(``submodule``), up), nested
MONAI SegResNet          ``convInit``, ``down_layers``, ``up_samples``, ``up_layers``, ``conv_final``
MONAI SwinUNETR          ``swinViT.patch_embed``, ``swinViT.layers1..4``, ``encoder*``, ``decoder*``, ``out``
DenseNet                 ``conv0`` + ``denseblock1``.. (+ ``transition*``, ``norm5``): MONAI DenseNet121 and
                         torchvision densenet*, under their ``features``
=======================  =====================================================

A feature-pyramid neck (``fpn`` beside the backbone body) becomes the last block. The
head is everything else: the task head, final norms, and any module outside the
recognised backbone (a wrapper's classifier).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from torch import nn

from scalpel.core.delta import adapter_of, base_name
from scalpel.core.errors import ConfigError, ScalpelError
from scalpel.core.layerwise.detectors import DETECTORS

#: What a user passes as a map: ``(name, regex)`` pairs or ``"name=regex"`` strings.
UserMap = Sequence[tuple[str, str] | Sequence[str] | str]


@dataclass(frozen=True)
class Block:
    """One entry of a block map.

    Attributes:
        name: ``"stem"``, ``"head"``, or the block's module path (``"bert.encoder.layer.3"``).
        pattern: regex searched in base parameter names.
        role: ``"stem"``, ``"block"`` or ``"head"``.
        modules: module paths the entry covers (auto-detected maps; empty for user regexes;
            ``("*",)`` for an auto-detected head, which is "everything else").
        num_parameters: parameter count of the entry in the model the map was built on.
    """

    name: str
    pattern: str
    role: str
    modules: tuple[str, ...] = ()
    num_parameters: int = 0


@dataclass(frozen=True)
class BlockMap:
    """A model's blocks in depth order: optional stem, the middle blocks, optional head.

    Example:
        >>> bm = block_map(model)            # BERT: stem, bert.encoder.layer.0..11, head
        >>> print(bm)
        >>> bm.select(["last 2"])            # the last two encoder layers
        >>> LoraConfig(targets=bm.regex_for(["last 2"], within="query|value"))
    """

    entries: tuple[Block, ...]
    family: str = "custom"
    root: str = ""
    _compiled: tuple[re.Pattern, ...] = field(default=(), repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", tuple(re.compile(b.pattern) for b in self.entries))

    # ------------------------------------------------------------------ structure

    @property
    def stem(self) -> Block | None:
        return next((b for b in self.entries if b.role == "stem"), None)

    @property
    def head(self) -> Block | None:
        return next((b for b in self.entries if b.role == "head"), None)

    @property
    def blocks(self) -> list[Block]:
        """The middle blocks, indexed 0..N-1 by selections such as ``"blocks 3-5"``."""
        return [b for b in self.entries if b.role == "block"]

    def names(self) -> list[str]:
        return [b.name for b in self.entries]

    def pairs(self) -> list[tuple[str, str]]:
        """The map as ``(name, regex)`` pairs: edit them and pass them back as a custom map."""
        return [(b.name, b.pattern) for b in self.entries]

    def block_of(self, param_name: str) -> Block | None:
        """The entry that owns parameter ``param_name`` (adapted or base name), or None."""
        name = base_name(param_name)
        for block, regex in zip(self.entries, self._compiled):
            if regex.search(name):
                return block
        return None

    def depth_from_top(self, block: Block | None) -> int:
        """0 for the last entry (the head), 1 for the one before, ...; unassigned parameters count as the top."""
        if block is None:
            return 0
        return len(self.entries) - 1 - self.entries.index(block)

    def assign(self, model: nn.Module, *, trainable_only: bool = False) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Base parameters of ``model`` grouped by entry name (in map order), plus ``""`` for unassigned ones.

        Delta parameters (LoRA factors, sparse values) are grouped with the block of the
        layer they adapt; tied parameters are listed once.
        """
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {b.name: [] for b in self.entries}
        groups[""] = []
        for name, param in model.named_parameters():
            if trainable_only and not param.requires_grad:
                continue
            block = self.block_of(name)
            groups[block.name if block else ""].append((name, param))
        return groups

    # ------------------------------------------------------------------ selection

    def select(self, selection: Iterable[str]) -> list[Block]:
        """Resolve selection strings to entries, in map order.

        Accepted strings: ``"3"`` / ``"-1"`` (middle block index), ``"first 2"``,
        ``"last 1"``, ``"blocks 3-5"`` / ``"block 3"`` / ``"3-5"`` (inclusive), ``"all"``
        (every middle block), ``"stem"``, ``"head"``, or an entry's name or a dotted
        suffix of it (``"layer4"``, ``"encoder.layer.0"``).

        Raises:
            ConfigError: naming every string that selects nothing, with the map's names.
        """
        chosen: set[str] = set()
        problems = []
        for text in selection:
            found = self._resolve(str(text).strip())
            if isinstance(found, str):
                problems.append(found)
            else:
                chosen.update(b.name for b in found)
        if problems:
            problems.append(f"this model's block map ({self.family}) has: {', '.join(self.names())}")
            raise ConfigError("block selection", problems)
        return [b for b in self.entries if b.name in chosen]

    def regex_for(self, selection: Iterable[str], within: str | None = None) -> str:
        """A regex matching the names of modules and parameters inside the selected blocks,
        for another method's ``targets`` (LoRA, sparse): restrict a method to blocks.

        The result starts with ``^`` and ends with ``$``, so it means the same under
        ``re.search``, ``re.match`` and LoRA's suffix ``re.fullmatch``.

        Args:
            within: optionally, a regex that must match the whole name or a dotted suffix
                of it (LoRA's rule), e.g. ``"query|value"``.
        """
        chosen = self.select(selection)
        if not chosen:
            raise ConfigError("block selection", ["the selection is empty; name at least one block, e.g. 'last 2'"])
        inside = "|".join(f".*?(?:{b.pattern})" for b in chosen)
        body = ".*" if within is None else f"(?:.*\\.)?(?:{within})"
        return f"^(?=(?:{inside})){body}$"

    def prefixes(self, selection: Iterable[str]) -> list[str]:
        """Module paths inside the selected blocks (for ``SparseConfig(blocks=...)``)."""
        chosen = self.select(selection)
        missing = [b.name for b in chosen if not b.modules or b.modules == ("*",)]
        if missing:
            raise ScalpelError(
                f"entries {missing} of this block map are regexes (or 'everything else'), not module paths; "
                f"restrict the method with targets=block_map.regex_for(...) instead"
            )
        return [m for b in chosen for m in b.modules]

    def _resolve(self, text: str) -> list[Block] | str:
        middle = self.blocks
        n = len(middle)
        low = text.lower()
        if low == "all":
            return middle
        if low in ("stem", "head"):
            block = self.stem if low == "stem" else self.head
            return [block] if block else f"{text!r}: this block map has no {low}"
        if m := re.fullmatch(r"(first|last)\s+(\d+)", low):
            k = int(m.group(2))
            if not 1 <= k <= n:
                return f"{text!r}: asks for {k} blocks but the map has {n} middle blocks"
            return middle[:k] if m.group(1) == "first" else middle[n - k :]
        if m := re.fullmatch(r"(?:blocks?\s+)?(-?\d+)(?:\s*-\s*(-?\d+))?", low):
            lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
            lo, hi = (lo + n if lo < 0 else lo), (hi + n if hi < 0 else hi)
            if not (0 <= lo <= hi < n):
                return f"{text!r}: block indices run from 0 to {n - 1} (negative counts from the end)"
            return middle[lo : hi + 1]
        hits = [b for b in self.entries if b.name == text or b.name.endswith("." + text)]
        if len(hits) > 1:
            return f"{text!r} is ambiguous: it names {', '.join(b.name for b in hits)}"
        return hits or f"{text!r} is not a block index, range ('blocks 3-5'), 'first N', 'last N', 'all' or a block name"

    # ------------------------------------------------------------------ printing

    def __str__(self) -> str:
        where = f" at {self.root!r}" if self.root else ""
        lines = [f"BlockMap: {self.family}{where}, {len(self.blocks)} blocks"]
        width = max(len(b.name) for b in self.entries)
        index = 0
        for b in self.entries:
            label = b.role if b.role != "block" else f"block {index}"
            index += b.role == "block"
            what = ", ".join(b.modules) if b.modules else b.pattern
            if b.role == "head" and b.modules == ("*",):
                what = "everything else"
            lines.append(f"  {label:<9} {b.name:<{width}}  {b.num_parameters:>12,} params  {what}")
        return "\n".join(lines)

    __repr__ = __str__


# ============================================================================ building


def block_map(model: nn.Module, custom: UserMap | BlockMap | None = None) -> BlockMap:
    """The block map of ``model``: ``custom`` if given, else found from its structure.

    Args:
        custom: ``[(name, regex), ...]`` or ``["name=regex", ...]`` in depth order; an entry
            named ``"stem"`` is the stem, one named ``"head"`` the head, all others are the
            middle blocks. Regexes are searched in parameter names.

    Raises:
        ScalpelError: the architecture is not recognised (the message shows how to pass a
            map), or a custom entry is malformed or matches no parameter.
    """
    if isinstance(custom, BlockMap):
        return custom
    if custom is not None and len(custom) > 0:
        return _user_map(model, custom)
    names = _param_names(model)
    for path, module in sorted(_named_modules(model), key=lambda item: item[0].count(".") + (item[0] != "")):
        for family, detect in DETECTORS:
            found = detect(module)
            if found is not None:
                stem, blocks = found
                return _auto_map(model, names, family, path, module, stem, blocks)
    raise ScalpelError(_unknown_message(model))


def parse_user_map(custom: UserMap) -> list[tuple[str, str]]:
    """Normalise ``(name, regex)`` pairs / ``"name=regex"`` strings; raise ConfigError listing every problem."""
    pairs, problems = [], []
    for i, entry in enumerate(custom):
        if isinstance(entry, str):
            name, sep, pattern = entry.partition("=")
            if not sep:
                problems.append(f"entry {i} {entry!r} must read 'name=regex', e.g. 'stem=^conv1\\.'")
                continue
        elif isinstance(entry, Sequence) and len(entry) == 2 and all(isinstance(x, str) for x in entry):
            name, pattern = entry
        else:
            problems.append(f"entry {i} {entry!r} must be a (name, regex) pair or a 'name=regex' string")
            continue
        name, pattern = name.strip(), pattern.strip()
        try:
            re.compile(pattern)
        except re.error as err:
            problems.append(f"entry {name!r}: {pattern!r} is not a valid regular expression: {err}")
        if not name:
            problems.append(f"entry {i} has an empty name")
        pairs.append((name, pattern))
    dupes = sorted({n for n, _ in pairs if [m for m, _ in pairs].count(n) > 1})
    if dupes:
        problems.append(f"entry names must be unique; repeated: {', '.join(dupes)}")
    if pairs and not problems and all(n in ("stem", "head") for n, _ in pairs):
        problems.append("the map has no middle block: add entries besides 'stem' and 'head'")
    from scalpel.core.config import raise_if_problems

    raise_if_problems("block map", problems)
    return pairs


def _user_map(model: nn.Module, custom: UserMap) -> BlockMap:
    pairs = parse_user_map(custom)
    names = _param_names(model)
    entries, claimed = [], set()
    for name, pattern in pairs:
        regex = re.compile(pattern)
        own = [n for n in names if n not in claimed and regex.search(n)]
        claimed.update(own)
        role = name if name in ("stem", "head") else "block"
        entries.append(Block(name, pattern, role, (), sum(names[n] for n in own)))
    empty = [b.name for b in entries if b.num_parameters == 0]
    if empty:
        raise ConfigError(
            "block map",
            [f"entry {n!r} matches no parameter (or only ones an earlier entry took)" for n in empty]
            + [f"parameter names look like: {', '.join(list(names)[:4])}"],
        )
    return BlockMap(tuple(entries), family="custom")


def _auto_map(model, names, family, root, module, stem, blocks) -> BlockMap:
    join = (lambda p: f"{root}.{p}" if p else root) if root else (lambda p: p)
    stem = [join(p) for p in stem]
    blocks = [[join(p) for p in group] for group in blocks]
    parent = root.rpartition(".")[0] if "." in root else ""
    fpn = f"{parent}.fpn" if parent else "fpn"
    if root and _has_module(model, fpn):  # torchvision BackboneWithFPN: the neck is the last block
        blocks.append([fpn])
    groups = ([("stem", stem, "stem")] if stem else []) + [(g[0], g, "block") for g in blocks]
    entries, taken = [], []
    for name, modules, role in groups:
        pattern = _prefix_pattern(modules)
        regex = re.compile(pattern)
        count = sum(v for n, v in names.items() if regex.search(n))
        entries.append(Block(name, pattern, role, tuple(modules), count))
        taken.extend(modules)
    head_pattern = f"^(?!(?:{'|'.join(re.escape(m) for m in taken)})(?:\\.|$))"
    regex = re.compile(head_pattern)
    head_count = sum(v for n, v in names.items() if regex.search(n))
    entries.append(Block("head", head_pattern, "head", ("*",), head_count))
    return BlockMap(tuple(entries), family=family, root=root)


def _prefix_pattern(modules: Sequence[str]) -> str:
    return f"^(?:{'|'.join(re.escape(m) for m in modules)})(?:\\.|$)"


# ============================================================================ helpers


def _named_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules by base name, skipping delta-layer internals (a LoRA wrapper is seen as its base)."""
    out = []
    for name, module in model.named_modules():
        if adapter_of(name + ".x") is not None:
            continue
        out.append((base_name(name), module))
    seen, unique = set(), []
    for name, module in out:
        if name not in seen:
            seen.add(name)
            unique.append((name, _unwrap(module)))
    return unique


def _unwrap(module: nn.Module) -> nn.Module:
    base = getattr(module, "base_layer", None)
    return _unwrap(base) if isinstance(base, nn.Module) and hasattr(module, "active_adapter") else module


def _has_module(model: nn.Module, path: str) -> bool:
    return any(name == path for name, _ in _named_modules(model))


def _param_names(model: nn.Module) -> dict[str, int]:
    """Base parameter name -> element count (delta parameters excluded, tied ones once)."""
    return {base_name(n): p.numel() for n, p in model.named_parameters() if adapter_of(n) is None}


def _unknown_message(model: nn.Module) -> str:
    tops = [n for n, c in model.named_children() if any(True for _ in c.parameters())]
    if len(tops) >= 3:
        entries = [("stem", tops[0])] + [(n, n) for n in tops[1:-1][:2]] + [("head", tops[-1])]
    else:
        entries = [("stem", "conv0"), ("stage1", "stage1"), ("stage2", "stage2"), ("head", "fc")]
    pairs = ", ".join(f'("{name}", r"^{re.escape(path)}\\.")' for name, path in entries)
    families = ", ".join(f for f, _ in DETECTORS)
    return (
        f"cannot find the blocks of {type(model).__name__}: its structure matches none of the known families "
        f"({families}). Pass a block map: an ordered list of (name, regex) pairs in depth order, regexes searched "
        f"in parameter names, 'stem' first and 'head' last, e.g.\n"
        f"    LayerwiseConfig(blocks=('last 1',), block_map=({pairs}))\n"
        f"or scalpel.core.block_map(model, [...]) with the same list. Top-level modules of this model: "
        f"{', '.join(tops) or 'none'}"
    )
