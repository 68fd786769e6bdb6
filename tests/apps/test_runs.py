"""apps/runs.py: finding runs, reading their metadata, switching adapters on one base."""

import copy
import json

import pytest
import torch
from torch import nn

import scalpel.core as sc
from scalpel.apps.runs import AdapterSlots, default_runs_dir, find_runs, read_run
from scalpel.core.lora import LoraConfig


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _save(path, seed, task="nlp.sentiment", metrics=None):
    model = sc.apply(_net(), LoraConfig(r=2, targets="0", modules_to_save=("2",)))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in sc.trainable_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.5)
    sc.save_adapter(model, path, metrics=metrics or {"accuracy": 0.5 + seed / 10}, extra={"task": task},
                    base_model={"name_or_path": "tiny-base"})
    return model


def test_find_runs_reads_metadata_and_filters_by_task(tmp_path):
    _save(tmp_path / "a" / "adapter", 1)
    _save(tmp_path / "group" / "b" / "adapter", 2, task="nlp.chat")
    (tmp_path / "broken" / "adapter").mkdir(parents=True)
    (tmp_path / "broken" / "adapter" / "scalpel.json").write_text("{not json")
    runs, problems = find_runs(tmp_path)
    assert sorted(r.name for r in runs) == ["a/adapter", "group/b/adapter"]
    assert len(problems) == 1 and "broken" in problems[0] and "save the adapter again" in problems[0]
    only, _ = find_runs(tmp_path, tasks=("nlp.sentiment",))
    assert [r.name for r in only] == ["a/adapter"]
    info = only[0]
    meta = json.loads((tmp_path / "a" / "adapter" / "scalpel.json").read_text())
    assert info.methods == ("lora",) and info.base_model == "tiny-base"
    assert info.trainable_parameters == meta["trainable_parameters"] > 0
    row = info.summary()
    assert row["method"] == "lora" and row["accuracy"] == pytest.approx(0.6)
    assert 0 < row["trainable %"] < 100


def test_a_run_of_the_run_contract_shows_its_base_metrics_beside_the_adapted_ones(tmp_path):
    from toy_pipeline import TOY

    result = TOY.run(output_dir=str(tmp_path / "toy-lora"), method="lora", r=2, max_steps=4)
    (info,), _ = find_runs(tmp_path)
    row = info.summary()
    assert row["accuracy"] == pytest.approx(result.after["accuracy"], abs=1e-4)
    assert row["accuracy (base)"] == pytest.approx(result.before["accuracy"], abs=1e-4)


def test_no_runs_dir_gives_nothing(tmp_path):
    assert find_runs(tmp_path / "missing") == ([], [])


def test_default_runs_dir_from_env(monkeypatch):
    monkeypatch.delenv("SCALPEL_RUNS", raising=False)
    assert default_runs_dir() == "runs"
    monkeypatch.setenv("SCALPEL_RUNS", "/data/runs")
    assert default_runs_dir() == "/data/runs"


def test_adapter_slots_switch_without_reloading_the_base(tmp_path):
    first = _save(tmp_path / "one", 1).eval()
    second = _save(tmp_path / "two", 2).eval()
    x = torch.randn(4, 6)
    want1, want2 = first(x), second(x)
    assert not torch.allclose(want1, want2)
    base = _net()
    slots = AdapterSlots(base)
    for adapter, want in (("one", want1), ("two", want2), ("one", want1), ("two", want2)):
        model = slots.activate(tmp_path / adapter)
        assert model is base  # the same module, never rebuilt
        torch.testing.assert_close(model(x), want)
    assert len(slots.loaded) == 2
    assert read_run(tmp_path / "one").metrics["accuracy"] == pytest.approx(0.6)


def test_a_full_adapter_does_not_leak_into_the_next_one(tmp_path):
    """Switching from an adapter that trained every base weight to a LoRA one gives the LoRA model."""
    from scalpel.core.recipes import adapt

    def base():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))

    x = torch.randn(6, 4)
    for method, options in (("full", {}), ("lora", {"r": 2})):
        model = adapt(base(), method, **options)
        model.train()
        with torch.no_grad():
            for p in sc.trainable_parameters(model).values():
                p.add_(0.5)
            model(x + 3)  # moves the BatchNorm statistics too
        sc.save_adapter(model, tmp_path / method)
    fresh_lora = sc.load_adapter(base(), tmp_path / "lora").eval()(x)
    slots = AdapterSlots(base())
    slots.activate(tmp_path / "full")
    with torch.no_grad():
        torch.testing.assert_close(slots.activate(tmp_path / "lora")(x), fresh_lora)
        torch.testing.assert_close(slots.activate(tmp_path / "full")(x), sc.load_adapter(base(), tmp_path / "full").eval()(x))
