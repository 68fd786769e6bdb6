"""Vision metrics: COCO mAP for detection, IoU for segmentation, accuracy/F1 for classification.

Each meter accumulates over batches (``update``) and returns flat ``{name: float}``
(``compute``), the form ``fit`` logs; per-class values are keyed ``"<metric>/<class>"``.
"""

from __future__ import annotations

from typing import Any

import torch

from scalpel.core.errors import MissingDependencyError


class DetectionMeter:
    """COCO box mAP (IoU 0.50:0.95), mAP50, mAP75, mAR@100 and per-class AP, computed by the
    official COCO evaluation code (``pycocotools.cocoeval.COCOeval``, Lin et al. 2014,
    arXiv:1405.0312) on the accumulated predictions - the numbers torchmetrics'
    ``MeanAveragePrecision`` reports with its pycocotools backend, without importing
    torchmetrics (which takes seconds).

    Ground-truth areas are box areas (``w * h``), as for box-only annotations; an image
    with no objects still counts (its detections are false positives). Metrics are ``-1``
    where COCO defines none (no ground-truth object at all); per-class AP is given for the
    classes with at least one ground-truth object.

    Args:
        class_names: names of labels ``1..K`` (label ``k`` is ``class_names[k - 1]``).
    """

    def __init__(self, class_names: list[str]):
        try:
            from pycocotools.cocoeval import COCOeval  # noqa: F401
        except ImportError as err:
            raise MissingDependencyError("pycocotools", "COCO mAP for detection") from err
        self.class_names = list(class_names)
        self.images: list[dict[str, int]] = []
        self.truth: list[dict[str, Any]] = []
        self.detections: list[dict[str, Any]] = []

    def update(self, predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> None:
        """``predictions``: per image ``boxes [N, 4]`` (xyxy), ``scores [N]``, ``labels [N]``; ``targets``: ``boxes``, ``labels``."""
        for prediction, target in zip(predictions, targets, strict=True):
            image_id = len(self.images) + 1
            self.images.append({"id": image_id})
            for box, label in zip(_xywh(target["boxes"]), target["labels"].reshape(-1).tolist()):
                self.truth.append({"id": len(self.truth) + 1, "image_id": image_id, "category_id": int(label), "bbox": box,
                                   "area": box[2] * box[3], "iscrowd": 0})
            scores = prediction["scores"].detach().float().cpu().reshape(-1).tolist()
            labels = prediction["labels"].detach().cpu().reshape(-1).tolist()
            for box, label, score in zip(_xywh(prediction["boxes"]), labels, scores, strict=True):
                self.detections.append({"image_id": image_id, "category_id": int(label), "bbox": box, "score": score})

    def compute(self) -> dict[str, float]:
        import contextlib
        import io

        import numpy as np
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        labels = sorted({a["category_id"] for a in self.truth} | {d["category_id"] for d in self.detections}
                        | set(range(1, len(self.class_names) + 1)))
        empty = {"map": -1.0, "map_50": -1.0, "map_75": -1.0, "mar_100": -1.0}
        if not self.truth:
            return empty
        if not self.detections:
            return {**{k: 0.0 for k in empty},
                    **{f"ap/{self._name(k)}": 0.0 for k in sorted({a["category_id"] for a in self.truth})}}
        with contextlib.redirect_stdout(io.StringIO()):  # COCO prints progress and the summary table
            truth = COCO()
            truth.dataset = {"images": self.images, "annotations": self.truth, "categories": [{"id": k} for k in labels]}
            truth.createIndex()
            evaluation = COCOeval(truth, truth.loadRes(self.detections), "bbox")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        stats = evaluation.stats
        out = {"map": float(stats[0]), "map_50": float(stats[1]), "map_75": float(stats[2]), "mar_100": float(stats[8])}
        precision = evaluation.eval["precision"]  # [IoU thresholds, recall points, classes, area ranges, max dets]
        for index, label in enumerate(evaluation.params.catIds):
            values = precision[:, :, index, 0, -1]
            if (values > -1).any():
                out[f"ap/{self._name(label)}"] = float(np.mean(values[values > -1]))
        return out

    def _name(self, label: int) -> str:
        return self.class_names[label - 1] if 1 <= label <= len(self.class_names) else str(label)


def _xywh(boxes: torch.Tensor) -> list[list[float]]:
    b = boxes.detach().float().cpu().reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, 2:] - b[:, :2]], dim=1).tolist()


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
