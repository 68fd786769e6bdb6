"""Base checkpoints: what a run adapts, and what its site adapters are loaded onto.

    save_base(model, BaseSpec(UNetSpec(...), structures=[...], patch=(32, 32, 32)), "base/")
    model, spec, sha = load_base("base/")                     # a segmentation base, typed
    model = load_site_adapter("base/", "runs/site_b/adapter")  # refuses an adapter of another base

A base is ``model.safetensors`` + ``model.json`` (``{"task", "network", ...facts}``), written by
:func:`save_base`, by :func:`scalpel.medical.pipelines.train_base` or by hand with
:func:`~scalpel.medical.networks.save_checkpoint`. :class:`Base` is what a run starts from: such a
checkpoint, or a fresh network trained from scratch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from scalpel.core.artifacts import load_adapter, read_adapter_meta
from scalpel.core.config import raise_if_problems
from scalpel.core.errors import AdapterError, BaseModelMismatchError
from scalpel.medical.networks import NetworkSpec, load_checkpoint, read_checkpoint, recorded_orientation, save_checkpoint, spec_from_dict
from scalpel.medical.segmentation import UNetSpec
from scalpel.medical.transforms import PreprocessConfig

SEGMENTATION, CLASSIFICATION = "medical.segmentation", "medical.classification"


@dataclass(frozen=True)
class BaseSpec:
    """What a segmentation base is: the network, the structures it segments, its input grid and normalisation.

    ``spacing`` and ``orientation`` are the grid the base was trained on. Left empty, every
    series is used on its own grid (voxel for voxel, as stored); set, every series is
    reoriented and resampled to them for training and inference, and predictions are
    resampled back onto the series' own grid (what a MONAI bundle trained at, say,
    1.5 x 1.5 x 2 mm in RAS needs).
    """

    unet: UNetSpec | NetworkSpec
    """the network: a UNetSpec, or any NetworkSpec (SegResNet, SwinUNETR, a dotted MONAI class)"""
    structures: tuple[str, ...]
    window: tuple[float, float] = (-200.0, 600.0)
    """HU window mapped onto [0, 1] before the network"""
    patch: tuple[int, ...] = (32, 32, 32)
    """training patch and inference window; two sizes for a 2-D network (axial slices)"""
    spacing: tuple[float, ...] = ()
    """voxel size in mm (x y z, after reorienting) the base expects; empty: each series' own"""
    orientation: str = ""
    """axis codes (``"RAS"``, ``"LPS"``...) the base expects; empty: the stored (column, row, slice) order"""

    def __post_init__(self) -> None:
        for name, kind in (("structures", str), ("window", float), ("patch", int), ("spacing", float)):
            object.__setattr__(self, name, tuple(kind(v) for v in getattr(self, name)))
        problems = []
        if len(self.structures) != self.unet.out_channels - 1:
            problems.append(f"{len(self.structures)} structures but the network has {self.unet.out_channels} outputs (background + structures)")
        if self.window[1] <= self.window[0]:
            problems.append(f"window {self.window}: high must exceed low")
        if len(self.patch) != self.unet.spatial_dims or any(p % self.unet.downsampling for p in self.patch):
            problems.append(f"patch {self.patch} must have {self.unet.spatial_dims} sizes, each a multiple of {self.unet.downsampling}")
        if self.spacing and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            problems.append(f"spacing must be 3 positive sizes in mm (x y z) or empty, got {self.spacing}")
        if self.orientation and (len(self.orientation) != 3 or {c for c in self.orientation.upper()} - set("LRAPIS")):
            problems.append(f"orientation must be 3 axis codes from L/R, A/P, I/S (e.g. 'RAS') or empty, got {self.orientation!r}")
        raise_if_problems("base spec", problems)

    def to_dict(self) -> dict[str, Any]:
        """``model.json``: the task, the network and the facts every medical tool reads."""
        return {"task": SEGMENTATION, "network": self.unet.to_dict(), "structures": list(self.structures),
                "window": list(self.window), "patch": list(self.patch), "spacing": list(self.spacing), "orientation": self.orientation}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseSpec:
        """Read a base's ``model.json`` (key ``network``, or ``unet`` before), or an adapter's ``extra``.

        Raises:
            AdapterError: a base of another task, or one without the segmentation facts.
        """
        task = data.get("task", SEGMENTATION)
        missing = [k for k in ("structures", "window", "patch") if k not in data]
        if task != SEGMENTATION or missing or not (data.get("network") or data.get("unet")):
            why = f"a {task} model" if task != SEGMENTATION else f"missing {', '.join(missing) or 'network'}"
            raise AdapterError(f"model.json is not a segmentation base ({why}); segmenting needs a base written by save_base "
                               "or `scalpel run medical.segmentation` (a classification base's adapters are served by "
                               "`scalpel predict medical.classification --adapter ADAPTER SERIES_DIR`)")
        return cls(spec_from_dict(data.get("network") or data["unet"]), tuple(data["structures"]), tuple(data["window"]),
                   tuple(data["patch"]), tuple(data.get("spacing") or ()), recorded_orientation(data))

    def preprocess(self, **augmentation: Any) -> PreprocessConfig:
        """The MONAI preprocessing of this base: its window, grid and patch (and ``augmentation`` settings)."""
        return PreprocessConfig(window=self.window, spacing=self.spacing, orientation=self.orientation, patch=self.patch, **augmentation)


