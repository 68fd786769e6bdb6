"""Pull and push over DICOMweb against a real Orthanc (see orthanc.py): voxels, resume after cut
connections, the errors a user meets, and a DICOM SEG round trip."""

from __future__ import annotations

import logging

import numpy as np
import pydicom
import pytest
from dicom_factory import write_series
from orthanc import PASSWORD, USER, orthanc  # noqa: F401  (the session fixture)
from pacs_proxy import CuttingProxy, NotDicomServer

from scalpel.medical.pacs.connection import PacsAuth, PacsConnection, RetryPolicy
from scalpel.medical.pacs.dicomweb import DicomWebPacs
from scalpel.medical.pacs.errors import NotDicomAnswerError, PacsAuthError, PacsNotFoundError, SeriesChangedError
from scalpel.medical.pacs.pull import pull
from scalpel.medical.pacs.push import push
from scalpel.medical.pacs.query import PacsQuery

FAST_RETRY = RetryPolicy(attempts=6, first_delay_s=0.01, max_delay_s=0.05)


def _pacs(url: str, password: str = PASSWORD, page_size: int = 100) -> DicomWebPacs:
    return DicomWebPacs(PacsConnection(url, auth=PacsAuth(username=USER, password=password), retry=FAST_RETRY), page_size=page_size)


def _uploaded(orthanc, folder, patient_id, **kwargs):
    series = write_series(folder, patient_id=patient_id, **kwargs)
    orthanc.upload(series.paths)
    return series


def _pixels_by_uid(folder):
    out = {}
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        out[str(ds.SOPInstanceUID)] = (ds.pixel_array, ds.preamble)
    return out


def test_pull_gives_the_uploaded_voxels_and_a_rerun_resumes(orthanc, tmp_path):
    series = _uploaded(orthanc, tmp_path / "src", "PULL-1", n=5, rows=16, cols=12)
    report = pull(_pacs(orthanc.dicomweb), PacsQuery(patient_id="PULL-1", modality="CT"), tmp_path / "out")
    assert report.complete and [s.fetched for s in report.series] == [5]
    got = _pixels_by_uid(tmp_path / "out")
    assert set(got) == {str(ds.SOPInstanceUID) for ds in series.datasets}
    for ds, stored in zip(series.datasets, series.stored):
        pixels, preamble = got[str(ds.SOPInstanceUID)]
        np.testing.assert_array_equal(pixels, stored)
        assert preamble is not None and len(preamble) == 128  # part 10, as written by the sink
    victim, torn = sorted((tmp_path / "out").rglob("*.dcm"))[:2]
    victim.unlink()
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])  # as a power loss can leave a file renamed unsynced
    again = pull(_pacs(orthanc.dicomweb), PacsQuery(patient_id="PULL-1"), tmp_path / "out")
    assert again.complete and (again.series[0].fetched, again.series[0].resumed) == (2, 3)
    assert set(_pixels_by_uid(tmp_path / "out")) == {str(ds.SOPInstanceUID) for ds in series.datasets}


def test_a_pull_cut_at_30_60_90_percent_completes_and_sends_little_again(orthanc, tmp_path):
    _uploaded(orthanc, tmp_path / "src", "CUT-1", n=100, rows=96, cols=96, shuffle=False)
    proxy = CuttingProxy(("127.0.0.1", int(orthanc.root.rsplit(":", 1)[1])))
    try:
        url = f"http://127.0.0.1:{proxy.port}/dicom-web"
        query = PacsQuery(patient_id="CUT-1")
        proxy.reset()
        first = pull(_pacs(url, page_size=20), query, tmp_path / "clean").series[0]
        clean = proxy.sent
        proxy.reset()  # an uncut pull needs no list of the series; a cut one lists it once, to know what is missing
        assert len(_pacs(url, page_size=20).instance_uids(first.study_uid, first.series_uid)) == 100
        clean += proxy.sent
        proxy.reset([int(clean * f) for f in (0.3, 0.6, 0.9)])
        report = pull(_pacs(url, page_size=20), query, tmp_path / "cut")
        assert proxy.dropped == 3  # every cut happened, and the pull still completed
        assert report.complete and report.series[0].instances == 100
        assert proxy.sent - clean <= 0.05 * clean, f"sent {proxy.sent - clean} bytes again of {clean}"
    finally:
        proxy.close()
    assert _pixels_by_uid(tmp_path / "cut").keys() == _pixels_by_uid(tmp_path / "clean").keys()


def test_wrong_credentials_are_refused_clearly_and_the_password_never_shown(orthanc, tmp_path):
    with pytest.raises(PacsAuthError, match="refused the credentials") as err:
        pull(_pacs(orthanc.dicomweb, password="wrong-password-123"), PacsQuery(patient_id="X"), tmp_path / "out")
    assert "wrong-password-123" not in str(err.value) and "wrong-password-123" not in repr(PacsAuth("u", "wrong-password-123"))


def test_an_unknown_study_is_a_clear_error(orthanc, tmp_path):
    with pytest.raises(PacsNotFoundError, match="no series on the PACS matches"):
        pull(_pacs(orthanc.dicomweb), PacsQuery(study_uid="1.2.3.4.5.6.7.8.9"), tmp_path / "out")


