"""The layerwise and full methods: selection, BitFit, norm tuning, head, save/load/merge,
composition with LoRA, LLRD groups and Auto-RGN."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from scalpel.core import ConfigError, ScalpelError, apply, load_adapter, merge, save_adapter, trainable_parameters
from scalpel.core.layerwise import (
    AutoRGN,
    FullConfig,
    LayerwiseConfig,
    llrd_param_groups,
    relative_gradient_norms,
    rgn_multipliers,
    top_blocks,
)


def stage(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class TinyResNet(nn.Module):
    """ResNet-shaped (conv1, bn1, layer1..3, fc): found as the ResNet family."""

    def __init__(self, classes=3):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.layer1, self.layer2, self.layer3 = stage(4, 4), stage(4, 8), stage(8, 8)
        self.fc = nn.Linear(8, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    return BertForSequenceClassification(cfg)


def batches(n=3, size=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 1, 8, 8, generator=g), torch.randint(0, 3, (size,), generator=g)) for _ in range(n)]


def trained(model):
    return set(trainable_parameters(model))


# ----------------------------------------------------------------------------- selection


def test_blocks_and_head_are_trainable_and_nothing_else():
    model = apply(TinyResNet(), LayerwiseConfig(blocks=("layer2",)))
    assert trained(model) == {n for n, _ in model.named_parameters() if n.startswith(("layer2.", "fc."))}


def test_train_head_false_and_stem_by_name():
    model = apply(TinyResNet(), LayerwiseConfig(blocks=("stem",), train_head=False))
    assert trained(model) == {"conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias"}


def test_default_config_is_linear_probing():
    assert trained(apply(TinyResNet(), LayerwiseConfig())) == {"fc.weight", "fc.bias"}


def test_bitfit_trains_only_biases_plus_head():
    model = apply(TinyResNet(), LayerwiseConfig(bitfit=True, train_head=False))
    names = trained(model)
    assert names and all(n.endswith(".bias") for n in names)
    assert names == {n for n, _ in model.named_parameters() if n.endswith(".bias")}


def test_bitfit_inside_selected_blocks_only():
    model = apply(TinyResNet(), LayerwiseConfig(blocks=("last 1",), bitfit=True, train_head=False))
    assert trained(model) == {"layer3.0.bias", "layer3.1.bias"}


def test_norm_tuning_selects_batchnorm_and_layernorm_affines():
    model = apply(TinyResNet(), LayerwiseConfig(norm=True, train_head=False))
    assert trained(model) == {f"{m}.{p}" for m in ("bn1", "layer1.1", "layer2.1", "layer3.1") for p in ("weight", "bias")}
    bert = apply(tiny_bert(), LayerwiseConfig(norm=True, train_head=False))
    names = trained(bert)
    assert names and all("LayerNorm" in n for n in names)
    assert len(names) == 2 * (1 + 2 * 4)  # embeddings + two per layer


def test_full_trains_everything_but_exclude():
    model = apply(TinyResNet(), FullConfig(exclude=r"^fc\."))
    assert trained(model) == {n for n, _ in model.named_parameters() if not n.startswith("fc.")}
    assert len(trained(apply(TinyResNet(), FullConfig()))) == len(list(TinyResNet().parameters()))


def test_config_errors_are_collected():
    with pytest.raises(ConfigError) as err:
        LayerwiseConfig(blocks=("first two",), rgn_top_k=-1, rgn_batches=0, block_map=(("stem", "(bad"),))
    assert len(err.value.problems) == 4
    with pytest.raises(ConfigError, match="nothing to train"):
        LayerwiseConfig(train_head=False)
    with pytest.raises(ConfigError, match="exclude"):
        FullConfig(exclude="(")


def test_selection_of_missing_block_raises_with_the_map():
    with pytest.raises(ConfigError, match="layer1"):
        apply(TinyResNet(), LayerwiseConfig(blocks=("layer9",)))


def test_custom_block_map_in_config_round_trips_through_json():
    from scalpel.core.config import config_from_dict, config_to_dict

    config = LayerwiseConfig(blocks=("late",), block_map=("stem=^(conv1|bn1)\\.", ("early", r"^layer[12]\."), ("late", r"^layer3\."), ("head", r"^fc\.")))
    again = config_from_dict(LayerwiseConfig, config_to_dict(config))
    assert again == config
    model = apply(TinyResNet(), again)
    assert trained(model) == {n for n, _ in model.named_parameters() if n.startswith(("layer3.", "fc."))}


def test_lora_restricted_to_selected_blocks():
    from scalpel.core.lora import LoraConfig

    model = tiny_bert()
    regex = LayerwiseConfig(blocks=("last 2",)).target_regex(model, within="query|value")
    apply(model, LoraConfig(r=2, targets=regex, modules_to_save=("classifier",)))
    lora = {n.split(".lora_")[0] for n in trained(model) if ".lora_" in n}
    assert lora == {f"bert.encoder.layer.{i}.attention.self.{m}" for i in (2, 3) for m in ("query", "value")}


def test_layerwise_composes_with_lora_under_one_adapter():
    from scalpel.core.lora import LoraConfig

    model = tiny_bert()
    apply(model, LoraConfig(r=2, targets="query|value"))
    apply(model, LayerwiseConfig(blocks=("last 1",), train_head=False))
    names = trained(model)
    assert any("layer.0.attention.self.query.lora_A" in n for n in names)
    assert "bert.encoder.layer.3.output.dense.weight" in names
    assert "bert.encoder.layer.2.output.dense.weight" not in names
    # the LoRA-wrapped base weight of a selected block is trained too (found by its base name)
    assert "bert.encoder.layer.3.attention.self.query.base_layer.weight" in names


# ------------------------------------------------------------------- save / load / merge


def _train(model, steps=5, lr=0.05):
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    for x, y in batches(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model


@pytest.mark.parametrize("config", [LayerwiseConfig(blocks=("first 1",)), LayerwiseConfig(bitfit=True), FullConfig()], ids=["blocks", "bitfit", "full"])
def test_save_load_merge_reproduce_the_fine_tuned_model(tmp_path, config):
    torch.manual_seed(1)
    base_state = TinyResNet().state_dict()
    model = TinyResNet()
    model.load_state_dict(base_state)
    _train(apply(model, config))
    model.eval()
    x = batches(1, seed=9)[0][0]
    expected = model(x)
    save_adapter(model, tmp_path / "adapter")

    fresh = TinyResNet()
    fresh.load_state_dict(base_state)
    assert not torch.allclose(fresh.eval()(x), expected, atol=1e-4)  # training changed something
    loaded = load_adapter(fresh, tmp_path / "adapter").eval()
    torch.testing.assert_close(loaded(x), expected)  # includes BatchNorm running statistics
    assert trained(loaded) == trained(model)
    plain = merge(loaded)
    torch.testing.assert_close(plain(x), expected)
    assert not any(p.requires_grad for p in plain.parameters())


def test_saved_adapter_holds_only_trained_tensors(tmp_path):
    from safetensors.torch import load_file

    from scalpel.core import adapter_info

    model = apply(TinyResNet(), LayerwiseConfig(blocks=("layer3",)))
    save_adapter(model, tmp_path / "a")
    tensors = load_file(str(tmp_path / "a" / "adapter_model.safetensors"))
    full = {k.removeprefix("scalpel.full.") for k in tensors if k.startswith("scalpel.full.")}
    assert full == trained(model)
    details = adapter_info(tmp_path / "a")["methods"][0]["details"]
    assert details["trained_parameters"] == sum(p.numel() for p in trainable_parameters(model).values())


# --------------------------------------------------------------------------------- LLRD


def test_llrd_scales_are_decay_to_the_depth_from_the_top():
    model = apply(TinyResNet(), FullConfig())
    groups = llrd_param_groups(model, decay=0.5)
    assert [g["block"] for g in groups] == ["stem", "layer1", "layer2", "layer3", "head"]
    assert [g["lr_scale"] for g in groups] == [0.5**4, 0.5**3, 0.5**2, 0.5, 1.0]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len({id(p) for g in groups for p in g["params"]}) == len(list(model.parameters()))


def test_llrd_only_covers_trainable_parameters_and_validates_decay():
    model = apply(TinyResNet(), LayerwiseConfig(blocks=("last 1",)))
    groups = llrd_param_groups(model, decay=0.8)
    assert [(g["block"], g["lr_scale"]) for g in groups] == [("layer3", 0.8), ("head", 1.0)]
    with pytest.raises(ConfigError, match="decay"):
        llrd_param_groups(model, decay=1.5)


# ------------------------------------------------------------------------------ Auto-RGN


def test_rgn_matches_a_hand_computation_and_leaves_the_model_untouched():
    model = TinyResNet()
    data = batches(2)
    before_flags = [p.requires_grad for p in model.parameters()]
    before_stats = model.bn1.running_mean.clone()
    rgn = relative_gradient_norms(model, data, num_batches=2)
    assert torch.equal(model.bn1.running_mean, before_stats)  # train-mode BatchNorm statistics restored
    assert list(rgn) == ["stem", "layer1", "layer2", "layer3", "head"]
    # by hand: mean gradient of layer2 over the two batches
    params = list(model.layer2.parameters())
    grads = [torch.zeros_like(p) for p in params]
    for x, y in data:
        for acc, g in zip(grads, torch.autograd.grad(F.cross_entropy(model(x), y), params)):
            acc += g / 2
    expected = torch.sqrt(sum((g**2).sum() for g in grads)) / torch.sqrt(sum((p**2).sum() for p in params))
    assert rgn["layer2"] == pytest.approx(float(expected.detach()), rel=1e-4)
    assert [p.requires_grad for p in model.parameters()] == before_flags
    assert all(p.grad is None for p in model.parameters())


def test_top_blocks_and_multipliers():
    rgn = {"stem": 0.1, "layer1": 0.5, "layer2": 0.2, "layer3": 0.4, "head": 0.9}
    assert top_blocks(rgn, 2) == ["head", "layer1"]
    assert top_blocks(rgn, 2, exclude=["head"]) == ["layer1", "layer3"]
    assert rgn_multipliers(rgn)["head"] == 1.0 and rgn_multipliers(rgn)["stem"] == pytest.approx(0.1 / 0.9)


def test_rgn_is_zero_where_no_gradient_reaches():
    """With a zero head, dL/dw is zero for every block below it: only the head has RGN > 0."""
    model = TinyResNet()
    nn.init.zeros_(model.fc.weight)
    rgn = relative_gradient_norms(model, batches(2))
    assert top_blocks(rgn, 1) == ["head"] and rgn["head"] > 0
    assert rgn["stem"] == rgn["layer1"] == rgn["layer3"] == 0.0


def test_auto_rgn_selection_through_apply():
    base = TinyResNet().state_dict()
    probe = TinyResNet()
    probe.load_state_dict(base)
    expected = top_blocks(relative_gradient_norms(probe, batches(2), num_batches=2), 2, exclude=["head"])
    model = TinyResNet()
    model.load_state_dict(base)
    apply(model, LayerwiseConfig(rgn_top_k=2, rgn_batches=2), data=batches(2))
    modules = {"stem": {"conv1", "bn1"}}
    want = {"fc"}.union(*(modules.get(b, {b}) for b in expected))
    assert {n.split(".")[0] for n in trained(model)} == want
    with pytest.raises(ScalpelError, match="data"):
        apply(TinyResNet(), LayerwiseConfig(rgn_top_k=1))


def test_auto_rgn_hook_sets_per_block_lr_scales():
    model = apply(TinyResNet(), FullConfig())
    hook = AutoRGN(model, batches(2), every=2)
    groups = hook.param_groups()
    assert max(g["lr_scale"] for g in groups) == 1.0
    assert all(0.0 <= g["lr_scale"] <= 1.0 for g in groups)
    opt = torch.optim.SGD(groups, lr=0.1)
    base_lr = 0.1
    for step, (x, y) in enumerate(batches(4, seed=3), start=1):
        for g in opt.param_groups:  # what fit does with lr_scale
            g["lr"] = base_lr * g["lr_scale"]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        old = [g["lr_scale"] for g in opt.param_groups]
        hook.after_step(step, model, opt)
        new = [g["lr_scale"] for g in opt.param_groups]
        assert (new != old) == (step % 2 == 0)
    assert hook.state_dict()["scales"] == {g["block"]: g["lr_scale"] for g in opt.param_groups}
