"""A NIfTI volume written as a site case (for data that exists only as NIfTI, e.g. mricron-data):
the DICOM series reads back with the NIfTI's values and geometry, and its label is on the grid."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from scalpel.core.errors import DataError
from scalpel.medical.dicom import load_label, load_series
from scalpel.medical.site import site_records, write_case_from_nifti
from scalpel.medical.transforms import PreprocessConfig, cached_dataset, segmentation_transforms


@pytest.mark.parametrize("affine_diag, dtype", [((1.0, 1.0, 2.0), np.float32), ((-1.5, 1.5, 1.5), np.uint8)])
def test_nifti_case_round_trips_values_and_geometry(tmp_path, affine_diag, dtype):
    rng = np.random.default_rng(0)
    image = (rng.random((12, 10, 9)) * 200).astype(dtype)
    label = (image > 100).astype(np.uint8)
    affine = np.diag([*affine_diag, 1.0])
    affine[:3, 3] = (-7.0, 3.0, 11.0)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "t1.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "mask.nii.gz")
    folder = write_case_from_nifti(tmp_path / "t1.nii.gz", tmp_path / "mask.nii.gz", tmp_path / "site", "c0")
    volume = load_series(folder)
    assert volume.meta["modality"] == "MR" and volume.shape == (1, 12, 10, 9)
    back = load_label(tmp_path / "site" / "labels" / "c0.nii.gz", volume)
    # whatever slice order DICOM needed, image and label stay together and the values are kept
    np.testing.assert_array_equal(back[0].numpy(), (volume[0].numpy() > 100).astype(np.uint8))
    tolerance = 0 if dtype == np.uint8 else 200 / 65000
    world = volume.affine.numpy() @ np.array([2, 3, 4, 1.0])
    voxel = np.round(np.linalg.inv(affine) @ world).astype(int)[:3]
    assert abs(float(volume[0, 2, 3, 4]) - float(image[tuple(voxel)])) <= tolerance
    records, _, skipped = site_records(tmp_path / "site")
    assert [r["case"] for r in records] == ["c0"] and not skipped
    config = PreprocessConfig(window=(0, 200), patch=(8, 8, 8), orientation="")
    sample = cached_dataset(records, segmentation_transforms(config, train=False))[0]  # what a run reads
    assert tuple(sample["image"].shape) == (1, 12, 10, 9) == tuple(sample["label"].shape)


def test_nifti_case_slab_and_bad_label(tmp_path):
    image = np.arange(16 * 16 * 20, dtype=np.int16).reshape(16, 16, 20)
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "t1.nii.gz")
    folder = write_case_from_nifti(tmp_path / "t1.nii.gz", np.zeros((16, 16, 20), np.uint8), tmp_path / "site", "slab",
                                   step=2, z_range=(2, 8))
    volume = load_series(folder)
    np.testing.assert_array_equal(volume[0].numpy(), image[::2, ::2, ::2][:, :, 2:8])
    np.testing.assert_allclose(volume.affine.numpy()[:3, 3], [0.0, 0.0, 4.0], atol=1e-4)
    with pytest.raises(DataError, match="same shape"):
        write_case_from_nifti(tmp_path / "t1.nii.gz", np.zeros((16, 16, 19), np.uint8), tmp_path / "site", "bad")
