"""Faults and bad inputs (issue 18): truncated files, key files, file meta, dates by VR, named
skips, preamble-less files, interrupted runs, and what `scalpel dicom` imports."""

from __future__ import annotations

import ast
import csv
import os
import signal
import stat
import subprocess
import sys
import textwrap
from datetime import date
from pathlib import Path

import pydicom
import pytest
from dicom_factory import truncate, write_series, write_without_part10_header
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_fragments
from pydicom.sequence import Sequence

from scalpel.core.cli import main
from scalpel.core.errors import ConfigError, DataError, ScalpelError
from scalpel.medical.dicom import DeidOptions, deidentify_dataset, deidentify_folder, scan_folder
from scalpel.medical.dicom.deid import Pseudonyms

FACTORY = Path(__file__).with_name("dicom_factory.py")


def _rows(log: Path) -> list[dict[str, str]]:
    with log.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _dcm_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.dcm") if p.is_file())


# 1. Truncated and damaged files ------------------------------------------------------------


def test_truncated_native_file_is_an_inspect_error_naming_it(tmp_path, capsys):
    written = write_series(tmp_path / "in", n=3, rows=64, cols=64)
    cut = truncate(written.paths[1])
    inventory = scan_folder(tmp_path / "in")
    assert [p for p, _ in inventory.errors] == [cut] and [len(s.files) for s in inventory.series] == [2]
    assert "pixel data is truncated" in inventory.errors[0][1]
    assert main(["dicom", "inspect", "--strict", str(tmp_path / "in")]) == 2
    err = capsys.readouterr().err
    assert cut.name in err and "truncated" in err and "copy it again" in err


def test_loading_a_folder_with_a_truncated_slice_is_an_error(tmp_path):
    from scalpel.medical.dicom import load_series

    written = write_series(tmp_path / "in", n=4, rows=64, cols=64)
    cut = truncate(written.paths[3])  # the last slice: no spacing gap would show it is missing
    with pytest.raises(DataError, match=f"1 damaged or unreadable DICOM file.*{cut.name}: pixel data is truncated"):
        load_series(tmp_path / "in")


def test_predicting_on_a_folder_with_a_truncated_slice_is_an_error(tmp_path):
    from scalpel.medical.predict import read_series

    written = write_series(tmp_path / "in", n=4, rows=64, cols=64)
    cut = truncate(written.paths[3])  # the series still stacks from the other three: only the check can tell
    with pytest.raises(DataError, match=f"1 damaged or unreadable DICOM file.*{cut.name}: pixel data is truncated"):
        read_series(tmp_path / "in")


def test_truncated_native_file_is_never_written_by_deid(tmp_path):
    written = write_series(tmp_path / "in", n=3, rows=64, cols=64)
    cut = truncate(written.paths[0])
    report = deidentify_folder(tmp_path / "in", tmp_path / "out", DeidOptions(key="k"))
    assert len(report.written) == 2 and [label for label, _ in report.errors] == [cut.name]
    assert "pixel data is truncated" in report.errors[0][1]
    for path in report.written:  # every file reported as written decodes
        assert pydicom.dcmread(path).pixel_array.shape == (64, 64)
    assert {r["status"] for r in _rows(report.audit_log) if r["input"] == cut.name} == {"error"}
    with pytest.raises(DataError, match=f"{cut.name}: pixel data is truncated"):
        deidentify_folder(tmp_path / "in", tmp_path / "out-strict", DeidOptions(key="k", strict=True))


def _rle_with(tmp_path: Path, pixel_data: bytes | None = None, keep: float = 1.0) -> Path:
    source = Path(get_testdata_file("MR_small_RLE.dcm", download=False))
    target = tmp_path / "in" / "rle"
    target.parent.mkdir(parents=True, exist_ok=True)
    if pixel_data is None:
        target.write_bytes(source.read_bytes())
        return truncate(target, keep)
    ds = pydicom.dcmread(source)
    ds.PixelData = pixel_data
    ds.save_as(target)
    return target


