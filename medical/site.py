"""A site folder of DICOM series and labels -> checked, de-identified, normalised volumes and patch batches.

Layout (see :mod:`scalpel.medical.synthetic`)::

    site/dicom/<case>/...      one image series per case folder (name case folders with
                               non-identifying IDs: they are kept through de-identification)
    site/labels/<case>.nii.gz  label map on that series' grid (or <case>.dcm, a DICOM SEG)
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from scalpel.core.errors import DataError, ScalpelError
from scalpel.medical.dicom import DeidOptions, deidentify_folder, load_label, load_series, scan_folder

_LABEL_SUFFIXES = (".nii.gz", ".nii", ".dcm")


@dataclass
class Case:
    name: str
    image: Tensor
    """(1, X, Y, Z) float32, normalised"""
    label: Tensor
    """(1, X, Y, Z) int64"""
    spacing: tuple[float, ...]


def normalise_hu(hu: Tensor, window: Sequence[float]) -> Tensor:
    """Clip to ``window = (low, high)`` HU and map it linearly onto [0, 1]."""
    low, high = float(window[0]), float(window[1])
    return (hu.clamp(low, high) - low) / (high - low)


def ingest_site(site: str | os.PathLike, run_dir: str | os.PathLike, *, deidentify: bool = True) -> Path:
    """Return the folder of case series to read: a de-identified copy under ``run_dir/ingest``
    (PS3.15 Basic Profile, per case, audit logs in ``run_dir/ingest-audit``), or the site's own.

    Raises:
        DataError: ``site/dicom`` is missing or holds no case folders.
    """
    source = Path(site) / "dicom"
    cases = sorted(p for p in source.iterdir() if p.is_dir()) if source.is_dir() else []
    if not cases:
        raise DataError(f"{source} holds no case folders; put each series under {source}/<case>/ and its label "
                        f"under {Path(site) / 'labels'}/<case>.nii.gz")
    if not deidentify:
        return source
    target = Path(run_dir) / "ingest"
    audit = Path(run_dir) / "ingest-audit"
    audit.mkdir(parents=True, exist_ok=True)
    for case in cases:
        report = deidentify_folder(case, target / case.name, DeidOptions(retain_longitudinal_dates=True),
                                   audit_log=audit / f"{case.name}.csv")
        if report.errors or report.refused:
            (target / case.name / ".skipped").write_text("; ".join(r for _, r in [*report.errors, *report.refused]))
    return target


def load_cases(
    series_root: str | os.PathLike,
    labels_dir: str | os.PathLike,
    *,
    window: Sequence[float],
    min_size: Sequence[int],
) -> tuple[list[Case], list[str]]:
    """Load every ``series_root/<case>`` with its label; return the cases and why others were skipped.

    Raises:
        DataError: a label does not match its series' geometry, a series is smaller than
            ``min_size`` (the training patch), or no case is usable at all.
    """
    cases, skipped = [], []
    labels_dir = Path(labels_dir)
    for folder in sorted(p for p in Path(series_root).iterdir() if p.is_dir()):
        label_path = next((labels_dir / f"{folder.name}{s}" for s in _LABEL_SUFFIXES if (labels_dir / f"{folder.name}{s}").is_file()), None)
        if label_path is None:
            skipped.append(f"{folder.name}: no label file {labels_dir}/{folder.name}.nii.gz")
            continue
        inventory = scan_folder(folder)
        series = [s for s in inventory.series if s.modality != "SEG"]
        if len(series) != 1:
            skipped.append(f"{folder.name}: {len(series)} image series (need exactly one)")
            continue
        try:
            image = load_series(series[0])
        except ScalpelError as err:
            skipped.append(f"{folder.name}: {err}")
            continue
        size = tuple(image.shape[1:])
        if any(s < m for s, m in zip(size, min_size, strict=True)):
            raise DataError(f"case {folder.name}: the series is {'x'.join(map(str, size))} voxels, smaller than the "
                            f"{'x'.join(map(str, min_size))} patch; use a smaller --patch or drop this case")
        try:
            label = load_label(label_path, image)
        except DataError as err:
            raise DataError(f"case {folder.name}: the label {label_path.name} does not match the image geometry: {err}. "
                            "Export the label on the series' own grid") from err
        spacing = tuple(float(v) for v in image.meta.get("spacing", (1.0, 1.0, 1.0)))
        cases.append(Case(folder.name, normalise_hu(image.as_tensor().float(), window), label.as_tensor().long(), spacing))
    if not cases:
        why = "; ".join(skipped) or "no case folders"
        raise DataError(f"no usable series with a label in {series_root}: {why}")
    return cases, skipped


def split_cases(cases: list[Case], holdout: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Held-out split by case (never by patch): at least one case on each side."""
    if len(cases) < 2:
        raise DataError(f"held-out evaluation needs >= 2 labelled cases, the site has {len(cases)}; add cases")
    order = torch.randperm(len(cases), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = min(len(cases) - 1, max(1, round(holdout * len(cases))))
    return [cases[i] for i in order[n_eval:]], [cases[i] for i in order[:n_eval]]


class PatchBatches:
    """Random ``patch``-sized crops of training cases, ``batches`` per epoch (re-iterable, seeded).

    Yields ``{"image": (B, 1, *patch), "label": (B, 1, *patch)}``; each epoch draws new crops
    and random flips along every axis (the same for image and label).
    """

    def __init__(self, cases: list[Case], patch: Sequence[int], *, batch_size: int = 2, batches: int = 4, seed: int = 0):
        self.cases, self.patch = cases, tuple(patch)
        self.batch_size, self.batches = batch_size, batches
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        g = self.generator
        for _ in range(self.batches):
            images, labels = [], []
            for _ in range(self.batch_size):
                case = self.cases[int(torch.randint(len(self.cases), (1,), generator=g))]
                start = [int(torch.randint(s - p + 1, (1,), generator=g)) for s, p in zip(case.image.shape[1:], self.patch, strict=True)]
                region = (slice(None), *(slice(a, a + p) for a, p in zip(start, self.patch, strict=True)))
                image, label = case.image[region], case.label[region]
                flips = [d + 1 for d in range(len(self.patch)) if torch.rand(1, generator=g) < 0.5]
                if flips:
                    image, label = image.flip(flips), label.flip(flips)
                images.append(image)
                labels.append(label)
            yield {"image": torch.stack(images), "label": torch.stack(labels)}


def eval_batches(cases: list[Case]) -> list[dict[str, Tensor]]:
    """One whole volume per batch, with its spacing (HD95 in mm)."""
    return [{"image": c.image[None], "label": c.label[None], "spacing": torch.tensor([c.spacing])} for c in cases]
