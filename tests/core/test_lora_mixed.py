"""Mixed-adapter batches (core/lora/mixed.py): each sample runs with its own adapter, exactly
as that adapter alone would run it, on every layer type LoRA adapts, with DoRA, per-adapter
heads and the base; what cannot be mixed is refused with a ScalpelError."""

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

import scalpel.core as sc
from scalpel.core.errors import ScalpelError
from scalpel.core.lora import LoraConfig
from scalpel.core.lora.mixed import compare_adapters, load_adapters, mixed_adapters, sample_runs
from scalpel.core.sparse import SparseConfig


def _linear():
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)), torch.randn(6, 7, 6)


def _embedding():
    return nn.Sequential(nn.Embedding(11, 6, padding_idx=0), nn.Tanh(), nn.Linear(6, 3)), torch.randint(0, 11, (6, 5))


def _conv(dims):
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    return nn.Sequential(conv(3, 5, 3, stride=2, padding=1), nn.ReLU(), conv(5, 4, 1)), torch.randn(6, 3, *([6] * dims))


MODELS = {
    "linear": _linear, "embedding": _embedding, "conv1d": lambda: _conv(1), "conv2d": lambda: _conv(2),
    "conv3d": lambda: _conv(3), "gpt2_conv1d": lambda: (nn.Sequential(Conv1D(5, 6), nn.Tanh(), Conv1D(4, 5)), torch.randn(6, 3, 6)),
}


def _with_adapters(kind: str, dora: tuple[bool, ...] = (False, True, False)):
    """A model of ``kind`` with adapters a0, a1, ... (random, non-zero factors), one per entry of ``dora``."""
    torch.manual_seed(0)
    model, x = MODELS[kind]()
    for i, use_dora in enumerate(dora):
        targets = r"0|2" if i != 2 else r"0"  # the third adapter skips the last layer
        sc.apply(model, LoraConfig(r=2 + i, alpha=4, targets=targets, use_dora=use_dora), adapter_name=f"a{i}")
        with torch.no_grad():
            for p in sc.trainable_parameters(model).values():
                p.add_(torch.randn_like(p) * 0.3)
    return model.eval(), x


def _alone(model, name, x):
    """The reference: ``x`` through ``model`` with only ``name`` active (None: the base)."""
    saved = sc.delta.state_of(model).active
    with torch.no_grad():
        if name is None:
            with sc.disable_adapters(model):
                out = model(x)
        else:
            sc.set_active_adapter(model, name)
            out = model(x)
    sc.set_active_adapter(model, saved)
    return out


@pytest.mark.parametrize("kind", list(MODELS))
def test_each_sample_gets_exactly_its_own_adapter(kind):
    model, x = _with_adapters(kind)
    names = ["a1", "a0", "a0", None, "a2", "a1"]  # interleaved, the base, DoRA, an adapter missing a layer
    expected = torch.cat([_alone(model, n, x[i:i + 1]) for i, n in enumerate(names)])
    with torch.no_grad(), mixed_adapters(model, names):
        got = model(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected[1], _alone(model, "a1", x[1:2])[0])  # the adapters really differ
    with torch.no_grad():  # and the active adapter is back after the block
        torch.testing.assert_close(model(x), _alone(model, sc.delta.state_of(model).active, x))


