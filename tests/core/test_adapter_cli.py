"""``scalpel adapter info`` and ``scalpel adapter merge``, through ``scalpel.core.cli.main``."""

import json

import pytest
import torch

import scalpel.core as sc
from scalpel.core.cli import main
from scalpel.core.files import read_safetensors, write_safetensors
from scalpel.core.lora import LoraConfig

transformers = pytest.importorskip("transformers")


def _randomize(model):
    with torch.no_grad():
        for p in sc.trainable_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.3)


@pytest.fixture
def bert_dir(tmp_path):
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20, num_labels=2
    )
    transformers.BertForSequenceClassification(config).save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def test_merge_a_transformers_base_and_show_info(bert_dir, tmp_path, capsys):
    model = transformers.BertForSequenceClassification.from_pretrained(bert_dir).eval()
    model = sc.apply(model, LoraConfig(r=2, targets="query|value", use_dora=True, modules_to_save=("classifier",)))
    _randomize(model)
    ids = torch.randint(0, 50, (2, 6))
    expected = model(input_ids=ids).logits
    sc.save_adapter(model, tmp_path / "adapter", metrics={"accuracy": 0.75})

    assert main(["adapter", "info", str(tmp_path / "adapter")]) == 0
    text = capsys.readouterr().out
    assert "method: lora" in text and "fingerprint: sha256:" in text and "accuracy: 0.75" in text
    assert "adapted_modules: 2" in text
    assert main(["adapter", "info", "--json", str(tmp_path / "adapter")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["base_model"]["class"] == "transformers.BertForSequenceClassification"

    out = tmp_path / "merged"
    assert main(["adapter", "merge", "--base", str(bert_dir), "--adapter", str(tmp_path / "adapter"), "--out", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    merged = transformers.BertForSequenceClassification.from_pretrained(out).eval()
    assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
    assert main(["adapter", "merge", "--base", str(bert_dir), "--adapter", str(tmp_path / "adapter"), "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err


def test_merge_a_safetensors_base_with_a_builder(tmp_path, monkeypatch, capsys):
    from scalpel.core.builders import BUILDERS

    def build(meta, adapter_dir=None):
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 2))

    monkeypatch.setitem(BUILDERS._entries, "test.conv", build)  # a domain registers its builders the same way
    base = build({})
    write_safetensors(tmp_path / "base.safetensors", base.state_dict())
    model = sc.apply(base, LoraConfig(r=2, targets="0|2"))
    _randomize(model)
    x = torch.randn(2, 3, 6, 6)
    expected = model(x)
    sc.save_adapter(model, tmp_path / "adapter")

    args = ["adapter", "merge", "--base", str(tmp_path / "base.safetensors"), "--adapter", str(tmp_path / "adapter")]
    assert main(args + ["--out", str(tmp_path / "m1")]) == 2
    assert "--builder NAME, a registered builder" in capsys.readouterr().err
    assert main(args + ["--out", str(tmp_path / "m2"), "--builder", "test.conv"]) == 0
    rebuilt = build({})
    rebuilt.load_state_dict(read_safetensors(tmp_path / "m2" / "model.safetensors"))
    assert torch.allclose(rebuilt(x), expected, atol=1e-5)
    assert main(args + ["--out", str(tmp_path / "m3"), "--builder", "test.cnov"]) == 2
    assert "did you mean 'test.conv'?" in capsys.readouterr().err
