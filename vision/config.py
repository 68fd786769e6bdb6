"""Configs of the three vision pipelines; the ``scalpel run vision.*`` flags come from these fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from scalpel.core.config import raise_if_problems

METHODS = ("lora", "dora", "rslora", "sparse", "layerwise", "bitfit", "full")


@dataclass(frozen=True)
class VisionConfig:
    """Options shared by detection, segmentation and classification.

    With ``data`` empty the pipeline runs its embedded default: it writes synthetic source
    and target scenes (:mod:`scalpel.vision.synthetic`), trains a small base on the source
    (cached in ``base_dir``) and adapts it to the target.
    """

    task: ClassVar[str] = ""

    output_dir: str = field(default="runs/vision", metadata={"help": "run directory"})
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
    method: str = field(default="lora", metadata={"help": f"PEFT method: {', '.join(METHODS)}"})
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha"})
    density: float = field(default=0.02, metadata={"help": "sparse: share of weights trained"})
    blocks: tuple[str, ...] = field(default=(), metadata={"help": "layer-wise: blocks to train ('last 2', 'first 4', 'stem', names, indices); empty: the model's default (see docs/vision.md)"})
    teacher: str = field(default="", metadata={"help": "distillation: teacher weights (.pth/.safetensors, e.g. a merged larger model); empty: none"})
    teacher_model: str = field(default="", metadata={"help": "distillation: teacher architecture (default: --model)"})
    distill_alpha: float = field(default=0.5, metadata={"help": "distillation: weight of the KD loss (1 - alpha on the task loss)"})
    distill_temperature: float = field(default=2.0, metadata={"help": "distillation: softmax temperature"})
    epochs: int = field(default=3, metadata={"help": "passes over the training data"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps (0: epochs)"})
    batch_size: int = field(default=8, metadata={"help": "images per batch"})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate"})
    base_steps: int = field(default=240, metadata={"help": "demo: optimizer steps of the source-domain base"})
    base_lr: float = field(default=5e-3, metadata={"help": "demo: peak learning rate of the source-domain base"})
    base_dir: str = field(default="", metadata={"help": "demo: folder of the synthetic data/ and the cached source-trained base/, shared by runs (default OUTPUT_DIR)"})
    train_images: int = field(default=160, metadata={"help": "demo: synthetic images per domain"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    quick: bool = field(default=False, metadata={"help": "a tiny run (< 1 min on CPU) to check the set-up"})
    export_merged: bool = field(default=True, metadata={"help": "also write the merged plain torchvision model (merged/model.safetensors)"})

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0 < self.val_fraction < 1:
            problems.append(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("image_size", "batch_size", "epochs", "r", "train_images"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.image_size % 32 and self.image_size < 64:
            problems.append(f"image_size {self.image_size} is too small; use 64 or more")
        if not 0 < self.density <= 1:
            problems.append(f"density must be in (0, 1], got {self.density}")
        weights = getattr(self, "class_weights", ())
        try:  # from the command line the weights arrive as strings
            object.__setattr__(self, "class_weights", tuple(float(w) for w in weights)) if weights else None
            if any(not w >= 0 for w in getattr(self, "class_weights", ())):
                problems.append(f"class_weights must be non-negative numbers, got {list(weights)}")
        except (TypeError, ValueError):
            problems.append(f"class_weights must be numbers, one per class, got {list(weights)}")
        if weights and self.class_names and len(weights) != len(self.class_names):
            problems.append(f"class_weights has {len(weights)} values but class_names has {len(self.class_names)}")
        if self.task == "segmentation" and self.data and not self.data.endswith(".json") and not self.masks:
            problems.append("segmentation from folders needs --masks (the mask folder) as well as --data (the image folder)")
        raise_if_problems(f"vision.{self.task} config", problems)


@dataclass(frozen=True)
class DetectionConfig(VisionConfig):
    task: ClassVar[str] = "detection"
    output_dir: str = field(default="runs/vision-detection", metadata={"help": "run directory"})
    model: str = field(default="ssdlite320_mobilenet_v3_large", metadata={"help": "torchvision detector"})
    group_aspect_ratio: bool = field(default=False, metadata={"help": "batch images of similar aspect ratio together (less padding)"})


@dataclass(frozen=True)
class SegmentationConfig(VisionConfig):
    task: ClassVar[str] = "segmentation"
    output_dir: str = field(default="runs/vision-segmentation", metadata={"help": "run directory"})
    model: str = field(default="lraspp_mobilenet_v3_large", metadata={"help": "torchvision segmentation model"})
    ignore_index: int = field(default=255, metadata={"help": "mask value that counts in no loss or metric"})
    class_weights: tuple[float, ...] = field(default=(), metadata={"help": "cross-entropy weight per class, in class order (e.g. 0.3 1 1 1 to weigh the background down); empty: equal"})


@dataclass(frozen=True)
class ClassificationConfig(VisionConfig):
    task: ClassVar[str] = "classification"
    output_dir: str = field(default="runs/vision-classification", metadata={"help": "run directory"})
    model: str = field(default="mobilenet_v3_small", metadata={"help": "torchvision classifier"})
    image_size: int = field(default=64, metadata={"help": "input size"})
    batch_size: int = field(default=16, metadata={"help": "images per batch"})
