"""End to end in a real browser: ``scalpel app`` on loopback, driven by headless Chromium
(Debian ``chromium`` + ``chromium-driver`` through Selenium; ``make servers`` installs them,
and ``make test`` runs it first). Each page gets one click on a built-in example and must
show a result (sentiment labels, a chat answer, detection boxes, a mask overlay) and no
exception; the medical page is also fed a zip upload. Every wait is on a condition.

Runs: tiny adapters made here (no training worth the name), or ``$SCALPEL_BROWSER_RUNS``
(e.g. ``runs/demo`` after ``make demo``: the screenshots in docs/screenshots are of those).
Screenshots go to ``$SCALPEL_SCREENSHOT_DIR`` when set.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not (os.path.exists(CHROMIUM) and os.path.exists(DRIVER)),
                       reason=f"needs headless Chromium ({CHROMIUM} and {DRIVER}); `sudo make servers` installs them"),
]
selenium = pytest.importorskip("selenium", reason="needs selenium (pip install 'scalpel-peft[dev]')")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "medical"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
TIMEOUT = 300  # seconds for one result on 2 busy cores (the first run of a page loads its model)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_runs(root: Path, nlp_runs: Path) -> Path:
    """Sentiment and chat (conftest), a detector, and two site adapters with their scanner-B data."""
    from test_vision_page import _run as vision_run

    from scalpel.medical.adapt import BaseSpec, adapt_site, train_base
    from scalpel.medical.segmentation import UNetSpec
    from scalpel.medical.synthetic import STRUCTURES, write_site

    runs = root / "runs"
    shutil.copytree(nlp_runs, runs)
    vision_run(runs, "detector", "ssdlite320_mobilenet_v3_large", "detection", 64)
    data = root / "medical"
    write_site(data / "A", "A", cases=2, shape=(16, 16, 16), seed=1)
    write_site(data / "B", "B", cases=2, shape=(16, 16, 16), seed=2)
    spec = BaseSpec(UNetSpec(out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES, patch=(16, 16, 16))
    train_base(data / "A", data / "base", spec, steps=2)
    for method in ("lora", "full"):
        adapt_site(data / "base", data / "B", runs / "medical" / method, method=method, site="B", max_steps=1,
                   deidentify=False)
    return runs


@pytest.fixture(scope="module")
def server(nlp_runs, tmp_path_factory):
    from scalpel.apps.cli import command

    root = tmp_path_factory.mktemp("server")
    runs = Path(os.environ["SCALPEL_BROWSER_RUNS"]).resolve() if os.environ.get("SCALPEL_BROWSER_RUNS") else _tiny_runs(root, nlp_runs)
    port = _free_port()
    log = root / "streamlit.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command("all", port=port), env={**os.environ, "SCALPEL_RUNS": str(runs)},
                                stdout=out, stderr=subprocess.STDOUT)

    def healthy(_) -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).read() == b"ok"
        except OSError:
            return False

    try:
        WebDriverWait(None, 120, poll_frequency=0.5).until(healthy)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # busy in a script run: stop it hard
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1400"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def _until(driver, condition, timeout: float = TIMEOUT, what: str = ""):
    """Wait for ``condition(driver)``, failing early (with the message) when the page shows an exception."""

    def check(d):
        errors = d.find_elements("css selector", "[data-testid='stException']")
        if errors:
            raise AssertionError(f"the page shows an exception: {errors[0].text[:800]}")
        try:
            return condition(d)
        except StaleElementReferenceException:  # Streamlit redrew the element: look again
            return False

    return WebDriverWait(driver, timeout, poll_frequency=0.25).until(check, message=what)


def _body(driver) -> str:
    return driver.find_element("tag name", "body").text


def _idle(driver) -> bool:
    """No script run in progress (Streamlit's "Running..." status widget is gone)."""
    return not driver.find_elements("css selector", "[data-testid='stStatusWidget']")


def _click(driver, key: str) -> str:
    """Click the button made with ``key=key`` once the app is idle (a click during a rerun can
    be lost); returns its label."""

    def ready(d):
        buttons = d.find_elements("css selector", f".st-key-{key} button")
        return buttons[0] if buttons and buttons[0].is_enabled() and _idle(d) else False

    button = _until(driver, ready, what=f"the button {key!r}")
    label = button.text.strip()
    button.click()
    return label


def _shot(driver, tmp_path: Path, name: str, result=None) -> None:
    """A screenshot with ``result`` (an element) in view and no tooltip (the mouse moved off the buttons)."""
    from selenium.webdriver.common.action_chains import ActionChains

    target = result if result is not None else driver.find_element("css selector", "h1, h2")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", target)
    ActionChains(driver).move_to_element_with_offset(target, 0, -target.size["height"] // 2 + 1).perform()
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 1000
    if os.environ.get("SCALPEL_SCREENSHOT_DIR"):
        target = Path(os.environ["SCALPEL_SCREENSHOT_DIR"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / path.name)


def test_sentiment_one_click_on_held_out_snippets(server, browser, tmp_path):
    browser.get(server + "/")  # the default page (NLP) lives at the root
    _click(browser, "sentiment_try")
    _until(browser, lambda d: "Download results (CSV)" in _body(d) and _idle(d), what="the sentiment results")
    assert browser.find_elements("css selector", "[data-testid='stDataFrame']")  # drawn on a canvas: labels not in text
    assert "runs on the base" in _body(browser) and "Numbers from" in _body(browser)
    _shot(browser, tmp_path, "nlp", browser.find_elements("css selector", "[data-testid='stDataFrame']")[-1])


def test_chat_one_click_on_an_example_prompt(server, browser, tmp_path):
    browser.get(server + "/")
    radio = _until(browser, lambda d: [e for e in d.find_elements("css selector", "[data-testid='stRadio'] label")
                                       if e.text.strip() == "Chat"], what="the NLP task radio")
    radio[0].click()
    prompt = _click(browser, "chat_example_0")
    messages = _until(browser, lambda d: len(d.find_elements("css selector", "[data-testid='stChatMessage']")) >= 2 and _idle(d)
                      and d.find_elements("css selector", "[data-testid='stChatMessage']"), what="the chat answer")
    assert prompt[:40] in messages[0].text and messages[-1].text.strip()  # the prompt, then an answer
    _shot(browser, tmp_path, "chat", messages[-1])


def test_vision_one_click_on_target_domain_examples(server, browser, tmp_path):
    browser.get(server + "/vision")
    _click(browser, "vision_try")
    _until(browser, lambda d: ("Download detections (COCO JSON)" in _body(d) or "Download masks (PNG, zipped)" in _body(d))
           and _idle(d), what="the vision results")
    assert len(browser.find_elements("css selector", "[data-testid='stImage']")) >= 4  # one drawn result per example
    assert "detection(s)" in _body(browser) or "segmentation overlay" in _body(browser)
    _shot(browser, tmp_path, "vision", browser.find_elements("css selector", "[data-testid='stImage']")[1])


def test_medical_one_click_on_a_scanner_b_series(server, browser, tmp_path):
    browser.get(server + "/medical")
    _click(browser, "medical_try")
    _until(browser, lambda d: "overlay:" in _body(d) and _idle(d), what="the mask overlay")
    body = _body(browser)
    assert "Example series: site B" in body and "Download the DICOM SEG" in body and "lora" in body.lower()
    assert browser.find_elements("css selector", "[data-testid='stImage']")
    _shot(browser, tmp_path, "medical", browser.find_elements("css selector", "[data-testid='stImage']")[0])


def test_medical_zip_upload_shows_inventory_and_viewer(server, browser, tmp_path):
    from dicom_factory import write_series

    written = write_series(tmp_path / "ct", n=6, rows=64, cols=64)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for p in written.paths:
            archive.write(p, p.name)
    upload = tmp_path / "series.zip"
    upload.write_bytes(buffer.getvalue())
    browser.get(server + "/medical")
    _until(browser, lambda d: d.find_elements("css selector", "input[type=file]") and _idle(d), what="the uploader")
    browser.find_elements("css selector", "input[type=file]")[0].send_keys(str(upload))
    _until(browser, lambda d: "window centre" in _body(d) and _idle(d), what="the viewer")
    body = _body(browser)
    assert "Series" in body and "Doe^Jane" not in body  # PHI hidden by default
    assert browser.find_elements("css selector", "[data-testid='stImage']")
