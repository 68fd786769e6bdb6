"""LoraConfig validation and target selection (regex, layer types, all-linear, exclude)."""

import pytest
import torch
from torch import nn

import scalpel.core as sc
from scalpel.core.config import config_from_dict, config_to_dict
from scalpel.core.errors import ConfigError, TargetNotFoundError
from scalpel.core.lora import LoraConfig, LoraLayer, ModulesToSave, find_targets


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.query = nn.Linear(8, 8)
        self.query_proj = nn.Linear(8, 8)
        self.value = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.classifier = nn.Linear(8, 2)

    def forward(self, ids):
        h = self.embed(ids)
        for b in self.blocks:
            h = b.norm(b.query(h) + b.value(h) + b.query_proj(h))
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)
        return self.classifier(h.mean(1))


def _names(config):
    return [n for n, _ in find_targets(Net(), config)]


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        LoraConfig(r=0, alpha=-1, dropout=1.5, init="xavier", bias="some", targets="(", target_types=("LSTM",),
                   rank_pattern={"q": 0})
    problems = err.value.problems
    assert len(problems) == 8, problems
    text = str(err.value)
    for word in ("r must be", "alpha", "dropout", "init", "bias", "targets", "LSTM", "rank_pattern"):
        assert word in text


def test_a_config_without_targets_is_refused():
    with pytest.raises(ConfigError, match="nothing to adapt"):
        LoraConfig()


def test_config_round_trips_through_a_dict():
    config = LoraConfig(r=4, targets="q", target_types=("Linear",), rank_pattern={"q": 2}, modules_to_save=("head",))
    assert config_from_dict(LoraConfig, config_to_dict(config)) == config


def test_regex_matches_whole_names_or_dotted_suffixes():
    assert _names(LoraConfig(targets="query")) == ["blocks.0.query", "blocks.1.query"]
    assert _names(LoraConfig(targets=r"blocks\.1\.(query|value)")) == ["blocks.1.query", "blocks.1.value"]
    assert _names(LoraConfig(targets="query.*")) == ["blocks.0.query", "blocks.0.query_proj", "blocks.1.query", "blocks.1.query_proj"]


def test_types_and_names_combine():
    assert _names(LoraConfig(target_types=("Conv1d", "Embedding"))) == ["embed", "conv"]
    assert _names(LoraConfig(targets=r"blocks\.0\..*", target_types=("Linear",))) == [
        "blocks.0.query", "blocks.0.query_proj", "blocks.0.value"
    ]


def test_all_linear_leaves_out_the_head_and_exclude_wins():
    names = _names(LoraConfig(targets="all-linear", exclude=r"blocks\.1\..*"))
    assert names == ["blocks.0.query", "blocks.0.query_proj", "blocks.0.value"]


def test_no_match_lists_modules_that_exist():
    with pytest.raises(TargetNotFoundError) as err:
        sc.apply(Net(), LoraConfig(targets="q_proj|v_proj"))
    message = str(err.value)
    assert "matched no module" in message and "blocks.0.query (Linear)" in message and "embed (Embedding)" in message


def test_a_named_unsupported_leaf_is_an_error():
    with pytest.raises(ConfigError, match="LayerNorm"):
        sc.apply(Net(), LoraConfig(targets="norm"))


def test_unknown_modules_to_save_is_an_error():
    with pytest.raises(TargetNotFoundError, match="modules_to_save"):
        sc.apply(Net(), LoraConfig(targets="query", modules_to_save=("head",)))


def test_each_adapter_has_its_own_head():
    model = Net()
    ids = torch.randint(0, 10, (2, 4))
    sc.apply(model, LoraConfig(targets="query", modules_to_save=("classifier",)), adapter_name="a")
    sc.apply(model, LoraConfig(targets="query|value", modules_to_save=("classifier",)), adapter_name="b")
    assert isinstance(model.classifier, ModulesToSave) and model.classifier.adapter_names() == ["a", "b"]
    assert isinstance(model.blocks[0].query, LoraLayer) and model.blocks[0].query.adapter_names() == ["a", "b"]
    with torch.no_grad():
        model.classifier.modules_to_save["b"].weight.add_(1.0)
    out_b = model(ids)
    sc.set_active_adapter(model, "a")
    assert "classifier.modules_to_save.a.weight" in sc.trainable_parameters(model)
    assert "classifier.modules_to_save.b.weight" not in sc.trainable_parameters(model)
    assert not torch.allclose(model(ids), out_b)


def test_lora_twice_under_one_adapter_name_is_refused():
    model = sc.apply(Net(), LoraConfig(targets="query"))
    with pytest.raises(sc.ScalpelError, match="already has LoRA"):
        sc.apply(model, LoraConfig(targets="value"))


def test_all_linear_on_gpt2_takes_conv1d_and_leaves_the_lm_head():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    names = [n for n, _ in find_targets(transformers.GPT2LMHeadModel(config), LoraConfig(targets="all-linear"))]
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
