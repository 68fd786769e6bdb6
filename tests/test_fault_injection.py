"""Fault injection: `scalpel run` killed (SIGKILL) in training, halfway through writing a
checkpoint and between writing an adapter and swapping it in, again and again in one run folder.
After every kill the folder holds only complete artifacts (the old state or the new one, never a
mix), and `--resume` ends bit-identical on CPU to a run that was never interrupted."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from scalpel.core.artifacts import SCALPEL_FILE, WEIGHTS_DIGEST, WEIGHTS_FILE
from scalpel.core.checkpoint import STATE_FILE, TENSORS_FILE, TRAINABLE_FILE
from scalpel.core.files import FAILPOINT_ENV, read_json, read_safetensors, sha256_digest

PIPELINE = "vision.classification"  # the fastest quick run


def _run(out: Path, *extra: str, failpoint: str = "") -> subprocess.Popen:
    argv = [sys.executable, "-m", "scalpel.core.cli", "run", PIPELINE, "--quick", "--max-steps", "16", "--save-every", "4",
            "--device", "cpu", "--no-progress", "--output-dir", str(out), *extra]
    env = {**os.environ, "PYTHONHASHSEED": "0", FAILPOINT_ENV: failpoint}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=out.parent)


def _killed(process: subprocess.Popen) -> None:
    assert process.wait(timeout=600) == -signal.SIGKILL, f"the run was not killed: {process.stderr.read()[-2000:]}"


def _assert_only_complete_artifacts(run: Path) -> None:
    """Every visible checkpoint and the adapter (if any) are whole and readable; no result yet."""
    assert not (run / "result.json").exists()
    for step in sorted((run / "checkpoints").glob("step-*")):
        assert {TRAINABLE_FILE, TENSORS_FILE, STATE_FILE} <= {p.name for p in step.iterdir()}, step
        read_safetensors(step / TRAINABLE_FILE), read_safetensors(step / TENSORS_FILE), read_json(step / STATE_FILE)
    adapter = run / "adapter"
    if adapter.exists():
        meta = read_json(adapter / SCALPEL_FILE)
        assert meta[WEIGHTS_DIGEST] == sha256_digest((adapter / WEIGHTS_FILE).read_bytes())


def _digest(run: Path) -> str | None:
    """The weights digest of the visible adapter, None when there is none."""
    meta = run / "adapter" / SCALPEL_FILE
    return read_json(meta)[WEIGHTS_DIGEST] if meta.is_file() else None


def _same_adapter(a: Path, b: Path) -> None:
    x, y = read_safetensors(a / "adapter" / WEIGHTS_FILE), read_safetensors(b / "adapter" / WEIGHTS_FILE)
    assert x.keys() == y.keys() and x
    for key in x:
        assert torch.equal(x[key], y[key]), key
    assert read_json(a / "result.json")["after"] == read_json(b / "result.json")["after"]


@pytest.fixture(scope="module")
def root(pipeline_root) -> Path:
    """One parent for every run of the pipeline: it caches its synthetic base beside the run folder."""
    return pipeline_root(PIPELINE)


@pytest.fixture(scope="module")
def straight(root) -> Path:
    out = root / "fi-straight"
    process = _run(out)
    assert process.wait(timeout=600) == 0, process.stderr.read()
    return out


@pytest.mark.integration
def test_killed_while_writing_a_checkpoint_then_an_adapter_resumes_bit_identical(straight, root):
    run = root / "fi-failpoints"
    _killed(_run(run, failpoint="checkpoint:2"))  # the second checkpoint is half written
    assert [p.name for p in (run / "checkpoints").glob("step-*")] == ["step-00000004"]
    _assert_only_complete_artifacts(run)

    before = _digest(run)
    _killed(_run(run, "--resume", failpoint="adapter:1"))  # a new adapter written whole but not swapped in
    _assert_only_complete_artifacts(run)
    assert list(run.glob(".adapter.*")) and _digest(run) == before  # the old adapter (or none) is what is visible

    resumed = _run(run, "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    assert not list(run.glob(".adapter.*")) and not list((run / "checkpoints").glob(".*"))  # leftovers cleared
    _same_adapter(straight, run)


@pytest.mark.integration
@pytest.mark.parametrize("seed", [1, 2])
def test_killed_at_a_random_moment_resumes_bit_identical(straight, root, seed):
    run = root / f"fi-random-{seed}"
    process = _run(run)
    checkpoints = run / "checkpoints"
    deadline = time.monotonic() + 600
    while not any(checkpoints.glob("step-*")):  # from the first checkpoint on, a kill has something to resume
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.01)
    # up to 60% of the training time after the first checkpoint (at 25% of the steps): mostly in training
    time.sleep(random.Random(seed).uniform(0.0, 0.6) * read_json(straight / "result.json")["train_seconds"])
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    if not (run / "result.json").exists():  # else the kill came after the end: the new complete state
        _assert_only_complete_artifacts(run)
        resumed = _run(run, "--resume")
        assert resumed.wait(timeout=600) == 0, resumed.stderr.read()
    _same_adapter(straight, run)
