"""Volumes from series: slice order, geometry (LPS/RAS affine), modality values, MONAI interop."""

import numpy as np
import pydicom
import pytest
import torch
from dicom_factory import AXIAL, tilted_orientation, write_series
from monai.transforms import Orientation, Spacing
from pydicom.data import get_testdata_file

from scalpel.core.errors import DataError
from scalpel.medical.dicom import LPS_TO_RAS, SliceSpacingWarning, load_series, scan_folder


def _voxel_to_lps(written, i, j, k):
    """PS3.3 C.7.6.2.1.1, written independently of the loader."""
    o = np.asarray(written.orientation)
    dr, dc = written.pixel_spacing
    return written.origin + i * dc * o[:3] + j * dr * o[3:] + k * written.step


@pytest.mark.parametrize("orientation", [AXIAL, tilted_orientation(25.0)], ids=["axial", "tilted"])
def test_shuffled_files_are_sorted_by_position_and_the_affine_maps_voxels(tmp_path, orientation):
    written = write_series(tmp_path, n=7, orientation=orientation, shuffle=True)
    image = load_series(tmp_path)
    assert image.shape == (1, 12, 10, 7)  # (C, columns, rows, slices)
    np.testing.assert_array_equal(image[0].numpy(), written.hu.transpose(2, 1, 0).astype(np.float32))
    lps = np.asarray(image.meta["lps_affine"])
    ras = image.affine.numpy()
    np.testing.assert_allclose(ras, LPS_TO_RAS @ lps)
    for i, j, k in [(0, 0, 0), (11, 0, 0), (0, 9, 0), (3, 7, 6), (11, 9, 6)]:
        np.testing.assert_allclose(lps @ [i, j, k, 1], [*_voxel_to_lps(written, i, j, k), 1], atol=2e-3)
        ras_point = _voxel_to_lps(written, i, j, k) * [-1, -1, 1]
        np.testing.assert_allclose((ras @ [i, j, k, 1])[:3], ras_point, atol=2e-3)
    np.testing.assert_allclose(image.meta["spacing"], [0.5, 0.75, 2.5], atol=1e-3)
    assert image.meta["sop_instance_uids"] == [str(d.SOPInstanceUID) for d in written.datasets]
    assert image.meta["problems"] == []


def test_order_ignores_instance_number(tmp_path):
    written = write_series(tmp_path, n=5, shuffle=False)
    for path, number in zip(written.paths, [5, 1, 4, 2, 3]):  # scramble InstanceNumber
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number
        ds.save_as(path)
    image = load_series(tmp_path)
    np.testing.assert_array_equal(image[0].numpy(), written.hu.transpose(2, 1, 0).astype(np.float32))


def test_missing_slice_warns_and_keeps_true_geometry(tmp_path):
    write_series(tmp_path, n=8, skip=(4,))
    inventory = scan_folder(tmp_path)
    assert any("uneven slice spacing" in p for p in inventory.series[0].problems)
    with pytest.warns(SliceSpacingWarning, match="1 slice"):
        image = load_series(inventory.series[0])
    assert image.shape[-1] == 7
    assert any("missing" in p for p in image.meta["problems"])


def test_inconsistent_rows_columns_is_a_clear_error(tmp_path):
    written = write_series(tmp_path, n=4)
    ds = pydicom.dcmread(written.paths[2])
    ds.Rows, ds.Columns = 5, 6
    ds.PixelData = np.zeros((5, 6), np.uint16).tobytes()
    ds.save_as(written.paths[2])
    inventory = scan_folder(tmp_path)
    assert any("different sizes" in p for p in inventory.series[0].problems)
    with pytest.raises(DataError, match=r"mixes image sizes.*5x6: 1 file"):
        load_series(inventory.series[0])


def test_folder_with_two_series_asks_which(tmp_path):
    write_series(tmp_path, n=3, seed=1)
    write_series(tmp_path, n=4, seed=2)
    with pytest.raises(DataError, match="holds 2 series"):
        load_series(tmp_path)


