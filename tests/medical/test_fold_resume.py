"""A K-fold site adaptation killed inside a fold resumes: finished folds are read back, the
interrupted fold continues from its last checkpoint, and the result equals an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalpel.core.files import read_safetensors
from scalpel.core.run import RunResult
from scalpel.medical.adapt import BaseSpec, train_base
from scalpel.medical.segmentation import UNetSpec
from scalpel.medical.synthetic import STRUCTURES, write_site

SPEC = BaseSpec(UNetSpec(out_channels=3, channels=(4, 8), strides=(2,)), STRUCTURES, patch=(16, 16, 16))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("fold-site")
    write_site(root / "A", "A", cases=2, shape=(16, 16, 16), seed=1)
    write_site(root / "B", "B", cases=3, shape=(16, 16, 16), seed=2)
    train_base(root / "A", root / "base", SPEC, steps=2)
    return root


def _adapt(site: Path, out: Path, *extra: str) -> subprocess.Popen:
    argv = [sys.executable, "-m", "scalpel.core.cli", "run", "medical.segmentation", "--base", str(site / "base"),
            "--data", str(site / "B"), "--folds", "2", "--no-deidentify", "--method", "lora", "--max-steps", "12",
            "--save-every", "3", "--device", "cpu", "--no-progress", "--output-dir", str(out), *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONHASHSEED": "0"}, cwd=out.parent)


@pytest.mark.integration
def test_a_kfold_run_killed_inside_a_fold_resumes_to_the_uninterrupted_result(site, tmp_path):
    straight = _adapt(site, tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stderr.read()

    cut = _adapt(site, tmp_path / "cut")
    checkpoints = tmp_path / "cut" / "fold1" / "checkpoints"
    deadline = time.monotonic() + 600
    while not any(checkpoints.glob("step-*")) and cut.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    cut.send_signal(signal.SIGKILL)
    cut.wait(timeout=60)
    assert (tmp_path / "cut" / "fold0" / "result.json").is_file(), "fold 0 should have finished before the kill"
    assert not (tmp_path / "cut" / "fold1" / "result.json").exists(), "killed too late: fold 1 had finished"

    refused = _adapt(site, tmp_path / "cut")  # without --resume the interrupted run is not replaced
    assert refused.wait(timeout=600) == 2 and "--resume" in refused.stderr.read()
    resumed = _adapt(site, tmp_path / "cut", "--resume")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()

    want, got = RunResult.read(tmp_path / "straight"), RunResult.read(tmp_path / "cut")
    assert [f["after"] for f in got.extras["folds"]] == [f["after"] for f in want.extras["folds"]]
    assert got.after == want.after and got.before == want.before
    a = read_safetensors(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = read_safetensors(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


def test_an_augmented_sample_depends_on_seed_epoch_and_index_not_on_what_was_read_before(site):
    from scalpel.medical.kits import EpochSeeded
    from scalpel.medical.site import site_records
    from scalpel.medical.transforms import cached_dataset, segmentation_transforms

    transform = segmentation_transforms(SPEC.preprocess(samples_per_volume=2, augment=True), train=True)
    data = EpochSeeded(cached_dataset(site_records(site / "B")[0], transform), transform, seed=3)

    def patch(index: int):
        return data[index][0]["image"]

    first = patch(1)
    patch(0), patch(2), patch(0)  # a stream of draws would now be elsewhere
    assert patch(1).equal(first)
    data.set_epoch(1)
    assert not patch(1).equal(first)
    data.set_epoch(0)
    assert patch(1).equal(first)
