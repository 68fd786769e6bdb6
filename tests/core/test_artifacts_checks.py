"""``scalpel adapter info`` (and a load) check an adapter folder's files against each other and
exit non-zero naming each problem, for Scalpel folders and PEFT ones alike."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import scalpel.core as sc
from scalpel.core.cli import main
from scalpel.core.lora import LoraConfig


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def _saved(path, r: int = 2, peft_only: bool = False):
    """A saved LoRA adapter; ``peft_only`` drops scalpel.json, leaving the folder PEFT would write."""
    sc.save_adapter(sc.apply(_net(), LoraConfig(r=r, targets="0|2")), path)
    if peft_only:
        (path / "scalpel.json").unlink()
    return path


def _info_error(path, capsys) -> str:
    assert main(["adapter", "info", str(path)]) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("peft_only", [False, True], ids=["scalpel", "peft"])
def test_a_config_that_is_not_json_is_reported_by_info_and_refused_by_load(tmp_path, capsys, peft_only):
    path = _saved(tmp_path / "a", peft_only=peft_only)
    (path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": ')
    assert "adapter_config.json is not valid JSON" in _info_error(path, capsys)
    with pytest.raises(sc.AdapterError, match="adapter_config.json is not valid JSON"):
        sc.load_adapter(_net(), path)


@pytest.mark.parametrize("peft_only", [False, True], ids=["scalpel", "peft"])
def test_a_rank_in_the_config_that_the_tensors_do_not_have_is_named(tmp_path, capsys, peft_only):
    path = _saved(tmp_path / "a", r=6, peft_only=peft_only)
    config = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps({**config, "r": 4}))
    err = _info_error(path, capsys)
    assert "says r: 4" in err and "rank-6 tensors" in err and "2 module(s) disagree" in err
    with pytest.raises(sc.AdapterError, match="says r: 4"):
        sc.load_adapter(_net(), path)


def test_a_rank_pattern_that_the_tensors_do_not_have_is_named(tmp_path, capsys):
    path = _saved(tmp_path / "a", r=2, peft_only=True)
    config = json.loads((path / "adapter_config.json").read_text())
    (path / "adapter_config.json").write_text(json.dumps({**config, "rank_pattern": {"2": 5}}))
    assert "says rank 5 (rank_pattern) for module '2'" in _info_error(path, capsys)


def test_a_peft_folder_with_only_pickle_weights_says_they_cannot_be_read(tmp_path, capsys):
    path = _saved(tmp_path / "a", peft_only=True)
    (path / "adapter_model.safetensors").unlink()
    torch.save({"base_model.model.0.lora_A.weight": torch.zeros(2, 4)}, path / "adapter_model.bin")
    err = _info_error(path, capsys)
    assert "adapter_model.bin, a pickle" in err and "cannot be read" in err
    assert "safe_serialization=True" in err and "weights_only=False" not in err
    with pytest.raises(sc.AdapterError, match="never unpickles"):
        sc.load_adapter(_net(), path)


@pytest.mark.parametrize("peft_only", [False, True], ids=["scalpel", "peft"])
def test_missing_weights_are_reported(tmp_path, capsys, peft_only):
    path = _saved(tmp_path / "a", peft_only=peft_only)
    (path / "adapter_model.safetensors").unlink()
    assert "adapter_model.safetensors is missing" in _info_error(path, capsys)


def test_every_problem_is_listed_at_once(tmp_path, capsys):
    path = _saved(tmp_path / "a")
    (path / "adapter_config.json").write_text("[]")
    (path / "adapter_model.safetensors").unlink()
    err = _info_error(path, capsys)
    assert "2 problem(s)" in err and "not a JSON object" in err and "is missing" in err


def test_a_sound_folder_passes(tmp_path, capsys):
    path = _saved(tmp_path / "a", r=3)
    assert main(["adapter", "info", str(path)]) == 0
    assert "ranks: [3]" in capsys.readouterr().out
    assert main(["adapter", "info", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
