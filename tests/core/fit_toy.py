"""A tiny regression problem for the ``fit`` tests, and the child programs the resume
(SIGKILL) and distributed (torchrun) tests launch:

    python fit_toy.py kill OUTPUT_DIR MARKER      # trains, writes MARKER after step 13, then hangs
    torchrun --nproc-per-node 2 fit_toy.py ddp OUTPUT_DIR RESULT_DIR
    torchrun --nproc-per-node 2 fit_toy.py fsdp_state
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from scalpel.core.fit import FitConfig, fit

RESUME_CONFIG = dict(max_steps=20, lr=1e-2, schedule="linear", warmup_steps=3, grad_accum_steps=2,
                     save_every=5, keep_checkpoints=2, log_every=1, seed=3, eval_every=4)


class RegressionTask:
    """Mean squared error; evaluate reports the mean loss and its negative."""

    def step(self, model, batch):
        x, y = batch
        return {"loss": nn.functional.mse_loss(model(x), y)}

    def evaluate(self, model, batches):
        losses = [nn.functional.mse_loss(model(x), y).item() for x, y in batches]
        mean = sum(losses) / len(losses)
        return {"loss": mean, "neg_loss": -mean}


class CountingHook:
    """Records the steps it saw; its state is checkpointed."""

    def __init__(self, hang_at: int | None = None, marker: str | None = None):
        self.steps: list[int] = []
        self.hang_at, self.marker = hang_at, marker

    def after_step(self, step, model, optimizer):
        self.steps.append(step)
        if step == self.hang_at:
            Path(self.marker).write_text("ready")
            time.sleep(600)  # the parent SIGKILLs us here

    def state_dict(self):
        return {"steps": list(self.steps), "tensor": torch.tensor(self.steps, dtype=torch.float32)}

    def load_state_dict(self, state):
        self.steps = [int(s) for s in state["steps"]]
        assert torch.equal(state["tensor"], torch.tensor(self.steps, dtype=torch.float32))


def toy_data(n: int = 48, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, x @ torch.randn(8, 2, generator=g) + 0.1 * torch.randn(n, 2, generator=g))


def toy_model(dropout: float = 0.2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.Dropout(dropout), nn.ReLU(), nn.Linear(16, 2))


def toy_lora_model(seed: int = 0) -> nn.Module:
    from scalpel.core import apply
    from scalpel.core.lora import LoraConfig

    model = toy_model(dropout=0.0, seed=seed)
    torch.manual_seed(seed + 1)
    model = apply(model, LoraConfig(r=2, alpha=4, targets="0|3"))
    with torch.no_grad():  # B starts at zero; make the adapter non-trivial so updates differ per step
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model


def fit_config(tmp_path, name: str, **kw) -> FitConfig:
    """A quick CPU fit into ``tmp_path / name``: lr 5e-2 constant, a log line every step, no checkpoints."""
    base = dict(output_dir=str(tmp_path / name), lr=5e-2, log_every=1, save_every=0, progress=False, seed=4,
                schedule="constant", device="cpu")
    return FitConfig(**{**base, **kw})


def scrambled_lora_model() -> nn.Module:
    """The same frozen base as :func:`toy_lora_model`, other adapter weights: a resume must restore all of them."""
    model = toy_lora_model()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1.0)
    return model


def trained_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the model's trainable tensors, by name."""
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def loader(batch_size: int = 4, shuffle: bool = True, n: int = 48) -> DataLoader:
    return DataLoader(toy_data(n), batch_size=batch_size, shuffle=shuffle)


def _kill_child(output_dir: str, marker: str) -> None:
    fit(toy_model(), RegressionTask(), loader(), loader(shuffle=False),
        FitConfig(output_dir=output_dir, **RESUME_CONFIG), hooks=(CountingHook(hang_at=13, marker=marker),))


