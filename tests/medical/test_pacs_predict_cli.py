"""`scalpel medical predict --push` through the CLI: a de-identified pull, a prediction with a trained
base, and the SEG filed on the PACS under the original patient, study and series."""

from __future__ import annotations

import json

import pydicom
from orthanc import PASSWORD, USER, orthanc  # noqa: F401  (the session fixture)

from scalpel.core.cli import main
from scalpel.medical.adapt import BaseSpec, train_base
from scalpel.medical.segmentation import UNetSpec
from scalpel.medical.synthetic import STRUCTURES, write_site

SPEC = BaseSpec(UNetSpec(out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES, patch=(16, 16, 16))


def test_predict_push_sends_the_seg_back_referencing_the_original_series(orthanc, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SCALPEL_PACS_USER", USER)
    monkeypatch.setenv("SCALPEL_PACS_PASSWORD", PASSWORD)
    monkeypatch.delenv("SCALPEL_PACS_TOKEN", raising=False)
    write_site(tmp_path / "A", "A", cases=1, shape=(16, 16, 16), seed=3)
    train_base(tmp_path / "A", tmp_path / "base", SPEC, steps=2)  # tiny and quick: the push is under test, not the model
    case = write_site(tmp_path / "hospital", "B", cases=1, shape=(16, 16, 16), seed=31)[0]
    originals = sorted((pydicom.dcmread(p) for p in case.series_dir.iterdir()), key=lambda ds: int(ds.InstanceNumber))
    orthanc.upload(sorted(case.series_dir.iterdir()))
    study, series = str(originals[0].StudyInstanceUID), str(originals[0].SeriesInstanceUID)
    key = tmp_path / "private" / "key.txt"
    key.parent.mkdir()

    assert main(["dicom", "pull", orthanc.dicomweb, str(tmp_path / "pulled"), "--study", study, "--deid",
                 "--key-file", str(key), "--create-key-file"]) == 0
    pulled = json.loads(capsys.readouterr().out)["series"][0]
    assert pulled["complete"] and pulled["series_uid"] != series
    assert main(["medical", "predict", pulled["folder"], "--base", str(tmp_path / "base"), "--seg-out",
                 str(tmp_path / "pred.dcm"), "--push", orthanc.dicomweb, "--key-file", str(key)]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert predicted["pushed"]["sent"] == 1 and predicted["series_uid"] == pulled["series_uid"]

    assert main(["dicom", "pull", orthanc.dicomweb, str(tmp_path / "back"), "--study", study, "--modality", "SEG"]) == 0
    back = json.loads(capsys.readouterr().out)["series"][0]
    seg = pydicom.dcmread(next((tmp_path / "back").rglob("*.dcm")))
    assert back["instances"] == 1 and seg.Modality == "SEG"
    assert (seg.StudyInstanceUID, seg.PatientID) == (study, originals[0].PatientID)
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} == \
        {str(ds.SOPInstanceUID) for ds in originals}
    assert seg.FrameOfReferenceUID == originals[0].FrameOfReferenceUID
    assert pydicom.dcmread(tmp_path / "pred.dcm").PatientID != originals[0].PatientID  # the file on disk stays de-identified
