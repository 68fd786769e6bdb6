"""Data and model options of the three vision pipelines; the domain's ``scalpel run vision.*`` flags.

What is trained and how (``--method``, ``--r``, ``--blocks``, ``--teacher``, ``--epochs``,
``--lr``, ...) are the shared :class:`~scalpel.core.options.MethodOptions` and
:class:`~scalpel.core.options.TrainOptions`; the vision defaults for them are in
:mod:`scalpel.vision.pipelines`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from scalpel.core.config import raise_if_problems


@dataclass(frozen=True)
class VisionOptions:
    """Options shared by detection, segmentation and classification.

    With ``data`` empty the pipeline runs its embedded default: it writes synthetic source
    and target scenes (:mod:`scalpel.vision.synthetic`), trains a small base on the source
    (cached under ``base_dir``) and adapts it to the target.
    """

    task: ClassVar[str] = ""

    data: str = field(default="", metadata={"help": "training data (COCO JSON, VOC folder, image folder, CSV); empty: synthetic demo"})
    images: str = field(default="", metadata={"help": "image folder the annotations refer to"})
    masks: str = field(default="", metadata={"help": "segmentation: mask folder (palette or integer PNG, same stems)"})
    val_data: str = field(default="", metadata={"help": "validation data in the same format; empty: split off val_fraction"})
    val_images: str = field(default="", metadata={"help": "validation image folder"})
    val_masks: str = field(default="", metadata={"help": "validation mask folder"})
    val_fraction: float = field(default=0.2, metadata={"help": "share of the training data held out when val_data is empty"})
    class_names: tuple[str, ...] = field(default=(), metadata={"help": "class names in label order (segmentation: including background)"})
    strict: bool = field(default=True, metadata={"help": "stop on missing/corrupt images and unknown ids; --no-strict skips and counts them"})
    model: str = field(default="", metadata={"help": "torchvision model name"})
    weights: str = field(default="", metadata={"help": "base weights: DEFAULT / enum member (online), a .pth/.safetensors file, or empty"})
    image_size: int = field(default=128, metadata={"help": "input size (detectors resize inside the model)"})
    base_steps: int = field(default=240, metadata={"help": "demo: optimizer steps of the source-domain base"})
    base_lr: float = field(default=5e-3, metadata={"help": "demo: peak learning rate of the source-domain base"})
    base_dir: str = field(default="", metadata={"help": "demo: folder of the synthetic data/ and the cached source-trained base/, shared by runs; empty: .vision-cache beside the run directory"})
    train_images: int = field(default=160, metadata={"help": "demo: synthetic images per domain"})
    export_merged: bool = field(default=True, metadata={"help": "also write the merged plain torchvision model (merged/model.safetensors)"})

    def __post_init__(self) -> None:
        # YAML gives lists; a frozen options object keeps tuples (hashable, and what the help says)
        object.__setattr__(self, "class_names", (self.class_names,) if isinstance(self.class_names, str) else tuple(self.class_names))
        problems = []
        if not 0 < self.val_fraction < 1:
            problems.append(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("image_size", "base_steps", "train_images"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.image_size % 32 and self.image_size < 64:
            problems.append(f"image_size {self.image_size} is too small; use 64 or more")
        if not self.base_lr > 0:
            problems.append(f"base_lr must be > 0, got {self.base_lr}")
        problems += self._task_problems()
        raise_if_problems(f"vision.{self.task} options", problems)

    def _task_problems(self) -> list[str]:
        """What a task's own options get wrong (none here)."""
        return []


@dataclass(frozen=True)
class DetectionOptions(VisionOptions):
    """Object detection: COCO JSON or Pascal VOC boxes, a torchvision detector."""

    task: ClassVar[str] = "detection"
    model: str = field(default="ssdlite320_mobilenet_v3_large", metadata={"help": "torchvision detector"})
    group_aspect_ratio: bool = field(default=False, metadata={"help": "batch images of similar aspect ratio together (less padding)"})


@dataclass(frozen=True)
class SegmentationOptions(VisionOptions):
    """Semantic segmentation: image + mask folders or COCO polygons, a torchvision segmenter."""

    task: ClassVar[str] = "segmentation"
    model: str = field(default="lraspp_mobilenet_v3_large", metadata={"help": "torchvision segmentation model"})
    ignore_index: int = field(default=255, metadata={"help": "mask value that counts in no loss or metric"})
    class_weights: tuple[float, ...] = field(default=(), metadata={"help": "cross-entropy weight per class, in class order (e.g. 0.3 1 1 1 to weigh the background down); empty: equal"})

    def _task_problems(self) -> list[str]:
        problems = []
        weights = self.class_weights
        try:  # Python callers may pass ints or numeric strings; the options keep floats
            object.__setattr__(self, "class_weights", tuple(float(w) for w in weights))
        except (TypeError, ValueError):
            problems.append(f"class_weights must be numbers, one per class, got {list(weights)}")
        else:
            if any(not w >= 0 for w in self.class_weights):
                problems.append(f"class_weights must be non-negative numbers, got {list(weights)}")
        if weights and self.class_names and len(weights) != len(self.class_names):
            problems.append(f"class_weights has {len(weights)} values but class_names has {len(self.class_names)}")
        if self.data and not self.data.endswith(".json") and not self.masks:
            problems.append("segmentation from folders needs --masks (the mask folder) as well as --data (the image folder)")
        return problems


@dataclass(frozen=True)
class ClassificationOptions(VisionOptions):
    """Image classification: an ImageFolder tree or a CSV of path,label, a torchvision classifier."""

    task: ClassVar[str] = "classification"
    model: str = field(default="mobilenet_v3_small", metadata={"help": "torchvision classifier"})
    image_size: int = field(default=64, metadata={"help": "input size"})
