"""Reading images safely and keeping count of what a loader fixed or skipped.

Every loader returns a :class:`DataReport`: how many images and objects it kept, how many
boxes it clipped or dropped, how many images it converted to RGB, and which files it
skipped and why. With ``strict=True`` (the default) a missing or unreadable file is an
error that lists the files; with ``strict=False`` it is a counted skip.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from scalpel.core.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: How many file names an error message lists before "... and N more".
LISTED = 8


@dataclass
class DataReport:
    """Counts of what a loader kept, fixed and skipped (written to ``report.md``)."""

    source: str
    images: int = 0
    objects: int = 0
    empty_images: int = 0
    boxes_clipped: int = 0
    boxes_dropped: int = 0
    crowd_skipped: int = 0
    converted_to_rgb: int = 0
    skipped: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, item: str) -> None:
        self.skipped.setdefault(reason, []).append(item)

    def as_dict(self) -> dict:
        counts = {k: v for k, v in vars(self).items() if k not in ("skipped", "source")}
        return {"source": self.source, **counts, "skipped": {k: len(v) for k, v in self.skipped.items()}}

    def summary(self) -> str:
        parts = [f"{self.images} images", f"{self.objects} objects"] if self.objects else [f"{self.images} images"]
        for name in ("empty_images", "boxes_clipped", "boxes_dropped", "crowd_skipped", "converted_to_rgb"):
            if getattr(self, name):
                parts.append(f"{getattr(self, name)} {name.replace('_', ' ')}")
        parts += [f"{len(v)} skipped ({k})" for k, v in self.skipped.items()]
        return f"{self.source}: " + ", ".join(parts)


def listing(items: list[str]) -> str:
    """``a, b, c ... and 12 more``: enough to find the problem without flooding the terminal."""
    shown = ", ".join(items[:LISTED])
    return shown + (f" ... and {len(items) - LISTED} more" if len(items) > LISTED else "")


def probe_image(path: Path) -> tuple[int, int, str]:
    """``(width, height, mode)`` from the file header, without decoding the pixels.

    Raises:
        DataError: the file is missing or is not an image Pillow can read.
    """
    if not path.is_file():
        raise DataError(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            return image.width, image.height, image.mode
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"image {path} is corrupt or not an image ({err}); re-export it or remove it from the list") from err


def scan_images(paths: Iterable[Path], report: DataReport, *, strict: bool) -> dict[Path, tuple[int, int]]:
    """Check every image exists and is readable; return ``{path: (width, height)}`` of the good ones.

    Missing and corrupt files are collected first and then reported together, so one
    run names every bad file.
    """
    sizes: dict[Path, tuple[int, int]] = {}
    missing: list[str] = []
    corrupt: list[str] = []
    paths = list(paths)
    for path in paths:
        if not path.is_file():
            missing.append(str(path))
            continue
        try:
            width, height, mode = probe_image(path)
        except DataError:
            corrupt.append(str(path))
            continue
        if mode != "RGB":
            report.converted_to_rgb += 1
        sizes[path] = (width, height)
    if strict and (missing or corrupt):
        problems = []
        if missing:
            problems.append(f"{len(missing)} of {len(paths)} images referenced by {report.source} are missing: {listing(missing)}")
        if corrupt:
            problems.append(f"{len(corrupt)} images are corrupt or not images: {listing(corrupt)}")
        raise DataError(
            "; ".join(problems) + ". Fix the image folder (or the paths in the annotations), or pass strict=False "
            "(--no-strict) to skip these images and count them in the report"
        )
    for item in missing:
        report.skip("missing image", item)
    for item in corrupt:
        report.skip("corrupt image", item)
    return sizes


def load_rgb(path: Path) -> np.ndarray:
    """Decode an image as ``[H, W, 3]`` uint8 RGB; grey, palette, RGBA and 16-bit images are converted.

    Raises:
        DataError: the file cannot be decoded (e.g. truncated after the header).
    """
    try:
        with Image.open(path) as image:
            if image.mode in ("I;16", "I;16B", "I", "F"):  # 16-bit / float grey: scale to 8 bits
                array = np.asarray(image, dtype=np.float32)
                span = float(array.max() - array.min()) or 1.0
                return np.repeat(((array - array.min()) / span * 255).astype(np.uint8)[..., None], 3, axis=2)
            return np.array(image.convert("RGB"))  # a writable copy for torch.from_numpy
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"cannot decode image {path} ({err}); the file is damaged: re-export it or remove it") from err


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
