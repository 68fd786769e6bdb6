"""Pascal VOC XML annotations: ``Annotations/*.xml`` beside ``JPEGImages/``.

VOC boxes are 1-based inclusive pixel indices (``xmin=1`` is the first column); they are
converted to 0-based edges, ``x0 = xmin - 1, x1 = xmax``. Objects marked ``difficult``
are left out by default (as in the VOC evaluation) and counted.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from scalpel.core.errors import DataError
from scalpel.vision.data.images import DataReport, listing, scan_images
from scalpel.vision.data.records import DetectionData, DetectionRecord, sanitize_boxes


def load_voc(
    root: str | Path,
    *,
    split: str | None = None,
    class_names: list[str] | None = None,
    keep_difficult: bool = False,
    strict: bool = True,
) -> DetectionData:
    """Load a VOC-style folder.

    Args:
        root: holds ``Annotations/`` and ``JPEGImages/`` (VOCdevkit/VOC2012 layout).
        split: read only the ids in ``ImageSets/Main/<split>.txt``.
        class_names: the classes, in label order; default: every name found, sorted.
        keep_difficult: keep objects flagged ``difficult``.
        strict: raise on unknown class names, unparsable XML and missing/corrupt images.
    """
    root = Path(root)
    folder = root / "Annotations"
    if not folder.is_dir():
        raise DataError(f"{root} has no Annotations/ folder; pass the VOC folder that holds Annotations/ and JPEGImages/")
    if split:
        listing_file = root / "ImageSets" / "Main" / f"{split}.txt"
        if not listing_file.is_file():
            raise DataError(f"split file {listing_file} does not exist; pass an existing split (train, val, trainval)")
        xml_files = [folder / f"{line.split()[0]}.xml" for line in listing_file.read_text().splitlines() if line.strip()]
    else:
        xml_files = sorted(folder.glob("*.xml"))
    report = DataReport(source=str(root))
    parsed, broken = [], []
    for xml_file in xml_files:
        try:
            parsed.append(_parse(xml_file, root / "JPEGImages", keep_difficult, report))
        except (ET.ParseError, OSError, ValueError) as err:
            broken.append(f"{xml_file.name} ({err})")
    if broken and strict:
        raise DataError(f"{len(broken)} VOC annotation files cannot be read: {listing(broken)}; fix them or pass strict=False")
    for item in broken:
        report.skip("unreadable annotation", item)

    found = sorted({name for _, _, names in parsed for name in names})
    names = list(class_names) if class_names else found
    unknown = sorted(set(found) - set(names))
    if unknown and strict:
        raise DataError(f"{root}: objects of classes {listing(unknown)} are not in the class list {names}; "
                        "add them to class_names or pass strict=False to skip those objects")
    label_of = {name: k + 1 for k, name in enumerate(names)}

    sizes = scan_images([file for file, _, _ in parsed], report, strict=strict)
    records = []
    for file, boxes, objects in parsed:
        if file not in sizes:
            continue
        width, height = sizes[file]
        known = np.array([name in label_of for name in objects], bool)
        for name in np.array(objects, dtype=object)[~known].tolist():
            report.skip("unknown class", f"{file.name}: {name}")
        boxes = boxes[known].copy() if len(objects) else boxes
        objects = [o for o, k in zip(objects, known) if k]
        keep = sanitize_boxes(boxes, width, height, report)
        labels = np.array([label_of[o] for o, k in zip(objects, keep) if k], np.int64)
        records.append(DetectionRecord(file, width, height, boxes[keep], labels))
        report.objects += len(labels)
        report.empty_images += not len(labels)
    report.images = len(records)
    if not records:
        raise DataError(f"{root}: no usable image")
    return DetectionData(records, names, report)


def _parse(xml_file: Path, images: Path, keep_difficult: bool, report: DataReport) -> tuple[Path, np.ndarray, list[str]]:
    tree = ET.parse(xml_file).getroot()
    filename = tree.findtext("filename") or f"{xml_file.stem}.jpg"
    boxes, names = [], []
    for obj in tree.iter("object"):
        if not keep_difficult and (obj.findtext("difficult") or "0").strip() == "1":
            report.skip("difficult object", f"{xml_file.name}: {obj.findtext('name')}")
            continue
        box = obj.find("bndbox")
        if box is None:
            report.boxes_dropped += 1
            continue
        xmin, ymin, xmax, ymax = (float(box.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        names.append((obj.findtext("name") or "").strip())
    return images / filename, np.array(boxes, np.float32).reshape(-1, 4), names
