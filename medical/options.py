"""The medical pipelines' own options: data, base network, grid and site (flags of ``scalpel run
medical.*`` and ``scalpel medical adapt``).

What is trained and how (``--method``, ``--r``, ``--max-steps``, ``--lr``, ``--seed``,
``--output-dir``...) are the shared :class:`~scalpel.core.options.MethodOptions` and
:class:`~scalpel.core.options.TrainOptions`; the medical defaults of those live on the
pipelines (:mod:`scalpel.medical.pipelines`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import yaml

from scalpel.core.config import raise_if_problems
from scalpel.core.errors import ConfigError
from scalpel.medical.networks import FAMILIES
from scalpel.medical.transforms import PreprocessConfig


@dataclass(frozen=True)
class MedicalOptions:
    """Options shared by both medical pipelines."""

    task: ClassVar[str] = ""

    data: str = field(default="", metadata={"help": "site folder: dicom/<case>/ + labels/<case>.nii.gz (or .dcm SEG); empty: synthetic scanner B"})
    val_data: str = field(default="", metadata={"help": "validation site folder; empty: hold out val_fraction of the cases"})
    val_fraction: float = field(default=0.34, metadata={"help": "share of the cases held out (by case, never by patch); 0: train on all, score none"})
    folds: int = field(default=0, metadata={"help": "K-fold evaluation by case (K >= 2) instead of one held-out split; the saved adapter is then trained on all cases"})
    site: str = field(default="", metadata={"help": "site name recorded in the adapter (scalpel medical sites lists it); empty: the data folder's name"})
    deidentify: bool = field(default=True, metadata={"help": "read a de-identified copy of --data (PS3.15 Basic Profile), kept beside the run folder in RUN-ingest/"})
    base: str = field(default="", metadata={"help": "base checkpoint folder (model.safetensors + model.json); empty: the demo base / a network from scratch"})
    base_dir: str = field(default="", metadata={"help": "demo: where the synthetic scanners and the scanner-A base are cached (default: medical-demo-base beside the run folder)"})
    base_steps: int = field(default=150, metadata={"help": "demo: optimizer steps of the scanner-A base"})
    network: str = field(default="", metadata={"help": "network when no base is given: a family name or a dotted MONAI class path"})
    network_options: str = field(default="", metadata={"help": "keyword arguments of the network class, a YAML mapping ('{init_filters: 16}')"})
    window: tuple[float, ...] = field(default=(-200.0, 600.0), metadata={"help": "HU window mapped onto [0, 1] (low high); a base's own wins"})
    spacing: tuple[float, ...] = field(default=(), metadata={"help": "resample to this voxel size in mm (x y z); empty: keep; a base's own wins"})
    orientation: str = field(default="RAS", metadata={"help": "reorient every series to these axis codes; '': the stored order; a base's own wins"})
    cache: bool = field(default=True, metadata={"help": "keep preprocessed volumes in memory (monai CacheDataset)"})

    def __post_init__(self) -> None:
        for name in ("window", "spacing"):  # YAML gives lists
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        problems = []
        if self.network and "." not in self.network and self.network not in FAMILIES:
            problems.append(f"unknown network {self.network!r}; choose from {', '.join(FAMILIES.names())} or a dotted MONAI class path")
        try:
            self.network_kwargs  # noqa: B018  (parsed here so a bad mapping is reported with the rest)
        except ValueError as err:
            problems.append(str(err))
        if not 0 <= self.val_fraction < 1:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.folds == 1 or self.folds < 0:
            problems.append(f"folds must be 0 (one held-out split) or >= 2, got {self.folds}")
        if self.folds and self.val_data:
            problems.append("folds split --data into folds; leave out --val-data")
        if self.base_steps < 1:
            problems.append(f"base_steps must be >= 1, got {self.base_steps}")
        try:  # window, grid and patch: the preprocessing's own rules
            PreprocessConfig(window=self.window, spacing=self.spacing, orientation=self.orientation, **self._preprocessing())
        except ConfigError as err:
            problems += err.problems
        raise_if_problems(f"medical.{self.task} options", problems + self._task_problems())

    @property
    def network_kwargs(self) -> dict[str, Any]:
        """``network_options`` parsed (a YAML or JSON mapping; empty: none)."""
        try:
            parsed = yaml.safe_load(self.network_options) if self.network_options.strip() else {}
        except yaml.YAMLError as err:
            raise ValueError(f"network_options is not valid YAML: {err}") from None
        if not isinstance(parsed, dict):
            raise ValueError(f"network_options must be a mapping such as '{{channels: [8, 16], strides: [2]}}', got {self.network_options!r}")
        return parsed

    def _preprocessing(self) -> dict[str, Any]:
        return {}

    def _task_problems(self) -> list[str]:
        return []


@dataclass(frozen=True)
class SegmentationOptions(MedicalOptions):
    """``scalpel run medical.segmentation``: per-voxel labels from label maps (NIfTI or DICOM SEG)."""

    task: ClassVar[str] = "segmentation"

    structures: tuple[str, ...] = field(default=(), metadata={"help": "structure names for label values 1..N (empty: the base's, or the phantom's)"})
    patch: tuple[int, ...] = field(default=(32, 32, 32), metadata={"help": "training patch = inference window (x y z); x y: a 2-D network on axial slices; a base's own wins"})
    samples_per_volume: int = field(default=2, metadata={"help": "patches cropped from each volume per batch"})
    augment: bool = field(default=True, metadata={"help": "random flips, 90-degree rotations and intensity changes"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch", tuple(int(v) for v in self.patch))
        object.__setattr__(self, "structures", tuple(str(v) for v in self.structures))
        super().__post_init__()

    def _preprocessing(self) -> dict[str, Any]:
        return {"patch": self.patch, "samples_per_volume": self.samples_per_volume, "augment": self.augment}


@dataclass(frozen=True)
class ClassificationOptions(MedicalOptions):
    """``scalpel run medical.classification``: a class per volume or per axial slice."""

    task: ClassVar[str] = "classification"

    labels_csv: str = field(default="", metadata={"help": "CSV with columns case,label (classes of whole volumes); empty: DATA/labels.csv "
                                                          "when present, else presence of --structure in the label maps"})
    structure: int = field(default=2, metadata={"help": "label value whose presence is the positive class"})
    spatial_dims: int = field(default=3, metadata={"help": "3: classify volumes; 2: classify axial slices; a base's own wins"})
    size: int = field(default=32, metadata={"help": "inputs are resized to this many voxels per axis; a base's own wins"})

    def _task_problems(self) -> list[str]:
        problems = [] if self.spatial_dims in (2, 3) else [f"spatial_dims must be 2 or 3, got {self.spatial_dims}"]
        if self.size < 8 or self.structure < 1:
            problems.append(f"size must be >= 8 and structure >= 1, got size={self.size} structure={self.structure}")
        if self.labels_csv and (not self.data or self.spatial_dims != 3):
            problems.append("labels_csv labels whole volumes of --data: give --data and keep --spatial-dims 3")
        return problems
