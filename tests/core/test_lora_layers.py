"""LoRA / DoRA delta layers on every supported layer type: zero init, merge == unmerged,
exact unmerge, plain modules after merge, gradients, dropout, grouped convs."""

import copy

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import scalpel.core as sc
from scalpel.core.errors import ConfigError
from scalpel.core.lora import LoraConfig, LoraLayer


def _linear():
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)), torch.randn(3, 7, 6)


def _embedding():
    return nn.Sequential(nn.Embedding(11, 6, padding_idx=0), nn.Tanh(), nn.Linear(6, 3)), torch.randint(0, 11, (4, 5))


def _conv(dims):
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    model = nn.Sequential(conv(3, 5, 3, stride=2, padding=1), nn.ReLU(), conv(5, 4, 1))
    return model, torch.randn(2, 3, *([6] * dims))


def _gpt2_conv1d():
    return nn.Sequential(Conv1D(5, 6), nn.Tanh(), Conv1D(4, 5)), torch.randn(2, 3, 6)


MODELS = {
    "linear": _linear,
    "embedding": _embedding,
    "conv1d": lambda: _conv(1),
    "conv2d": lambda: _conv(2),
    "conv3d": lambda: _conv(3),
    "gpt2_conv1d": _gpt2_conv1d,
}


def _randomize(model):
    """Give every delta tensor a non-trivial value (B starts at zero, which would hide bugs)."""
    with torch.no_grad():
        for p in sc.trainable_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.3)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_zero_init_merge_unmerge(kind, dora):
    model, x = MODELS[kind]()
    model.eval()
    base_out = model(x)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    model = sc.apply(model, LoraConfig(r=2, alpha=3, targets=r"0|2", use_dora=dora))
    assert sum(isinstance(m, LoraLayer) for m in model.modules()) == 2
    assert torch.allclose(model(x), base_out, atol=1e-6), "B = 0 must leave the model unchanged"

    _randomize(model)
    unmerged = model(x)
    assert (unmerged - base_out).abs().max() > 1e-3, "the randomized adapter must change the output"
    with torch.no_grad():  # inference folds W0 + s ΔW on the fly where that is cheaper
        assert torch.allclose(model(x), unmerged, atol=1e-5)
    sc.merge(model, unload=False)
    assert torch.allclose(model(x), unmerged, atol=1e-5)
    sc.unmerge(model)
    restored = {k.replace("base_layer.", ""): v for k, v in model.state_dict().items() if "lora_" not in k}
    for key, value in original.items():
        assert torch.equal(restored[key], value), f"{key} not restored bit for bit"
    assert torch.allclose(model(x), unmerged, atol=1e-6)

    plain = sc.merge(model)
    assert not any(isinstance(m, LoraLayer) for m in plain.modules())
    assert type(plain[0]).__name__ == type(MODELS[kind]()[0][0]).__name__
    assert torch.allclose(plain(x), unmerged, atol=1e-5)


def test_only_active_adapter_gets_gradients_and_disable_restores_base():
    model, x = _linear()
    base_out = model(x)
    sc.apply(model, LoraConfig(r=2, targets="0"), adapter_name="a")
    sc.apply(model, LoraConfig(r=3, targets="0|2"), adapter_name="b")
    _randomize(model)
    sc.set_active_adapter(model, "a")
    _randomize(model)
    names = set(sc.trainable_parameters(model))
    assert names == {"0.lora_A.a.weight", "0.lora_B.a.weight"}
    model(x).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in names), name

    out_a = model(x)
    sc.set_active_adapter(model, "b")
    out_b = model(x)
    assert not torch.allclose(out_a, out_b)
    with sc.disable_adapters(model):
        assert torch.allclose(model(x), base_out, atol=1e-6)
    assert torch.allclose(model(x), out_b)

    sc.delete_adapter(model, "b")
    assert sc.adapter_names(model) == ["a"]
    assert torch.allclose(model(x), out_a)
    assert isinstance(model[2], nn.Linear), "a layer left without adapters is unwrapped"


def test_dropout_only_in_training_and_not_on_embeddings():
    model, x = _linear()
    sc.apply(model, LoraConfig(r=2, targets="0", dropout=0.5))
    _randomize(model)
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b), "dropout must act in training"
    model.eval()
    assert torch.allclose(model(x), model(x))

    emb, ids = _embedding()
    sc.apply(emb, LoraConfig(r=2, targets="0", dropout=0.5))
    assert emb[0].specs["default"].dropout == 0.0


def test_rslora_scaling_and_patterns():
    model, _ = _linear()
    sc.apply(model, LoraConfig(r=4, alpha=8, targets="0|2", use_rslora=True, rank_pattern={"2": 2}, alpha_pattern={"2": 6}))
    assert model[0].specs["default"].scaling == pytest.approx(8 / 2)
    assert model[2].specs["default"].r == 2
    assert model[2].specs["default"].scaling == pytest.approx(6 / 2**0.5)
    assert model[2].lora_A["default"].weight.shape == (2, 5)


def test_gaussian_init_draws_a_with_std_one_over_r():
    layer = nn.Sequential(nn.Linear(400, 400))
    sc.apply(layer, LoraConfig(r=4, targets="0", init="gaussian"))
    A = layer[0].lora_A["default"].weight
    assert A.std().item() == pytest.approx(0.25, rel=0.05)
    assert torch.count_nonzero(layer[0].lora_B["default"].weight) == 0


def test_grouped_conv_is_refused_with_the_way_out():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 1))
    with pytest.raises(ConfigError, match=r"grouped convolution \(groups=2\).*exclude"):
        sc.apply(model, LoraConfig(target_types=("Conv2d",)))
    sc.apply(model, LoraConfig(target_types=("Conv2d",), exclude="0"))
    assert isinstance(model[1], LoraLayer) and not isinstance(model[0], LoraLayer)


def test_merge_of_modules_to_save_copies_the_trained_head():
    model, x = _linear()
    sc.apply(model, LoraConfig(r=2, targets="0", modules_to_save=("2",)))
    _randomize(model)
    out = model(x)
    plain = sc.merge(copy.deepcopy(model))
    assert isinstance(plain[2], nn.Linear)
    assert torch.allclose(plain(x), out, atol=1e-5)


def test_bias_modes_choose_trainable_biases():
    model, _ = _linear()
    sc.apply(model, LoraConfig(r=2, targets="0", bias="lora_only"))
    assert "0.base_layer.bias" in sc.trainable_parameters(model)
    assert "2.bias" not in sc.trainable_parameters(model)
    model, _ = _linear()
    sc.apply(model, LoraConfig(r=2, targets="0", bias="all"))
    assert {"0.base_layer.bias", "2.bias"} <= set(sc.trainable_parameters(model))


def test_training_step_moves_only_the_delta():
    model, x = _conv(2)
    sc.apply(model, LoraConfig(r=2, target_types=("Conv2d",), use_dora=True))
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    opt = torch.optim.SGD(sc.trainable_parameters(model).values(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n])
    assert model[0].lora_B["default"].weight.abs().sum() > 0
