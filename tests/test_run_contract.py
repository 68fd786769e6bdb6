"""Every installed pipeline is the same run (core/run.py): the same method and training flags,
a method registered once runs everywhere, and a killed `scalpel run` resumes exactly."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scalpel.core.files import read_safetensors
from scalpel.core.flags import parse_run_flags
from scalpel.core.layerwise import LayerwiseConfig
from scalpel.core.options import MethodOptions, TrainOptions
from scalpel.core.pipeline import available_pipelines, get_pipeline
from scalpel.core.recipes import RECIPES

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = sorted(available_pipelines())
SHARED = [f.name for cls in (MethodOptions, TrainOptions) for f in dataclasses.fields(cls)]


def help_flags(name: str, monkeypatch) -> dict[str, tuple[str, str]]:
    """``scalpel run NAME --help`` as ``{flag: (type, meaning)}``; the meaning is the help text
    without its ``(default: ...)``, which a pipeline may change."""
    monkeypatch.setenv("COLUMNS", "110")  # one column of flags
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse_run_flags(get_pipeline(name), ["--help"])
    flags: dict[str, list[str]] = {}
    current = None
    for line in out.getvalue().splitlines():
        text = line.strip().strip("│").strip()
        match = re.match(r"^(--[a-z][a-z0-9-]*)(?:, --[a-z0-9-]+)?(?: (\S.*?))?(?:\s{2,}(.*))?$", text)
        if match:
            current = match.group(1)
            flags[current] = [match.group(2) or "", match.group(3) or ""]
        elif current and text and not re.fullmatch(r"[-─╭╮╰╯+ ]+.*[-─╭╮╰╯+]|[-─]+", text):
            flags[current][1] += " " + text
        else:
            current = None
    return {flag: (kind, re.sub(r"\s*\(default: .*\)$", "", " ".join(meaning.split()), flags=re.S))
            for flag, (kind, meaning) in flags.items()}


def test_all_seven_pipelines_are_installed():
    assert PIPELINES == ["medical.classification", "medical.segmentation", "nlp.chat", "nlp.sentiment",
                         "vision.classification", "vision.detection", "vision.segmentation"]


def test_every_pipeline_has_the_same_method_and_training_flags(monkeypatch):
    expected = {"--" + name.replace("_", "-") for name in SHARED}
    negations = {"--no-" + f.name.replace("_", "-") for cls in (MethodOptions, TrainOptions) for f in dataclasses.fields(cls)
                 if f.type in (bool, "bool")}
    seen = {name: help_flags(name, monkeypatch) for name in PIPELINES}
    reference = {flag: seen[PIPELINES[0]][flag] for flag in sorted(expected | negations) if flag in seen[PIPELINES[0]]}
    assert expected <= set(reference), sorted(expected - set(reference))
    assert all(meaning for _, meaning in reference.values())
    for name, flags in seen.items():
        assert {flag: flags.get(flag) for flag in reference} == reference, name


@pytest.fixture
def toy_method():
    """A method registered through the public registry, here only: biases and norms of the body, the head in full."""
    def toy(options, defaults):
        return [LayerwiseConfig(bitfit=True, norm=True, train_head=False, block_map=defaults.block_map)]

    RECIPES.add("toy", toy)
    yield "toy"
    RECIPES._entries.pop("toy")


def test_no_domain_file_names_the_toy_method():
    for folder in ("nlp", "vision", "medical", "apps"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not re.search(r"""["']toy["']""", path.read_text()), path


@pytest.mark.integration
@pytest.mark.parametrize("name", PIPELINES)
def test_a_registered_method_runs_in_every_pipeline(name, toy_method, pipeline_root):
    run = pipeline_root(name) / "toy"
    result = get_pipeline(name).run(quick=True, method=toy_method, output_dir=str(run), device="cpu",
                                    progress=False)
    assert result.method == "toy" and result.pipeline == name
    assert 0 < result.trainable < result.total
    assert (run / "result.json").is_file() and Path(result.adapter_dir, "scalpel.json").is_file()
    assert result.metric in result.after


KILLED = "vision.classification"  # the fastest quick run


def _scalpel_run(out: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "scalpel.core.cli", "run", KILLED, "--quick", "--max-steps", "40", "--save-every", "4",
            "--device", "cpu", "--no-progress", "--output-dir", str(out), *extra]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=out.parent)


@pytest.mark.integration
def test_a_killed_run_resumes_to_the_adapter_of_an_uninterrupted_one(pipeline_root):
    tmp_path = pipeline_root(KILLED)
    straight = _scalpel_run(tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stderr.read()

    cut = _scalpel_run(tmp_path / "cut")
    checkpoints = tmp_path / "cut" / "checkpoints"
    deadline = time.monotonic() + 600
    while not (checkpoints.is_dir() and any(p.name.startswith("step-") for p in checkpoints.iterdir())):
        assert cut.poll() is None, f"the run ended before its first checkpoint: {cut.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    cut.send_signal(signal.SIGKILL)
    cut.wait(timeout=60)
    assert not (tmp_path / "cut" / "result.json").exists(), "killed too late: the run had finished"

    refused = _scalpel_run(tmp_path / "cut")  # no --resume: the interrupted run is not replaced silently
    assert refused.wait(timeout=600) == 2 and "--resume" in refused.stderr.read()
    resumed = _scalpel_run(tmp_path / "cut", "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()

    a = read_safetensors(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = read_safetensors(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key
