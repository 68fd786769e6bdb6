"""End to end in a real browser: ``scalpel app`` on loopback, driven by headless Chromium
(Debian ``chromium`` + ``chromium-driver`` through Selenium): upload a DICOM series as a
zip on the medical page and check the inventory and the viewer appear; screenshot each
page. ``make test-browser`` installs Chromium and runs this file; elsewhere it is skipped.

Screenshots go to ``$SCALPEL_SCREENSHOT_DIR`` when set (``make test-browser``: docs/screenshots).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
                       reason=f"needs headless Chromium ({CHROMIUM} and {DRIVER}); `make test-browser` installs them"),
]
selenium = pytest.importorskip("selenium", reason="needs selenium (pip install 'scalpel-peft[dev]')")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "medical"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(nlp_runs, tmp_path_factory):
    from scalpel.apps.cli import command
    from test_vision_page import _run as vision_run

    root = tmp_path_factory.mktemp("server")
    shutil.copytree(nlp_runs, root / "runs")
    vision_run(root / "runs", "detector", "ssdlite320_mobilenet_v3_large", "detection", 64)
    port = _free_port()
    log = root / "streamlit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command("all", port=port), env={**os.environ, "SCALPEL_RUNS": str(root / "runs")},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read() == b"ok":
                    break
            except OSError:
                assert proc.poll() is None, log.read_text()
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _wait_text(driver, text: str, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: text in d.find_element("tag name", "body").text)


def _wait_css(driver, selector: str, timeout: float = 60) -> list:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: d.find_elements("css selector", selector))


def _shot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000
    if os.environ.get("SCALPEL_SCREENSHOT_DIR"):
        target = Path(os.environ["SCALPEL_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)
    return path


def test_medical_upload_shows_inventory_and_viewer(server, browser, tmp_path):
    from dicom_factory import write_series

    written = write_series(tmp_path / "ct", n=6, rows=64, cols=64)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for p in written.paths:
            archive.write(p, p.name)
    upload = tmp_path / "series.zip"
    upload.write_bytes(buffer.getvalue())

    browser.get(server + "/medical")
    _wait_text(browser, "Upload the slices")
    _wait_css(browser, "input[type=file]")[0].send_keys(str(upload))
    _wait_text(browser, "window centre")
    body = browser.find_element("tag name", "body").text
    assert "Series" in body and "Doe^Jane" not in body  # PHI hidden by default
    _wait_css(browser, "[data-testid='stImage']")
    _shot(browser, tmp_path, "medical")


def test_sentiment_on_typed_text_and_vision_page(server, browser, tmp_path):
    browser.get(server + "/")  # the default page (NLP) lives at the root
    _wait_text(browser, "Classify")
    box = browser.find_element("css selector", "textarea")
    box.send_keys("a wonderful, moving film")
    next(b for b in browser.find_elements("css selector", "button") if b.text == "Classify").click()
    _wait_text(browser, "Download results (CSV)")  # the table itself is drawn on a canvas
    assert browser.find_elements("css selector", "[data-testid='stDataFrame']")
    _shot(browser, tmp_path, "nlp")
    image = tmp_path / "street.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(image)
    browser.get(server + "/vision")
    _wait_css(browser, "input[type=file]")[0].send_keys(str(image))
    _wait_text(browser, "detection(s)")
    _wait_text(browser, "Download detections (COCO JSON)")
    _shot(browser, tmp_path, "vision")
