"""Medical page: upload DICOM files or a zip of a series, see the series inventory, and
view slices with window presets or centre/width controls.

Uploads stay in memory (:mod:`scalpel.apps.dicom_upload`); patient-identifying header
fields are hidden unless the user ticks "Show patient information".
"""

from __future__ import annotations

import streamlit as st

from scalpel.apps.common import MAX_UPLOAD_MB, friendly_errors, runs_dir_input, too_large
from scalpel.apps.dicom_upload import UploadedSeries, group_series, read_uploads, to_display
from scalpel.medical.dicom.pixels import WINDOW_PRESETS


@st.cache_data(show_spinner=False, max_entries=4)
def _volume(key: str, _series: UploadedSeries):
    """The series' volume, decoded once per upload (keyed by its series and SOP instance UIDs)."""
    return _series.volume()


def viewer(series: UploadedSeries) -> None:
    volume = _volume(series.key, series)
    n = volume.shape[0]
    index = st.slider("Slice", 1, n, (n + 1) // 2, key="dicom_slice") if n > 1 else 1
    presets = (["file"] if series.file_window() else []) + list(WINDOW_PRESETS) + ["custom"]
    preset = st.selectbox("Window", presets, key="dicom_preset",
                          help="'file': the window stored in the DICOM header; presets are in Hounsfield units")
    if preset == "custom":
        lo, hi = float(volume.min()), float(volume.max())
        center = st.number_input("Centre", value=float((lo + hi) / 2), key="dicom_center")
        width = st.number_input("Width", min_value=1.0, value=float(max(hi - lo, 1.0)), key="dicom_width")
    else:
        center, width = series.file_window() if preset == "file" else WINDOW_PRESETS[preset]
    invert = str(series.first.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    image = to_display(volume[index - 1], center, width, invert)
    st.image(image, clamp=True, width=min(max(image.shape[1], 256), 768))
    st.caption(f"slice {index}/{n} - window centre {center:g}, width {width:g}")


def segmentation_note() -> None:
    """The segmentation overlay needs a published medical segmentation predict function (not there yet)."""
    st.caption("Segmentation overlay and DICOM SEG download: not available in the app yet (the medical "
               "segmentation pipeline publishes no predict function); the viewer shows the images only.")


def main() -> None:
    st.header("Medical imaging (DICOM)")
    runs_dir_input()  # shared sidebar control (the other pages list runs from it)
    show_phi = st.sidebar.checkbox("Show patient information", value=False, key="dicom_phi",
                                   help="Patient name, ID, birth date... are hidden unless ticked")
    uploads = st.file_uploader(f"DICOM files or a .zip of a series (at most {MAX_UPLOAD_MB} MB)", accept_multiple_files=True,
                               key="dicom_files")
    segmentation_note()
    if not uploads:
        st.info("Upload the slices of a series (or one zip). Nothing is written to disk.")
        return
    if too_large(uploads):
        return
    with friendly_errors("Cannot read the upload"):
        datasets, problems = read_uploads((u.name, u.getvalue()) for u in uploads)
        for problem in problems[:20]:
            st.warning(problem)
        if not datasets:
            st.error("No DICOM images in the upload: upload .dcm files (or a zip of them) holding pixel data.")
            return
        series = group_series(datasets)
        st.subheader("Series")
        st.dataframe([s.row(show_phi) for s in series], hide_index=True, key="dicom_inventory")
        labels = [f"{i + 1}: {s.first.get('Modality', '?')} {s.first.get('SeriesDescription', '') if show_phi else ''} "
                  f"({len(s.datasets)} slices)".replace("  ", " ") for i, s in enumerate(series)]
        chosen = st.selectbox("Series to view", labels, key="dicom_series")
        current = series[labels.index(chosen)]
        for problem in current.problems:
            st.caption(problem)
        viewer(current)


if __name__ == "__main__":
    st.set_page_config(page_title="Scalpel: medical", layout="wide")
    main()
