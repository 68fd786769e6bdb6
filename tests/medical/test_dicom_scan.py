"""Folder scan: grouping, splitting, localizers, bad files, and `scalpel dicom inspect`."""

import json
import shutil
from pathlib import Path

import pydicom
import pytest
from dicom_factory import AXIAL, tilted_orientation, write_series
from pydicom.data import get_testdata_file

from scalpel.core.cli import main
from scalpel.core.errors import DataError
from scalpel.medical.dicom import scan_folder

DICOMDIR_TESTS = Path(get_testdata_file("DICOMDIR", download=False)).parent


def test_two_series_in_one_folder_with_junk_and_a_truncated_file(tmp_path):
    a = write_series(tmp_path / "mixed", n=4, seed=1, study_uid="1.2.3.4")
    b = write_series(tmp_path / "mixed", n=3, seed=2, study_uid="1.2.3.4", orientation=tilted_orientation(10))
    (tmp_path / "mixed" / "notes.txt").write_text("not dicom")
    (tmp_path / "mixed" / "Thumbs.db").write_bytes(b"\x00" * 300)
    truncated = tmp_path / "mixed" / "cut"
    truncated.write_bytes(a.paths[0].read_bytes()[:400])
    inventory = scan_folder(tmp_path)
    assert sorted(len(s.files) for s in inventory.series) == [3, 4]
    assert {s.series_uid for s in inventory.series} == {a.datasets[0].SeriesInstanceUID, b.datasets[0].SeriesInstanceUID}
    assert list(inventory.patients()) == ["PID-12345"]
    assert len(inventory.patients()["PID-12345"]["1.2.3.4"]) == 2
    assert len(inventory.non_dicom) == 2
    assert [p for p, _ in inventory.errors] == [truncated]
    assert "truncated" in inventory.errors[0][1]
    with pytest.raises(DataError, match="cut: image header .* without pixel data; the file is truncated"):
        scan_folder(tmp_path, strict=True)


def test_file_without_pixel_data_is_reported(tmp_path):
    written = write_series(tmp_path, n=3)
    ds = pydicom.dcmread(written.paths[0])
    del ds.PixelData
    ds.save_as(written.paths[0])
    inventory = scan_folder(tmp_path)
    assert len(inventory.series[0].files) == 2
    assert "without pixel data" in inventory.errors[0][1]


def test_series_split_by_echo_and_repeated_acquisitions(tmp_path):
    uid = "1.2.826.0.1.99.1"
    write_series(tmp_path, n=3, series_uid=uid, seed=1, extra={"EchoNumbers": 1})
    write_series(tmp_path, n=3, series_uid=uid, seed=2, extra={"EchoNumbers": 2})
    write_series(tmp_path / "dyn", n=3, series_uid="1.2.826.0.1.99.2", seed=3, extra={"AcquisitionNumber": 1})
    write_series(tmp_path / "dyn", n=3, series_uid="1.2.826.0.1.99.2", seed=4, extra={"AcquisitionNumber": 2})
    splits = sorted(s.split for s in scan_folder(tmp_path).series)
    assert splits == ["acquisition 1", "acquisition 2", "echo 1", "echo 2"]


def test_a_few_images_in_another_plane_are_dropped_as_localizers(tmp_path):
    uid = "1.2.826.0.1.99.3"
    write_series(tmp_path, n=6, series_uid=uid, orientation=AXIAL, seed=1)
    scout = write_series(tmp_path, n=1, series_uid=uid, orientation=(0, 1, 0, 0, 0, -1), seed=2)
    flagged = write_series(tmp_path, n=1, series_uid="1.2.826.0.1.99.4", seed=3, extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    inventory = scan_folder(tmp_path)
    assert [len(s.files) for s in inventory.series] == [6]
    reasons = dict(inventory.dropped)
    assert "orientation other than the 6 slices" in reasons[scout.paths[0]]
    assert "ImageType contains LOCALIZER" in reasons[flagged.paths[0]]
    assert len(scan_folder(tmp_path, drop_localizers=False).series) == 3


def test_real_dicomdir_folder():
    inventory = scan_folder(DICOMDIR_TESTS)
    # DICOMDIR files are indexes, not images; CT2N holds two LOCALIZER images
    assert sum(1 for _, sop in inventory.non_image if sop == "1.2.840.10008.1.3.10") >= 7
    assert any("CT2N" in str(p) and "LOCALIZER" in why for p, why in inventory.dropped)
    pilot = [s for s in inventory.series if s.series_uid.endswith(".17")]
    assert sorted(s.split for s in pilot) == ["orientation 1/3", "orientation 2/3", "orientation 3/3"]
    gap = inventory.find("1196530851.28319.0.2")
    assert any("uneven slice spacing" in p for p in gap.problems)
    assert inventory.errors == [(p, m) for p, m in inventory.errors if "TINY_ALPHA" in str(p)]  # headers without pixels


def test_inspect_command(tmp_path, capsys):
    write_series(tmp_path / "in", n=4, description="Chest CT")
    (tmp_path / "in" / "readme.txt").write_text("x")
    assert main(["dicom", "inspect", str(tmp_path / "in")]) == 0
    text = capsys.readouterr().out
    assert "patient PID-12345" in text and "Chest CT" in text and "12x10x4" in text and "0.5x0.75x2.5 mm" in text
    assert "non-DICOM files skipped: 1" in text
    assert main(["dicom", "inspect", "--json", str(tmp_path / "in")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["non_dicom_skipped"] == 1
    assert main(["dicom", "inspect", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_copy_of_pydicom_series_keeps_grouping(tmp_path):
    shutil.copytree(DICOMDIR_TESTS / "98892001", tmp_path / "a")
    inventory = scan_folder(tmp_path)
    assert [len(s.files) for s in inventory.series] == [5]
