"""Classification data: an ImageFolder tree (``root/<class>/<image>``) or a CSV of paths and labels."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from scalpel.core.errors import DataError
from scalpel.vision.data.images import DataReport, image_files, scan_images


@dataclass
class ClassificationData:
    """``items`` are ``(image path, class index)``; ``class_names[k]`` names class ``k``."""

    items: list[tuple[Path, int]]
    class_names: list[str]
    report: DataReport

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def load_image_folder(root: str | Path, *, class_names: list[str] | None = None, strict: bool = True) -> ClassificationData:
    """One sub-folder per class, sorted by name unless ``class_names`` gives the order."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{root} has no class sub-folders; lay images out as {root}/<class name>/<image>")
    names = list(class_names) if class_names else folders
    unknown = sorted(set(folders) - set(names))
    if unknown and strict:
        raise DataError(f"{root} has folders {unknown} that are not in class_names {names}")
    candidates = [(path, names.index(folder)) for folder in folders if folder in names for path in image_files(root / folder)]
    return _finish(candidates, names, DataReport(source=str(root)), strict)


def load_csv(path: str | Path, *, root: str | Path | None = None, class_names: list[str] | None = None, strict: bool = True) -> ClassificationData:
    """A CSV with a header row holding columns ``path`` and ``label``; paths are relative
    to ``root`` (default: the CSV's folder). Labels are class names (or integers)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist")
    base = Path(root) if root else path.parent
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
            raise DataError(f"{path} needs a header row with columns 'path' and 'label' (found {reader.fieldnames})")
        rows = [(row["path"], (row["label"] or "").strip()) for row in reader]
    if not rows:
        raise DataError(f"{path} has no rows")
    names = list(class_names) if class_names else sorted({label for _, label in rows}, key=_natural)
    unknown = sorted({label for _, label in rows} - set(names))
    if unknown and strict:
        raise DataError(f"{path}: labels {unknown} are not in class_names {names}")
    candidates = [(base / p, names.index(label)) for p, label in rows if label in names]
    return _finish(candidates, names, DataReport(source=str(path)), strict)


def _finish(candidates: list[tuple[Path, int]], names: list[str], report: DataReport, strict: bool) -> ClassificationData:
    sizes = scan_images([p for p, _ in candidates], report, strict=strict)
    items = [(p, label) for p, label in candidates if p in sizes]
    if not items:
        raise DataError(f"{report.source}: no readable image")
    report.images = len(items)
    return ClassificationData(items, names, report)


def _natural(label: str) -> tuple:
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)
