"""Pull and push over DIMSE (C-FIND, C-GET, C-MOVE fallback, C-STORE) against the test Orthanc."""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from dicom_factory import write_series
from orthanc import GET_AET, MOVE_AET, orthanc  # noqa: F401  (the session fixture)

from scalpel.core.cli import main
from scalpel.medical.pacs.dimse import DimsePacs
from scalpel.medical.pacs.errors import PacsError
from scalpel.medical.pacs.pull import pull
from scalpel.medical.pacs.push import push
from scalpel.medical.pacs.query import PacsQuery


def _dimse(orthanc, calling_aet: str) -> DimsePacs:
    return DimsePacs("127.0.0.1", orthanc.dicom_port, orthanc.aet, calling_aet=calling_aet, move_aet=MOVE_AET,
                     move_port=orthanc.move_port, timeout_s=20)


def _same_voxels(folder, series):
    got = {str(ds.SOPInstanceUID): ds.pixel_array for ds in map(pydicom.dcmread, folder.rglob("*.dcm"))}
    assert set(got) == {str(ds.SOPInstanceUID) for ds in series.datasets}
    for ds, stored in zip(series.datasets, series.stored):
        np.testing.assert_array_equal(got[str(ds.SOPInstanceUID)], stored)


@pytest.mark.parametrize("calling_aet, falls_back", [(GET_AET, False), ("SCALPEL", True)])
def test_pull_by_c_get_or_by_c_move_when_c_get_is_refused(orthanc, tmp_path, calling_aet, falls_back):
    series = write_series(tmp_path / "src", n=3, patient_id=f"DIMSE-{calling_aet}")
    orthanc.upload(series.paths)
    pacs = _dimse(orthanc, calling_aet)
    try:
        report = pull(pacs, PacsQuery(patient_id=f"DIMSE-{calling_aet}", modality="CT"), tmp_path / "out", workers=2)
    finally:
        pacs.close()
    assert report.complete and report.series[0].instances == 3
    assert pacs._get_refused is falls_back  # Orthanc allows C-GET only to GET_AET
    _same_voxels(tmp_path / "out", series)


def test_c_store_push_is_idempotent_and_cli_pulls_over_dimse(orthanc, tmp_path, capsys):
    series = write_series(tmp_path / "src", n=2, patient_id="DIMSE-PUSH")
    pacs = _dimse(orthanc, GET_AET)
    assert (push(pacs, [tmp_path / "src"]).sent, push(pacs, [tmp_path / "src"]).already_on_pacs) == (2, 2)
    address = f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"
    assert main(["dicom", "pull", address, str(tmp_path / "out"), "--patient-id", "DIMSE-PUSH", "--calling-aet", GET_AET]) == 0
    assert json.loads(capsys.readouterr().out)["complete"]
    _same_voxels(tmp_path / "out", series)


def test_a_dimse_peer_that_does_not_answer_is_a_clear_error(tmp_path):
    from orthanc import free_port

    pacs = DimsePacs("127.0.0.1", free_port(), "NOBODY", timeout_s=2)
    with pytest.raises(PacsError, match="no DICOM association"):
        pacs.search_series(PacsQuery(patient_id="X"))
    with pytest.raises(PacsError, match="not AE@host:port"):
        DimsePacs.from_address("localhost:104")
