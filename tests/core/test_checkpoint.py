"""Checkpoint files: nested state through safetensors + JSON, atomic folders, pruning."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from scalpel.core.checkpoint import (
    flatten,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unflatten,
)
from scalpel.core.errors import CheckpointError


def _adamw_state() -> dict:
    model = nn.Linear(3, 2)
    opt = torch.optim.AdamW([{"params": [model.weight], "lr_scale": 0.5, "block": "w"}, {"params": [model.bias]}], lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return opt.state_dict()


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    return a == b and type(a) is type(b)


def test_flatten_round_trips_an_optimizer_state_and_rng_states_through_json():
    state = {"optimizer": _adamw_state(), "rng": rng_state(), "hook": {"__odd": 1, 3: (1, [2.5, None])}}
    structure, tensors = flatten(state)
    text = json.dumps(structure)  # the structure is plain JSON ...
    assert all(isinstance(t, torch.Tensor) for t in tensors.values())  # ... the tensors go to safetensors
    restored = unflatten(json.loads(text), tensors)
    assert _equal(restored, state)
    opt = torch.optim.AdamW([{"params": [nn.Parameter(torch.zeros(2, 3))]}, {"params": [nn.Parameter(torch.zeros(2))]}], lr=0.1)
    opt.load_state_dict(restored["optimizer"])
    assert opt.param_groups[0]["lr_scale"] == 0.5 and opt.param_groups[0]["betas"] == (0.9, 0.999)


def test_rng_states_restore_every_generator():
    state = rng_state()
    drawn = (random.random(), np.random.rand(), torch.rand(3))
    set_rng_state(unflatten(*flatten(state)))
    again = (random.random(), np.random.rand(), torch.rand(3))
    assert drawn[:2] == again[:2] and torch.equal(drawn[2], again[2])


def test_objects_that_are_not_plain_data_are_refused():
    with pytest.raises(CheckpointError, match="cannot checkpoint a object"):
        flatten({"x": object()})


def test_save_load_prune_and_damaged_checkpoints(tmp_path):
    for step in (5, 10, 15):
        save_checkpoint(tmp_path, step, {"w": torch.full((2,), float(step))}, {"step": step, "m": torch.ones(1)})
    (tmp_path / ".step-00000020.tmp-1").mkdir()  # a save killed half way: never listed
    (tmp_path / "step-00000025").mkdir()  # a folder without state.json: never listed
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000005", "step-00000010", "step-00000015"]
    trainable, state = load_checkpoint(tmp_path / "step-00000015")
    assert state["step"] == 15 and torch.equal(trainable["w"], torch.full((2,), 15.0))
    prune_checkpoints(tmp_path, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000010", "step-00000015"]
    assert not list(tmp_path.glob(".step-*"))
    save_checkpoint(tmp_path, 15, {"w": torch.zeros(2)}, {"step": 15})  # saving a step again replaces it
    assert torch.equal(load_checkpoint(tmp_path / "step-00000015")[0]["w"], torch.zeros(2))
    (tmp_path / "step-00000015/trainable.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="damaged.*delete that folder"):
        load_checkpoint(tmp_path / "step-00000015")