def _damaged_rle_first_frame() -> bytes:
    fragment = next(generate_fragments(pydicom.dcmread(get_testdata_file("MR_small_RLE.dcm", download=False)).PixelData))
    return encapsulate([b"\x0f\x00\x00\x00" + fragment[4:]])  # the RLE header claims 15 segments, 2 are needed


@pytest.mark.parametrize("damage", ["truncated", "first frame", "fragments"])
def test_damaged_compressed_file_is_reported_and_refused(tmp_path, capsys, damage):
    if damage == "truncated":
        path = _rle_with(tmp_path, keep=0.5)
    elif damage == "first frame":
        path = _rle_with(tmp_path, _damaged_rle_first_frame())
    else:  # not an item tag where the first fragment should start
        path = _rle_with(tmp_path, b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + b"\x12\x34\x56\x78\x04\x00\x00\x00abcd")
    assert main(["dicom", "inspect", "--strict", str(tmp_path / "in")]) == 2
    assert path.name in capsys.readouterr().err
    report = deidentify_folder(tmp_path / "in", tmp_path / "out", DeidOptions(key="k"))
    assert report.written == [] and [label for label, _ in report.errors] == [path.name]
    assert not _dcm_files(tmp_path / "out")


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_jpeg_dcmtk.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_whole_compressed_files_are_written_with_identical_pixels(tmp_path, name):
    source = Path(get_testdata_file(name, download=False))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "IM1").write_bytes(source.read_bytes())
    report = deidentify_folder(tmp_path / "in", tmp_path / "out", DeidOptions(key="k"))
    assert len(report.written) == 1, report.to_dict()
    assert pydicom.dcmread(report.written[0]).PixelData == pydicom.dcmread(source).PixelData


def _decodable_test_files() -> list[str]:
    found = []
    for path in sorted(p for p in get_testdata_files() if os.path.isfile(p)):
        try:
            ds = pydicom.dcmread(path)
            if "PixelData" not in ds:
                continue
            ds.pixel_array  # noqa: B018 - pydicom decodes it: the file is whole
        except Exception:
            continue
        found.append(path)
    return found


DECODABLE = _decodable_test_files()


@pytest.mark.parametrize("path", DECODABLE, ids=[os.path.basename(p) for p in DECODABLE])
def test_whole_files_pass_the_integrity_check(path):
    from scalpel.medical.dicom.reading import integrity_problem

    assert integrity_problem(pydicom.dcmread(path), file_size=os.path.getsize(path), decode=True) is None
    header = pydicom.dcmread(path, defer_size=1024)  # as the scan reads it: pixel data deferred
    assert integrity_problem(header, file_size=os.path.getsize(path)) is None


# 2. Key files ------------------------------------------------------------------------------


