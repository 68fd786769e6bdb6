"""Build a volume from a series: sorted slices, modality values, an affine, as a MONAI MetaTensor.

Geometry (DICOM PS3.3 C.7.6.2.1.1): a pixel at column ``i``, row ``j`` of a slice at
``P`` (ImagePositionPatient) with direction cosines ``F_r`` (along a row, first three of
ImageOrientationPatient) and ``F_c`` (down a column) and PixelSpacing ``(dr, dc)`` lies at

    x_LPS = P + i * dc * F_r + j * dr * F_c

DICOM's patient space is LPS (x to the patient's left, y posterior, z head). Slices are
sorted by ``P . n`` with ``n = F_r x F_c`` (not by InstanceNumber), and the third column of
the affine is the mean step between consecutive positions ``(P_last - P_first) / (N - 1)``,
which keeps a gantry tilt exact. NIfTI and MONAI use RAS; ``affine_RAS = diag(-1, -1, 1, 1)
@ affine_LPS``, which is what the MetaTensor carries (as MONAI's own DICOM readers do), with
the LPS affine kept in ``meta["lps_affine"]``.

The voxel array has shape ``(C, X, Y, Z)`` = (channels, columns, rows, slices), so index
``[c, i, j, k]`` is column ``i``, row ``j`` of slice ``k``, matching the affine above.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import torch
from monai.data import MetaTensor

from scalpel.core.errors import DataError
from scalpel.medical.dicom.pixels import (
    apply_window,
    check_transfer_syntax,
    exact_rescale_float32,
    invert_monochrome1,
    modality_values,
    resolve_window,
)
from scalpel.medical.dicom.reading import read_dicom
from scalpel.medical.dicom.grouping import ImageFile, Series, slice_normal
from scalpel.medical.dicom.scan import parallel_map, scan_folder

#: LPS -> RAS: negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_NATIVE_LITTLE_ENDIAN = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}


class SliceSpacingWarning(UserWarning):
    """Slices are unevenly spaced (a slice may be missing) or share a position."""


@dataclass
class _Frame:
    """One 2-D image of the series: where its pixels are and where it lies."""

    file_index: int
    frame_index: int
    position: np.ndarray | None
    instance_number: int


def load_series(
    series: Series | str | os.PathLike,
    *,
    window: str | tuple[float, float] | None = None,
    invert_monochrome1_values: bool = True,
    dtype: torch.dtype = torch.float32,
    workers: int | None = None,
) -> MetaTensor:
    """Read a series into a ``(C, X, Y, Z)`` MetaTensor in RAS with modality values (HU for CT).

    Args:
        series: a :class:`Series` from :func:`scan_folder`, or a folder holding exactly one series.
        window: None for modality values; a preset name (``brain``, ``lung``, ``bone``,
            ``abdomen``, ...), ``"file"`` (the file's WindowCenter/Width) or (centre, width)
            to map values to [0, 1] for display or models trained on windowed input.
        invert_monochrome1_values: mirror MONOCHROME1 values so larger is brighter.
        dtype: voxel dtype.
        workers: reader threads (default: one per core, at most 4).

    Returns:
        MetaTensor of shape (C, X, Y, Z), C = 1 (grayscale) or 3 (colour); ``meta`` holds
        ``affine`` (RAS), ``lps_affine``, ``spacing`` (mm, X/Y/Z), ``spatial_shape``,
        ``space`` = "RAS", ``sop_instance_uids`` (in slice order), ``modality``,
        ``series_uid``, ``study_uid``, ``problems`` and ``filename_or_obj``.
    """
    datasets: dict[Path, pydicom.Dataset] = {}
    if not isinstance(series, Series):
        series, datasets = _only_series(Path(series))
    _check_consistent(series)
    headers = [read_dicom(f.path, stop_before_pixels=True) for f in series.files] if _needs_frame_geometry(series) else None
    frames = _frames(series, headers)
    ordered, has_geometry = _sort(frames)
    problems = list(series.problems)
    # Sorts ``ordered`` along the slice normal when the geometry is known.
    lps = _lps_affine(series, ordered, problems) if has_geometry else _fallback_affine(series, problems)
    pixels = parallel_map(lambda f: _read_pixels(f, invert_monochrome1_values, datasets.get(f.path)), series.files, workers)
    stack = np.stack([pixels[fr.file_index][0][fr.frame_index] for fr in ordered])  # (Z, rows, cols[, 3])
    first_ds = pixels[0][1]
    if window is not None:
        center, width = resolve_window(window, first_ds)
        stack = apply_window(stack, center, width)
    array = stack[..., None] if stack.ndim == 3 else stack
    array = array.transpose(3, 2, 1, 0)  # (C, cols, rows, Z): a strided view, as MONAI's readers return

    ras = LPS_TO_RAS @ lps
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    sop_uids = [series.files[fr.file_index].sop_uid for fr in ordered]
    meta: dict[str, Any] = {
        "original_affine": ras.copy(),
        "lps_affine": lps,
        "spacing": spacing,
        "spatial_shape": np.asarray(array.shape[1:]),
        "space": "RAS",
        "original_channel_dim": 0,
        "filename_or_obj": str(series.files[0].path),
        "sop_instance_uids": sop_uids,
        "frame_indices": [fr.frame_index for fr in ordered],
        "modality": series.modality,
        "series_uid": series.series_uid,
        "study_uid": series.study_uid,
        "series_description": series.description,
        "photometric_interpretation": str(first_ds.get("PhotometricInterpretation", "")),
        "window": None if window is None else [center, width],
        "problems": problems,
    }
    return MetaTensor(torch.from_numpy(array).to(dtype), affine=torch.from_numpy(ras), meta=meta)


def _only_series(path: Path) -> tuple[Series, dict[Path, pydicom.Dataset]]:
    inventory = scan_folder(path, keep_datasets=True)
    inventory.refuse_damaged("copy them again or remove them, or scan_folder the folder and pass one Series")
    if len(inventory.series) != 1:
        found = "; ".join(f"{s.key} ({s.modality}, {len(s.files)} files)" for s in inventory.series) or "none"
        raise DataError(f"{path} holds {len(inventory.series)} series ({found}); scan it with scan_folder and pass one Series")
    return inventory.series[0], inventory.datasets


def _check_consistent(series: Series) -> None:
    sizes: dict[tuple[int, int], list[str]] = {}
    for f in series.files:
        sizes.setdefault((f.rows, f.columns), []).append(f.path.name)
    if len(sizes) > 1:
        detail = "; ".join(f"{r}x{c}: {len(names)} file(s), e.g. {names[0]}" for (r, c), names in sizes.items())
        raise DataError(
            f"series {series.key} mixes image sizes (rows x columns) - {detail}; "
            "these images do not stack into one volume, remove the odd files or load them as their own series"
        )


def _needs_frame_geometry(series: Series) -> bool:
    return any(f.frames > 1 for f in series.files)


def _frames(series: Series, headers: list[pydicom.Dataset] | None) -> list[_Frame]:
    frames = []
    for i, f in enumerate(series.files):
        positions = _frame_positions(headers[i], f.frames) if headers is not None else None
        for k in range(f.frames):
            if positions is not None:
                pos = positions[k]
            else:
                pos = np.asarray(f.position) if f.position is not None and f.frames == 1 else None
            frames.append(_Frame(i, k, pos, f.instance_number if f.instance_number is not None else i))
    return frames


def _frame_positions(ds: pydicom.Dataset, n: int) -> list[np.ndarray] | None:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and len(per_frame) == n and all(item.get("PlanePositionSequence") for item in per_frame):
        return [np.asarray([float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]) for item in per_frame]
    return None


def _sort(frames: list[_Frame]) -> tuple[list[_Frame], bool]:
    # Geometry needs a position for every frame; otherwise fall back to InstanceNumber order.
    if all(fr.position is not None for fr in frames):
        return frames, True  # sorted in _lps_affine, which knows the normal
    return sorted(frames, key=lambda fr: (fr.instance_number, fr.file_index, fr.frame_index)), False


def _lps_affine(series: Series, frames: list[_Frame], problems: list[str]) -> np.ndarray:
    first = series.files[0]
    if first.orientation is None or first.pixel_spacing is None:
        return _fallback_affine(series, problems)
    normal = slice_normal(first.orientation)
    frames.sort(key=lambda fr: (float(np.dot(fr.position, normal)), fr.file_index, fr.frame_index))
    thickness = _slice_thickness(series) if len(frames) == 1 else 0.0
    affine = slices_affine(first.orientation, first.pixel_spacing, [fr.position for fr in frames], thickness)
    if len(frames) > 1:
        gaps = np.diff([float(np.dot(fr.position, normal)) for fr in frames])
        median = float(np.median(gaps))
        if np.any(np.isclose(gaps, 0.0, atol=1e-3)):
            _warn(problems, f"series {series.key}: {int(np.sum(np.isclose(gaps, 0, atol=1e-3)))} slice(s) share a position with another")
        elif not np.allclose(gaps, median, rtol=0.01, atol=0.01):
            missing = int(round(float(np.sum(gaps) / median))) + 1 - len(frames) if median > 0 else 0
            _warn(
                problems,
                f"series {series.key}: uneven slice spacing ({gaps.min():.4g} to {gaps.max():.4g} mm, median {median:.4g})"
                + (f"; about {missing} slice(s) missing" if missing > 0 else ""),
            )
    return affine


def slices_affine(orientation: Sequence[float], pixel_spacing: Sequence[float], positions: Sequence[Sequence[float]],
                  thickness: float = 1.0) -> np.ndarray:
    """The LPS affine of slices sorted along their normal (PS3.3 C.7.6.2.1.1): voxel ``(column, row,
    slice)`` -> mm. ``orientation`` is ImageOrientationPatient, ``pixel_spacing`` (row, column)
    spacing, ``positions`` each slice's ImagePositionPatient; the slice axis is the mean step from
    the first position to the last (a gantry tilt stays exact), or the normal x ``thickness`` for one slice.
    """
    o = np.asarray(orientation, dtype=np.float64)
    row_spacing, col_spacing = (float(v) for v in pixel_spacing)
    first, last = np.asarray(positions[0], dtype=np.float64), np.asarray(positions[-1], dtype=np.float64)
    affine = np.eye(4)
    affine[:3, 0] = o[:3] * col_spacing
    affine[:3, 1] = o[3:] * row_spacing
    affine[:3, 2] = (last - first) / (len(positions) - 1) if len(positions) > 1 else slice_normal(o) * thickness
    affine[:3, 3] = first
    return affine


def _fallback_affine(series: Series, problems: list[str]) -> np.ndarray:
    first = series.files[0]
    row_spacing, col_spacing = first.pixel_spacing or (1.0, 1.0)
    message = f"series {series.key}: no patient geometry; affine is a plain scaling and slices follow InstanceNumber"
    if message not in problems:
        problems.append(message)
    return np.diag([col_spacing, row_spacing, _slice_thickness(series), 1.0])


def _slice_thickness(series: Series) -> float:
    ds = read_dicom(series.files[0].path, stop_before_pixels=True, specific_tags=["SliceThickness", "SpacingBetweenSlices"])
    value = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    return float(value) if value else 1.0


def _warn(problems: list[str], message: str) -> None:
    problems.append(message)
    warnings.warn(message, SliceSpacingWarning, stacklevel=3)


def _read_pixels(image: ImageFile, invert: bool, ds: pydicom.Dataset | None = None) -> tuple[np.ndarray, pydicom.Dataset]:
    """(frames, rows, cols[, 3]) modality values of one file, and its dataset (pixels dropped).

    Pixel attributes come from the scan (``image``), so the dataset is touched only for its pixels.
    """
    path = image.path
    try:
        ds = ds if ds is not None else read_dicom(path)
    except (OSError, EOFError, ValueError) as err:
        raise DataError(f"{path}: cannot read ({err}); the file may be truncated, copy it again") from err
    check_transfer_syntax(image.transfer_syntax, where=str(path))
    try:
        stored = _native_pixels(ds, image) if image.transfer_syntax in _NATIVE_LITTLE_ENDIAN else None
        if stored is None:
            stored = ds.pixel_array
    except (ValueError, EOFError, AttributeError, KeyError, RuntimeError) as err:
        raise DataError(f"{path}: pixel data cannot be decoded ({err}); the file may be truncated or damaged") from err
    if image.frames == 1:
        stored = stored[None]
    if image.samples_per_pixel > 1:
        values = stored.astype(np.float32)
    else:
        values = None
        if image.rescale is not None and not image.modality_lut:
            values = exact_rescale_float32(stored, *image.rescale)
        if values is None:
            values = _modality_frames(stored, ds).astype(np.float32, copy=False)
        if invert and image.photometric == "MONOCHROME1":
            values = invert_monochrome1(values, ds).astype(np.float32, copy=False)
    if "PixelData" in ds:
        del ds.PixelData  # keep only the header alive
    return values, ds


def _native_pixels(ds: pydicom.Dataset, image: ImageFile) -> np.ndarray | None:
    """Uncompressed little-endian grayscale: view the bytes directly (what pixel_array does, without its overhead)."""
    bits = image.bits_allocated
    if image.samples_per_pixel != 1 or bits not in (8, 16, 32) or (image.signed and image.bits_stored != bits):
        return None  # signed values narrower than their container need pydicom's sign extension
    dtype = np.dtype(f"<{'i' if image.signed else 'u'}{bits // 8}")
    count = image.frames * image.rows * image.columns
    data = ds.PixelData
    if len(data) < count * dtype.itemsize:
        raise ValueError(f"pixel data is truncated: {len(data)} of {count * dtype.itemsize} bytes")
    array = np.frombuffer(data, dtype=dtype, count=count).reshape(image.frames, image.rows, image.columns)
    return array[0] if image.frames == 1 else array


def _modality_frames(stored: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = (ds.get("SharedFunctionalGroupsSequence") or [None])[0]
    if "RescaleSlope" in ds or ds.get("ModalityLUTSequence") or not (per_frame or shared):
        return modality_values(stored, ds)
    out = []
    for k in range(stored.shape[0]):
        item = per_frame[k] if per_frame and per_frame[k].get("PixelValueTransformationSequence") else shared
        out.append(modality_values(stored[k], ds, item))
    return np.stack(out)
