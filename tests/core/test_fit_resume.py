"""Exact resume after a real SIGKILL, and two-process (gloo) training, against in-process runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fit_toy import RESUME_CONFIG, CountingHook, RegressionTask, loader, toy_lora_model, toy_model
from safetensors.torch import load_file

from scalpel.core.fit import FitConfig, fit

FIT_TOY = str(Path(__file__).with_name("fit_toy.py"))


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(FIT_TOY).parent), env.get("PYTHONPATH", "")])
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


@pytest.mark.integration
def test_sigkilled_run_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path):
    child = subprocess.Popen([sys.executable, FIT_TOY, "kill", str(tmp_path / "killed"), str(tmp_path / "marker")],
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        full, hook = toy_model(), CountingHook()  # the uninterrupted run, while the child starts
        fit(full, RegressionTask(), loader(), loader(shuffle=False), FitConfig(output_dir=str(tmp_path / "full"), **RESUME_CONFIG), hooks=(hook,))
        deadline = time.monotonic() + 120
        while not (tmp_path / "marker").exists():
            assert child.poll() is None, child.stdout.read().decode()
            assert time.monotonic() < deadline, "the child never reached step 13"
            time.sleep(0.2)
        os.kill(child.pid, signal.SIGKILL)  # at step 13: steps 11-13 are lost, step 10 is the newest checkpoint
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    killed = tmp_path / "killed"
    assert sorted(p.name for p in (killed / "checkpoints").glob("step-*")) == ["step-00000005", "step-00000010"]
    logged = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) >= 12  # the child logged past its last checkpoint

    resumed, resumed_hook = toy_model(seed=123), CountingHook()  # other init: all must come from the checkpoint
    result = fit(resumed, RegressionTask(), loader(), loader(shuffle=False),
                 FitConfig(output_dir=str(killed), resume=True, **RESUME_CONFIG), hooks=(resumed_hook,))

    assert result.steps == 20 and resumed_hook.steps == hook.steps == list(range(1, 21))
    final_full = load_file(str(tmp_path / "full/checkpoints/step-00000020/trainable.safetensors"))
    final_resumed = load_file(str(killed / "checkpoints/step-00000020/trainable.safetensors"))
    assert final_full.keys() == final_resumed.keys()
    for name in final_full:
        assert torch.equal(final_full[name], final_resumed[name]), name
    for (name, a), (_, b) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(a, b), name  # best weights restored at the end: the same step in both runs
    train_steps = [r["step"] for r in map(json.loads, (killed / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert train_steps == list(range(1, 21))  # lines of the lost steps 11-13 were dropped, then logged once


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), FIT_TOY, *args]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=170)


@pytest.mark.integration
def test_two_processes_train_the_same_adapter_as_one_process_with_the_same_global_batch(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    proc = _torchrun("ddp", str(tmp_path / "ddp"), str(results))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rank0, rank1 = (load_file(str(results / f"rank{r}.safetensors")) for r in (0, 1))
    single = toy_lora_model()
    fit(single, RegressionTask(), loader(batch_size=8), loader(batch_size=8, shuffle=False),
        FitConfig(output_dir=str(tmp_path / "single"), max_steps=6, lr=5e-2, save_every=3, log_every=1, seed=5, eval_every=3))
    expected = {n: p.detach() for n, p in single.named_parameters() if p.requires_grad}
    assert rank0.keys() == rank1.keys() == expected.keys() and any("lora_A" in n for n in expected)
    for name in expected:
        assert torch.equal(rank0[name], rank1[name]), name
        torch.testing.assert_close(rank0[name], expected[name], rtol=1e-4, atol=1e-5)
        assert not torch.equal(expected[name], toy_lora_model().state_dict()[name])  # training moved it

    writes0 = (results / "rank0.writes").read_text().splitlines()
    writes1 = (results / "rank1.writes").read_text().splitlines()
    assert any("adapter_model.safetensors" in w for w in writes0)  # the audit sees rank 0's writes ...
    assert writes1 == []  # ... and rank 1 wrote nothing under the run directory
    assert (results / "rank0.steps").read_text() == (results / "rank1.steps").read_text() == "6"
    assert (tmp_path / "ddp/adapter/scalpel.json").is_file()


@pytest.mark.integration
def test_fsdp_full_state_helpers_gather_and_restore_sharded_tensors():
    """FSDP2 on 2 CPU processes (Accelerate enables FSDP only on GPUs, so fit itself is not run
    sharded here): the helpers fit uses for checkpoints see the unsharded truth."""
    proc = _torchrun("fsdp_state")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
