"""A site folder of DICOM series and labels -> checked, de-identified, normalised volumes and patch batches.

Layout (see :mod:`scalpel.medical.synthetic`)::

    site/dicom/<case>/...      one image series per case folder (name case folders with
                               non-identifying IDs: they are kept through de-identification)
    site/labels/<case>.nii.gz  label map on that series' grid (or <case>.dcm, a DICOM SEG)
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from monai.data import MetaTensor
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from torch import Tensor

from scalpel.core.errors import DataError, ScalpelError
from scalpel.core.files import atomic_write
from scalpel.medical.dicom import DeidOptions, deidentify_folder, load_label, load_series, scan_folder

LABEL_SUFFIXES = (".nii.gz", ".nii", ".dcm")
#: marker of a finished de-identified copy of a case, holding :func:`_source_stamp` of its source
INGESTED = ".ingested"
#: a case of any kind (a loaded :class:`Case`, a record dict): splits only reorder them
T = TypeVar("T")


@dataclass
class Case:
    name: str
    image: Tensor
    """(1, X, Y, Z) float32, normalised"""
    label: Tensor
    """(1, X, Y, Z) int64"""
    spacing: tuple[float, ...]


def label_file(labels_dir: Path, case: str) -> Path | None:
    """``labels_dir/<case>.nii.gz`` (or ``.nii``, or ``.dcm``, a DICOM SEG), the first that exists; None if none."""
    return next((labels_dir / f"{case}{s}" for s in LABEL_SUFFIXES if (labels_dir / f"{case}{s}").is_file()), None)


def normalise_hu(hu: Tensor, window: Sequence[float]) -> Tensor:
    """Clip to ``window = (low, high)`` HU and map it linearly onto [0, 1]."""
    low, high = float(window[0]), float(window[1])
    return (hu.clamp(low, high) - low) / (high - low)


def ingest_site(site: str | os.PathLike, run_dir: str | os.PathLike, *, deidentify: bool = True) -> Path:
    """Return the folder of case series to read: a de-identified copy under ``run_dir/ingest``
    (PS3.15 Basic Profile, per case, audit logs in ``run_dir/ingest-audit``), or the site's own.

    A rerun into the same ``run_dir`` reuses the cases already ingested from unchanged files and
    ingests again those that changed or whose copy was interrupted.

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
        out, stamp = target / case.name, _source_stamp(case)
        if (out / INGESTED).is_file() and (out / INGESTED).read_text() == stamp:
            continue  # ingested by an earlier run into this folder, from the same files
        if out.exists():  # an interrupted or outdated ingest of ours: start that case again
            shutil.rmtree(out)
        report = deidentify_folder(case, out, DeidOptions(retain_longitudinal_dates=True), audit_log=audit / f"{case.name}.csv")
        if report.errors or report.refused:
            (out / ".skipped").write_text("; ".join(r for _, r in [*report.errors, *report.refused]))
        (out / INGESTED).write_text(stamp)
    return target