def test_missing_or_empty_key_file_is_a_clear_error(tmp_path, capsys):
    write_series(tmp_path / "in", n=1)
    missing = tmp_path / "no-such.key"
    assert main(["dicom", "deid", str(tmp_path / "in"), str(tmp_path / "out"), "--key-file", str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"key file {missing} does not exist" in err and "token_hex" in err and "--create-key-file" in err
    empty = tmp_path / "empty.key"
    empty.write_text("\n")
    assert main(["dicom", "deid", str(tmp_path / "in"), str(tmp_path / "out"), "--key-file", str(empty)]) == 2
    assert f"key file {empty} is empty" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="key is empty"):
        DeidOptions(key="  ")


def test_create_key_file_makes_a_private_key_that_gives_the_same_pseudonyms(tmp_path, capsys):
    write_series(tmp_path / "in", n=2)
    key = tmp_path / "keys" / "site.key"
    (tmp_path / "keys").mkdir()
    for out in ("out1", "out2"):
        args = ["dicom", "deid", str(tmp_path / "in"), str(tmp_path / out), "--key-file", str(key), "--create-key-file"]
        assert main(args) == 0
    capsys.readouterr()
    assert len(key.read_text().strip()) == 64 and stat.S_IMODE(key.stat().st_mode) == 0o600
    names = [sorted(p.relative_to(tmp_path / out) for p in _dcm_files(tmp_path / out)) for out in ("out1", "out2")]
    assert names[0] == names[1] and len(names[0]) == 2
    inside = tmp_path / "out3" / "k.key"  # the key must never travel with the data it protects
    assert main(["dicom", "deid", str(tmp_path / "in"), str(tmp_path / "out3"), "--key-file", str(inside), "--create-key-file"]) == 2
    assert "inside the output folder" in capsys.readouterr().err and not inside.exists()


# 3. File meta ------------------------------------------------------------------------------


def test_file_meta_is_rebuilt_so_no_original_uid_survives(tmp_path):
    written = write_series(tmp_path / "in", n=2)
    ds = pydicom.dcmread(written.paths[0])
    original = str(ds.SOPInstanceUID)
    del ds.SOPInstanceUID  # the data set has none: the meta's is the only copy
    ds.file_meta.SourceApplicationEntityTitle = "CT_WARD_3"
    ds.file_meta.PrivateInformationCreatorUID = "1.2.3.4.5.6"
    ds.file_meta.PrivateInformation = b"secret!!"
    ds.save_as(written.paths[0])
    report = deidentify_folder(tmp_path / "in", tmp_path / "out", DeidOptions(key="k"))
    assert len(report.written) == 2
    uids = {original, *(str(d.get(k)) for d in written.datasets for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                                          "SOPInstanceUID", "FrameOfReferenceUID"))}
    for path in report.written:
        data = path.read_bytes()
        assert not any(uid.encode() in data for uid in uids)
        out = pydicom.dcmread(path)
        assert set(out.file_meta.keys()) <= {0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013}
        assert out.file_meta.MediaStorageSOPClassUID == out.SOPClassUID
        assert str(out.file_meta.MediaStorageSOPInstanceUID).startswith("2.25.")
    without = [pydicom.dcmread(p) for p in report.written if "SOPInstanceUID" not in pydicom.dcmread(p)]
    assert len(without) == 1 and without[0].file_meta.MediaStorageSOPInstanceUID == Pseudonyms("k").uid(original)
    rows = [r for r in _rows(report.audit_log) if r["tag"].startswith("(0002,")]
    assert {(r["keyword"], r["action"]) for r in rows} >= {("MediaStorageSOPInstanceUID", "uid-replaced"),
                                                           ("SourceApplicationEntityTitle", "removed"),
                                                           ("PrivateInformation", "removed")}


def test_dataset_level_deid_rebuilds_the_meta_too():
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm", download=False))
    original = str(ds.file_meta.MediaStorageSOPInstanceUID)
    del ds.SOPInstanceUID
    deidentify_dataset(ds, DeidOptions(), Pseudonyms("k"))
    assert ds.file_meta.MediaStorageSOPInstanceUID == Pseudonyms("k").uid(original) != original


# 4. Dates and times by value representation ------------------------------------------------


def _dated(tmp_path: Path):
    observer = Dataset()
    observer.VerifyingObserverName = "Doe^John"
    observer.VerificationDateTime = "20200107080000"
    observation = Dataset()
    observation.ObservationDateTime = "20200106120000"
    observation.RTPlanDate = "20200108"  # nested two levels down
    item = Dataset()
    item.ReferencedFrameNumber = 1
    item.PurposeOfReferenceCodeSequence = Sequence([observation])
    extra = {"RTPlanDate": "20200105", "RTPlanTime": "093000", "ObservationDateTime": "20200106120000",
             "VerifyingObserverSequence": Sequence([observer]), "ReferencedInstanceSequence": Sequence([item])}
    return write_series(tmp_path / "in", n=1, extra=extra)


def _days(text: str) -> int:
    return (date(2020, 1, 2) - date(int(text[:4]), int(text[4:6]), int(text[6:8]))).days


