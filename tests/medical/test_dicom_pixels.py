"""Modality values equal pydicom's own apply_modality_lut on every real test file; bad pixel data."""

import os

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.pixels import apply_modality_lut
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import HTJ2KLossless

from scalpel.core.errors import DataError
from scalpel.medical.dicom import UnsupportedTransferSyntaxError, load_series, scan_folder
from scalpel.medical.dicom.pixels import check_transfer_syntax


def _decodable_images() -> list[str]:
    """Every file of the pydicom wheel and pydicom-data that holds an image pydicom itself decodes."""
    found = []
    for path in sorted(p for p in get_testdata_files() if os.path.isfile(p)):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if "Rows" in ds and ds.get("SOPClassUID") != "1.2.840.10008.5.1.4.1.1.66.4":
            found.append(path)
    return found


IMAGES = _decodable_images()
#: 120 colour JPEG frames: decoding them twice takes ~30 s on CPU.
SLOW = {"color3d_jpeg_baseline.dcm"}


def test_the_corpus_covers_the_syntaxes_the_issue_names():
    syntaxes = {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.get("TransferSyntaxUID", "")) for p in IMAGES}
    for uid in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.80",
                "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70"):
        assert uid in syntaxes
    assert len(IMAGES) > 100


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.integration) if os.path.basename(p) in SLOW else p for p in IMAGES],
    ids=[os.path.basename(p) for p in IMAGES],
)
def test_values_equal_pydicom_modality_lut(path):
    ds = pydicom.dcmread(path)
    try:
        reference = ds.pixel_array
    except Exception:  # pydicom cannot decode it either (damaged or unsupported): a clear DataError is the answer
        with pytest.raises(DataError):
            load_series(scan_folder(path, strict=True, drop_localizers=False).series[0])
        return
    image = load_series(scan_folder(path, strict=True, drop_localizers=False).series[0], invert_monochrome1_values=False)
    frames = int(ds.get("NumberOfFrames") or 1)
    reference = reference[None] if frames == 1 else reference
    if int(ds.get("SamplesPerPixel", 1)) == 1:
        shim = ds
        if "RescaleSlope" not in ds and not ds.get("ModalityLUTSequence") and ds.get("SharedFunctionalGroupsSequence"):
            transform = ds.SharedFunctionalGroupsSequence[0].get("PixelValueTransformationSequence")
            if transform:  # enhanced objects keep the rescale in the functional groups
                shim = pydicom.Dataset()
                shim.RescaleSlope, shim.RescaleIntercept = transform[0].RescaleSlope, transform[0].RescaleIntercept
        reference = apply_modality_lut(reference, shim)[..., None]
    reference = np.asarray(reference)[image.meta["frame_indices"]].astype(np.float32)
    ours = image.numpy().transpose(3, 2, 1, 0)  # back to (frames, rows, cols, C)
    np.testing.assert_array_equal(ours, reference)


def test_truncated_file_is_a_clear_error():
    path = get_testdata_file("MR_truncated.dcm", download=False)
    inventory = scan_folder(path)  # the scan finds it: the pixel data is shorter than the image
    assert inventory.series == [] and "pixel data is truncated" in inventory.errors[0][1]
    with pytest.raises(DataError, match="MR_truncated.dcm: pixel data is truncated"):
        scan_folder(path, strict=True)


@pytest.mark.skipif(get_decoder(HTJ2KLossless).is_available, reason="an HTJ2K decoder (pylibjpeg-openjpeg) is installed")
def test_unsupported_syntax_names_it_and_the_package(tmp_path):
    with pytest.raises(UnsupportedTransferSyntaxError, match=r"High-Throughput JPEG 2000.*pip install pylibjpeg"):
        check_transfer_syntax(HTJ2KLossless, where="x.dcm")
    ds = pydicom.dcmread(get_testdata_file("JPEG2000.dcm", download=False))
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    ds.save_as(tmp_path / "htj2k.dcm")
    with pytest.raises(UnsupportedTransferSyntaxError, match="htj2k.dcm: transfer syntax 'High-Throughput JPEG 2000"):
        load_series(scan_folder(tmp_path).series[0])


def test_unknown_syntax_uid_is_reported():
    with pytest.raises(UnsupportedTransferSyntaxError, match="not a known DICOM transfer syntax"):
        check_transfer_syntax("1.2.3.4", where="y.dcm")
