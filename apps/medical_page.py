"""Medical page: upload DICOM files or a zip of a series, see the series inventory, view
slices with window presets or centre/width controls, and segment the series with a site
adapter: the label overlay (with opacity) on the viewer and the predicted DICOM SEG as a download.

Uploads stay in memory (:mod:`scalpel.apps.dicom_upload`); the prediction and its SEG are
made in memory too. Patient-identifying header fields are hidden unless the user ticks
"Show patient information". Site adapters are the runs of ``scalpel medical adapt``
(``extra.task == "medical.site"``) and of ``scalpel run medical.segmentation`` on a base
(``"medical.segmentation"``); their base is loaded once per base checkpoint
(``st.cache_resource``) and adapters are switched on it without reloading it. Other adapters of
the same base can be compared on the series in one mixed-adapter pass.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import streamlit as st

from scalpel.apps.common import MAX_UPLOAD_MB, friendly_errors, runs_dir_input, too_large
from scalpel.apps.dicom_upload import COLOUR_NAMES, UploadedSeries, UploadPrediction, group_series, overlay, predict_upload, read_uploads, to_display
from scalpel.apps.pacs_panel import pacs_source, push_button
from scalpel.apps.runs import RunInfo, best_run_index, find_runs
from scalpel.medical.dicom.pixels import WINDOW_PRESETS

SITE_TASKS = ("medical.site", "medical.segmentation")
NO_SITE_RUNS = ("No site adapters in `{root}`: make one with `make demo`, or with `scalpel medical adapt BASE SITE --out "
                "runs/<site>` (see docs/medical.md), or point the runs directory in the sidebar at your runs.")


@st.cache_data(show_spinner=False, max_entries=4)
def _volume(key: str, _series: UploadedSeries):
    """The series' volume, decoded once per upload (keyed by its series and SOP instance UIDs)."""
    return _series.volume()


@st.cache_resource(show_spinner=False, max_entries=2)
def _site_adapters(base_dir: str):
    """One base checkpoint per process, shared by sessions; the lock serialises adapter switches."""
    from scalpel.medical.predict import SiteAdapters

    return SiteAdapters(base_dir), threading.Lock()


@st.cache_resource(show_spinner="Segmenting the series...", max_entries=8)
def _prediction(key: str, base_dir: str, adapter_dir: str, _series: UploadedSeries) -> UploadPrediction:
    """The segmentation of these slices by this adapter, kept in memory (keyed by the slices'
    UIDs and the adapter; cache_resource, so nothing is serialised)."""
    sites, lock = _site_adapters(base_dir)
    with lock:
        return predict_upload(_series, sites, adapter_dir)


def segmentation_panel(series: UploadedSeries, root: str) -> UploadPrediction | None:
    """Pick a site adapter, segment the series, offer the DICOM SEG; None without a prediction."""
    st.subheader("Segmentation")
    runs, problems = find_runs(root, SITE_TASKS)
    for problem in problems:
        st.sidebar.warning(problem)
    if not runs:
        st.info(NO_SITE_RUNS.format(root=root))
        return None
    names = [_run_label(r) for r in runs]
    chosen = st.selectbox("Site adapter", ["none (images only)", *names], index=1 + best_run_index(runs), key="medical_run",
                          help="Preselected: the best by held-out Dice (full fine-tuning only when alone); "
                               "switching adapters does not reload the base")
    if chosen not in names:
        return None
    run = runs[names.index(chosen)]
    st.caption(run.provenance())
    with st.expander(f"Adapter: {run.name}", expanded=False):
        st.dataframe([run.summary()], hide_index=True)
    base_dir = str(run.extra.get("base_dir", ""))
    if not base_dir or not (Path(base_dir) / "model.json").is_file():
        st.error(f"The base checkpoint of {run.name} is not at {base_dir or '(not recorded)'}; put the base back there "
                 "or adapt again with `scalpel medical adapt` (it records the base folder).")
        return None
    if str(series.first.get("Modality", "")) not in ("CT", ""):
        st.warning(f"This adapter was trained on CT in HU; the upload is {series.first.get('Modality')}, so expect nonsense.")
    with friendly_errors("Cannot segment this series"):
        prediction = _prediction(series.key, base_dir, str(run.adapter_dir), series)
        st.download_button("Download the DICOM SEG", data=prediction.seg, file_name="segmentation.dcm",
                           mime="application/dicom", key="seg_download",
                           help="A DICOM Segmentation referencing the uploaded slices, naming the algorithm and adapter")
        compare_panel(series, run, runs, prediction)
        return prediction
    return None


@st.cache_resource(show_spinner="Loading the adapters onto one base...", max_entries=2)
def _side_by_side(adapter_dirs: tuple[str, ...]):
    """One base with these adapters loaded for mixed-adapter passes, and a lock for it."""
    from scalpel.medical.predict import load_side_by_side

    return load_side_by_side(list(adapter_dirs)), threading.Lock()


