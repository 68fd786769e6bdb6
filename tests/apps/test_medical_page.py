"""The medical page and its in-memory DICOM reading: order and values of an uploaded
series, zips, PHI hidden unless opted in, window controls, and bad uploads."""

from __future__ import annotations

import io
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from scalpel.apps.dicom_upload import group_series, overlay, read_uploads, to_display

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "medical"))
from dicom_factory import write_series  # noqa: E402

PAGE = str(Path(__file__).resolve().parents[2] / "apps" / "medical_page.py")


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    return write_series(tmp_path_factory.mktemp("ct"), n=5, rows=8, cols=9)


def _zip(paths) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for p in paths:
            archive.write(p, f"series/{p.name}")
    return buffer.getvalue()


def test_upload_in_memory_orders_slices_and_gives_hu(series):
    datasets, problems = read_uploads([(p.name, p.read_bytes()) for p in reversed(series.paths)] + [("notes.txt", b"hello")])
    assert len(datasets) == 5 and len(problems) == 1 and "notes.txt: not a DICOM file" in problems[0]
    [one] = group_series(datasets)
    np.testing.assert_allclose(one.volume(), series.hu)  # shuffled upload, slice order restored
    assert one.file_window() == (40.0, 400.0)
    assert "PatientName" not in one.row() and one.row(show_phi=True)["PatientName"] == "Doe^Jane"
    assert "Doe^Jane" not in str(one.row())


def test_zip_upload_and_zip_size_limit(series):
    data = _zip(series.paths)
    datasets, problems = read_uploads([("s.zip", data)])
    assert len(datasets) == 5 and not problems
    datasets, problems = read_uploads([("s.zip", data)], max_unzipped_mb=0.001)
    assert not datasets and "over the 0.001 MB limit" in problems[0]
    datasets, problems = read_uploads([("broken.zip", data[:200] + b"\x00" * 50 + data[-100:])])
    assert not datasets and problems


def test_display_window_and_overlay():
    plane = np.array([[-1000.0, 40.0, 1000.0]])
    assert to_display(plane, 40, 400).tolist() == [[0, 128, 255]]
    rgb = overlay(np.full((1, 2), 100, np.uint8), np.array([[0, 1]]), opacity=0.5)
    assert rgb[0, 0].tolist() == [100, 100, 100] and rgb[0, 1].tolist() != [100, 100, 100]


def _texts(at) -> str:
    parts = [str(e.value) for kind in ("markdown", "caption", "info", "warning", "error", "selectbox") for e in at.get(kind)]
    parts += [e.value.to_csv() for e in at.dataframe]
    return "\n".join(parts)


def test_page_inventory_viewer_phi_and_bad_upload(series, tmp_path):
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["runs_dir"] = str(tmp_path)
    at.run()
    assert not at.exception
    at.file_uploader(key="dicom_files").set_value(("ct.zip", _zip(series.paths), "application/zip")).run()
    assert not at.exception and not at.error
    assert at.dataframe[0].value["slices"].tolist() == [5]
    assert "Doe^Jane" not in _texts(at) and "PID-12345" not in _texts(at)
    assert len(at.get("image")) == 1
    at.slider(key="dicom_slice").set_value(2).run()
    at.selectbox(key="dicom_preset").select("custom").run()
    at.number_input(key="dicom_width").set_value(100.0).run()
    assert not at.exception and "width 100" in _texts(at)
    at.sidebar.checkbox(key="dicom_phi").check().run()
    assert "Doe^Jane" in _texts(at)
    at.file_uploader(key="dicom_files").set_value(("scan.dcm", b"this is not dicom", "application/dicom")).run()
    assert not at.exception
    assert at.error and "No DICOM images" in at.error[0].value
    assert any("not a DICOM file" in w.value for w in at.warning)


def test_upload_size_limit():
    from types import SimpleNamespace

    from scalpel.apps.common import too_large

    assert too_large([SimpleNamespace(size=3 * 2**20), SimpleNamespace(size=2 * 2**20)], limit_mb=4)
    assert not too_large([SimpleNamespace(size=3 * 2**20)], limit_mb=4)