def test_dates_and_times_the_table_does_not_name_are_removed(tmp_path):
    _dated(tmp_path)
    out_path = deidentify_folder(tmp_path / "in", tmp_path / "out", DeidOptions(key="k")).written[0]
    out = pydicom.dcmread(out_path)
    assert out.RTPlanDate == "" and out.RTPlanTime == "" and out.ObservationDateTime == ""
    assert out.VerifyingObserverSequence[0].VerificationDateTime == ""
    assert out.ReferencedInstanceSequence[0].PurposeOfReferenceCodeSequence[0].ObservationDateTime == ""
    data = out_path.read_bytes()
    assert not any(d in data for d in (b"20200105", b"20200106", b"20200107", b"20200108", b"093000"))


def test_dates_the_table_does_not_name_are_shifted_with_the_patients_dates(tmp_path):
    _dated(tmp_path)
    options = DeidOptions(key="k", retain_longitudinal_dates=True, keep_date_attributes=("RTPlanTime",))
    out = pydicom.dcmread(deidentify_folder(tmp_path / "in", tmp_path / "out", options).written[0])
    shift = _days(out.StudyDate)
    assert 1 <= shift <= 365
    assert _days(out.RTPlanDate) - shift == -3 and _days(out.ObservationDateTime) - shift == -4
    assert _days(out.VerifyingObserverSequence[0].VerificationDateTime) - shift == -5
    assert _days(out.ReferencedInstanceSequence[0].PurposeOfReferenceCodeSequence[0].RTPlanDate) - shift == -6
    assert out.ObservationDateTime[8:] == "120000" and out.RTPlanTime == "093000"  # times kept, as for named ones


def test_date_allow_list_keeps_values_and_is_checked(tmp_path):
    _dated(tmp_path)
    out = pydicom.dcmread(deidentify_folder(tmp_path / "in", tmp_path / "out", DeidOptions(keep_date_attributes=("RTPlanDate",))).written[0])
    assert out.RTPlanDate == "20200105" and out.ObservationDateTime == ""
    with pytest.raises(ConfigError) as err:
        DeidOptions(keep_date_attributes=("StudyDate", "PatientName", "NoSuchKeyword"))
    text = str(err.value)
    assert "StudyDate is in the profile table" in text and "PatientName is not a date or time" in text
    assert "'NoSuchKeyword' is not a DICOM keyword" in text


# 5. Named skips, files without the part-10 header, nothing de-identified ---------------------


