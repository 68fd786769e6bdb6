"""De-identification: the PS3.15 Annex E Basic Profile on every test file, options, the folder run."""

import copy
import csv
import hashlib
import os
from datetime import date

import pydicom
import pytest
from dicom_factory import write_series
from pydicom.data import get_testdata_files

import scalpel.medical.dicom.deid_folder as deid_folder
from scalpel.core.cli import main
from scalpel.core.errors import ConfigError, ScalpelError
from scalpel.medical.dicom import BurnedInAnnotationError, DeidOptions, deidentify_dataset, deidentify_folder, scan_folder
from scalpel.medical.dicom.annex_e import BASIC_PROFILE, BASIC_PROFILE_TAGS, resolve
from scalpel.medical.dicom.deid import Pseudonyms


def _all_dicom_files() -> list[str]:
    found = []
    for path in sorted(p for p in get_testdata_files() if os.path.isfile(p)):
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        found.append(path)
    return found


ALL = _all_dicom_files()


def test_table_is_the_standard_size_and_every_keyword_is_in_the_dictionary():
    assert len(BASIC_PROFILE) == len(BASIC_PROFILE_TAGS) > 250
    assert BASIC_PROFILE["PatientName"] == "Z" and BASIC_PROFILE["SOPInstanceUID"] == "U"
    assert BASIC_PROFILE["InstitutionName"] == "X/Z/D" and BASIC_PROFILE["PatientAddress"] == "X"


def _check_profile(original: pydicom.Dataset, out: pydicom.Dataset, pseudonym: str, where: str, problems: list[str]) -> None:
    for elem in original:
        tag = int(elem.tag)
        if elem.tag.is_private:
            if elem.tag in out:
                problems.append(f"{where}{elem.tag}: private tag kept")
            continue
        if tag not in BASIC_PROFILE_TAGS:
            if elem.VR == "SQ" and elem.tag in out:
                for i, (a, b) in enumerate(zip(elem.value, out[elem.tag].value)):
                    _check_profile(a, b, pseudonym, f"{where}{elem.keyword}[{i}].", problems)
            continue
        keyword, action = BASIC_PROFILE_TAGS[tag]
        action = resolve(keyword, action)
        kept = out.get(elem.tag)
        empty_before = elem.value in (None, "", b"") or (elem.VR == "SQ" and len(elem.value) == 0)
        if action == "X" and kept is not None:
            problems.append(f"{where}{keyword}: should be removed")
        elif action == "Z" and kept is not None and kept.value not in (None, "", b"", pseudonym) and not (
            kept.VR == "SQ" and len(kept.value) == 0
        ):
            problems.append(f"{where}{keyword}: should be empty")
        elif action == "D" and kept is not None and not empty_before and kept.value == elem.value:
            problems.append(f"{where}{keyword}: should be a dummy")
        elif action == "U" and not empty_before:
            if kept is None or kept.value == elem.value or not str(kept.value if kept.VM == 1 else kept.value[0]).startswith("2.25."):
                problems.append(f"{where}{keyword}: UID not replaced")
        elif action == "R" and kept is not None:
            for i, (a, b) in enumerate(zip(elem.value, kept.value)):
                _check_profile(a, b, pseudonym, f"{where}{keyword}[{i}].", problems)


@pytest.mark.parametrize("path", ALL, ids=[os.path.basename(p) for p in ALL])
def test_every_basic_profile_attribute_is_removed_or_replaced(path):
    original = pydicom.dcmread(path, stop_before_pixels=True)
    out = copy.deepcopy(original)
    pseudonyms = Pseudonyms("test-key")
    changes = deidentify_dataset(out, DeidOptions(), pseudonyms)
    problems: list[str] = []
    _check_profile(original, out, pseudonyms.patient(str(original.get("PatientID", "") or original.get("PatientName", "") or "")), "", problems)
    assert problems == []
    assert out.PatientIdentityRemoved == "YES"
    assert out.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert out.LongitudinalTemporalInformationModified == "REMOVED"
    assert all(c.tag.startswith("(") for c in changes)
    if "SOPInstanceUID" in original and getattr(original, "file_meta", None) is not None:
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != original.SOPInstanceUID


