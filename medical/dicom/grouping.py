"""Group image headers into series that stack into one volume.

A SeriesInstanceUID is split where its images differ in orientation, echo or acquisition,
because such images do not stack; a few images in another plane inside a stack are scouts
and are dropped with the reason. Each series is then checked for what would make its
volume wrong (mixed sizes, missing positions, repeated or uneven slice positions).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Orientation cosines are compared after rounding to this many decimals.
_ORIENTATION_DECIMALS = 3

@dataclass(frozen=True)
class ImageFile:
    """What the scan learnt from one image file's header (no pixel data was read)."""

    path: Path
    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    description: str
    rows: int
    columns: int
    frames: int
    orientation: tuple[float, ...] | None  # ImageOrientationPatient (6 cosines) or None
    position: tuple[float, float, float] | None  # ImagePositionPatient of the first frame
    pixel_spacing: tuple[float, float] | None  # (row spacing, column spacing) in mm
    echo: str
    acquisition: str
    instance_number: int | None
    image_type: tuple[str, ...]
    transfer_syntax: str
    bits_allocated: int = 16
    bits_stored: int = 16
    signed: bool = False
    samples_per_pixel: int = 1
    photometric: str = "MONOCHROME2"
    rescale: tuple[float, float] | None = None  # (slope, intercept) at the top level, if any
    modality_lut: bool = False  # a Modality LUT Sequence is present


@dataclass
class Series:
    """Images that stack into one volume (one SeriesInstanceUID, one orientation/echo/acquisition)."""

    series_uid: str
    study_uid: str
    patient_id: str
    modality: str
    description: str
    files: list[ImageFile]
    split: str = ""  # why this is a part of a SeriesInstanceUID, e.g. "echo 2"
    problems: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.series_uid + (f" [{self.split}]" if self.split else "")

    @property
    def n_images(self) -> int:
        return sum(f.frames for f in self.files)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(columns, rows, images): the spatial shape :func:`load_series` returns."""
        return (self.files[0].columns, self.files[0].rows, self.n_images)

    def spacing(self) -> tuple[float, float, float] | None:
        """(column, row, slice) spacing in mm from the headers, or None if unknown."""
        first = self.files[0]
        if first.pixel_spacing is None:
            return None
        gaps = _position_gaps(self.files)
        step = float(np.median(gaps)) if len(gaps) else 0.0
        return (first.pixel_spacing[1], first.pixel_spacing[0], step)


def slice_normal(orientation: Iterable[float]) -> np.ndarray:
    """Unit normal of the image plane: row direction x column direction (PS3.3 C.7.6.2.1.1)."""
    o = np.asarray(list(orientation), dtype=np.float64)
    normal = np.cross(o[:3], o[3:])
    return normal / (np.linalg.norm(normal) or 1.0)


def _position_gaps(files: list[ImageFile]) -> np.ndarray:
    if len(files) < 2 or files[0].orientation is None or any(f.position is None for f in files):
        return np.zeros(0)
    along = np.sort([float(np.dot(f.position, slice_normal(files[0].orientation))) for f in files])  # type: ignore[arg-type]
    return np.diff(along)


def group_series(images: list[ImageFile], dropped: list[tuple[Path, str]] | None) -> list[Series]:
    """Series of ``images``, sorted; localizers go to ``dropped`` with the reason (kept if it is None)."""
    kept = []
    for f in images:
        if dropped is not None and "LOCALIZER" in f.image_type:
            dropped.append((f.path, "localizer: ImageType contains LOCALIZER"))
        else:
            kept.append(f)
    by_uid: dict[str, list[ImageFile]] = defaultdict(list)
    for f in kept:
        by_uid[f.series_uid].append(f)
    series: list[Series] = []
    for uid, files in by_uid.items():
        series.extend(_split(uid, files, dropped))
    for s in series:
        s.problems.extend(_problems(s))
    return sorted(series, key=lambda s: (s.patient_id, s.study_uid, s.series_uid, s.split))


def _split(uid: str, files: list[ImageFile], dropped: list[tuple[Path, str]] | None) -> list[Series]:
    """Split one SeriesInstanceUID by orientation, then echo, then acquisition (if positions repeat)."""
    by_orientation: dict[Any, list[ImageFile]] = defaultdict(list)
    for f in files:  # rounded: scanners write the same plane with tiny differences
        key = tuple(round(v, _ORIENTATION_DECIMALS) + 0.0 for v in f.orientation) if f.orientation else None
        by_orientation[key].append(f)
    groups = sorted(by_orientation.values(), key=len, reverse=True)
    if dropped is not None and len(groups) > 1 and len(groups[0]) >= 3:
        # A handful of images in another plane inside a stack: scouts acquired with the series.
        for small in [g for g in groups[1:] if len(g) < 3]:
            groups.remove(small)
            for f in small:
                dropped.append((f.path, f"localizer: {len(small)} image(s) in an orientation other than the {len(groups[0])} slices of series {uid}"))
    parts: list[tuple[str, list[ImageFile]]] = []
    for i, group in enumerate(groups):
        label = f"orientation {i + 1}/{len(groups)}" if len(groups) > 1 else ""
        for echo, by_echo in _split_by(group, lambda f: f.echo):
            echo_label = f"echo {echo}" if echo is not None else ""
            for acq, by_acq in _split_acquisitions(by_echo):
                acq_label = f"acquisition {acq}" if acq is not None else ""
                parts.append((", ".join(x for x in (label, echo_label, acq_label) if x), by_acq))
    first = files[0]
    return [
        Series(uid, first.study_uid, first.patient_id, first.modality, first.description, part, split=label)
        for label, part in parts
    ]


def _split_by(files: list[ImageFile], key) -> list[tuple[str | None, list[ImageFile]]]:
    groups: dict[str, list[ImageFile]] = defaultdict(list)
    for f in files:
        groups[key(f)].append(f)
    if len(groups) == 1:
        return [(None, files)]
    return sorted(groups.items())


def _split_acquisitions(files: list[ImageFile]) -> list[tuple[str | None, list[ImageFile]]]:
    # Split by AcquisitionNumber only when the same positions repeat (e.g. a dynamic series);
    # many scanners number every slice of one stack as its own acquisition.
    positions = [f.position for f in files if f.position is not None and f.frames == 1]
    if len(set(positions)) == len(positions):
        return [(None, files)]
    return _split_by(files, lambda f: f.acquisition)


def _problems(series: Series) -> list[str]:
    problems = []
    sizes = {(f.rows, f.columns) for f in series.files}
    if len(sizes) > 1:
        problems.append(f"images of different sizes (rows x columns: {', '.join(f'{r}x{c}' for r, c in sorted(sizes))})")
    if any(f.orientation is None or f.position is None for f in series.files):
        problems.append("no ImagePositionPatient/ImageOrientationPatient: slices are ordered by InstanceNumber and spacing is unknown")
    gaps = _position_gaps(series.files)
    if len(gaps):
        if np.any(np.isclose(gaps, 0.0, atol=1e-3)):
            problems.append("two or more images share one position (duplicates or an unsplit dynamic series)")
        elif not np.allclose(gaps, np.median(gaps), rtol=0.01, atol=0.01):
            problems.append(f"uneven slice spacing ({gaps.min():.3g} to {gaps.max():.3g} mm): a slice may be missing")
    return problems
