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