def _digest(folder) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_folder_run_keeps_grouping_and_never_touches_input(tmp_path):
    src = tmp_path / "in"
    write_series(src / "Doe_Jane", n=3, seed=1, study_uid="1.2.3.9", prefix="Doe^Jane_")
    write_series(src / "Doe_Jane", n=2, seed=2, study_uid="1.2.3.9")
    (src / "notes.txt").write_text("hello")
    (src / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00")
    before = _digest(src)
    report = deidentify_folder(src, tmp_path / "out", DeidOptions(key="k1"))
    assert _digest(src) == before
    assert len(report.written) == 5 and report.non_dicom == 1 and len(report.errors) == 1
    inventory = scan_folder(tmp_path / "out")
    assert sorted(len(s.files) for s in inventory.series) == [2, 3]
    assert len({s.study_uid for s in inventory.series}) == 1 and "1.2.3.9" not in {s.study_uid for s in inventory.series}
    assert all(p.name.startswith("2.25.") for p in report.written)
    # the same key gives the same UIDs in a second run; another key different ones
    again = deidentify_folder(src, tmp_path / "out2", DeidOptions(key="k1"))
    other = deidentify_folder(src, tmp_path / "out3", DeidOptions(key="k2"))
    names = lambda r, root: sorted(str(p.relative_to(root)) for p in r.written)  # noqa: E731
    assert names(again, tmp_path / "out2") == names(report, tmp_path / "out")
    assert set(names(other, tmp_path / "out3")).isdisjoint(names(report, tmp_path / "out"))


def test_audit_log_never_holds_removed_values(tmp_path):
    written = write_series(tmp_path / "in", n=2, prefix="Doe^Jane_")
    report = deidentify_folder(tmp_path / "in", tmp_path / "out", DeidOptions(retain_longitudinal_dates=True, clean_descriptors=True))
    text = report.audit_log.read_text()
    assert report.audit_log.parent == tmp_path and report.audit_log.name == "out-deid-audit.csv"
    rows = list(csv.DictReader(text.splitlines()))
    assert {"(0010,0010)", "(0008,0080)", "(0020,000D)"} <= {r["tag"] for r in rows}
    ds = written.datasets[0]
    for secret in ["Doe", "Jane", "PID-12345", "ACC777", "General Hospital", "House", "20200102", "19700101",
                   str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), "CT-STATION-9", "SN-4242"]:
        assert secret not in text, secret
    assert "name withheld" in text


def test_options_dates_device_descriptors_private(tmp_path):
    src = tmp_path / "in"
    a = write_series(src, n=1, seed=1, extra={"StudyDate": "20200102"})
    b = write_series(src, n=1, seed=2, extra={"StudyDate": "20200301"})
    ds = pydicom.dcmread(a.paths[0])
    block = ds.private_block(0x0019, "ACME SAFE", create=True)
    block.add_new(0x01, "LO", "keep me")
    block.add_new(0x02, "LO", "drop me")
    ds.add_new(0x00291010, "LO", "no creator")
    ds.save_as(a.paths[0])
    options = DeidOptions(retain_longitudinal_dates=True, retain_device_identity=True, clean_descriptors=True,
                          safe_private_tags=("0019,ACME SAFE,01",), key="k")
    report = deidentify_folder(src, tmp_path / "out", options)
    out = [pydicom.dcmread(p) for p in report.written]
    by_study = sorted((pydicom.dcmread(p) for p in report.written), key=lambda d: d.StudyDate)
    shifted = [date.fromisoformat(f"{d.StudyDate[:4]}-{d.StudyDate[4:6]}-{d.StudyDate[6:]}") for d in by_study]
    assert (shifted[1] - shifted[0]).days == (date(2020, 3, 1) - date(2020, 1, 2)).days
    assert 1 <= (date(2020, 1, 2) - shifted[0]).days <= 365
    assert by_study[0].StudyTime == "101500"  # times kept with whole-day shifts
    first = by_study[0]
    assert first.StationName == "CT-STATION-9" and first.DeviceSerialNumber == "SN-4242"
    assert first.SeriesDescription.startswith("Chest") and "Doe" not in first.SeriesDescription and "2020" not in first.SeriesDescription
    assert first.LongitudinalTemporalInformationModified == "MODIFIED"
    assert {c.CodeValue for c in first.DeidentificationMethodCodeSequence} == {"113100", "113105", "113107", "113109", "113111"}
    kept = [d for d in out if (0x0019, 0x0010) in d]
    assert len(kept) == 1 and kept[0].get_private_item(0x0019, 0x01, "ACME SAFE").value == "keep me"
    assert (0x00191002 not in kept[0]) and (0x00291010 not in kept[0])
    assert "InstitutionName" not in first and first.PatientName == first.PatientID != "PID-12345"
    assert b.datasets[0].PatientID == "PID-12345"


