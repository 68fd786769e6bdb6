"""The multipage app and ``scalpel app``: the navigation renders the default page, the CLI
builds the streamlit command, refuses a missing runs directory, and a real server starts."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from scalpel.apps.cli import PAGES, command
from scalpel.core.cli import main as scalpel_main
from scalpel.core.errors import ScalpelError

APPS = Path(__file__).resolve().parents[2] / "apps"


def test_multipage_app_renders_the_first_page(tmp_path, monkeypatch):
    monkeypatch.setenv("SCALPEL_RUNS", str(tmp_path))
    at = AppTest.from_file(str(APPS / "main.py"), default_timeout=60).run()
    assert not at.exception
    assert at.sidebar.text_input(key="runs_dir").value == str(tmp_path)  # from SCALPEL_RUNS
    assert any("make demo" in i.value for i in at.info)


def test_command_line_and_bad_arguments(tmp_path, capsys):
    cmd = command("medical", port=8600)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("medical_page.py")
    assert cmd[cmd.index("--server.headless") + 1] == "true" and cmd[cmd.index("--server.port") + 1] == "8600"
    assert all((APPS / f).is_file() for f in PAGES.values())
    with pytest.raises(ScalpelError, match="unknown app page"):
        command("audio")
    assert scalpel_main(["app", "nlp", "--runs", str(tmp_path / "missing")]) == 2
    assert "make demo" in capsys.readouterr().err


@pytest.mark.integration
def test_server_starts_and_answers_health(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "SCALPEL_RUNS": str(tmp_path)}
    proc = subprocess.Popen(command("all", port=port), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        body = None
        for _ in range(120):
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).read()
                break
            except OSError:
                if proc.poll() is not None:
                    break
                time.sleep(0.5)
        assert body == b"ok", proc.stdout.read().decode() if proc.poll() is not None else "no answer"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
