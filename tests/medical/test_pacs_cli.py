"""`scalpel dicom pull` and `scalpel dicom push` through the CLI, against the test Orthanc."""

from __future__ import annotations

import json

import numpy as np
import pydicom
from dicom_factory import write_series
from orthanc import PASSWORD, USER, orthanc  # noqa: F401  (the session fixture)

from scalpel.core.cli import main


def _env(monkeypatch):
    monkeypatch.setenv("SCALPEL_PACS_USER", USER)
    monkeypatch.setenv("SCALPEL_PACS_PASSWORD", PASSWORD)
    monkeypatch.delenv("SCALPEL_PACS_TOKEN", raising=False)


def test_pull_with_deid_matches_dicom_deid_with_the_same_key_and_resumes(orthanc, tmp_path, monkeypatch, capsys):
    _env(monkeypatch)
    series = write_series(tmp_path / "src", n=3, patient_id="CLI-DEID-1", patient_name="Roe^Richard")
    orthanc.upload(series.paths)
    key = tmp_path / "private" / "key.txt"
    key.parent.mkdir()
    argv = ["dicom", "pull", orthanc.dicomweb, str(tmp_path / "pulled"), "--patient-id", "CLI-DEID-1",
            "--deid", "--key-file", str(key), "--create-key-file"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["complete"] and report["deidentified"] and report["series"][0]["fetched"] == 3
    text = json.dumps(report)
    assert "CLI-DEID-1" not in text and series.datasets[0].SeriesInstanceUID not in text and PASSWORD not in text
    # `scalpel dicom deid` of the same files with the same key: the same UIDs and the same de-identified content
    assert main(["dicom", "deid", str(tmp_path / "src"), str(tmp_path / "deid"), "--key-file", str(key)]) == 0
    capsys.readouterr()
    pulled = {p.name: pydicom.dcmread(p) for p in (tmp_path / "pulled").rglob("*.dcm")}
    reference = {p.name: pydicom.dcmread(p) for p in (tmp_path / "deid").rglob("*.dcm")}
    assert pulled.keys() == reference.keys() and len(pulled) == 3
    for name, ds in pulled.items():
        ref = reference[name]
        assert ds.PatientIdentityRemoved == "YES" and ds.PatientID == ref.PatientID != "CLI-DEID-1"
        assert "PatientBirthDate" not in ds or not ds.PatientBirthDate
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (ref.StudyInstanceUID, ref.SeriesInstanceUID)
        np.testing.assert_array_equal(ds.pixel_array, ref.pixel_array)
        assert {e.keyword for e in ds} == {e.keyword for e in ref}
    for path in (tmp_path / "pulled").rglob("*"):
        if path.is_file():
            assert b"Roe^Richard" not in path.read_bytes() and b"CLI-DEID-1" not in path.read_bytes()
    assert main(argv) == 0  # a rerun finds everything on disk
    again = json.loads(capsys.readouterr().out)
    assert (again["series"][0]["fetched"], again["series"][0]["resumed"]) == (0, 3)


def test_deid_pull_without_a_key_file_is_refused(orthanc, tmp_path, monkeypatch, capsys):
    _env(monkeypatch)
    assert main(["dicom", "pull", orthanc.dicomweb, str(tmp_path / "out"), "--patient-id", "X", "--deid"]) == 2
    assert "--key-file" in capsys.readouterr().err


def test_list_then_push_with_an_auth_file(orthanc, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SCALPEL_PACS_USER", raising=False)
    monkeypatch.delenv("SCALPEL_PACS_TOKEN", raising=False)
    auth = tmp_path / "auth.json"
    auth.write_text(json.dumps({"username": USER, "password": PASSWORD}))
    auth.chmod(0o600)
    series = write_series(tmp_path / "src", n=2, patient_id="CLI-PUSH-1")
    assert main(["dicom", "push", orthanc.dicomweb, str(tmp_path / "src"), "--auth-file", str(auth)]) == 0
    pushed = json.loads(capsys.readouterr().out)
    assert (pushed["files"], pushed["sent"], pushed["already_on_pacs"]) == (2, 2, 0)
    assert main(["dicom", "push", orthanc.dicomweb, str(tmp_path / "src"), "--auth-file", str(auth)]) == 0
    assert json.loads(capsys.readouterr().out)["already_on_pacs"] == 2
    assert main(["dicom", "pull", orthanc.dicomweb, str(tmp_path / "out"), "--patient-id", "CLI-PUSH-1", "--list",
                 "--auth-file", str(auth)]) == 0
    listed = json.loads(capsys.readouterr().out)["series"]
    assert [(s["series_uid"], s["instances"]) for s in listed] == [(series.datasets[0].SeriesInstanceUID, 2)]
    assert not (tmp_path / "out").exists()


def test_missing_credentials_give_a_clear_error(orthanc, tmp_path, monkeypatch, capsys):
    for name in ("SCALPEL_PACS_USER", "SCALPEL_PACS_PASSWORD", "SCALPEL_PACS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert main(["dicom", "pull", orthanc.dicomweb, str(tmp_path / "out"), "--patient-id", "X"]) == 2
    assert "refused the credentials (HTTP 401)" in capsys.readouterr().err
