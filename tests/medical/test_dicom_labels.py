"""Labels on the image grid: NIfTI and DICOM SEG; a mismatch is an error."""

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import tilted_orientation, write_series
from pydicom.sr.codedict import codes

from scalpel.core.errors import DataError
from scalpel.medical.dicom import DeidOptions, deidentify_folder, load_label, load_series, scan_folder


@pytest.fixture
def image_and_mask(tmp_path):
    written = write_series(tmp_path / "ct", n=5, orientation=tilted_orientation(12.0))
    image = load_series(tmp_path / "ct")
    mask = np.zeros(image.shape[1:], dtype=np.uint8)  # (X, Y, Z)
    mask[2:7, 3:8, 1:4] = 1
    mask[8:10, 1:3, 4] = 2
    return written, image, mask


def test_nifti_on_the_image_grid_loads(tmp_path, image_and_mask):
    _, image, mask = image_and_mask
    nib.save(nib.Nifti1Image(mask, image.affine.numpy()), tmp_path / "mask.nii.gz")
    label = load_label(tmp_path / "mask.nii.gz", image)
    assert label.shape == (1, *mask.shape)
    np.testing.assert_array_equal(label[0].numpy(), mask)
    np.testing.assert_allclose(label.affine.numpy(), image.affine.numpy())


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda m, a: (m[:-1], a), "shape"),
        (lambda m, a: (m, a @ np.diag([2.0, 1, 1, 1])), "spacing"),
        (lambda m, a: (m, a + np.array([[0, 0, 0, 1.5]] * 3 + [[0, 0, 0, 0]])), "origin"),
        (lambda m, a: (m, a @ np.diag([-1.0, 1, 1, 1])), "flipped or permuted"),
    ],
    ids=["shape", "spacing", "origin", "flip"],
)
def test_nifti_off_the_grid_is_an_error(tmp_path, image_and_mask, change, message):
    _, image, mask = image_and_mask
    data, affine = change(mask, image.affine.numpy())
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "bad.nii")
    with pytest.raises(DataError, match=f"not on the image's voxel grid.*{message}.*never resampled"):
        load_label(tmp_path / "bad.nii", image)


def _seg(written, mask_xyz, path):
    sources = [pydicom.dcmread(p) for p in written.paths]
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Neoplasm,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=(mask_xyz.transpose(2, 1, 0) > 0).astype(np.uint8),  # (frames, rows, cols)
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="scalpel-tests",
        manufacturer_model_name="factory",
        software_versions="0",
        device_serial_number="1",
    )
    seg.save_as(path)


def test_dicom_seg_aligns_by_referenced_images(tmp_path, image_and_mask):
    written, image, mask = image_and_mask
    _seg(written, mask, tmp_path / "seg.dcm")
    label = load_label(tmp_path / "seg.dcm", image)
    np.testing.assert_array_equal(label[0].numpy(), (mask > 0).astype(label.numpy().dtype))
    assert scan_folder(tmp_path).segmentations() == [tmp_path / "seg.dcm"]


def test_dicom_seg_of_another_series_is_an_error(tmp_path, image_and_mask):
    written, _, mask = image_and_mask
    _seg(written, mask, tmp_path / "seg.dcm")
    write_series(tmp_path / "other", n=5, seed=7)
    other = load_series(tmp_path / "other")
    with pytest.raises(DataError, match="not in the image series"):
        load_label(tmp_path / "seg.dcm", other)


def test_seg_still_fits_its_image_after_deidentification(tmp_path, image_and_mask):
    written, _, mask = image_and_mask
    _seg(written, mask, tmp_path / "ct" / "seg.dcm")
    report = deidentify_folder(tmp_path / "ct", tmp_path / "anon", DeidOptions(key="k"))
    inventory = scan_folder(tmp_path / "anon")
    image = load_series(inventory.series[0])
    label = load_label(inventory.segmentations()[0], image)
    assert len(report.written) == 6
    np.testing.assert_array_equal(label[0].numpy(), (mask > 0).astype(label.numpy().dtype))


def test_wrong_kind_of_label_file(tmp_path, image_and_mask):
    written, image, _ = image_and_mask
    with pytest.raises(DataError, match="not a Segmentation"):
        load_label(written.paths[0], image)
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DataError, match="neither NIfTI"):
        load_label(tmp_path / "x.txt", image)
    with pytest.raises(DataError, match="does not exist"):
        load_label(tmp_path / "none.nii.gz", image)


def test_dictionary_transform_feeds_monai_spatial_transforms(tmp_path, image_and_mask):
    from monai.transforms import Compose, Orientationd, Spacingd

    from scalpel.medical.dicom import LoadDicomSeriesd

    _, image, mask = image_and_mask
    nib.save(nib.Nifti1Image(mask, image.affine.numpy()), tmp_path / "mask.nii.gz")
    pipeline = Compose([
        LoadDicomSeriesd(window="abdomen"),
        Orientationd(["image", "label"], axcodes="RAS"),
        Spacingd(["image", "label"], pixdim=(1.0, 1.0, 2.5), mode=("bilinear", "nearest")),
    ])
    sample = pipeline({"image": tmp_path / "ct", "label": tmp_path / "mask.nii.gz"})
    assert sample["image"].shape == sample["label"].shape
    np.testing.assert_allclose(sample["image"].affine.numpy(), sample["label"].affine.numpy(), atol=1e-5)
    assert set(np.unique(sample["label"].numpy())) <= {0, 1, 2} and sample["label"].numpy().max() == 2
    assert 0.0 <= float(sample["image"].min()) and float(sample["image"].max()) <= 1.0