def test_every_file_not_written_is_named_with_a_reason(tmp_path):
    src = tmp_path / "in"
    good = write_series(src, n=1)
    (src / "notes.txt").write_text("scanned on Tuesday\n")
    (src / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    (src / "empty").write_bytes(b"")
    (src / "broken.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00")
    header_only = pydicom.dcmread(good.paths[0])
    for elem in list(header_only):
        del header_only[elem.tag]
    header_only.save_as(src / "meta-only.dcm", enforce_file_format=False)
    no_media_uids = pydicom.dcmread(good.paths[0])
    del no_media_uids.file_meta.MediaStorageSOPClassUID, no_media_uids.file_meta.MediaStorageSOPInstanceUID
    no_media_uids.SOPInstanceUID = "1.2.826.0.1.3680043.99.1"
    no_media_uids.save_as(src / "no-media-uids.dcm", enforce_file_format=False)
    report = deidentify_folder(src, tmp_path / "out", DeidOptions(key="k"))
    assert len(report.written) == 2  # the good file, and the one whose meta lacks its UIDs
    reasons = dict(report.skipped + report.errors + report.refused)
    assert set(reasons) == {"notes.txt", "photo.png", "empty", "broken.dcm", "meta-only.dcm"}
    assert "a text file" in reasons["notes.txt"] and "a PNG image" in reasons["photo.png"] and "empty" in reasons["empty"]
    assert "truncated" in reasons["broken.dcm"] and "truncated" in reasons["meta-only.dcm"]
    assert not any("Error" in r for r in reasons.values())  # no bare exception names
    assert report.non_dicom == 3
    logged = {r["input"]: r["action"] for r in _rows(report.audit_log) if r["status"] != "written"}
    assert logged == reasons


def test_names_of_unreadable_files_are_withheld_when_they_hold_identifying_text(tmp_path):
    write_series(tmp_path / "in", n=1)
    (tmp_path / "in" / "Doe_Jane_referral.txt").write_text("x")
    report = deidentify_folder(tmp_path / "in", tmp_path / "out")
    [(label, reason)] = report.skipped
    assert label.startswith("#") and label.endswith("(name withheld: it contains identifying text)") and "text file" in reason
    assert "Doe" not in report.audit_log.read_text()


@pytest.mark.parametrize("implicit_vr", [True, False])
def test_dicom_without_part10_header_is_read_and_written_as_part10(tmp_path, implicit_vr):
    written = write_series(tmp_path / "src", n=1)
    bare = write_without_part10_header(written.datasets[0], tmp_path / "in" / "IM0001", implicit_vr=implicit_vr)
    assert bare.read_bytes()[128:132] != b"DICM"
    inventory = scan_folder(tmp_path / "in")
    assert [len(s.files) for s in inventory.series] == [1] and inventory.non_dicom == []
    report = deidentify_folder(tmp_path / "in", tmp_path / "out", DeidOptions(key="k"))
    assert len(report.written) == 1 and report.non_dicom == 0
    data = report.written[0].read_bytes()
    assert data[128:132] == b"DICM"
    out = pydicom.dcmread(report.written[0])
    assert out.file_meta.TransferSyntaxUID == ("1.2.840.10008.1.2" if implicit_vr else "1.2.840.10008.1.2.1")
    assert out.PixelData == written.datasets[0].PixelData and str(out.PatientName).startswith("ANON-")
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID != written.datasets[0].SOPInstanceUID


def test_folder_where_nothing_could_be_deidentified_exits_non_zero(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_text("hello")
    (tmp_path / "in" / "b.json").write_text("{}")
    assert main(["dicom", "deid", str(tmp_path / "in"), str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert "a.txt" in captured.out and "b.json" in captured.out
    assert "no file under" in captured.err and "could be de-identified" in captured.err and "2 skipped" in captured.err


# 6. Interrupted runs -----------------------------------------------------------------------

_KILLED_CHILD = """
import os, signal, sys
sys.path.insert(0, {factory_dir!r})
real_replace = os.replace
done = []

def replace_then_die(src, dst, *args, **kwargs):
    if str(dst).endswith(".dcm"):
        done.append(dst)
        if len(done) == {after}:  # killed after the temporary file is complete, before its rename
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst, *args, **kwargs)

os.replace = replace_then_die
from scalpel.core.cli import main
main({argv!r})
"""


def _run_killed(argv: list[str], after: int) -> subprocess.CompletedProcess:
    code = textwrap.dedent(_KILLED_CHILD).format(factory_dir=str(FACTORY.parent), after=after, argv=argv)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_killed_run_resumes_with_the_same_pseudonyms(tmp_path, capsys):
    src = tmp_path / "in"
    write_series(src / "a", n=4, seed=1)
    write_series(src / "b", n=3, seed=2, patient_id="PID-2", patient_name="Roe^Richard")
    (src / "notes.txt").write_text("not DICOM")
    key = tmp_path / "site.key"
    key.write_text("a-long-secret\n")
    argv = ["dicom", "deid", str(src), str(tmp_path / "out"), "--retain-dates", "--key-file", str(key)]
    child = _run_killed(argv + ["--workers", "1"], after=3)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert len(_dcm_files(tmp_path / "out")) == 2
    assert [p for p in (tmp_path / "out").rglob(".*.tmp")]  # the partial file of the third
    log = tmp_path / "out-deid-audit.csv"
    partial = _rows(log)  # a valid CSV of what was done
    assert len({r["output"] for r in partial if r["status"] == "written"}) == 2
    log.write_bytes(log.read_bytes()[:-25])  # and had it died inside a write to the log: its last file is logged again

    assert main(argv) == 0  # the rerun continues
    assert '"kept_from_earlier_run": 2' in capsys.readouterr().out
    assert not list((tmp_path / "out").rglob("*.tmp"))
    assert main(["dicom", "deid", str(src), str(tmp_path / "fresh"), "--retain-dates", "--key-file", str(key)]) == 0
    capsys.readouterr()
    outputs = {p.relative_to(tmp_path / "out"): p.read_bytes() for p in _dcm_files(tmp_path / "out")}
    fresh = {p.relative_to(tmp_path / "fresh"): p.read_bytes() for p in _dcm_files(tmp_path / "fresh")}
    assert len(outputs) == 7 and outputs == fresh  # same names (pseudonyms, UIDs) and the same bytes
    key_of = lambda r: (r["input"], r["output"], r["status"], r["tag"], r["keyword"], r["action"])  # noqa: E731
    assert sorted(map(key_of, _rows(log))) == sorted(map(key_of, _rows(tmp_path / "fresh-deid-audit.csv")))
    assert log.read_text().count("input,output,status") == 1

    assert main(argv) == 0  # a finished run, run again: nothing new, nothing repeated
    assert '"written": 0' in capsys.readouterr().out
    assert sorted(map(key_of, _rows(log))) == sorted(map(key_of, _rows(tmp_path / "fresh-deid-audit.csv")))


def test_resume_needs_the_same_key_and_options(tmp_path):
    write_series(tmp_path / "in", n=3)
    first = deidentify_folder(tmp_path / "in", tmp_path / "out", DeidOptions(key="k1"))
    first.written[0].unlink()  # as if the run had stopped before it
    with pytest.raises(ScalpelError, match="another key"):
        deidentify_folder(tmp_path / "in", tmp_path / "out", DeidOptions(key="k2"))
    with pytest.raises(ScalpelError, match="other options.*retain_longitudinal_dates"):
        deidentify_folder(tmp_path / "in", tmp_path / "out", DeidOptions(key="k1", retain_longitudinal_dates=True))
    again = deidentify_folder(tmp_path / "in", tmp_path / "out", DeidOptions(key="k1"))
    assert len(again.written) == 1 and len(again.kept) == 2
    deidentify_folder(tmp_path / "in", tmp_path / "random")  # a random key cannot be reproduced
    with pytest.raises(ScalpelError, match="holds a finished run that used a random key"):
        deidentify_folder(tmp_path / "in", tmp_path / "random")
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "x.dcm").write_text("x")
    with pytest.raises(ScalpelError, match="not empty and holds no run of `scalpel dicom deid` to continue"):
        deidentify_folder(tmp_path / "in", tmp_path / "stranger", DeidOptions(key="k1"))


# 7. Start-up -------------------------------------------------------------------------------


def _imported_after(code: str) -> list[str]:
    probe = code + "; print(sorted(m for m in ('torch', 'monai', 'transformers', 'torchvision') if m in sys.modules))"
    return ast.literal_eval(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout)


def test_dicom_commands_do_not_load_the_deep_learning_stack():
    code = ("import sys; from scalpel.core.cli import build_parser; build_parser(['dicom', 'deid', '--help']); "
            "import scalpel.medical.dicom.deid_folder, scalpel.medical.dicom.scan")
    assert set(_imported_after(code)) <= {"torch"}  # torch: scalpel.core's own __init__ imports it


def test_dicom_modules_do_not_import_torch_themselves():
    # scalpel.core/__init__ imports torch for the PEFT API; load core's modules without it, so only
    # the imports of the dicom command and of the de-identification and scan modules count.
    code = ("import sys, types, importlib.util; spec = importlib.util.find_spec('scalpel.core'); "
            "core = types.ModuleType('scalpel.core'); core.__path__ = list(spec.submodule_search_locations); "
            "sys.modules['scalpel.core'] = core; import argparse, scalpel.medical.cli as cli; "
            "cli.register(argparse.ArgumentParser().add_subparsers()); "
            "import scalpel.medical.dicom.deid_folder, scalpel.medical.dicom.scan, scalpel.medical.dicom.reading")
    assert _imported_after(code) == []