def _ddp_child(output_dir: str, result_dir: str) -> None:
    """Global batch 8 = 2 processes x 4; writes each rank's trained tensors and every
    file-system write it attempted under output_dir (rank 1 must attempt none)."""
    rank = int(os.environ.get("RANK", "0"))
    writes: list[str] = []
    root = str(Path(output_dir).resolve())

    def audit(event, args):
        if event not in ("open", "os.rename", "os.replace", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            return
        path = str(args[0]) if args else ""
        if event == "open":
            mode, flags = args[1], args[2]
            writing = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)) or any(c in str(mode or "") for c in "wax+")
        else:
            writing = True
        if writing and path.startswith(root):
            writes.append(f"{event} {path}")

    sys.addaudithook(audit)  # on every rank: rank 0's list proves the audit sees the writes
    model = toy_lora_model()
    result = fit(model, RegressionTask(), loader(batch_size=4), loader(batch_size=8, shuffle=False),
                 FitConfig(output_dir=output_dir, max_steps=6, lr=5e-2, save_every=3, log_every=1, seed=5, eval_every=3))
    from safetensors.torch import save_file

    trained = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    save_file(trained, str(Path(result_dir) / f"rank{rank}.safetensors"))
    (Path(result_dir) / f"rank{rank}.writes").write_text("\n".join(writes))
    (Path(result_dir) / f"rank{rank}.steps").write_text(str(result.steps))
    _leave_process_group()


def _fsdp_state_child() -> None:
    """FSDP2 (fully_shard) on 2 CPU processes: fit's full-state helpers gather the same
    tensors and optimizer moments as an unsharded copy trained alike, and load them back."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from scalpel.core.fit.fsdp import full_model_state, full_optimizer_state, load_full_model_state, load_full_optimizer_state

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    sharded, plain = toy_model(dropout=0.0), toy_model(dropout=0.0)
    fully_shard(sharded[0])
    fully_shard(sharded)
    opts = [torch.optim.AdamW(m.parameters(), lr=0.1) for m in (sharded, plain)]
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    for model, opt in zip((sharded, plain), opts):
        model(x).pow(2).mean().backward()
        opt.step()
    state, moments = full_model_state(sharded), full_optimizer_state(sharded, opts[0])
    if rank == 0:
        reference = plain.state_dict()
        assert state.keys() == reference.keys()
        for name in reference:
            torch.testing.assert_close(state[name], reference[name])
        assert set(moments["state"]) == set(reference), moments["state"].keys()
    else:
        assert state == {}
    box = [state, moments]
    dist.broadcast_object_list(box, 0)
    fresh = {k: torch.zeros_like(v) for k, v in box[0].items()}
    load_full_model_state(sharded, fresh)
    assert all(v.abs().sum() == 0 for v in full_model_state(sharded).values())
    expected = {k: v.clone() for k, v in box[0].items()}  # set_model_state_dict turns the dict's tensors into shards
    load_full_model_state(sharded, box[0])
    load_full_optimizer_state(sharded, opts[0], box[1])
    again = full_model_state(sharded)
    if rank == 0:
        assert again.keys() == expected.keys() and all(torch.equal(again[k], expected[k]) for k in again)
    _leave_process_group()


def _leave_process_group() -> None:
    """End a torchrun child once its checks passed: every rank past its last collective, the
    process group destroyed, and the process gone without Python's interpreter shutdown.

    Gloo's worker threads let go of a collective's tensors after the collective completes;
    that needs the GIL, and a thread that asks for it while the interpreter shuts down is
    stopped inside a destructor, which aborts the process ("terminate called without an
    active exception", SIGABRT: the test failed about one run in four under load).
    ``destroy_process_group`` would join those threads, but only by freeing the group, and
    FSDP2's DTensor caches (module-level, in torch) keep its DeviceMesh, and so the group,
    alive. Without the shutdown there is nothing for a late thread to run into.
    """
    import torch.distributed as dist

    if dist.is_initialized():  # fit has destroyed the group it set up (Accelerate's end_training)
        dist.barrier()  # no rank leaves while another still exchanges with it
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    {"kill": _kill_child, "ddp": _ddp_child, "fsdp_state": _fsdp_state_child}[sys.argv[1]](*sys.argv[2:])
