"""Vision metrics: COCO mAP for detection, IoU for segmentation, accuracy/F1 for classification.

Each meter accumulates over batches (``update``) and returns flat ``{name: float}``
(``compute``), the form ``fit`` logs; per-class values are keyed ``"<metric>/<class>"``.
"""

from __future__ import annotations

from typing import Any

import torch

from scalpel.core.errors import MissingDependencyError


def _coco_backend() -> str:
    for module, backend in (("pycocotools", "pycocotools"), ("faster_coco_eval", "faster_coco_eval")):
        try:
            __import__(module)
            return backend
        except ImportError:
            continue
    raise MissingDependencyError("pycocotools", "COCO mAP for detection")


class DetectionMeter:
    """COCO-style box mAP (IoU 0.50:0.95), mAP50, mAP75, mAR@100 and per-class AP, via
    torchmetrics' ``MeanAveragePrecision`` on the official COCO evaluation code
    (pycocotools; faster-coco-eval also works).

    Args:
        class_names: names of labels ``1..K`` (label ``k`` is ``class_names[k - 1]``).
    """

    def __init__(self, class_names: list[str]):
        from torchmetrics.detection import MeanAveragePrecision

        self.class_names = list(class_names)
        self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend=_coco_backend())
        self.metric.warn_on_many_detections = False  # COCO keeps the 100 best per image, as intended

    def update(self, predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> None:
        """``predictions``: per image ``boxes [N, 4]``, ``scores [N]``, ``labels [N]``; ``targets``: ``boxes``, ``labels``."""
        self.metric.update(
            [{k: p[k].detach().float().cpu() if k != "labels" else p[k].cpu() for k in ("boxes", "scores", "labels")} for p in predictions],
            [{"boxes": t["boxes"].float().cpu(), "labels": t["labels"].cpu()} for t in targets],
        )

    def compute(self) -> dict[str, float]:
        raw = self.metric.compute()
        out = {"map": float(raw["map"]), "map_50": float(raw["map_50"]), "map_75": float(raw["map_75"]), "mar_100": float(raw["mar_100"])}
        classes = raw.get("classes")
        per_class = raw.get("map_per_class")
        if classes is not None and per_class is not None and per_class.numel() == classes.numel():
            for label, ap in zip(classes.reshape(-1).tolist(), per_class.reshape(-1).tolist()):
                if 1 <= label <= len(self.class_names):
                    out[f"ap/{self.class_names[label - 1]}"] = float(ap)
        return out


class SegmentationMeter:
    """A confusion matrix over pixels; mIoU, per-class IoU and pixel accuracy.

    ``IoU_c = TP_c / (TP_c + FP_c + FN_c)``; mIoU averages the classes that occur in the
    ground truth or the prediction (a class absent from both has no IoU). Pixels equal to
    ``ignore_index`` count nowhere.
    """

    def __init__(self, class_names: list[str], ignore_index: int = 255):
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(len(class_names), len(class_names), dtype=torch.long)

    def update(self, predictions: torch.Tensor, targets: torch.Tensor) -> None:
        """``predictions``: ``[B, H, W]`` class indices (or ``[B, C, H, W]`` logits); ``targets``: ``[B, H, W]``."""
        if predictions.dim() == 4:
            predictions = predictions.argmax(1)
        k = len(self.class_names)
        valid = targets != self.ignore_index
        index = targets[valid].long().cpu() * k + predictions[valid].long().cpu()
        self.confusion += torch.bincount(index, minlength=k * k).reshape(k, k)

    def compute(self) -> dict[str, float]:
        c = self.confusion.double()
        tp = c.diag()
        union = c.sum(0) + c.sum(1) - tp
        iou = tp / union.clamp(min=1)
        present = union > 0
        out = {
            "miou": float(iou[present].mean()) if present.any() else 0.0,
            "pixel_accuracy": float(tp.sum() / c.sum().clamp(min=1)),
        }
        for name, value, seen in zip(self.class_names, iou.tolist(), present.tolist()):
            if seen:
                out[f"iou/{name}"] = value
        return out


class ClassificationMeter:
    """Accuracy, macro-F1 (the unweighted mean of per-class F1) and the confusion matrix
    (rows: true class, columns: predicted class)."""

    def __init__(self, class_names: list[str]):
        self.class_names = list(class_names)
        self.confusion = torch.zeros(len(class_names), len(class_names), dtype=torch.long)

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        k = len(self.class_names)
        predicted = logits.argmax(-1) if logits.dim() > 1 else logits
        self.confusion += torch.bincount(labels.long().cpu() * k + predicted.long().cpu(), minlength=k * k).reshape(k, k)

    def compute(self) -> dict[str, float]:
        c = self.confusion.double()
        tp = c.diag()
        precision = tp / c.sum(0).clamp(min=1)
        recall = tp / c.sum(1).clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        out = {"accuracy": float(tp.sum() / c.sum().clamp(min=1)), "macro_f1": float(f1.mean())}
        out.update({f"f1/{name}": float(v) for name, v in zip(self.class_names, f1.tolist())})
        return out

    def confusion_matrix(self) -> list[list[int]]:
        return self.confusion.tolist()


def headline(metrics: dict[str, Any], task: str) -> tuple[str, float]:
    """The one number a task is judged by: mAP, mIoU or accuracy."""
    key = {"detection": "map", "segmentation": "miou", "classification": "accuracy"}[task]
    return key, float(metrics.get(key, float("nan")))
