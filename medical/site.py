"""A site folder -> the cases a run reads: de-identified ingest, labelled records, splits by case.

Layout (see :mod:`scalpel.medical.synthetic`)::

    site/dicom/<case>/...      one image series per case folder (name case folders with
                               non-identifying IDs: they are kept through de-identification)
    site/labels/<case>.nii.gz  label map on that series' grid (or <case>.dcm, a DICOM SEG)
    site/labels.csv            or image-level classes: columns case,label (classification)

A record is ``{"image": series folder, "case": name, "label": label file | "class": name}``;
the MONAI transforms of :mod:`scalpel.medical.transforms` load it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from pydicom.dataset import Dataset

from scalpel.core.errors import DataError
from scalpel.medical.classification import read_class_labels
from scalpel.medical.dicom import DeidOptions, deidentify_folder
from scalpel.medical.synthetic import write_nifti, write_series

LABEL_SUFFIXES = (".nii.gz", ".nii", ".dcm")
#: marker of a finished de-identified copy of a case, holding :func:`_source_stamp` of its source
INGESTED = ".ingested"
#: marker of a case whose de-identification refused or failed files (the reasons inside): not read
REFUSED = ".skipped"
#: a case of any kind (a record dict, a name): splits only reorder them
T = TypeVar("T")


def label_file(labels_dir: Path, case: str) -> Path | None:
    """``labels_dir/<case>.nii.gz`` (or ``.nii``, or ``.dcm``, a DICOM SEG), the first that exists; None if none."""
    return next((labels_dir / f"{case}{s}" for s in LABEL_SUFFIXES if (labels_dir / f"{case}{s}").is_file()), None)


def case_folders(site: str | os.PathLike) -> list[Path]:
    """The case folders ``site/dicom/<case>/``.

    Raises:
        DataError: ``site/dicom`` is missing or holds no case folders.
    """
    source = Path(site) / "dicom"
    cases = sorted(p for p in source.iterdir() if p.is_dir()) if source.is_dir() else []
    if not cases:
        raise DataError(f"{source} holds no case folders; put each series under {source}/<case>/ and its label "
                        f"under {Path(site) / 'labels'}/<case>.nii.gz")
    return cases


def ingest_site(site: str | os.PathLike, cache: str | os.PathLike) -> Path:
    """De-identify ``site/dicom`` into ``cache/dicom/<case>/`` (PS3.15 Basic Profile, dates shifted
    consistently, audit logs in ``cache/audit/``); return ``cache/dicom``.

    Runs keep ``cache`` beside their run folder, so ``--overwrite`` (which deletes a run whole)
    keeps it: a rerun reuses the cases ingested from unchanged files and ingests again those that
    changed or whose copy was interrupted.

    Raises:
        DataError: ``site/dicom`` is missing or holds no case folders.
    """
    target, audit = Path(cache) / "dicom", Path(cache) / "audit"
    audit.mkdir(parents=True, exist_ok=True)
    for case in case_folders(site):
        out, stamp = target / case.name, _source_stamp(case)
        if (out / INGESTED).is_file() and (out / INGESTED).read_text() == stamp:
            continue  # ingested by an earlier run, from the same files
        if out.exists():  # an interrupted or outdated ingest of ours: start that case again
            shutil.rmtree(out)
        report = deidentify_folder(case, out, DeidOptions(retain_longitudinal_dates=True), audit_log=audit / f"{case.name}.csv")
        if report.errors or report.refused:
            (out / REFUSED).write_text("; ".join(r for _, r in [*report.errors, *report.refused]))
        (out / INGESTED).write_text(stamp)
    return target


def _source_stamp(folder: Path) -> str:
    """Names, sizes and modification times of a case's files: a rerun re-ingests a case that changed."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        info = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def site_records(site: str | os.PathLike, series_root: str | os.PathLike | None = None,
                 labels_csv: str | os.PathLike = "") -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """The labelled cases of a site: ``(records, class names, why other cases were skipped)``.

    Args:
        series_root: where the case series are read (a de-identified copy); default ``site/dicom``.
        labels_csv: image-level classes (columns ``case,label``); the class names are then its
            classes, sorted; empty: label maps ``site/labels/<case>.*`` (no class names).

    Raises:
        DataError: no case folders, an unreadable CSV, or no case with a label and a usable series.
    """
    root = Path(site)
    folders = case_folders(root)
    series_root = Path(series_root or root / "dicom")
    if labels_csv:
        records, names, skipped = read_class_labels(root, labels_csv)
    else:
        names, records, skipped = [], [], []
        for case in folders:
            label = label_file(root / "labels", case.name)
            if label is None:
                skipped.append(f"{case.name}: no label file labels/{case.name}.nii.gz")
            else:
                records.append({"case": case.name, "label": str(label)})
    usable = []
    for record in records:
        folder = series_root / record["case"]
        if (folder / REFUSED).is_file() or not folder.is_dir():
            why = (folder / REFUSED).read_text() if folder.is_dir() else "not ingested"
            skipped.append(f"{record['case']}: {why}")
        else:
            usable.append({**record, "image": str(folder)})
    if not usable:
        raise DataError(f"no usable series with a label in {root}: {'; '.join(skipped) or 'no cases'}")
    return usable, names, skipped


