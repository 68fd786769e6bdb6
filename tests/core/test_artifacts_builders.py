"""``scalpel adapter merge`` runs no code that a file or a flag names by import path: builders
come from the registry the installed packages fill, base classes from transformers itself."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

import scalpel.core as sc
from scalpel.core.cli import main
from scalpel.core.files import read_safetensors, write_safetensors
from scalpel.core.lora import LoraConfig

#: A module a file could name: calling anything in it leaves a trace in CALLS.
TRAP = textwrap.dedent("""
    from torch import nn
    CALLS = []
    def build(meta=None, adapter_dir=None):
        CALLS.append("build")
        return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    class Evil:
        @classmethod
        def from_pretrained(cls, *args, **kwargs):
            CALLS.append("from_pretrained")
            raise OSError("should never be called")
""")


@pytest.fixture
def trap(tmp_path, monkeypatch):
    (tmp_path / "scalpel_test_trap.py").write_text(TRAP)
    monkeypatch.syspath_prepend(str(tmp_path))
    import scalpel_test_trap

    scalpel_test_trap.CALLS.clear()
    return scalpel_test_trap


@pytest.fixture
def registered(monkeypatch):
    """A test-only builder registered the way a domain package would, removed afterwards."""
    from scalpel.core.builders import BUILDERS

    seen = []

    def tiny(meta, adapter_dir):
        seen.append(meta)
        return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))

    monkeypatch.setitem(BUILDERS._entries, "test.tiny", tiny)
    return seen


def _adapter_and_base(tmp_path, trap, base_model=None):
    base = trap.build()
    trap.CALLS.clear()
    write_safetensors(tmp_path / "base.safetensors", base.state_dict())
    model = sc.apply(base, LoraConfig(r=2, targets="0|2"))
    with torch.no_grad():
        for p in sc.trainable_parameters(model).values():
            p.add_(0.3)
    sc.save_adapter(model, tmp_path / "adapter", base_model=base_model, extra={"classes": 2})
    return model


def _merge(tmp_path, out, *more):
    return main(["adapter", "merge", "--base", str(tmp_path / "base.safetensors"),
                 "--adapter", str(tmp_path / "adapter"), "--out", str(tmp_path / out), *more])


def test_an_import_path_recorded_in_scalpel_json_is_never_called(tmp_path, trap, capsys):
    _adapter_and_base(tmp_path, trap, base_model={"builder": "scalpel_test_trap:build"})
    assert _merge(tmp_path, "m") == 2
    err = capsys.readouterr().err
    assert "scalpel.json (base_model.builder) names the builder 'scalpel_test_trap:build', an import path" in err
    assert "never imports code" in err and "scalpel.builders" in err
    assert trap.CALLS == [] and not (tmp_path / "m").exists()


def test_an_import_path_given_as_builder_flag_is_refused(tmp_path, trap, capsys):
    _adapter_and_base(tmp_path, trap)
    assert _merge(tmp_path, "m", "--builder", "scalpel_test_trap:build") == 2
    assert "--builder names the builder 'scalpel_test_trap:build', an import path" in capsys.readouterr().err
    assert trap.CALLS == []


def test_a_registered_builder_merges_and_gets_the_adapter_meta(tmp_path, trap, registered, capsys):
    model = _adapter_and_base(tmp_path, trap, base_model={"builder": "test.tiny"})
    x = torch.randn(3, 4)
    expected = model(x)
    assert _merge(tmp_path, "recorded") == 0  # the name scalpel.json records
    assert _merge(tmp_path, "flag", "--builder", "test.tiny") == 0
    assert registered[0]["extra"] == {"classes": 2} and registered[0]["base_model"]["builder"] == "test.tiny"
    rebuilt = trap.build()
    rebuilt.load_state_dict(read_safetensors(tmp_path / "flag" / "model.safetensors"))
    assert torch.allclose(rebuilt(x), expected, atol=1e-5)
    assert _merge(tmp_path, "typo", "--builder", "test.tinny") == 2
    assert "not registered" in capsys.readouterr().err


def test_builders_come_from_the_entry_point_group(tmp_path, trap, monkeypatch):
    dist = tmp_path / "site" / "scalpel_test_builders-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: scalpel-test-builders\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[scalpel.builders]\ntest.entry = scalpel_test_trap:build\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    from scalpel.core.builders import BUILDERS, get_builder

    monkeypatch.setattr(BUILDERS, "_entries", dict(BUILDERS._entries))  # what the lookup adds goes away
    assert get_builder("test.entry") is trap.build
    with pytest.raises(sc.UnknownNameError, match="did you mean 'test.entry'"):
        get_builder("test.entri")


def test_a_base_class_named_by_a_file_must_be_a_transformers_class(tmp_path, trap, capsys):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=20)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    sc.save_adapter(sc.apply(transformers.BertModel(config), LoraConfig(r=2, targets="query")), tmp_path / "adapter",
                    base_model={"class": "scalpel_test_trap.Evil"})
    args = ["adapter", "merge", "--base", str(tmp_path / "bert"), "--adapter", str(tmp_path / "adapter")]
    assert main([*args, "--out", str(tmp_path / "m1")]) == 2
    assert "only transformers classes are accepted" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "m2"), "--base-class", "scalpel_test_trap.Evil"]) == 2
    assert main([*args, "--out", str(tmp_path / "m3"), "--base-class", "transformers.pipeline"]) == 2
    assert "not a model class of transformers" in capsys.readouterr().err
    assert trap.CALLS == []
    assert main([*args, "--out", str(tmp_path / "m4"), "--base-class", "transformers.BertModel"]) == 0
    assert json.loads((tmp_path / "m4" / "config.json").read_text())["architectures"] == ["BertModel"]