def test_an_instance_added_during_the_pull_is_detected(orthanc, tmp_path):
    series = _uploaded(orthanc, tmp_path / "src", "CHANGE-1", n=4)
    extra = write_series(tmp_path / "extra", n=1, patient_id="CHANGE-1", study_uid=series.datasets[0].StudyInstanceUID,
                         series_uid=series.datasets[0].SeriesInstanceUID, seed=5)
    added = []

    def add_once(ref, sop_uid):
        if not added:
            orthanc.upload(extra.paths)
            added.append(sop_uid)

    with pytest.raises(SeriesChangedError, match="1 instance\\(s\\) added"):
        pull(_pacs(orthanc.dicomweb), PacsQuery(patient_id="CHANGE-1"), tmp_path / "out", workers=1, on_instance=add_once)


def test_an_instance_removed_during_the_pull_is_detected(orthanc, tmp_path):
    series = _uploaded(orthanc, tmp_path / "src", "CHANGE-2", n=4, shuffle=False)
    order = []

    def remove_another(ref, sop_uid):
        if not order:
            order.append(sop_uid)
            for ds in series.datasets:
                if str(ds.SOPInstanceUID) != sop_uid:
                    orthanc.delete_instance(str(ds.SOPInstanceUID))
                    return

    with pytest.raises(SeriesChangedError, match="changed during the pull"):
        pull(_pacs(orthanc.dicomweb), PacsQuery(patient_id="CHANGE-2"), tmp_path / "out", workers=1, on_instance=remove_another)


def test_a_server_answering_html_gives_a_not_dicom_error(tmp_path):
    server = NotDicomServer()
    try:
        with pytest.raises(NotDicomAnswerError, match="did not answer DICOM"):
            pull(_pacs(server.url), PacsQuery(patient_id="X"), tmp_path / "a")
        pacs = _pacs(server.url)
        from scalpel.medical.pacs.query import SeriesRef

        with pytest.raises(NotDicomAnswerError, match="DICOMweb root"):
            pacs.fetch_to(SeriesRef("1.2.3", "1.2.3.4"), "1.2.3.4.5", tmp_path / "x.dcm")
    finally:
        server.close()


def test_search_pages_through_results_and_warns_when_it_truncates(orthanc, tmp_path, caplog):
    for k in range(3):
        _uploaded(orthanc, tmp_path / f"s{k}", "PAGES-1", n=1, seed=k)
    pacs = _pacs(orthanc.dicomweb, page_size=2)
    assert len(pacs.search_series(PacsQuery(patient_id="PAGES-1"))) == 3 and not pacs.warnings
    with caplog.at_level(logging.WARNING, logger="scalpel.medical.pacs"):
        assert len(pacs.search_series(PacsQuery(patient_id="PAGES-1"), max_results=2)) == 2
    assert "truncated" in caplog.text and pacs.warnings
    wide = _pacs(orthanc.dicomweb, page_size=100)
    assert len(wide.search_series(PacsQuery(patient_id="PAGES-1"), max_results=2)) == 2 and wide.warnings
    exact = _pacs(orthanc.dicomweb, page_size=3)
    assert len(exact.search_series(PacsQuery(patient_id="PAGES-1"), max_results=3)) == 3 and not exact.warnings


def test_seg_push_then_pull_gives_the_same_mask_on_the_right_series(orthanc, tmp_path):
    from scalpel.medical.dicom.seg import AlgorithmInfo, build_seg, write_seg

    series = _uploaded(orthanc, tmp_path / "src", "SEG-1", n=4, rows=10, cols=12, shuffle=False)
    labels = np.zeros((12, 10, 4), dtype=np.uint8)  # (X = columns, Y = rows, Z = slices)
    labels[2:7, 3:8, 1:3] = 1
    seg_path = write_seg(build_seg(labels, series.datasets, ["liver"], AlgorithmInfo("test", "1")), tmp_path / "seg" / "seg.dcm")
    pacs = _pacs(orthanc.dicomweb)
    first = push(pacs, [tmp_path / "seg"])
    again = push(pacs, [tmp_path / "seg"])
    assert (first.sent, again.sent, again.already_on_pacs) == (1, 0, 1)
    report = pull(pacs, PacsQuery(patient_id="SEG-1"), tmp_path / "back")
    by_modality = {s.modality: s for s in report.series}
    assert set(by_modality) == {"CT", "SEG"}
    seg = pydicom.dcmread(next(by_modality["SEG"].folder.glob("*.dcm")))
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == series.datasets[0].SeriesInstanceUID == by_modality["CT"].series_uid
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} == \
        {str(ds.SOPInstanceUID) for ds in series.datasets}
    frames = seg.pixel_array  # (slices, rows, columns), one frame per source image in slice order
    np.testing.assert_array_equal(frames, labels.transpose(2, 1, 0))
    np.testing.assert_array_equal(frames, pydicom.dcmread(seg_path).pixel_array)