def save_base(model: nn.Module, spec: BaseSpec, folder: str | os.PathLike) -> Path:
    """Write a base checkpoint: ``model.safetensors`` + ``model.json`` (:meth:`BaseSpec.to_dict`)."""
    facts = spec.to_dict()
    del facts["network"]
    return save_checkpoint(model, spec.unet, folder, **facts)


def load_base(folder: str | os.PathLike) -> tuple[nn.Module, BaseSpec, str]:
    """Rebuild a segmentation base: ``(model in eval mode, spec, SHA-256 of its weights)``.

    Raises:
        AdapterError: no checkpoint there, weights that do not fit, or not a segmentation base.
    """
    model, _, facts, sha = load_checkpoint(folder)
    return model, BaseSpec.from_dict(facts), sha


def load_site_adapter(base_dir: str | os.PathLike, adapter_dir: str | os.PathLike) -> nn.Module:
    """The base with an adapter loaded; refuses an adapter trained on another base.

    Raises:
        BaseModelMismatchError: the adapter records another base checkpoint (SHA-256) or shapes.
    """
    model, _, sha = load_base(base_dir)
    check_base(adapter_dir, sha, base_dir)
    return load_adapter(model, adapter_dir)


def check_base(adapter_dir: str | os.PathLike, sha: str, base_dir: str | os.PathLike) -> dict[str, Any]:
    """The adapter's ``scalpel.json``, once its recorded base is the one of SHA-256 ``sha``.

    Raises:
        BaseModelMismatchError: the adapter was trained on another base (or the base changed since).
    """
    meta = read_adapter_meta(adapter_dir)
    recorded = meta.get("extra", {}).get("base_sha256")
    if recorded and recorded != sha:
        raise BaseModelMismatchError(f"the adapter {adapter_dir} was trained on the base with SHA-256 {recorded[:12]}..., not on "
                                     f"{base_dir} ({sha[:12]}...); load it onto its own base, or adapt this base again")
    return meta


@dataclass(frozen=True)
class Base:
    """What a run starts from: a checkpoint folder (``path``), or a fresh network (``path`` None).

    ``facts`` are ``model.json`` less the network (``task``, ``structures`` or ``class_names``,
    ``window``, ``patch`` or ``size``, ``spacing``, ``orientation``); empty for a network built
    from the run's options, which then say what it is.
    """

    network: Any
    facts: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    sha256: str = ""

    @classmethod
    def checkpoint(cls, folder: str | os.PathLike) -> Base:
        network, facts, sha = read_checkpoint(folder)
        facts = {k: v for k, v in facts.items() if k not in ("network", "unet")}
        # a base written by save_base before it recorded its task segments (it always has structures)
        facts.setdefault("task", SEGMENTATION if "structures" in facts else "")
        return cls(network, facts, Path(folder), sha)

    def build(self) -> nn.Module:
        """A fresh copy of the network: the checkpoint's weights, or a new initialisation."""
        if self.path is None:
            return self.network.build()
        model, _, _, sha = load_checkpoint(self.path)
        if sha != self.sha256:
            raise AdapterError(f"the base {self.path} changed during the run; keep it unchanged while adapting")
        return model

    def record(self) -> dict[str, Any]:
        """The base as an adapter records it (``extra``): folder and SHA-256, empty when trained from scratch."""
        return {"base_dir": str(self.path.resolve()) if self.path else "", "base_sha256": self.sha256}
