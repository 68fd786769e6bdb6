"""An adapter folder is replaced whole: a save killed at any point leaves the old adapter or
the new one, and weights that are not the ones ``scalpel.json`` records are refused."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import scalpel.core as sc
from scalpel.core import files
from scalpel.core.cli import main
from scalpel.core.lora import LoraConfig

X = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
#: File-system operations a kill is placed before (Python audit events; renameat2 is a ctypes call).
MUTATIONS = {"open", "os.rename", "os.replace", "os.link", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree",
             "shutil.copyfile", "tempfile.mkstemp", "ctypes.call_function"}


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _adapted(version: int) -> nn.Module:
    """An adapter whose every trained number is ``version``: its outputs tell the versions apart."""
    model = sc.apply(_net(), LoraConfig(r=2, targets="0|2"))
    with torch.no_grad():
        for p in sc.trainable_parameters(model).values():
            p.fill_(0.1 * version)
    return model


def _save(model: nn.Module, path: Path, version: int) -> None:
    sc.save_adapter(model, path, extra={"version": version})


def _loaded_version(path: Path, outputs: dict[int, torch.Tensor]) -> int:
    """Load the folder; its scalpel.json and its weights must name the same version."""
    model = sc.load_adapter(_net(), path)
    version = sc.read_adapter_meta(path)["extra"]["version"]
    assert torch.allclose(model(X), outputs[version]), f"scalpel.json says version {version}, the weights are another"
    return version


def _is_mutation(event: str, args: tuple, root: str) -> bool:
    if event not in MUTATIONS:
        return False
    if event == "ctypes.call_function":
        return True
    target = args[0] if args else ""
    if isinstance(target, int):  # an open file descriptor
        return False
    target = os.fsdecode(target)
    if event == "open":
        mode, flags = str(args[1] or ""), args[2]
        if not (flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) or any(c in mode for c in "wax+")):
            return False
    return target.startswith(root) or not os.path.isabs(target)  # rmtree removes entries by relative name


def _save_in_child(model: nn.Module, path: Path, version: int, kill_at: int | None) -> tuple[bool, int]:
    """Save in a forked child, SIGKILLed just before its ``kill_at``-th file-system change.

    Returns (killed, changes counted)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 3
        try:
            os.close(read)
            root, count = str(path.parent), [0]

            def audit(event: str, args: tuple) -> None:
                if _is_mutation(event, args, root):
                    count[0] += 1
                    if count[0] == kill_at:
                        os.kill(os.getpid(), signal.SIGKILL)

            sys.addaudithook(audit)
            _save(model, path, version)
            os.write(write, str(count[0]).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    counted = os.read(read, 64).decode()
    os.close(read)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True, 0
    assert os.WEXITSTATUS(status) == 0, "the child's save failed"
    return False, int(counted)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the kills are placed in forked children")
@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "rename-aside"])
def test_a_save_killed_before_any_step_leaves_the_old_or_the_new_adapter(tmp_path, monkeypatch, exchange):
    if not exchange:  # the portable path: old folder renamed aside, new one renamed in
        monkeypatch.setattr(files, "_exchange", lambda a, b: False, raising=False)
    old, new = _adapted(1), _adapted(2)
    outputs = {1: old(X).detach(), 2: new(X).detach()}
    path = tmp_path / "adapter"
    _save(old, path, 1)
    killed, steps = _save_in_child(new, path, 2, kill_at=None)
    assert not killed and steps > 5, steps
    seen = set()
    for kill_at in range(1, steps + 1):
        _save(old, path, 1)
        killed, _ = _save_in_child(new, path, 2, kill_at=kill_at)
        assert killed
        seen.add(_loaded_version(path, outputs))
        _save(new, path, 2)  # the next save clears what the killed one left
        assert _loaded_version(path, outputs) == 2
        assert [p.name for p in tmp_path.iterdir()] == ["adapter"]
    assert seen == {1, 2}  # kills fell both before and after the swap


