"""Parity with the Hugging Face ``peft`` package, both directions: our saved adapters
open in ``peft.PeftModel.from_pretrained`` and PEFT's open in ``scalpel.core.load_adapter``,
giving the same logits within 1e-5 (LoRA, rsLoRA, DoRA; tiny BERT, tiny GPT-2, small CNN)."""

import copy
import json
import warnings

import pytest
import torch
from torch import nn

import scalpel.core as sc
from scalpel.core.lora import LoraConfig

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")


def _bert():
    config = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=32, num_labels=3,
    )
    model = transformers.BertForSequenceClassification(config).eval()
    ids = torch.randint(1, 64, (2, 9))
    return model, (lambda m: m(input_ids=ids).logits)


def _gpt2():
    config = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=2, n_positions=32)
    model = transformers.GPT2LMHeadModel(config).eval()
    ids = torch.randint(0, 64, (2, 9))
    return model, (lambda m: m(input_ids=ids).logits)


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.conv2(x)).mean(dim=(2, 3))
        return self.fc(x)


def _cnn():
    model = SmallCNN().eval()
    x = torch.randn(2, 3, 8, 8)
    return model, (lambda m: m(x))


# (builder, our targets, PEFT's target_modules, modules_to_save)
CASES = {
    "bert": (_bert, r"query|value|word_embeddings", ["query", "value", "word_embeddings"], ["classifier"]),
    "gpt2": (_gpt2, r"c_attn|c_proj|c_fc", ["c_attn", "c_proj", "c_fc"], None),
    "cnn": (_cnn, r"conv1|conv2", ["conv1", "conv2"], ["fc"]),
}
VARIANTS = {"lora": {}, "rslora": {"use_rslora": True}, "dora": {"use_dora": True}}


def _randomize(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.2)


def _same(a, b):
    assert torch.allclose(a, b, atol=1e-5, rtol=0), f"max difference {(a - b).abs().max().item():.3g}"


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", list(CASES))
def test_ours_open_in_peft(case, variant, tmp_path):
    build, targets, _, heads = CASES[case]
    base, logits = build()
    ours = sc.apply(copy.deepcopy(base), LoraConfig(r=4, alpha=6, targets=targets, modules_to_save=tuple(heads or ()), **VARIANTS[variant]))
    _randomize(ours)
    expected = logits(ours)
    assert (expected - logits(base)).abs().max() > 1e-3
    sc.save_adapter(ours, tmp_path / "adapter")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    _same(logits(theirs), expected)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("case", list(CASES))
def test_peft_adapters_open_in_scalpel(case, variant, tmp_path):
    build, _, peft_targets, heads = CASES[case]
    base, logits = build()
    options = VARIANTS[variant]
    config = peft.LoraConfig(r=4, lora_alpha=6, target_modules=peft_targets, modules_to_save=heads, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), config)
        _randomize(theirs)
        theirs.eval()
        expected = logits(theirs)
        theirs.save_pretrained(tmp_path / "peft")

    ours = sc.load_adapter(copy.deepcopy(base), tmp_path / "peft")
    _same(logits(ours), expected)
    assert set(sc.trainable_parameters(ours)), "a loaded adapter is trainable again"
    merged = sc.merge(ours)
    _same(logits(merged), expected)


def test_saved_keys_and_config_are_peft_s(tmp_path):
    base, _ = _bert()
    model = sc.apply(base, LoraConfig(r=2, targets="query|word_embeddings", use_dora=True, modules_to_save=("classifier",)))
    sc.save_adapter(model, tmp_path)
    from safetensors.torch import load_file

    keys = set(load_file(tmp_path / "adapter_model.safetensors"))
    prefix = "base_model.model.bert."
    assert prefix + "encoder.layer.0.attention.self.query.lora_A.weight" in keys
    assert prefix + "encoder.layer.0.attention.self.query.lora_magnitude_vector" in keys
    assert prefix + "embeddings.word_embeddings.lora_embedding_B" in keys
    assert "base_model.model.classifier.weight" in keys
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["use_dora"] is True
    assert config["target_modules"][0] == "bert.embeddings.word_embeddings"
    assert config["modules_to_save"] == ["classifier"]


def test_a_peft_sequence_classification_adapter_loads(tmp_path):
    """PEFT's SEQ_CLS task lists both "classifier" and "score" as modules_to_save."""
    base, logits = _bert()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, target_modules=["query"], task_type="SEQ_CLS"))
        _randomize(theirs)
        theirs.eval()
        expected = logits(theirs)
        theirs.save_pretrained(tmp_path)
    ours = sc.load_adapter(copy.deepcopy(base), tmp_path)
    _same(logits(ours), expected)
    assert "classifier.modules_to_save.default.weight" in sc.trainable_parameters(ours)


@pytest.mark.parametrize("bias", ["lora_only", "all"])
def test_trained_biases_travel_both_ways(bias, tmp_path):
    base, logits = _cnn()
    ours = sc.apply(copy.deepcopy(base), LoraConfig(r=4, targets="conv1|conv2", bias=bias))
    _randomize(ours)
    expected = logits(ours)
    sc.save_adapter(ours, tmp_path / "ours")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = peft.PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "ours").eval()
        _same(logits(theirs), expected)
        theirs.save_pretrained(tmp_path / "peft")
    _same(logits(sc.load_adapter(copy.deepcopy(base), tmp_path / "peft")), expected)