def test_monai_transforms_apply_directly(tmp_path):
    write_series(tmp_path, n=6, orientation=tilted_orientation(15.0))
    image = load_series(tmp_path)
    reoriented = Orientation(axcodes="RAS")(image)
    resampled = Spacing(pixdim=(1.0, 1.0, 2.0))(image)
    assert reoriented.shape[0] == 1 and resampled.shape[0] == 1
    np.testing.assert_allclose(np.linalg.norm(resampled.affine.numpy()[:3, :3], axis=0), [1.0, 1.0, 2.0], atol=1e-4)


def test_windowing_presets_and_file_window(tmp_path):
    written = write_series(tmp_path, n=3)
    hu = written.hu.transpose(2, 1, 0)
    brain = load_series(tmp_path, window="brain")[0].numpy()
    expected = np.clip((hu - (40 - 0.5)) / (80 - 1) + 0.5, 0, 1)
    np.testing.assert_allclose(brain, expected, atol=1e-6)
    from_file = load_series(tmp_path, window="file")  # WindowCenter 40, WindowWidth 400
    assert from_file.meta["window"] == [40.0, 400.0]
    assert float(from_file.min()) >= 0.0 and float(from_file.max()) <= 1.0
    with pytest.raises(Exception, match="unknown window preset 'liverish'.*brain"):
        load_series(tmp_path, window="liverish")


def test_monochrome1_values_are_mirrored(tmp_path):
    written = write_series(tmp_path, n=2, extra={"PhotometricInterpretation": "MONOCHROME1"})
    image = load_series(tmp_path)[0].numpy()
    lo, hi = 0 * 1.0 - 1024, 65535 * 1.0 - 1024
    np.testing.assert_allclose(image, (lo + hi) - written.hu.transpose(2, 1, 0), atol=1e-3)
    raw = load_series(tmp_path, invert_monochrome1_values=False)[0].numpy()
    np.testing.assert_array_equal(raw, written.hu.transpose(2, 1, 0).astype(np.float32))


def test_enhanced_ct_geometry_comes_from_functional_groups():
    path = get_testdata_file("eCT_Supplemental.dcm", download=False)
    image = load_series(scan_folder(path).series[0])
    ds = pydicom.dcmread(path)
    positions = [np.asarray(f.PlanePositionSequence[0].ImagePositionPatient, float) for f in ds.PerFrameFunctionalGroupsSequence]
    order = image.meta["frame_indices"]
    np.testing.assert_allclose(np.asarray(image.meta["lps_affine"])[:3, 3], positions[order[0]])
    # HU through the frames' Pixel Value Transformation (shared group: intercept -1024)
    stored = ds.pixel_array[order].astype(np.float64) - 1024.0
    np.testing.assert_array_equal(image[0].numpy(), stored.transpose(2, 1, 0).astype(np.float32))


@pytest.mark.parametrize(
    "reference,variants",
    [
        ("MR_small.dcm", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                          "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small_expb.dcm"]),
        ("emri_small.dcm", ["emri_small_RLE.dcm", "emri_small_jpeg_2k_lossless.dcm", "emri_small_jpeg_ls_lossless.dcm",
                            "emri_small_big_endian.dcm"]),
    ],
)
def test_compressed_and_big_endian_syntaxes_give_the_same_voxels(reference, variants):
    expected = load_series(scan_folder(get_testdata_file(reference, download=False)).series[0])
    for name in variants:
        got = load_series(scan_folder(get_testdata_file(name, download=False)).series[0])
        torch.testing.assert_close(got.as_tensor(), expected.as_tensor(), rtol=0, atol=0, msg=name)
        np.testing.assert_allclose(got.affine.numpy(), expected.affine.numpy())


def test_dicomdir_series_loads_and_localizers_are_dropped():
    folder = get_testdata_file("DICOMDIR", download=False).rsplit("/", 1)[0]
    inventory = scan_folder(folder)
    smartscore = inventory.find("1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6")
    image = load_series(smartscore)
    assert image.shape == (1, 16, 16, 5)
    np.testing.assert_allclose(image.meta["spacing"], [0.488281, 0.488281, 2.5], atol=1e-5)
    z = [float(pydicom.dcmread(f.path).ImagePositionPatient[2]) for f in smartscore.files]
    assert np.asarray(image.meta["lps_affine"])[2, 3] == pytest.approx(min(z))