@pytest.fixture(scope="module")
def site_runs(tmp_path_factory):
    """A runs root with three site adapters (two LoRA, one full) on one tiny base, and an unseen scanner-B series."""
    from scalpel.medical.adapt import AdaptOptions, BaseSpec, adapt_site, train_base
    from scalpel.medical.segmentation import UNetSpec
    from scalpel.medical.synthetic import STRUCTURES, write_site

    root = tmp_path_factory.mktemp("site_runs")
    write_site(root / "A", "A", cases=2, shape=(16, 16, 16), seed=1)
    write_site(root / "B", "B", cases=2, shape=(16, 16, 16), seed=2)
    spec = BaseSpec(UNetSpec(out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES, patch=(16, 16, 16))
    train_base(root / "A", root / "base", spec, steps=2)
    for folder, method, steps in (("lora", "lora", 1), ("full", "full", 1), ("lora2", "lora", 2)):
        adapt_site(root / "base", root / "B", root / "runs" / folder, AdaptOptions(method=method, site=f"B-{folder}", steps=steps,
                                                                                  deidentify=False))
    new = write_site(root / "new", "B", cases=1, shape=(16, 16, 16), seed=9)[0]
    small = write_site(root / "small", "B", cases=1, shape=(16, 16, 8), seed=3)[0]
    return {"root": root, "runs": root / "runs", "series": sorted(new.series_dir.glob("*.dcm")),
            "small": sorted(small.series_dir.glob("*.dcm"))}


def test_predict_upload_gives_labels_and_a_seg_of_the_uploaded_series(site_runs):
    import pydicom

    from scalpel.medical.predict import SiteAdapters, read_series

    datasets, _ = read_uploads([(p.name, p.read_bytes()) for p in site_runs["series"]])
    [upload] = group_series(datasets)
    sites = SiteAdapters(site_runs["root"] / "base")
    from scalpel.apps.dicom_upload import predict_upload

    prediction = predict_upload(upload, sites, site_runs["runs"] / "lora" / "adapter")
    expected = sites.predict(read_series(site_runs["series"][0].parent), site_runs["runs"] / "lora" / "adapter")
    np.testing.assert_array_equal(prediction.labels, expected)
    np.testing.assert_array_equal(prediction.plane(3), expected[:, :, 3].T)
    seg = pydicom.dcmread(io.BytesIO(prediction.seg))
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == upload.series_uid
    assert prediction.structures == [s.SegmentLabel for s in seg.SegmentSequence]


def test_a_segmentation_pipeline_adapter_on_the_base_is_listed_and_segments(site_runs):
    from scalpel.apps.dicom_upload import predict_upload
    from scalpel.apps.medical_page import SITE_TASKS
    from scalpel.apps.runs import find_runs
    from scalpel.core.cli import main
    from scalpel.medical.predict import SiteAdapters

    run = site_runs["root"] / "pipeline-runs" / "lora"
    assert main(["run", "medical.segmentation", "--data", str(site_runs["root"] / "B"), "--base", str(site_runs["root"] / "base"),
                 "--method", "lora", "--steps", "1", "--val-fraction", "0.5", "--output-dir", str(run)]) == 0
    runs, _ = find_runs(str(run.parent), SITE_TASKS)
    assert [r.name for r in runs] == ["lora/adapter"]
    datasets, _ = read_uploads([(p.name, p.read_bytes()) for p in site_runs["series"]])
    [upload] = group_series(datasets)
    prediction = predict_upload(upload, SiteAdapters(runs[0].extra["base_dir"]), runs[0].adapter_dir)
    assert prediction.labels.shape == (16, 16, 16) and prediction.seg


def test_page_overlay_opacity_seg_download_and_adapter_switch(site_runs):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["runs_dir"] = str(site_runs["runs"])
    at.run()
    assert not at.exception
    at.file_uploader(key="dicom_files").set_value(("ct.zip", _zip(site_runs["series"]), "application/zip")).run()
    assert not at.exception and not at.error
    options = at.selectbox(key="medical_run").options
    assert len(options) == 4 and any("B-lora " in o for o in options) and any("B-full" in o for o in options)
    assert "overlay: dim sphere (red" in _texts(at) and len(at.get("download_button")) == 1
    assert "not available" not in _texts(at)
    at.slider(key="seg_opacity").set_value(0.9).run()
    at.slider(key="dicom_slice").set_value(3).run()
    assert not at.exception and len(at.get("image")) == 1
    other = next(o for o in options[1:] if o != at.selectbox(key="medical_run").value)
    at.selectbox(key="medical_run").select(other).run()
    assert not at.exception and not at.error and len(at.get("download_button")) == 1
    at.selectbox(key="medical_run").select(options[0]).run()
    assert not at.exception and not at.get("download_button") and "overlay:" not in _texts(at)


def test_page_segmentation_errors_are_messages(site_runs, tmp_path):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["runs_dir"] = str(site_runs["runs"])
    at.run()
    at.file_uploader(key="dicom_files").set_value(("small.zip", _zip(site_runs["small"]), "application/zip")).run()
    assert not at.exception
    assert at.error and "smaller than the base's 16x16x16 patch" in at.error[0].value
    assert len(at.get("image")) == 1  # the viewer still shows the images
    at.session_state["runs_dir"] = str(tmp_path)
    at.run()
    assert not at.exception and any("No site adapters" in i.value for i in at.info)


def test_side_by_side_label_maps_equal_each_adapter_alone(site_runs):
    from scalpel.apps.medical_page import comparison_rows
    from scalpel.medical.base import BaseSpec
    from scalpel.medical.predict import SiteAdapters, label_maps, load_side_by_side, read_series

    adapters = [site_runs["runs"] / "lora" / "adapter", site_runs["runs"] / "lora2" / "adapter"]
    series = read_series(site_runs["series"][0].parent)
    model, extra = load_side_by_side(adapters)
    maps = label_maps(model, BaseSpec.from_dict(extra), series.hu, series.affine, parts=2)
    sites = SiteAdapters(site_runs["root"] / "base")
    for labels, adapter in zip(maps, adapters):
        np.testing.assert_array_equal(labels, sites.predict(series, adapter))
    rows = comparison_rows(["a", "b"], maps, ["s1", "s2"])
    assert rows[0]["Dice vs first"] == 1.0 and set(rows[1]) == {"adapter", "s1", "s2", "Dice vs first"}


def test_page_compares_adapters_in_one_pass_or_one_at_a_time(site_runs):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["runs_dir"] = str(site_runs["runs"])
    at.run()
    at.file_uploader(key="dicom_files").set_value(("ct.zip", _zip(site_runs["series"]), "application/zip")).run()
    lora = next(o for o in at.selectbox(key="medical_run").options if "B-lora " in o)
    at.selectbox(key="medical_run").select(lora).run()
    others = at.multiselect(key="medical_compare").options
    assert len(others) == 2
    at.multiselect(key="medical_compare").set_value([o for o in others if "B-lora2" in o]).run()
    assert not at.exception and not at.error
    table = at.dataframe[-1].value
    assert len(table) == 2 and "one mixed-adapter pass" in _texts(at)
    at.multiselect(key="medical_compare").set_value(list(others)).run()
    assert not at.exception and not at.error
    assert len(at.dataframe[-1].value) == 3 and "one adapter at a time" in _texts(at)
