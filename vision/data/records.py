"""What the detection loaders produce: one record per image, boxes validated.

A record holds the image path and size and its objects as ``boxes [N, 4]`` (float32,
``x0, y0, x1, y1`` in pixels) and ``labels [N]`` (int64, ``1..K``; 0 is the background,
as torchvision's detectors expect). Images with no objects are kept: they teach the
detector what is *not* an object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scalpel.vision.data.images import DataReport


@dataclass
class DetectionRecord:
    """One image and its objects.

    Attributes:
        path: the image file.
        width, height: image size in pixels.
        boxes: ``[N, 4]`` float32 ``x0, y0, x1, y1``.
        labels: ``[N]`` int64 in ``1..K``.
        segmentations: per object, COCO polygons (list of flat ``[x, y, ...]`` lists) or
            an RLE dict; empty when the source has no masks.
    """

    path: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    segmentations: list[Any] = field(default_factory=list)


@dataclass
class DetectionData:
    """A loaded detection data set: records, class names (index ``k-1`` names label ``k``), report."""

    records: list[DetectionRecord]
    class_names: list[str]
    report: DataReport

    @property
    def num_classes(self) -> int:
        """Number of object classes plus one for the background."""
        return len(self.class_names) + 1


def sanitize_boxes(boxes: np.ndarray, width: int, height: int, report: DataReport, *, min_size: float = 1.0) -> np.ndarray:
    """Clip boxes to the image and flag the ones to drop.

    A box partly outside the image is clipped to it (counted in ``boxes_clipped``); a box
    that is non-finite, has ``x1 <= x0`` or ``y1 <= y0``, or is under ``min_size`` pixels
    wide or tall after clipping is dropped (counted in ``boxes_dropped``).

    Args:
        boxes: ``[N, 4]`` ``x0, y0, x1, y1``.

    Returns:
        ``keep [N]`` bool; ``boxes`` is clipped in place.
    """
    if len(boxes) == 0:
        return np.zeros(0, bool)
    finite = np.isfinite(boxes).all(axis=1)
    safe = np.where(finite[:, None], boxes, 0.0)
    clipped = safe.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0, width)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, height)
    keep = finite & (clipped[:, 2] - clipped[:, 0] >= min_size) & (clipped[:, 3] - clipped[:, 1] >= min_size)
    changed = keep & (np.abs(clipped - safe) > 1e-6).any(axis=1)
    report.boxes_clipped += int(changed.sum())
    report.boxes_dropped += int((~keep).sum())
    boxes[:] = clipped
    return keep
