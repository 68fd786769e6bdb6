"""De-identification on the bytes (deid_stream) is byte for byte what pydicom's path writes, or is not taken."""

import io
import os
import random

import pydicom
import pytest
from dicom_factory import write_series
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from scalpel.medical.dicom.deid import DeidOptions, Pseudonyms, deidentify_dataset
from scalpel.medical.dicom.deid_stream import StreamDeidentifier
from scalpel.medical.dicom.deid_walk import Part10Instance
from scalpel.medical.dicom.reading import read_dicom
from scalpel.medical.pacs.query import SeriesRef
from scalpel.medical.pacs.sink import InstanceSink

OPTIONS = [
    DeidOptions(key="k1"),
    DeidOptions(key="k2", retain_longitudinal_dates=True, clean_descriptors=True),
    DeidOptions(key="k1", retain_device_identity=True, keep_date_attributes=("RTPlanDate",)),
    DeidOptions(key="k3", safe_private_tags=("0019,ACME SAFE,01",), max_date_shift_days=30),
]


def pydicom_path(data: bytes, options: DeidOptions) -> bytes:
    """What `scalpel dicom deid` writes for these bytes (read whole, profile, save_as)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    deidentify_dataset(ds, options, Pseudonyms(options.key, options.max_date_shift_days))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def stream_path(data: bytes, deidentifier: StreamDeidentifier) -> bytes | None:
    instance = Part10Instance.parse(data)
    return None if instance is None else b"".join(bytes(p) for p in deidentifier.pieces(instance))


def varied_files(tmp_path, count: int = 24) -> list[bytes]:
    """CT slices of two patients with what the profile treats in every way: names, dates, times, UIDs
    (single and multiple), sequences (references, items to clean), private blocks, odd padding,
    text with a specific character set, a late date not in the table, group lengths."""
    rng = random.Random(7)
    files = []
    for patient in ("Doe^Jane", "Roe^Richard"):
        series = write_series(tmp_path / patient, n=count // 2, rows=8, cols=8, patient_name=patient,
                              patient_id=f"PID-{patient[:3]}", seed=len(patient))
        for k, path in enumerate(series.paths):
            ds = pydicom.dcmread(path)
            ds.ContentTime = f"10{k:02d}{rng.randint(10, 59)}.{rng.randint(0, 999999)}"
            ds.AcquisitionDateTime = f"2020010{1 + k % 9}101500"
            ds.ImageComments = f"slice {k} of {patient} 12345678"
            ds.RTPlanDate = "20191231" if k % 2 else "2019123"  # a valid and an invalid date
            ds.OtherPatientIDs = ["OLD-1", f"OLD-{k}"] if k % 3 else "OLD-1"
            ds.ReferencedImageSequence = Sequence([_reference(series.datasets[(k + 1) % len(series.paths)])])
            ds.ProcedureCodeSequence = Sequence([_code(f"CT{k % 2}", f"Chest for {patient}")])
            ds.ManufacturerModelName = " padded " if k % 4 == 0 else "Scanner 1"
            if k % 3 == 0:
                ds.SpecificCharacterSet = "ISO_IR 100"
                ds.InstitutionName = "Hôpital Général"
            block = ds.private_block(0x0019, "ACME SAFE", create=True)
            block.add_new(0x01, "LO", f"keep {k}")
            block.add_new(0x02, "LO", "drop me")
            ds.add_new(0x00291010, "LO", "no creator")
            if k % 5 == 0:
                ds.add_new(0x00080000, "UL", 0)  # a group length, which pydicom's writer drops
            ds.save_as(path, enforce_file_format=True)
            files.append(path.read_bytes())
    return files


def _reference(ds: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    return item


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "99LOCAL", meaning
    return item


@pytest.mark.parametrize("options", OPTIONS, ids=["basic", "dates-descriptors", "device-kept-dates", "safe-private"])
def test_the_byte_path_writes_what_pydicom_writes_for_many_files_and_options(tmp_path, options):
    files = varied_files(tmp_path)
    shared = StreamDeidentifier(options, Pseudonyms(options.key, options.max_date_shift_days))  # learns across files
    for n, data in enumerate(files):
        expected = pydicom_path(data, options)
        fresh = StreamDeidentifier(options, Pseudonyms(options.key, options.max_date_shift_days))
        assert stream_path(data, fresh) == expected, f"file {n}, nothing learnt yet"
        assert stream_path(data, shared) == expected, f"file {n}, after {n} others"
    # the byte path must really have been taken, and pixel data not have been copied into a new object
    instance = Part10Instance.parse(files[0])
    pieces = shared.pieces(instance)
    assert any(isinstance(p, memoryview) and len(p) > 8 * 8 * 2 for p in pieces)


def test_every_pydicom_test_file_the_byte_path_takes_comes_out_the_same():
    taken = 0
    options = DeidOptions(key="k", clean_descriptors=True, retain_longitudinal_dates=True)
    deidentifier = StreamDeidentifier(options, Pseudonyms("k"))
    for path in sorted(p for p in get_testdata_files() if os.path.isfile(p)):
        data = open(path, "rb").read()
        try:
            expected = pydicom_path(data, options)
        except Exception:  # noqa: BLE001 - files pydicom cannot read or write: not this test's business
            continue
        found = stream_path(data, deidentifier)
        if found is not None:
            taken += 1
            assert found == expected, os.path.basename(path)
    assert taken >= 50


@pytest.mark.parametrize("name", ["MR_small_implicit.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm"])
def test_implicit_vr_compressed_big_endian_and_deflated_files_fall_back_to_pydicom(tmp_path, name):
    path = get_testdata_file(name, download=False)
    data = open(path, "rb").read()
    syntax = str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    assert syntax != "1.2.840.10008.1.2.1"
    assert Part10Instance.parse(data) is None
    # a pull de-identifying it gives what `scalpel dicom deid` gives, through pydicom
    ds = read_dicom(path)
    options = DeidOptions(key="k")
    sink = InstanceSink(tmp_path / "pulled", options)
    ref = SeriesRef(study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID))
    sop_uid, _ = sink.accept(bytearray(data), ref, None)
    written = sink.target(ref, sop_uid).read_bytes()
    assert written == pydicom_path(data, options)


def test_a_truncated_file_is_not_walked_and_a_pull_calls_it_damaged(tmp_path):
    data = write_series(tmp_path / "in", n=1, rows=16, cols=16).paths[0].read_bytes()
    assert Part10Instance.parse(data[: len(data) - 100]) is None  # cut inside the pixel data
    instance = Part10Instance.parse(data)
    assert instance is not None and instance.uid(0x00080018) == str(pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID)
