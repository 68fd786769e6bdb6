"""Task objects for ``scalpel.core.fit``: a training step returning losses and an
evaluation returning metrics, one per vision task.

Batch norm: PEFT keeps the base frozen, but a ``BatchNorm2d`` in train mode still
rewrites its running statistics - buffers that no adapter saves - so the adapted model
would silently drift from the base it is loaded onto. ``freeze_batchnorm=True`` (the
default for adaptation) keeps every batch-norm layer in eval mode during training;
train a base from scratch with ``freeze_batchnorm=False``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scalpel.core.errors import ConfigError
from scalpel.vision.data.transforms import IGNORE_INDEX
from scalpel.vision.metrics import ClassificationMeter, DetectionMeter, SegmentationMeter


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every batch-norm layer in eval mode (use running statistics, do not update them)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        freeze_batchnorm(model)


class DetectionTask:
    """Loss = the sum of the torchvision detector's loss dict (in train mode the model
    returns e.g. ``loss_classifier``, ``loss_box_reg``, ``loss_objectness``,
    ``loss_rpn_box_reg`` for Faster R-CNN; ``classification``, ``bbox_regression`` for
    RetinaNet/SSD). Evaluation: COCO mAP (:class:`DetectionMeter`).

    Batches are ``(images: list[[3, H, W]], targets: list[{"boxes", "labels"}])``.
    """

    name = "detection"

    def __init__(self, class_names: list[str], *, freeze_bn: bool = True):
        self.class_names = list(class_names)
        self.freeze_bn = freeze_bn

    def step(self, model: nn.Module, batch) -> dict[str, Tensor]:
        images, targets = batch
        _train_mode(model, self.freeze_bn)
        losses = model(list(images), [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
        total = sum(losses.values())
        return {"loss": total, **{k: v.detach() for k, v in losses.items()}}

    def predict(self, model: nn.Module, images: list[Tensor]) -> list[dict[str, Tensor]]:
        return model(list(images))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable) -> dict[str, float]:
        meter = DetectionMeter(self.class_names)
        model.eval()
        for images, targets in batches:
            meter.update(self.predict(model, images), targets)
        return meter.compute()


class SegmentationTask:
    """Pixel-wise cross-entropy on ``out`` plus ``aux_weight`` x the auxiliary head's
    (DeepLabV3/FCN, Chen et al. 2017, arXiv:1706.05587; aux weight 0.5 as in torchvision's
    reference), ignoring ``ignore_index`` pixels. ``class_weights`` (one per class) weigh
    the cross-entropy, e.g. a lower background weight where objects cover a small share of
    the pixels. Evaluation: mIoU, per-class IoU, pixel accuracy. Batches are
    ``(images [B, 3, H, W], masks [B, H, W] int64)``.
    """

    name = "segmentation"

    def __init__(self, class_names: list[str], *, ignore_index: int = IGNORE_INDEX, aux_weight: float = 0.5, freeze_bn: bool = True,
                 class_weights: Sequence[float] | None = None):
        self.class_names = list(class_names)
        if class_weights is not None and len(class_weights) != len(self.class_names):
            raise ConfigError("segmentation", [f"class_weights has {len(class_weights)} values for {len(self.class_names)} classes "
                                               f"({', '.join(self.class_names)}); give one weight per class"])
        self.class_weights = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
        self.ignore_index = ignore_index
        self.aux_weight = aux_weight
        self.freeze_bn = freeze_bn

    def step(self, model: nn.Module, batch) -> dict[str, Tensor]:
        images, masks = batch
        _train_mode(model, self.freeze_bn)
        out = model(images)
        weight = None if self.class_weights is None else self.class_weights.to(out["out"].device)
        loss = F.cross_entropy(out["out"], masks, weight=weight, ignore_index=self.ignore_index)
        result = {"main_loss": loss.detach()}
        if "aux" in out and self.aux_weight:
            aux = F.cross_entropy(out["aux"], masks, weight=weight, ignore_index=self.ignore_index)
            loss = loss + self.aux_weight * aux
            result["aux_loss"] = aux.detach()
        return {"loss": loss, "logits": out["out"], **result}  # logits keep their graph for distillation

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable) -> dict[str, float]:
        meter = SegmentationMeter(self.class_names, self.ignore_index)
        model.eval()
        for images, masks in batches:
            meter.update(model(images)["out"].argmax(1), masks)
        return meter.compute()


class ClassificationTask:
    """Cross-entropy (optionally label-smoothed); accuracy and macro-F1.
    Batches are ``(images [B, 3, H, W], labels [B])``."""

    name = "classification"

    def __init__(self, class_names: list[str], *, label_smoothing: float = 0.0, freeze_bn: bool = True):
        self.class_names = list(class_names)
        self.label_smoothing = label_smoothing
        self.freeze_bn = freeze_bn

    def step(self, model: nn.Module, batch) -> dict[str, Tensor]:
        images, labels = batch
        _train_mode(model, self.freeze_bn)
        logits = model(images)
        return {"loss": F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing), "logits": logits}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable) -> dict[str, float]:
        meter = ClassificationMeter(self.class_names)
        model.eval()
        for images, labels in batches:
            meter.update(model(images), labels)
        return meter.compute()


def make_task(options: Any, class_names: list[str], *, freeze_bn: bool = True) -> DetectionTask | SegmentationTask | ClassificationTask:
    """The task object of ``options.task`` (a :class:`~scalpel.vision.config.VisionOptions`) for these classes."""
    if options.task == "detection":
        return DetectionTask(class_names, freeze_bn=freeze_bn)
    if options.task == "segmentation":
        return SegmentationTask(class_names, ignore_index=options.ignore_index, freeze_bn=freeze_bn,
                                class_weights=options.class_weights or None)
    return ClassificationTask(class_names, freeze_bn=freeze_bn)
