"""COCO JSON annotations (the format most labelling tools export) for detection and
for segmentation from polygons.

Reads ``images``, ``annotations`` and ``categories``. Category ids may be any integers
(COCO's run 1..90 with gaps); they are mapped in id order to labels ``1..K``. Boxes are
``[x, y, w, h]`` and are validated (:func:`~scalpel.vision.data.records.sanitize_boxes`);
crowd annotations are left out of the targets and counted; images without annotations
are kept.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from scalpel.core.errors import DataError
from scalpel.vision.data.images import DataReport, listing, scan_images
from scalpel.vision.data.records import DetectionData, DetectionRecord, sanitize_boxes


def load_coco(annotations: str | Path, images: str | Path | None = None, *, strict: bool = True) -> DetectionData:
    """Load a COCO detection file.

    Args:
        annotations: the JSON file.
        images: the folder ``file_name`` is relative to (default: ``images/`` beside the
            JSON file if it exists, else the JSON file's folder).
        strict: raise on missing/corrupt images and unknown category or image ids (listing
            them all); with ``False`` they are skipped and counted in the report.

    Raises:
        DataError: the file is missing, is not COCO JSON, or (strict) refers to images or
            categories that do not exist.
    """
    path = Path(annotations)
    data = _read_json(path)
    root = Path(images) if images else (path.parent / "images" if (path.parent / "images").is_dir() else path.parent)
    report = DataReport(source=str(path))

    categories = sorted(data["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: k + 1 for k, c in enumerate(categories)}
    class_names = [str(c.get("name", c["id"])) for c in categories]
    image_by_id = {img["id"]: img for img in data["images"]}

    unknown_categories = sorted({a.get("category_id") for a in data["annotations"]} - set(label_of), key=str)
    unknown_images = sorted({a.get("image_id") for a in data["annotations"]} - set(image_by_id), key=str)
    if strict and (unknown_categories or unknown_images):
        problems = []
        if unknown_categories:
            known = ", ".join(f"{c['id']}={c.get('name')}" for c in categories[:20])
            problems.append(f"annotations use category ids {listing([str(c) for c in unknown_categories])}, "
                            f"which are not in the 'categories' list ({known})")
        if unknown_images:
            problems.append(f"annotations refer to image ids {listing([str(i) for i in unknown_images])}, "
                            "which are not in the 'images' list")
        raise DataError(f"{path}: " + "; ".join(problems) + ". Add the missing entries or remove those annotations "
                        "(or pass strict=False / --no-strict to skip and count them)")

    malformed = [f"annotation {a.get('id')} (bbox {a.get('bbox')})" for a in data["annotations"] if _malformed(a.get("bbox"))]
    if strict and malformed:  # a negative or zero size is an export error, not an object to drop quietly
        raise DataError(f"{path}: {len(malformed)} box(es) with a size that is not positive or not a number: "
                        f"{listing(malformed)}. A COCO bbox is [x, y, width, height]; fix or remove them "
                        "(or pass strict=False / --no-strict to skip and count them)")
    by_image: dict[Any, list[dict]] = defaultdict(list)
    for ann in data["annotations"]:
        if _malformed(ann.get("bbox")):
            report.skip("malformed bbox", f"annotation {ann.get('id')} (bbox {ann.get('bbox')})")
        elif ann.get("category_id") not in label_of:
            report.skip("unknown category id", f"annotation {ann.get('id')} (category {ann.get('category_id')})")
        elif ann.get("image_id") not in image_by_id:
            report.skip("unknown image id", f"annotation {ann.get('id')} (image {ann.get('image_id')})")
        elif ann.get("iscrowd", 0):
            report.crowd_skipped += 1
        else:
            by_image[ann["image_id"]].append(ann)

    files = {img_id: root / img["file_name"] for img_id, img in image_by_id.items()}
    sizes = scan_images(files.values(), report, strict=strict)
    records = []
    for img_id, img in image_by_id.items():
        file = files[img_id]
        if file not in sizes:
            continue
        width, height = sizes[file]
        if (img.get("width"), img.get("height")) not in ((width, height), (None, None)):
            raise DataError(f"{path}: image {file} is {width}x{height} but the annotations say "
                            f"{img.get('width')}x{img.get('height')}; fix the 'images' entry or re-export the image")
        anns = by_image.get(img_id, [])
        boxes = np.array([_xyxy(a.get("bbox")) for a in anns], np.float32).reshape(-1, 4)
        keep = sanitize_boxes(boxes, width, height, report)
        kept = [a for a, k in zip(anns, keep) if k]
        records.append(DetectionRecord(
            path=file, width=width, height=height, boxes=boxes[keep],
            labels=np.array([label_of[a["category_id"]] for a in kept], np.int64),
            segmentations=[a.get("segmentation") for a in kept],
        ))
        report.objects += len(kept)
        report.empty_images += not kept
    report.images = len(records)
    if not records:
        raise DataError(f"{path}: no usable image; check the image folder {root}")
    return DetectionData(records, class_names, report)


def rasterize(segmentations: list[Any], labels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Paint COCO polygons (or RLE, with pycocotools) into a ``[H, W]`` uint8 class mask, 0 = background.

    Objects are painted in order, so a later object covers an earlier one where they overlap.
    """
    mask = np.zeros((height, width), np.uint8)
    for seg, label in zip(segmentations, labels.tolist()):
        if isinstance(seg, list):
            canvas = Image.new("L", (width, height), 0)
            draw = ImageDraw.Draw(canvas)
            for polygon in seg:
                if len(polygon) >= 6:
                    draw.polygon([(polygon[i], polygon[i + 1]) for i in range(0, len(polygon) - 1, 2)], fill=1)
            region = np.asarray(canvas, bool)
        elif isinstance(seg, dict):  # RLE (crowd-style or compressed)
            region = _decode_rle(seg, width, height)
        else:
            continue
        mask[region] = label
    return mask


def _decode_rle(rle: dict, width: int, height: int) -> np.ndarray:
    try:
        from pycocotools import mask as coco_mask
    except ImportError as err:
        from scalpel.core.errors import MissingDependencyError

        raise MissingDependencyError("pycocotools", "reading COCO RLE masks") from err
    if isinstance(rle.get("counts"), list):
        rle = coco_mask.frPyObjects(rle, height, width)
    return coco_mask.decode(rle).astype(bool)


def _malformed(bbox: Any) -> bool:
    """Not four finite numbers with a positive width and height."""
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return True
    return not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0


def _xyxy(bbox: Any) -> list[float]:
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return [float("nan")] * 4  # dropped and counted by sanitize_boxes
    return [x, y, x + w, y + h]


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"annotation file {path} does not exist; pass the COCO JSON file (e.g. instances_train.json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); re-export the annotations") from err
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k) if isinstance(data, dict) else None, list)]
    if missing:
        raise DataError(f"{path} is not a COCO detection file: it lacks the list(s) {', '.join(missing)}")
    return data
