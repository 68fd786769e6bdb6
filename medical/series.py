"""One DICOM image series read for inference: its values, its slices' headers (what a SEG
references) and its geometry (what resampling to a base's grid needs).

    series = read_series("patient/CT/")              # a folder: single-frame slices or one multi-frame image
    series = read_series(list_of_pydicom_datasets)   # an upload, in memory, any order
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.data import MetaTensor
from pydicom.dataset import Dataset

from scalpel.core.errors import DataError
from scalpel.medical.dicom import load_series, scan_folder
from scalpel.medical.dicom.pixels import modality_values
from scalpel.medical.dicom.grouping import slice_normal
from scalpel.medical.dicom.volume import LPS_TO_RAS, slices_affine


@dataclass
class SeriesInput:
    """One image series ready for inference."""

    hu: torch.Tensor
    """(X, Y, Z) float32 modality values (HU for CT); X = columns, Y = rows, Z = slices"""
    datasets: list[Dataset]
    """the slices' headers in Z order (what a DICOM SEG references)"""
    series_uid: str = ""
    problems: list[str] = field(default_factory=list)
    affine: torch.Tensor | None = None
    """(4, 4) voxel -> RAS mm of ``hu``'s grid (what resampling to a base's grid needs)"""
    frame_order: list[int] | None = None
    """one multi-frame image (Enhanced CT/MR): the frame of ``datasets[0]`` that each slice ``Z`` is"""

    def volume(self) -> MetaTensor:
        """``hu`` as a ``(1, X, Y, Z)`` MetaTensor placed by ``affine`` (unplaced, 1 mm voxels, without one)."""
        affine = torch.eye(4, dtype=torch.float64) if self.affine is None else torch.as_tensor(self.affine, dtype=torch.float64)
        return MetaTensor(self.hu.float()[None], affine=affine)


def read_series(source: str | os.PathLike | Sequence[Dataset], *, series_uid: str | None = None) -> SeriesInput:
    """A series from a folder (scanned with :func:`scan_folder`) or from in-memory datasets.

    Args:
        source: a folder, or pydicom datasets with pixel data (e.g. an upload), any order.
        series_uid: which series when the folder holds several.

    Raises:
        DataError: no usable image series, several without ``series_uid``, several multi-frame
            images in one series (or one in memory: read it from its file), or slices without
            the geometry (position, orientation) a SEG needs.
    """
    if isinstance(source, (str, os.PathLike)):
        return _series_from_folder(Path(source), series_uid)
    datasets = [ds for ds in source if str(ds.get("SeriesInstanceUID", "")) == series_uid] if series_uid else list(source)
    if not datasets:
        raise DataError("no image datasets to predict on; give the slices of one series")
    uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(uids) > 1:
        raise DataError(f"the datasets come from {len(uids)} series; pick one with series_uid= ({', '.join(sorted(uids))})")
    ordered = _sorted_slices(datasets)
    planes = []
    for ds in ordered:
        try:
            planes.append(np.asarray(modality_values(ds.pixel_array, ds), dtype=np.float32))
        except Exception as err:  # noqa: BLE001  pydicom's decoders raise many types
            raise DataError(f"slice {ds.get('InstanceNumber', '?')} cannot be decoded ({str(err)[:160]}); "
                            "install the decoders with pip install 'scalpel-peft[demo]'") from err
    if len({p.shape for p in planes}) > 1:
        raise DataError(f"the slices have different sizes {sorted({p.shape for p in planes})}; give one series")
    hu = torch.from_numpy(np.stack(planes).transpose(2, 1, 0).copy())  # (Z, rows, cols) -> (X, Y, Z)
    return SeriesInput(hu, ordered, uids.pop(), affine=_ras_affine(ordered))


def _series_from_folder(path: Path, series_uid: str | None) -> SeriesInput:
    if not path.is_dir():
        raise DataError(f"{path} is not a folder; give the folder holding one DICOM series")
    inventory = scan_folder(path)
    inventory.refuse_damaged()
    images = [s for s in inventory.series if s.modality != "SEG" and (series_uid is None or s.series_uid == series_uid)]
    if not images:
        why = f"non-DICOM files: {len(inventory.non_dicom)}, unreadable: {len(inventory.errors)}, dropped: {len(inventory.dropped)}"
        wanted = f" with SeriesInstanceUID {series_uid}" if series_uid else ""
        raise DataError(f"no usable image series{wanted} in {path} ({why}); point at a folder of DICOM image files")
    if len(images) > 1:
        listing = "; ".join(f"{s.series_uid} ({s.modality}, {len(s.files)} files)" for s in images)
        raise DataError(f"{path} holds {len(images)} image series: {listing}; choose one with --series UID")
    series = images[0]
    multi_frame = any(f.frames > 1 for f in series.files)
    if multi_frame and len(series.files) > 1:
        raise DataError(f"series {series.series_uid} has {len(series.files)} images of several frames each; a DICOM SEG "
                        "references one multi-frame image or single-frame slices: give one of its images' folders")
    volume = load_series(series)
    if multi_frame:
        headers = [pydicom.dcmread(series.files[0].path, stop_before_pixels=True)]
        frame_order = [int(i) for i in volume.meta["frame_indices"]]
    else:
        by_uid = {f.sop_uid: f.path for f in series.files}
        headers = [pydicom.dcmread(by_uid[uid], stop_before_pixels=True) for uid in volume.meta["sop_instance_uids"]]
        frame_order = None
    return SeriesInput(volume.as_tensor()[0].float(), headers, series.series_uid, list(volume.meta.get("problems", [])),
                       torch.as_tensor(volume.affine, dtype=torch.float64), frame_order)


def _sorted_slices(datasets: list[Dataset]) -> list[Dataset]:
    orientation = datasets[0].get("ImageOrientationPatient")
    if orientation is None or any(ds.get("ImagePositionPatient") is None for ds in datasets):
        raise DataError("slices without ImagePositionPatient/ImageOrientationPatient: their order and geometry are "
                        "unknown, so no DICOM SEG can reference them; give a series with patient geometry")
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for ds in datasets):
        raise DataError("a multi-frame image in memory is not read here; save it and give its folder to "
                        "read_series (or `scalpel medical predict`), or give single-frame slices")
    normal = slice_normal([float(v) for v in orientation])
    return sorted(datasets, key=lambda ds: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])))


def _ras_affine(datasets: list[Dataset]) -> torch.Tensor:
    """Voxel ``(column, row, slice)`` -> RAS mm of slices sorted along their normal."""
    first = datasets[0]
    thickness = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
    lps = slices_affine([float(v) for v in first.ImageOrientationPatient], first.get("PixelSpacing", (1.0, 1.0)),
                        [[float(v) for v in ds.ImagePositionPatient] for ds in datasets], thickness)
    return torch.as_tensor(LPS_TO_RAS @ lps)
