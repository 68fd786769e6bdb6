"""Label maps aligned to an image loaded with :func:`~scalpel.medical.dicom.volume.load_series`.

NIfTI masks and DICOM Segmentation (SEG) objects are read onto the image's voxel grid.
Nothing is resampled: a label whose grid differs from the image's (shape, spacing,
orientation, origin) is an error that says how they differ, because a silent resample
would move boundaries that a clinician drew.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.data import MetaTensor

from scalpel.core.errors import DataError
from scalpel.medical.dicom.scan import SEGMENTATION_SOP_CLASS
from scalpel.medical.dicom.volume import LPS_TO_RAS

#: Two grids agree if every affine entry differs by at most this (mm).
GRID_TOLERANCE_MM = 1e-3


def load_label(path: str | os.PathLike, reference: MetaTensor, *, atol: float = GRID_TOLERANCE_MM) -> MetaTensor:
    """Read a NIfTI mask or a DICOM SEG onto ``reference``'s grid.

    Args:
        path: ``.nii``/``.nii.gz`` file, or a DICOM SEG file.
        reference: the image, a ``(C, X, Y, Z)`` MetaTensor from ``load_series`` (RAS affine).
        atol: largest allowed difference between the two affines, in mm.

    Returns:
        A ``(1, X, Y, Z)`` MetaTensor of integer labels (segment numbers for SEG; 0 = background)
        with the reference's affine and metadata ``label_source``.

    Raises:
        DataError: the label's grid does not match the image's, or the SEG references other images.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"label file {path} does not exist")
    if path.name.endswith((".nii", ".nii.gz")):
        array = _nifti_on_grid(path, reference, atol)
    else:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except pydicom.errors.InvalidDicomError as err:
            raise DataError(f"{path} is neither NIfTI (.nii/.nii.gz) nor DICOM; give a NIfTI mask or a DICOM SEG") from err
        if str(header.get("SOPClassUID", "")) != SEGMENTATION_SOP_CLASS:
            raise DataError(f"{path} is a DICOM {header.get('SOPClassUID', 'object')!s}, not a Segmentation (SEG)")
        array = _seg_on_grid(path, reference, atol)
    array = _integer_labels(array)[None]
    meta = {k: v for k, v in reference.meta.items() if k in ("original_affine", "lps_affine", "spacing", "space", "spatial_shape")}
    meta.update(label_source=str(path), original_channel_dim=0, filename_or_obj=str(path))
    return MetaTensor(torch.from_numpy(np.ascontiguousarray(array)), affine=reference.affine.clone(), meta=meta)


def _nifti_on_grid(path: Path, reference: MetaTensor, atol: float) -> np.ndarray:
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # nibabel raises many types for damaged files
        raise DataError(f"{path}: not a readable NIfTI file ({err})") from err
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    _check_grid(path, data.shape, np.asarray(image.affine, dtype=np.float64), reference, atol)
    return data


def _seg_on_grid(path: Path, reference: MetaTensor, atol: float) -> np.ndarray:
    import highdicom as hd

    seg = hd.seg.segread(str(path))
    uids = list(reference.meta.get("sop_instance_uids", []))
    referenced = {sop for _, _, sop in seg.get_source_image_uids()}
    single_frame = not any(reference.meta.get("frame_indices", [0]))
    if referenced and single_frame:
        unknown = referenced - set(uids)
        if unknown:
            raise DataError(
                f"{path} segments {len(unknown)} image(s) that are not in the image series "
                f"({reference.meta.get('series_uid', '?')}); give the SEG made on this series"
            )
        labels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=uids, combine_segments=True, assert_missing_frames_are_empty=True
        )  # (Z, rows, cols) segment numbers
        return labels.transpose(2, 1, 0)
    volume = seg.get_volume(combine_segments=True)  # array (slices, rows, cols), affine LPS of those indices
    array = np.asarray(volume.array).transpose(2, 1, 0)
    lps = np.asarray(volume.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    # highdicom picks its own slice direction (and the frames of a multi-frame source need not be
    # stored in slice order): the same voxels with axes flipped or swapped are put in the image's order
    array, ras = _axes_like(array, LPS_TO_RAS @ lps, np.asarray(reference.affine, dtype=np.float64))
    _check_grid(path, array.shape, ras, reference, atol)
    return array


def _axes_like(array: np.ndarray, affine: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``array`` with its axes permuted and flipped into ``reference``'s order when its grid is the
    same one indexed differently (no interpolation); otherwise unchanged."""
    mapping = np.linalg.solve(reference, affine)[:3, :3]  # array index -> reference index (linear part)
    signed = np.round(mapping)
    if not np.allclose(mapping, signed, atol=1e-3) or not np.array_equal(np.abs(signed).sum(0), np.ones(3)) \
            or not np.array_equal(np.abs(signed).sum(1), np.ones(3)):
        return array, affine
    source_axis = np.abs(signed).argmax(1)  # for each reference axis, the array axis that runs along it
    sign = signed[np.arange(3), source_axis]
    aligned = array.transpose(*source_axis)
    new = affine.copy()
    new[:, :3] = affine[:, source_axis] * sign
    for axis in np.flatnonzero(sign < 0):
        aligned = np.flip(aligned, axis)
        new[:3, 3] += affine[:3, source_axis[axis]] * (array.shape[source_axis[axis]] - 1)
    return np.ascontiguousarray(aligned), new


def _check_grid(path: Path, shape: tuple[int, ...], affine: np.ndarray, reference: MetaTensor, atol: float) -> None:
    ref_shape = tuple(int(v) for v in reference.shape[1:])
    ref_affine = np.asarray(reference.affine, dtype=np.float64)
    problems = []
    if tuple(shape) != ref_shape:
        problems.append(f"shape {tuple(shape)} vs image {ref_shape}")
    if not np.allclose(affine, ref_affine, atol=atol, rtol=0):
        spacing, ref_spacing = np.linalg.norm(affine[:3, :3], axis=0), np.linalg.norm(ref_affine[:3, :3], axis=0)
        if not np.allclose(spacing, ref_spacing, atol=atol):
            problems.append(f"spacing {np.round(spacing, 4).tolist()} vs image {np.round(ref_spacing, 4).tolist()} mm")
        directions = affine[:3, :3] / np.maximum(spacing, 1e-12)
        ref_directions = ref_affine[:3, :3] / np.maximum(ref_spacing, 1e-12)
        if not np.allclose(directions, ref_directions, atol=1e-4):
            problems.append("axis directions differ (flipped or permuted axes)")
        if not np.allclose(affine[:3, 3], ref_affine[:3, 3], atol=atol):
            problems.append(f"origin {np.round(affine[:3, 3], 3).tolist()} vs image {np.round(ref_affine[:3, 3], 3).tolist()} (RAS mm)")
    if problems:
        raise DataError(
            f"{path} is not on the image's voxel grid: {'; '.join(problems)}. Labels are never resampled silently; "
            "export the mask on the image's grid (or resample it yourself and check the result)"
        )


def _integer_labels(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if np.all(np.mod(array, 1) == 0):
            return array.astype(np.int32)
        return array.astype(np.float32)  # probabilistic labels stay as they are
    if array.dtype in (np.uint16, np.uint32, np.uint64, np.int64):
        return array.astype(np.int32)
    return array
