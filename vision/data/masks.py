"""Segmentation data: image + mask folders (palette or integer PNG masks) or COCO polygons.

A mask holds one class index per pixel (0..K-1); ``ignore_index`` (255 by default, the
Pascal VOC convention for object borders) marks pixels that count in no loss or metric.
Palette PNGs are read as their indices, never as colours; colour (RGB) masks are refused
because the colour -> class mapping is not in the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from scalpel.core.errors import DataError
from scalpel.vision.data.coco import load_coco, rasterize
from scalpel.vision.data.images import DataReport, image_files, listing, probe_image, scan_images
from scalpel.vision.data.records import DetectionRecord

INTEGER_MODES = ("P", "L", "I", "I;16", "I;16B", "1")


@dataclass
class SegmentationItem:
    """One image and where its mask comes from: a mask file, or polygons of a COCO record."""

    image: Path
    mask: Path | None = None
    polygons: DetectionRecord | None = None


@dataclass
class SegmentationData:
    """Items, class names (index ``k`` names class ``k``; 0 is usually "background"), report."""

    items: list[SegmentationItem]
    class_names: list[str]
    report: DataReport

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_mask_folders(
    images: str | Path,
    masks: str | Path,
    *,
    class_names: list[str] | None = None,
    num_classes: int | None = None,
    strict: bool = True,
) -> SegmentationData:
    """Pair ``images/<stem>.*`` with ``masks/<stem>.png`` and check sizes and modes.

    Args:
        class_names: names of classes ``0..K-1``; default ``class_0 ...`` for ``num_classes``
            classes, or as many as the largest index found in the masks (+1).
        strict: raise on images without masks, colour masks, unreadable files and size
            mismatches (listing all of them); with ``False`` they are skipped and counted.
    """
    images, masks = Path(images), Path(masks)
    for folder, what in ((images, "image"), (masks, "mask")):
        if not folder.is_dir():
            raise DataError(f"{what} folder {folder} does not exist")
    report = DataReport(source=str(masks))
    mask_by_stem = {p.stem: p for p in image_files(masks)}
    problems: dict[str, list[str]] = {}
    items = []
    files = image_files(images)
    sizes = scan_images(files, report, strict=strict)
    largest = 0
    for file in files:
        if file not in sizes:
            continue
        mask = mask_by_stem.get(file.stem)
        reason = None
        if mask is None:
            reason = "image without mask"
        else:
            try:
                width, height, mode = probe_image(mask)
            except DataError:
                reason, width, height, mode = "unreadable mask", 0, 0, ""
            if reason is None and mode not in INTEGER_MODES:
                reason = f"colour mask (mode {mode}; save masks as palette or integer PNGs)"
            elif reason is None and (width, height) != sizes[file]:
                reason = f"mask size differs from image ({width}x{height} vs {sizes[file][0]}x{sizes[file][1]})"
        if reason:
            problems.setdefault(reason.split(" (")[0], []).append(f"{file.name}: {reason}")
            continue
        if class_names is None and num_classes is None:
            largest = max(largest, int(_valid_max(read_mask_file(mask))))
        items.append(SegmentationItem(file, mask))
    if problems and strict:
        text = "; ".join(f"{len(v)} x {k}: {listing(v)}" for k, v in problems.items())
        raise DataError(f"{images} / {masks}: {text}. Fix those files or pass strict=False to skip and count them")
    for reason, entries in problems.items():
        for entry in entries:
            report.skip(reason, entry)
    if not items:
        raise DataError(f"no image in {images} has a usable mask in {masks} (masks are matched by file name stem)")
    report.images = len(items)
    names = list(class_names) if class_names else [f"class_{k}" for k in range(num_classes or largest + 1)]
    return SegmentationData(items, names, report)


def load_coco_masks(annotations: str | Path, images: str | Path | None = None, *, strict: bool = True) -> SegmentationData:
    """Semantic masks from COCO polygons/RLE: class 0 is the background, categories are ``1..K``."""
    data = load_coco(annotations, images, strict=strict)
    items = [SegmentationItem(r.path, polygons=r) for r in data.records]
    return SegmentationData(items, ["background", *data.class_names], data.report)


def read_mask(item: SegmentationItem) -> np.ndarray:
    """The ``[H, W]`` int64 class mask of one item."""
    if item.polygons is not None:
        r = item.polygons
        return rasterize(r.segmentations, r.labels, r.width, r.height).astype(np.int64)
    assert item.mask is not None
    return read_mask_file(item.mask)


def read_mask_file(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image, dtype=np.int64)  # palette: the indices, not the colours
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot decode mask {path} ({err}); re-export it") from err


def check_mask_values(mask: np.ndarray, num_classes: int, ignore_index: int, path: Path) -> None:
    """Refuse class indices outside ``0..num_classes-1`` (other than ``ignore_index``)."""
    bad = np.unique(mask[(mask != ignore_index) & ((mask < 0) | (mask >= num_classes))])
    if bad.size:
        raise DataError(f"mask {path} holds class indices {bad[:8].tolist()} but there are only {num_classes} classes "
                        f"(0..{num_classes - 1}, {ignore_index} = ignore); pass the right class_names / num_classes")


def _valid_max(mask: np.ndarray, ignore_index: int = 255) -> int:
    values = mask[mask != ignore_index]
    return int(values.max()) if values.size else 0
