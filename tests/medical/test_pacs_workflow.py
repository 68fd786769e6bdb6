"""A SEG predicted on a de-identified pull goes back to the PACS under the original patient and UIDs."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dicom_factory import write_series
from orthanc import PASSWORD, USER, orthanc  # noqa: F401  (the session fixture)

from scalpel.core.errors import ScalpelError
from scalpel.medical.dicom.deid import DeidOptions, KeyFileError, Pseudonyms
from scalpel.medical.dicom.seg import AlgorithmInfo, build_seg, write_seg
from scalpel.medical.pacs.connection import PacsAuth, PacsConnection
from scalpel.medical.pacs.dicomweb import DicomWebPacs
from scalpel.medical.pacs.pull import pull
from scalpel.medical.pacs.query import PacsQuery
from scalpel.medical.pacs.workflow import push_prediction

KEY = "workflow-test-key-0123456789"


def test_a_seg_on_a_deidentified_pull_is_pushed_back_under_the_original_identity(orthanc, tmp_path):
    series = write_series(tmp_path / "src", n=3, rows=8, cols=9, patient_id="WF-1", patient_name="Poe^Edgar", shuffle=False)
    orthanc.upload(series.paths)
    pacs = DicomWebPacs(PacsConnection(orthanc.dicomweb, auth=PacsAuth(username=USER, password=PASSWORD)))
    report = pull(pacs, PacsQuery(patient_id="WF-1"), tmp_path / "pulled", deid=DeidOptions(key=KEY))
    folder = report.series[0].folder
    pseudonym = Pseudonyms(KEY).uid
    pulled = [pydicom.dcmread(folder / f"{pseudonym(str(ds.SOPInstanceUID))}.dcm") for ds in series.datasets]  # slice order
    assert pulled[0].PatientID != "WF-1" and b"Poe^Edgar" not in (tmp_path / "pulled" / ".scalpel-originals").joinpath(
        f"{report.series[0].series_uid}.json").read_bytes()
    labels = np.zeros((9, 8, 3), dtype=np.uint8)
    labels[1:5, 2:6, 1] = 1
    seg_path = write_seg(build_seg(labels, pulled, ["liver"], AlgorithmInfo("test", "1")), tmp_path / "pred.dcm")

    with pytest.raises(ScalpelError, match="--key-file"):
        push_prediction(pacs, seg_path, folder)
    with pytest.raises(KeyFileError, match="another key"):
        push_prediction(pacs, seg_path, folder, key="some-other-key")
    assert push_prediction(pacs, seg_path, folder, key=KEY).sent == 1
    assert push_prediction(pacs, seg_path, folder, key=KEY).already_on_pacs == 1  # idempotent

    back = pull(pacs, PacsQuery(patient_id="WF-1", modality="SEG"), tmp_path / "back")
    seg = pydicom.dcmread(next(back.series[0].folder.glob("*.dcm")))
    original = series.datasets[0]
    assert (seg.PatientID, str(seg.PatientName), seg.StudyInstanceUID) == ("WF-1", "Poe^Edgar", original.StudyInstanceUID)
    assert "PatientIdentityRemoved" not in seg
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == original.SeriesInstanceUID
    assert [str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence] == \
        [str(ds.SOPInstanceUID) for ds in series.datasets]
    assert seg.FrameOfReferenceUID == original.FrameOfReferenceUID
    np.testing.assert_array_equal(seg.pixel_array, labels.transpose(2, 1, 0))
    assert pydicom.dcmread(seg_path).PatientID == pulled[0].PatientID  # the file on disk keeps the pseudonyms