def test_the_old_adapter_is_put_back_when_a_save_died_between_the_renames(tmp_path):
    old, new = _adapted(1), _adapted(2)
    outputs = {1: old(X).detach(), 2: new(X).detach()}
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that no longer runs
    _save(old, tmp_path / f".adapter.old-{dead.pid}", 1)
    _save(new, tmp_path / f".adapter.tmp-{dead.pid}", 2)
    (tmp_path / f".adapter.tmp-{dead.pid}" / "scalpel.json").unlink()  # the new folder was never finished
    assert _loaded_version(tmp_path / "adapter", outputs) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_a_running_save_is_left_alone(tmp_path):
    _save(_adapted(1), tmp_path / "adapter", 1)
    busy = tmp_path / f".adapter.tmp-{os.getppid()}"  # a live process (our parent) owns it
    busy.mkdir()
    _save(_adapted(2), tmp_path / "adapter", 2)
    assert busy.is_dir()


def test_files_beside_the_adapter_survive_a_new_save(tmp_path):
    path = tmp_path / "adapter"
    _save(_adapted(1), path, 1)
    (path / "tokenizer.json").write_text("{}")
    (path / "notes").mkdir()
    (path / "notes" / "a.txt").write_text("kept")
    _save(_adapted(2), path, 2)
    assert (path / "tokenizer.json").read_text() == "{}" and (path / "notes" / "a.txt").read_text() == "kept"
    assert sc.read_adapter_meta(path)["extra"]["version"] == 2


def test_weights_that_do_not_match_the_recorded_digest_are_refused(tmp_path, capsys):
    _save(_adapted(1), tmp_path / "a", 1)
    _save(_adapted(2), tmp_path / "b", 2)
    # new weights under the old scalpel.json: what a kill between two renames used to leave
    os.replace(tmp_path / "b" / "adapter_model.safetensors", tmp_path / "a" / "adapter_model.safetensors")
    with pytest.raises(sc.AdapterError, match="(?s)inconsistent.*save the adapter again or re-run"):
        sc.load_adapter(_net(), tmp_path / "a")
    assert main(["adapter", "info", str(tmp_path / "a")]) == 2
    assert "inconsistent" in capsys.readouterr().err
    digest = json.loads((tmp_path / "a" / "scalpel.json").read_text())["weights_sha256"]
    assert digest.startswith("sha256:") and len(digest) == len("sha256:") + 64


def test_a_peft_adapter_without_scalpel_json_still_loads(tmp_path):
    peft = pytest.importorskip("peft")
    theirs = peft.get_peft_model(_net(), peft.LoraConfig(r=2, target_modules=["0", "2"], init_lora_weights=False))
    expected = theirs(X).detach()
    theirs.save_pretrained(tmp_path / "p")
    assert not (tmp_path / "p" / "scalpel.json").exists()
    assert torch.allclose(sc.load_adapter(_net(), tmp_path / "p")(X), expected, atol=1e-6)
    assert sc.adapter_info(tmp_path / "p")["written_by"] == "peft"


CHILD = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_artifacts_atomic import _adapted, _save
    models = {1: _adapted(1), 2: _adapted(2)}
    version = 1
    while True:
        version = 3 - version
        _save(models[version], Path(sys.argv[1]), version)
        print(version, flush=True)
""")


@pytest.mark.integration
def test_saves_killed_at_random_times_leave_a_complete_adapter(tmp_path):
    old, new = _adapted(1), _adapted(2)
    outputs = {1: old(X).detach(), 2: new(X).detach()}
    path = tmp_path / "adapter"
    rng = random.Random(0)
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(Path(__file__).parent)],
                                 stdout=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            assert child.stdout.readline(), "the saving child died"  # a first save is complete
            time.sleep(rng.uniform(0, 0.05))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert _loaded_version(path, outputs) in (1, 2)