def compare_panel(series: UploadedSeries, run: RunInfo, runs: list[RunInfo], prediction: UploadPrediction) -> None:
    """Other adapters of the same base on this series, all in one mixed-adapter pass (each sample
    keeps its own adapter's BatchNorm statistics): volumes per structure and Dice against the chosen one."""
    from scalpel.core.errors import AdapterError, ScalpelError
    from scalpel.medical.base import BaseSpec
    from scalpel.medical.predict import label_maps, read_series

    others = [r for r in runs if r.adapter_dir != run.adapter_dir and r.extra.get("base_dir") == run.extra.get("base_dir")]
    if not others:
        return
    labels = [_run_label(r) for r in others]
    picked = st.multiselect("Compare with other adapters of this base (one mixed-adapter pass)", labels, key="medical_compare")
    if not picked:
        return
    chosen = [run, *[others[labels.index(p)] for p in picked]]
    prepared = read_series(series.datasets)
    try:
        (model, extra), lock = _side_by_side(tuple(str(r.adapter_dir) for r in chosen))
        with lock:
            maps = label_maps(model, BaseSpec.from_dict(extra), prepared.hu, prepared.affine, len(chosen))
        how = "one mixed-adapter pass"
    except AdapterError:
        raise
    except ScalpelError as err:  # e.g. full fine-tuning or a sparse delta: exact only one adapter at a time
        sites, lock = _site_adapters(str(run.extra.get("base_dir")))
        with lock:
            maps = [sites.predict(prepared, r.adapter_dir) for r in chosen]
        how = f"one adapter at a time ({err})"
    st.dataframe(comparison_rows([_run_label(r) for r in chosen], maps, prediction.structures), hide_index=True)
    st.caption(f"Compared in {how}; Dice against the first row ({_run_label(run)}), over all structures.")


def comparison_rows(names: list[str], maps: list[np.ndarray], structures: list[str]) -> list[dict]:
    """One row per adapter: voxels per structure and the Dice of its foreground with the first map's."""
    first = maps[0] > 0
    rows = []
    for name, labels in zip(names, maps):
        fg = labels > 0
        dice = 2 * float(np.sum(fg & first)) / max(float(np.sum(fg) + np.sum(first)), 1.0)
        rows.append({"adapter": name, **{s: int(np.sum(labels == k)) for k, s in enumerate(structures, start=1)},
                     "Dice vs first": round(dice, 3)})
    return rows


@st.cache_resource(show_spinner="Reading the example series...", max_entries=2)
def _example_files(root: str) -> tuple[str, list[tuple[str, bytes]]]:
    """(label, files) of the first scanner-B example series (see :mod:`scalpel.apps.examples`)."""
    from scalpel.apps.examples import medical_examples, series_files, synthetic_series

    found = medical_examples(find_runs(root, SITE_TASKS)[0])
    label, folder = found[0] if found else synthetic_series()
    return f"{label} ({folder})", series_files(folder)


def _run_label(run: RunInfo) -> str:
    dice = run.metrics.get("dice")
    score = f", Dice {dice:.3f}" if isinstance(dice, (int, float)) else ""
    return f"{run.extra.get('site', '?')} - {run.extra.get('method', '?')}{score} ({run.name})"


def viewer(series: UploadedSeries, prediction: UploadPrediction | None = None) -> None:
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
    legend = ""
    if prediction is not None and prediction.labels.shape == (volume.shape[2], volume.shape[1], volume.shape[0]):
        opacity = st.slider("Overlay opacity", 0.0, 1.0, 0.4, 0.05, key="seg_opacity")
        plane = prediction.plane(index - 1)
        image = overlay(image, plane, opacity)
        legend = " - overlay: " + ", ".join(
            f"{name} ({COLOUR_NAMES[k] if k < len(COLOUR_NAMES) else 'orange'}, {int(np.sum(plane == k))} px)"
            for k, name in enumerate(prediction.structures, start=1))
    st.image(image, clamp=True, width=min(max(image.shape[1], 256), 768))
    st.caption(f"slice {index}/{n} - window centre {center:g}, width {width:g}{legend}")


def main() -> None:
    st.header("Medical imaging (DICOM)")
    root = runs_dir_input()  # shared sidebar control
    show_phi = st.sidebar.checkbox("Show patient information", value=False, key="dicom_phi",
                                   help="Patient name, ID, birth date... are hidden unless ticked")
    uploads = st.file_uploader(f"DICOM files or a .zip of a series (at most {MAX_UPLOAD_MB} MB)", accept_multiple_files=True,
                               key="dicom_files")
    pacs_files = pacs_source()  # the PACS panel: search, pull a series, push the SEG back (apps/pacs_panel.py)
    if st.button("Try a CT series from the demo's scanner B", key="medical_try",
                 help="A held-out site-B case of the site adapters' own data (or a fresh phantom of that scanner)"):
        st.session_state["medical_example"] = True
    if not uploads and not pacs_files and not st.session_state.get("medical_example"):
        st.info("Upload the slices of a series (or one zip), or try the example. Nothing is written to disk.")
        return
    if uploads and too_large(uploads):
        return
    with friendly_errors("Cannot read the upload"):
        if uploads:
            files = [(u.name, u.getvalue()) for u in uploads]
        elif pacs_files:
            files = pacs_files
        else:
            label, files = _example_files(root)
            st.caption(f"Example series: {label}")
        datasets, problems = read_uploads(files)
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
        prediction = segmentation_panel(current, root)
        if prediction is not None:
            push_button(prediction.seg)
        viewer(current, prediction)


if __name__ == "__main__":
    st.set_page_config(page_title="Scalpel: medical", layout="wide")
    main()
