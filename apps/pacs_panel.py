"""The medical page's PACS panel: connect, list a patient's series, pull one (de-identified with a
key file when given), and push the predicted SEG back to the PACS.

Credentials come from ``SCALPEL_PACS_USER``/``SCALPEL_PACS_PASSWORD`` (or ``SCALPEL_PACS_TOKEN``) in
the server's environment, or from the password field, which is kept in the session only: never
logged, never shown, never written. A pulled series lands in a temporary folder of this session
(the page then reads it like an upload); the folder goes with the session.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import streamlit as st

from scalpel.apps.common import friendly_errors


def _pacs(url: str):
    from scalpel.medical.pacs.connection import PacsAuth, PacsConnection
    from scalpel.medical.pacs.dicomweb import DicomWebPacs

    user, password = st.session_state.get("pacs_user", ""), st.session_state.get("pacs_password", "")
    auth = PacsAuth(username=user, password=password) if user and password else PacsAuth.from_environment()
    return DicomWebPacs(PacsConnection(url, auth=auth))


def pacs_source() -> list[tuple[str, bytes]] | None:
    """The panel in an expander; the files of the series last pulled in this session, or None."""
    with st.expander("PACS (DICOMweb): search, pull, push back", expanded=bool(st.session_state.get("pacs_series"))):
        url = st.text_input("DICOMweb root", placeholder="https://pacs.example.org/dicom-web", key="pacs_url")
        st.text_input("User (empty: SCALPEL_PACS_* from the environment)", key="pacs_user")
        st.text_input("Password", type="password", key="pacs_password")
        patient = st.text_input("Patient ID", key="pacs_patient")
        modality = st.text_input("Modality", value="CT", key="pacs_modality")
        key_file = st.text_input("Key file for de-identification (empty: pull as stored)", key="pacs_key_file")
        if st.button("Search", key="pacs_search") and url:
            from scalpel.medical.pacs.query import PacsQuery

            with friendly_errors("Cannot search the PACS"):
                st.session_state["pacs_series"] = _pacs(url).search_series(PacsQuery(patient_id=patient, modality=modality))
        found = st.session_state.get("pacs_series") or []
        if found:
            st.dataframe([{"series": s.series_uid, "modality": s.modality, "date": s.study_date,
                           "instances": s.instances, "description": s.description} for s in found], hide_index=True)
            chosen = st.selectbox("Series to pull", [s.series_uid for s in found], key="pacs_pick")
            if st.button("Pull this series", key="pacs_pull"):
                with friendly_errors("Cannot pull the series"):
                    _pull(url, next(s for s in found if s.series_uid == chosen), key_file)
    pulled = st.session_state.get("pacs_pulled")
    if not pulled:
        return None
    st.caption(f"From the PACS: {pulled['count']} instance(s){' (de-identified)' if pulled['key'] else ''}")
    return [(p.name, p.read_bytes()) for p in Path(pulled["folder"]).glob("*.dcm")]


def _pull(url: str, ref, key_file: str) -> None:
    from scalpel.medical.dicom.deid import DeidOptions, read_key_file
    from scalpel.medical.pacs.pull import pull
    from scalpel.medical.pacs.query import PacsQuery

    key = read_key_file(key_file) if key_file else None
    scratch = tempfile.TemporaryDirectory(prefix="scalpel-pacs-")
    report = pull(_pacs(url), PacsQuery(study_uid=ref.study_uid, series_uid=ref.series_uid), Path(scratch.name) / "pull",
                  deid=DeidOptions(retain_longitudinal_dates=True, key=key) if key else None)
    st.session_state["pacs_scratch"] = scratch  # removed with the session
    st.session_state["pacs_pulled"] = {"folder": str(report.series[0].folder), "pull": str(report.output), "url": url,
                                       "key": key, "count": report.series[0].instances}


def push_button(seg: bytes) -> None:
    """Offer to send the SEG to the PACS the series came from (mapped back through the key when de-identified)."""
    pulled = st.session_state.get("pacs_pulled")
    if not pulled or not st.button("Push the SEG to the PACS", key="pacs_push",
                                   help="STOW-RS; under the original patient and UIDs when the pull was de-identified"):
        return
    import pydicom

    from scalpel.medical.pacs.originals import restore_originals
    from scalpel.medical.pacs.push import push_datasets

    with friendly_errors("Cannot push the SEG"):
        ds = pydicom.dcmread(io.BytesIO(seg))
        if pulled["key"]:
            restore_originals(ds, Path(pulled["pull"]), pulled["key"])
        report = push_datasets(_pacs(pulled["url"]), [ds])
        st.success(f"Pushed: {report.sent} sent, {report.already_on_pacs} already on the PACS")
