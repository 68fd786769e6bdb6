"""Saving and loading LoRA adapters, and the bad input around them; the generic core
pieces they rely on (registry, atomic writes, parameter report, method lookup)."""

import copy
import json

import pytest
import torch
from torch import nn

import scalpel.core as sc
from scalpel.core.errors import AdapterError, BaseModelMismatchError, UnknownNameError
from scalpel.core.files import atomic_write, write_json
from scalpel.core.lora import LORA, LoraConfig
from scalpel.core.methods import METHODS, register_method
from scalpel.core.registry import Registry


def _net(hidden=8):
    return nn.Sequential(nn.Embedding(12, hidden), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3))


IDS = torch.randint(0, 12, (2, 5))


def _adapted(hidden=8, **options):
    model = sc.apply(_net(hidden), LoraConfig(r=2, targets="0|1", modules_to_save=("3",), **options))
    _randomize(model)
    return model


def _randomize(model):
    with torch.no_grad():
        for p in sc.trainable_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("options", [{}, {"use_dora": True, "bias": "all"}], ids=["lora", "dora-bias"])
def test_save_then_load_gives_the_same_outputs(tmp_path, options):
    fresh = _net()
    adapted = sc.apply(copy.deepcopy(fresh), LoraConfig(r=2, targets="0|1", modules_to_save=("3",), **options))
    _randomize(adapted)
    expected = adapted(IDS)
    sc.save_adapter(adapted, tmp_path / "a", metrics={"accuracy": 0.5})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["adapter_config.json", "adapter_model.safetensors", "scalpel.json"]

    loaded = sc.load_adapter(fresh, tmp_path / "a")
    assert torch.allclose(loaded(IDS), expected, atol=1e-6)
    assert set(sc.trainable_parameters(loaded)) == set(sc.trainable_parameters(adapted))

    info = sc.adapter_info(tmp_path / "a")
    assert info["methods"][0]["method"] == "lora"
    assert info["methods"][0]["details"]["adapted_modules"] == 2
    assert info["metrics"] == {"accuracy": 0.5}


def test_a_second_adapter_loads_beside_the_first(tmp_path):
    fresh = _net()
    model = sc.apply(copy.deepcopy(fresh), LoraConfig(r=2, targets="1"), adapter_name="x")
    _randomize(model)
    expected = model(IDS)
    sc.save_adapter(model, tmp_path / "x")
    other = sc.apply(fresh, LoraConfig(r=3, targets="1"), adapter_name="y")
    sc.load_adapter(other, tmp_path / "x")
    assert sc.adapter_names(other) == ["y", "x"]
    assert torch.allclose(other(IDS), expected, atol=1e-6)
    with pytest.raises(sc.ScalpelError, match="already has an adapter named 'x'"):
        sc.load_adapter(other, tmp_path / "x")


def test_missing_or_truncated_weights_are_reported(tmp_path):
    sc.save_adapter(_adapted(), tmp_path / "a")
    weights = tmp_path / "a" / "adapter_model.safetensors"
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(AdapterError, match="truncated"):
        sc.load_adapter(_net(), tmp_path / "a")
    weights.unlink()
    with pytest.raises(AdapterError, match="missing"):
        sc.load_adapter(_net(), tmp_path / "a")
    with pytest.raises(AdapterError, match="does not exist"):
        sc.load_adapter(_net(), tmp_path / "nowhere")


def test_an_adapter_for_another_base_names_the_first_mismatch(tmp_path):
    sc.save_adapter(_adapted(hidden=8), tmp_path / "a")
    with pytest.raises(BaseModelMismatchError, match=r"parameter '0.weight' has shape \[12, 8\] in the adapter's base but \[12, 16\]"):
        sc.load_adapter(_net(hidden=16), tmp_path / "a")


def test_a_peft_adapter_for_another_base_is_refused(tmp_path):
    peft = pytest.importorskip("peft")
    theirs = peft.get_peft_model(_net(hidden=8), peft.LoraConfig(r=2, target_modules=["1"]))
    theirs.save_pretrained(tmp_path / "p")
    with pytest.raises(BaseModelMismatchError, match="shape"):
        sc.load_adapter(_net(hidden=16), tmp_path / "p")
    renamed = nn.Sequential(nn.Embedding(12, 8))
    with pytest.raises(BaseModelMismatchError, match="module '1'"):
        sc.load_adapter(renamed, tmp_path / "p")


def test_unknown_method_names_are_reported(tmp_path):
    sc.save_adapter(_adapted(), tmp_path / "a")
    meta_path = tmp_path / "a" / "scalpel.json"
    meta = json.loads(meta_path.read_text())
    meta["methods"][0]["method"] = "lorra"
    write_json(meta_path, meta)
    with pytest.raises(UnknownNameError, match="unknown method 'lorra'.*Did you mean 'lora'"):
        sc.load_adapter(_net(), tmp_path / "a")
    with pytest.raises(sc.ScalpelError, match="not a method config"):
        sc.apply(_net(), object())


def test_registries_refuse_duplicates():
    registry: Registry[int] = Registry("thing")
    registry.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        registry.add("a", 2)
    assert "lora" in METHODS
    with pytest.raises(ValueError, match="already registered"):
        register_method(LORA)


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "file.json"
    write_json(target, {"old": True})
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write('{"new": ')
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_parameter_report_counts_deltas_against_everything():
    model = sc.apply(_net(), LoraConfig(r=2, targets="1"))
    lora = 2 * 8 + 8 * 2
    total = sum(p.numel() for p in _net().parameters()) + lora
    assert sc.count_parameters(model) == (lora, total)
    assert sc.parameter_report(model) == f"trainable {lora:,} of {total:,} parameters ({100 * lora / total:.2f}%)"