def test_compare_adapters_matches_separate_passes_with_heads_and_kwargs():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3)
    model = BertForSequenceClassification(config)
    for name, dora in (("plain", False), ("dora", True)):
        sc.apply(model, LoraConfig(r=4, targets="query|value|word_embeddings", use_dora=dora,
                                   modules_to_save=("classifier",)), adapter_name=name)
        with torch.no_grad():
            for p in sc.trainable_parameters(model).values():
                p.add_(torch.randn_like(p) * 0.2)
    model.eval()
    batch = {"input_ids": torch.randint(0, 50, (3, 9)), "attention_mask": torch.ones(3, 9, dtype=torch.long)}
    batch["attention_mask"][0, 6:] = 0
    with torch.no_grad():
        outputs = compare_adapters(model, ["plain", None, "dora"], batch)
    for name in ("plain", None, "dora"):
        saved = sc.delta.state_of(model).active
        with torch.no_grad():
            if name is None:
                with sc.disable_adapters(model):
                    expected = model(**batch).logits
            else:
                sc.set_active_adapter(model, name)
                expected = model(**batch).logits
        sc.set_active_adapter(model, saved)
        torch.testing.assert_close(outputs[name]["logits"], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(outputs["plain"]["logits"], outputs["dora"]["logits"])


def test_sample_runs_groups_consecutive_names():
    assert sample_runs(["a", "a", None, "b", "a"]) == [("a", 0, 2), (None, 2, 3), ("b", 3, 4), ("a", 4, 5)]


def test_unmixable_adapters_are_refused_with_the_reason():
    model, x = _with_adapters("linear", dora=(False,))
    with pytest.raises(ScalpelError, match="no adapter named 'zz'"):
        with mixed_adapters(model, ["a0", "zz"]):
            pass
    with pytest.raises(ScalpelError, match="one adapter name"):
        with mixed_adapters(model, []):
            pass
    with pytest.raises(ScalpelError, match="6 samples but"), torch.no_grad():
        with mixed_adapters(model, ["a0"] * 6):
            model(x[:2])
    layer = model[0]
    layer.merge()  # folded in place, as PEFT's merge_adapter does
    with pytest.raises(ScalpelError, match="merged adapter"):
        with mixed_adapters(model, ["a0"]):
            pass
    layer.unmerge()
    sc.apply(model, SparseConfig(density=0.1, scorer="magnitude"), adapter_name="a0")
    with pytest.raises(ScalpelError, match="LoRA family only"):
        with mixed_adapters(model, ["a0"]):
            pass


def test_full_trained_tensors_are_refused(tmp_path):
    model, x = _with_adapters("linear", dora=(False,))
    sc.apply(model, LoraConfig(r=2, targets="0", bias="all"), adapter_name="b")
    with pytest.raises(ScalpelError, match="trains base tensors in full"):
        with mixed_adapters(model, ["a0", "b"]):
            pass


def _saved_with_statistics(tmp_path, make, seed, stats_shift):
    """An adapter of ``make()`` (random LoRA factors) whose norm layer's running statistics are shifted."""
    torch.manual_seed(0)
    model = make()
    model[1].running_mean.add_(stats_shift)
    model[1].running_var.mul_(1 + stats_shift)
    sc.apply(model, LoraConfig(r=2, targets="0|2"), adapter_name="x")
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in sc.trainable_parameters(model).values():
            p.add_(torch.randn_like(p))
    return sc.save_adapter(model, tmp_path / f"ad{seed}_{stats_shift}")


def _batch_norm_net():
    return nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


@pytest.mark.parametrize("shifts", [(0.0, 0.0), (0.5, -0.3)], ids=["same statistics", "per-adapter statistics"])
def test_load_adapters_gives_each_sample_its_adapters_batch_norm_statistics(tmp_path, shifts):
    def base():
        torch.manual_seed(0)
        return _batch_norm_net().eval()

    dirs = [_saved_with_statistics(tmp_path, _batch_norm_net, seed, shift) for seed, shift in zip((1, 2), shifts)]
    model = base()
    names = load_adapters(model, dirs)
    x = torch.randn(3, 4)
    with torch.no_grad():
        outputs = compare_adapters(model, [None, *names], x)
        torch.testing.assert_close(outputs[None], base()(x), rtol=1e-6, atol=1e-6)
        for name, path in zip(names, dirs):
            torch.testing.assert_close(outputs[name], sc.load_adapter(base(), path).eval()(x), rtol=1e-5, atol=1e-5)
        if shifts[0] != shifts[1]:  # the statistics matter: with one shared copy the first adapter would be wrong
            assert not torch.allclose(outputs[names[0]], sc.load_adapter(base(), dirs[1]).eval()(x), atol=1e-3)
            with pytest.raises(ScalpelError, match="model.eval"), mixed_adapters(model.train(), [names[0], names[1], None]):
                model(x)


def test_differing_statistics_outside_batch_norm_are_refused(tmp_path):
    def make():
        return nn.Sequential(nn.Conv1d(2, 2, 1), nn.InstanceNorm1d(2, track_running_stats=True), nn.Conv1d(2, 2, 1))

    dirs = [_saved_with_statistics(tmp_path, make, 1, 0.0), _saved_with_statistics(tmp_path, make, 2, 1.0)]
    torch.manual_seed(0)
    with pytest.raises(ScalpelError, match="not BatchNorm"):
        load_adapters(make().eval(), dirs)