def split_cases(cases: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Held-out split by case (never by patch), shuffled with ``seed``: ``(train, held_out)``, at
    least one case on each side, each in the cases' own order.

    Raises:
        DataError: fewer than two cases.
    """
    if len(cases) < 2:
        raise DataError(f"held-out evaluation needs >= 2 labelled cases, the site has {len(cases)}; add cases, "
                        "pass --val-data, or train on all of them with --val-fraction 0")
    order = torch.randperm(len(cases), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = min(len(cases) - 1, max(1, round(fraction * len(cases))))
    return [cases[i] for i in sorted(order[n_eval:])], [cases[i] for i in sorted(order[:n_eval])]


def kfold_cases(cases: list[T], folds: int, seed: int) -> list[tuple[list[T], list[T]]]:
    """K folds by case (never by patch), shuffled with ``seed``: ``[(train, held_out), ...]``; every
    case is held out exactly once, fold sizes differ by at most one.

    Raises:
        DataError: fewer cases than folds.
    """
    if folds < 2 or len(cases) < folds:
        raise DataError(f"{folds}-fold evaluation needs at least {max(folds, 2)} labelled cases, the site has {len(cases)}; "
                        "use fewer --folds or the held-out split (--folds 0)")
    order = torch.randperm(len(cases), generator=torch.Generator().manual_seed(seed)).tolist()
    chunks = [order[k::folds] for k in range(folds)]
    return [([cases[i] for i in sorted(order) if i not in chunk], [cases[i] for i in sorted(chunk)]) for chunk in chunks]


def write_case_from_nifti(
    image_path: str | os.PathLike,
    label: str | os.PathLike | np.ndarray,
    site: str | os.PathLike,
    case: str,
    *,
    modality: str = "MR",
    step: int = 1,
    z_range: tuple[int, int] | None = None,
) -> Path:
    """Write a NIfTI volume as one DICOM series of a site folder, with its label map beside it.

    For data that exists only as NIfTI (atlases, templates, the Debian ``mricron-data``
    files): ``site/dicom/<case>/NNNN.dcm`` (MR or CT Image Storage, one file per slice,
    geometry from the NIfTI affine) and ``site/labels/<case>.nii.gz`` on the same grid.

    Args:
        image_path: the image (``.nii``/``.nii.gz``); values are stored as int16 with a
            RescaleSlope/Intercept that preserves them to within half a step.
        label: a label NIfTI on the image's grid, or an ``(X, Y, Z)`` integer array.
        step: keep every ``step``-th voxel along each axis (a coarser grid, spacing x step).
        z_range: keep slices ``[start, stop)`` (after ``step``): a slab of the volume.

    Returns:
        The case's series folder.

    Raises:
        DataError: the label's shape differs from the image's, or the image is not 3-D.
    """
    import nibabel as nib
    from pydicom.uid import CTImageStorage, MRImageStorage

    nii = nib.load(str(image_path))
    image = np.asanyarray(nii.dataobj).astype(np.float64)
    labels = np.asarray(label) if isinstance(label, np.ndarray) else np.asanyarray(nib.load(str(label)).dataobj)
    while image.ndim > 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim != 3 or labels.shape[:3] != image.shape:
        raise DataError(f"{image_path}: need a 3-D image and a label of the same shape, got {image.shape} and {labels.shape}")
    ras = np.asarray(nii.affine, dtype=np.float64) @ np.diag([step, step, step, 1.0])
    image, labels = image[::step, ::step, ::step], labels[::step, ::step, ::step]
    if z_range is not None:
        ras = ras @ _translation(0, 0, z_range[0])
        image, labels = image[:, :, z_range[0]:z_range[1]], labels[:, :, z_range[0]:z_range[1]]
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    rows_dir, cols_dir = lps[:3, 0] / np.linalg.norm(lps[:3, 0]), lps[:3, 1] / np.linalg.norm(lps[:3, 1])
    if np.dot(np.cross(rows_dir, cols_dir), lps[:3, 2]) < 0:
        # DICOM readers order slices along row x column; keep that order the array's own
        image, labels = image[:, :, ::-1], labels[:, :, ::-1]
        lps = lps @ _translation(0, 0, image.shape[2] - 1) @ np.diag([1.0, 1.0, -1.0, 1.0])
    low, high = float(image.min()), float(image.max())
    if np.array_equal(image, np.round(image)) and low >= -32768 and high <= 32767:
        slope, intercept, stored = 1.0, 0.0, image.astype(np.int16)
    else:  # spread the range over int16: value = stored * slope + intercept
        slope = max((high - low) / 65000.0, 1e-9)
        intercept = low + 32500.0 * slope
        stored = (np.round((image - low) / slope) - 32500.0).astype(np.int16)
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    rows_mm, cols_mm = float(np.linalg.norm(lps[:3, 1])), float(np.linalg.norm(lps[:3, 0]))

    def describe(ds: Dataset, z: int) -> None:
        ds.PatientName, ds.PatientID = f"Case^{case}", case  # the case name is the only identity a NIfTI has
        ds.PatientBirthDate = ds.PatientSex = ds.StudyDate = ds.StudyTime = ds.ReferringPhysicianName = ds.AccessionNumber = ""
        ds.Modality, ds.StudyID, ds.SeriesDescription = modality, "1", f"from NIfTI ({case})"
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*rows_dir, *cols_dir)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (lps @ [0.0, 0.0, z, 1.0])[:3]]
        ds.PixelSpacing = [f"{rows_mm:.6g}", f"{cols_mm:.6g}"]  # (row, column) spacing
        ds.SliceThickness = f"{float(np.linalg.norm(lps[:3, 2])):.6g}"
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"

    folder = Path(site) / "dicom" / case
    write_series(folder, stored, sop_class, describe)
    (Path(site) / "labels").mkdir(parents=True, exist_ok=True)
    write_nifti(Path(site) / "labels" / f"{case}.nii.gz", labels.astype(np.uint8), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)
    return folder


def _translation(x: float, y: float, z: float) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = (x, y, z)
    return out