def _source_stamp(folder: Path) -> str:
    """Names, sizes and modification times of a case's files: a rerun re-ingests a case that changed."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        info = path.stat()
        digest.update(f"{path.relative_to(folder)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def to_grid(volume: MetaTensor, spacing: Sequence[float] = (), orientation: str = "", *, mode: str = "bilinear") -> MetaTensor:
    """``volume`` ``(C, X, Y, Z)`` reoriented to ``orientation`` (axis codes, e.g. ``"RAS"``) and
    resampled to ``spacing`` (mm per axis, after reorienting); returned as is when both are empty.

    ``mode``: ``"bilinear"`` for images and probabilities, ``"nearest"`` for label maps.
    """
    from monai.transforms import Orientation, Spacing

    from scalpel.medical.transforms import RAS_LABELS

    if orientation:
        volume = Orientation(axcodes=orientation, labels=RAS_LABELS)(volume)
    if spacing:
        volume = Spacing(pixdim=tuple(float(s) for s in spacing), mode=mode)(volume)
    return volume


def from_grid(volume: MetaTensor, affine: Tensor | np.ndarray, shape: Sequence[int], *, mode: str = "bilinear") -> Tensor:
    """Undo :func:`to_grid`: resample ``volume`` (with its own affine) onto the grid ``affine`` /
    ``shape`` (a series' own, RAS affine); a plain ``(C, *shape)`` tensor."""
    from monai.transforms import SpatialResample

    back = SpatialResample(mode=mode)(volume, dst_affine=torch.as_tensor(affine, dtype=torch.float64), spatial_size=tuple(shape))
    return back.as_tensor() if isinstance(back, MetaTensor) else back


def load_cases(
    series_root: str | os.PathLike,
    labels_dir: str | os.PathLike,
    *,
    window: Sequence[float],
    min_size: Sequence[int],
    spacing: Sequence[float] = (),
    orientation: str = "",
) -> tuple[list[Case], list[str]]:
    """Load every ``series_root/<case>`` with its label; return the cases and why others were skipped.

    Each label is checked on its series' own grid first; then, when ``spacing`` or
    ``orientation`` is given (a base's, see :func:`to_grid`), image (bilinear) and label
    (nearest) are moved together onto that grid. A 2-size ``min_size`` (a 2-D base's axial
    patch) checks the in-plane axes only.

    Raises:
        DataError: a label does not match its series' geometry, a series is smaller than
            ``min_size`` (the training patch, after resampling), or no case is usable at all.
    """
    cases, skipped = [], []
    labels_dir = Path(labels_dir)
    for folder in sorted(p for p in Path(series_root).iterdir() if p.is_dir()):
        label_path = label_file(labels_dir, folder.name)
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
        try:
            label = load_label(label_path, image)
        except DataError as err:
            raise DataError(f"case {folder.name}: the label {label_path.name} does not match the image geometry: {err}. "
                            "Export the label on the series' own grid") from err
        if spacing or orientation:
            image = to_grid(image.float(), spacing, orientation)
            label = to_grid(label.float(), spacing, orientation, mode="nearest").round().long()
        size = tuple(image.shape[1:])
        if any(s < m for s, m in zip(size, min_size, strict=False)):
            resampled = f" (resampled to {'x'.join(f'{v:g}' for v in spacing)} mm)" if spacing else ""
            raise DataError(f"case {folder.name}: the series is {'x'.join(map(str, size))} voxels{resampled}, smaller than the "
                            f"{'x'.join(map(str, min_size))} patch; use a smaller --patch or drop this case")
        voxel = tuple(float(v) for v in torch.as_tensor(image.affine, dtype=torch.float64)[:3, :3].norm(dim=0))
        cases.append(Case(folder.name, normalise_hu(image.as_tensor().float(), window), label.as_tensor().long(), voxel))
    if not cases:
        why = "; ".join(skipped) or "no case folders"
        raise DataError(f"no usable series with a label in {series_root}: {why}")
    return cases, skipped


def split_cases(cases: list[T], holdout: float, seed: int) -> tuple[list[T], list[T]]:
    """Held-out split by case (never by patch): at least one case on each side."""
    if len(cases) < 2:
        raise DataError(f"held-out evaluation needs >= 2 labelled cases, the site has {len(cases)}; add cases")
    order = torch.randperm(len(cases), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = min(len(cases) - 1, max(1, round(holdout * len(cases))))
    return [cases[i] for i in order[n_eval:]], [cases[i] for i in order[:n_eval]]


class PatchBatches:
    """Random ``patch``-sized crops of training cases, ``batches`` per epoch (re-iterable, seeded).

    Yields ``{"image": (B, 1, *patch), "label": (B, 1, *patch)}``; each epoch draws new crops
    and random flips along every axis (the same for image and label). A 2-size ``patch`` (a
    2-D network) crops one axial slice of a random ``Z``: ``(B, 1, X, Y)`` patches.
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
                image, label = case.image, case.label
                if len(self.patch) == 2 and image.dim() == 4:  # a 2-D network: one axial slice
                    z = int(torch.randint(image.shape[-1], (1,), generator=g))
                    image, label = image[..., z], label[..., z]
                start = [int(torch.randint(s - p + 1, (1,), generator=g)) for s, p in zip(image.shape[1:], self.patch, strict=True)]
                region = (slice(None), *(slice(a, a + p) for a, p in zip(start, self.patch, strict=True)))
                image, label = image[region], label[region]
                flips = [d + 1 for d in range(len(self.patch)) if torch.rand(1, generator=g) < 0.5]
                if flips:
                    image, label = image.flip(flips), label.flip(flips)
                images.append(image)
                labels.append(label)
            yield {"image": torch.stack(images), "label": torch.stack(labels)}


def eval_batches(cases: list[Case]) -> list[dict[str, Tensor]]:
    """One whole volume per batch, with its spacing (HD95 in mm)."""
    return [{"image": c.image[None], "label": c.label[None], "spacing": torch.tensor([c.spacing])} for c in cases]


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

    from scalpel.medical.synthetic import write_nifti

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
    folder = Path(site) / "dicom" / case
    folder.mkdir(parents=True, exist_ok=True)
    sop_class = MRImageStorage if modality == "MR" else CTImageStorage
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    spacing = (float(np.linalg.norm(lps[:3, 1])), float(np.linalg.norm(lps[:3, 0])))  # (row, column) spacing
    for z in range(image.shape[2]):
        ds = _image_slice(stored[:, :, z].T, sop_class, modality, (study, series, frame), lps @ [0.0, 0.0, z, 1.0],
                          (*rows_dir, *cols_dir), spacing, float(np.linalg.norm(lps[:3, 2])), z + 1, case, (slope, intercept))
        with atomic_write(folder / f"{z:04d}.dcm") as handle:
            ds.save_as(handle, enforce_file_format=True)
    (Path(site) / "labels").mkdir(parents=True, exist_ok=True)
    write_nifti(Path(site) / "labels" / f"{case}.nii.gz", labels.astype(np.uint8), np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps)
    return folder


def _translation(x: float, y: float, z: float) -> np.ndarray:
    out = np.eye(4)
    out[:3, 3] = (x, y, z)
    return out


def _image_slice(pixels, sop_class, modality, uids, position, orientation, spacing, thickness, number, case, rescale) -> Dataset:
    study, series, frame = uids
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID = f"Case^{case}", case  # the case name is the only identity a NIfTI has
    ds.PatientBirthDate = ds.PatientSex = ds.StudyDate = ds.StudyTime = ds.ReferringPhysicianName = ds.AccessionNumber = ""
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber, ds.StudyID = modality, 1, number, "1"
    ds.SeriesDescription = f"from NIfTI ({case})"
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position[:3]]
    ds.PixelSpacing = [f"{v:.6g}" for v in spacing]
    ds.SliceThickness = f"{thickness:.6g}"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleSlope, ds.RescaleIntercept = f"{rescale[0]:.10g}", f"{rescale[1]:.10g}"
    ds.PixelData = np.ascontiguousarray(pixels.astype("<i2")).tobytes()
    return ds
