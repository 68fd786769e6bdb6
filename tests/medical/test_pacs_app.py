"""The medical page's PACS panel (apps/pacs_panel.py) against the test Orthanc: search, pull a
series into the viewer, and (end to end) segment it and push the SEG back."""

from __future__ import annotations

from pathlib import Path

import pytest
from dicom_factory import write_series
from orthanc import PASSWORD, USER, orthanc  # noqa: F401  (the session fixture)
from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parents[2] / "apps" / "medical_page.py")


def _connect(at: AppTest, orthanc, patient: str) -> AppTest:
    at.text_input(key="pacs_url").set_value(orthanc.dicomweb)
    at.text_input(key="pacs_user").set_value(USER)
    at.text_input(key="pacs_password").set_value(PASSWORD)
    at.text_input(key="pacs_patient").set_value(patient)
    return at.button(key="pacs_search").click().run()


def test_panel_lists_a_patients_series_and_pulls_one_into_the_viewer(orthanc, tmp_path):
    series = write_series(tmp_path / "src", n=3, rows=8, cols=9, patient_id="APP-1")
    orthanc.upload(series.paths)
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["runs_dir"] = str(tmp_path / "no-runs")
    at.run()
    _connect(at, orthanc, "APP-1")
    assert not at.exception and not at.error
    assert at.selectbox(key="pacs_pick").options == [series.datasets[0].SeriesInstanceUID]
    at.button(key="pacs_pull").click().run()
    assert not at.exception and not at.error
    assert any("From the PACS: 3 instance(s)" in c.value for c in at.caption)
    assert at.slider(key="dicom_slice").max == 3  # the viewer shows the pulled series
    assert PASSWORD not in "".join(str(e.value) for e in [*at.caption, *at.markdown, *at.info])


def test_panel_errors_are_messages(orthanc, tmp_path):
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["runs_dir"] = str(tmp_path / "no-runs")
    at.run()
    at.text_input(key="pacs_url").set_value(orthanc.dicomweb)
    at.text_input(key="pacs_user").set_value(USER)
    at.text_input(key="pacs_password").set_value("wrong")
    at.text_input(key="pacs_patient").set_value("X")
    at.button(key="pacs_search").click().run()
    assert not at.exception and "refused the credentials" in at.error[0].value and "wrong" not in at.error[0].value


@pytest.mark.integration
def test_panel_pull_segment_overlay_and_push_back(orthanc, tmp_path):
    import pydicom

    from scalpel.medical.adapt import BaseSpec, adapt_site, train_base
    from scalpel.medical.pacs.query import PacsQuery
    from scalpel.medical.segmentation import UNetSpec
    from scalpel.medical.synthetic import STRUCTURES, write_site

    write_site(tmp_path / "A", "A", cases=2, shape=(16, 16, 16), seed=1)
    write_site(tmp_path / "B", "B", cases=2, shape=(16, 16, 16), seed=2)
    train_base(tmp_path / "A", tmp_path / "base", BaseSpec(UNetSpec(out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES,
                                                         patch=(16, 16, 16)), steps=2)
    adapt_site(tmp_path / "base", tmp_path / "B", tmp_path / "runs" / "lora", method="lora", site="B", max_steps=1,
               deidentify=False)
    new = write_site(tmp_path / "new", "B", cases=1, shape=(16, 16, 16), seed=9)[0]
    files = sorted(new.series_dir.glob("*.dcm"))
    orthanc.upload(files)
    original = pydicom.dcmread(files[0], stop_before_pixels=True)
    key = tmp_path / "key.txt"
    key.write_text("app-test-key-77\n")
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["runs_dir"] = str(tmp_path / "runs")
    at.run()
    at.text_input(key="pacs_key_file").set_value(str(key))
    _connect(at, orthanc, str(original.PatientID))
    at.button(key="pacs_pull").click().run()
    assert not at.exception and not at.error and any("(de-identified)" in c.value for c in at.caption)
    assert len(at.get("download_button")) == 1 and any("overlay:" in c.value for c in at.caption)
    at.button(key="pacs_push").click().run()
    assert not at.exception and not at.error and "Pushed: 1 sent" in at.success[0].value
    from scalpel.medical.pacs.connection import PacsAuth, PacsConnection
    from scalpel.medical.pacs.dicomweb import DicomWebPacs

    pacs = DicomWebPacs(PacsConnection(orthanc.dicomweb, auth=PacsAuth(username=USER, password=PASSWORD)))
    segs = pacs.search_series(PacsQuery(patient_id=str(original.PatientID), modality="SEG"))
    assert len(segs) == 1 and segs[0].study_uid == original.StudyInstanceUID  # back under the original study