def test_default_profile_removes_device_and_descriptors(tmp_path):
    written = write_series(tmp_path / "in", n=1)
    ds = pydicom.dcmread(written.paths[0])
    ds.file_meta.SourceApplicationEntityTitle = "CT_WARD_3"
    ds.save_as(written.paths[0])
    out = pydicom.dcmread(deidentify_folder(tmp_path / "in", tmp_path / "out").written[0])
    assert "SourceApplicationEntityTitle" not in out.file_meta
    for keyword in ("StationName", "DeviceSerialNumber", "SeriesDescription", "InstitutionName", "SeriesDate"):
        assert keyword not in out
    assert out.StudyDate == "" and out.PatientBirthDate == "" and out.AccessionNumber == ""


def test_burned_in_annotation_is_refused_by_default(tmp_path):
    write_series(tmp_path / "in", n=2, extra={"BurnedInAnnotation": "YES"})
    report = deidentify_folder(tmp_path / "in", tmp_path / "out")
    assert report.written == [] and len(report.refused) == 2 and "BurnedInAnnotation=YES" in report.refused[0][1]
    with pytest.raises(BurnedInAnnotationError, match="allow_burned_in_annotation"):
        deidentify_folder(tmp_path / "in", tmp_path / "out-strict", DeidOptions(strict=True))
    assert len(deidentify_folder(tmp_path / "in", tmp_path / "out2", DeidOptions(allow_burned_in_annotation=True)).written) == 2


@pytest.mark.parametrize("out", ["in", "in/sub", "."])
def test_output_may_not_overlap_input(tmp_path, out):
    write_series(tmp_path / "in", n=1)
    with pytest.raises(ScalpelError, match="never writes into or over its input"):
        deidentify_folder(tmp_path / "in", tmp_path / out)


def test_non_empty_output_and_bad_options_are_refused(tmp_path):
    write_series(tmp_path / "in", n=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    with pytest.raises(ScalpelError, match="not empty"):
        deidentify_folder(tmp_path / "in", tmp_path / "out")
    with pytest.raises(ConfigError, match="max_date_shift_days.*\n.*safe private tag 'bad'"):
        DeidOptions(max_date_shift_days=0, safe_private_tags=("bad",))


def test_interrupted_run_leaves_no_half_written_file(tmp_path, monkeypatch):
    write_series(tmp_path / "in", n=5)
    real = deid_folder.atomic_write
    calls = {"n": 0}

    class _Dying:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            calls["n"] += 1
            if calls["n"] == 3:
                self.handle.write(data[: len(data) // 2])
                raise KeyboardInterrupt  # the process is killed halfway through a file
            return self.handle.write(data)

    from contextlib import contextmanager

    @contextmanager
    def dying_write(path, mode="wb"):
        with real(path, mode) as handle:  # the audit log and the state file are written this way too
            yield _Dying(handle) if str(path).endswith(".dcm") else handle

    monkeypatch.setattr(deid_folder, "atomic_write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        deidentify_folder(tmp_path / "in", tmp_path / "out", DeidOptions(workers=1))
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    # files 1-2 are done, 3 died mid-write; 4-5 may or may not have run before the pool was cancelled
    assert 2 <= len(files) <= 4 and not any(p.name.endswith(".tmp") for p in files)
    for p in files:
        assert pydicom.dcmread(p).pixel_array.shape == (10, 12)


def test_cli_deid(tmp_path, capsys):
    write_series(tmp_path / "in", n=2)
    key = tmp_path / "key.txt"
    key.write_text("secret\n")
    assert main(["dicom", "deid", str(tmp_path / "in"), str(tmp_path / "out"), "--retain-dates", "--key-file", str(key)]) == 0
    assert '"written": 2' in capsys.readouterr().out
    assert main(["dicom", "deid", str(tmp_path / "in"), str(tmp_path / "in" / "x")]) == 2
    assert "never writes into or over its input" in capsys.readouterr().err
