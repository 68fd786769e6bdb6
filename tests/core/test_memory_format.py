"""Channels-last training: what ``auto`` picks for a given model and device, a conversion that
changes no value, and a LoRA conv net that trains, resumes bit-exactly and comes back from
``fit`` in the default format."""

from __future__ import annotations

import pytest
import torch
from fit_toy import trained_tensors
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from scalpel.core import apply
from scalpel.core.lora import LoraConfig
from scalpel.core.errors import ConfigError
from scalpel.core.fit import FitConfig, fit
from scalpel.core.fit.memory_format import choose_memory_format, conv_dims, to_channels_last, to_contiguous


@pytest.mark.parametrize(("requested", "dims", "cpu", "expected"), [
    ("auto", {2}, True, True),       # measured faster on CPU (docs/benchmarks/channels_last.md)
    ("auto", {3}, True, False),      # measured slower: MONAI 3-D UNet 1.77x
    ("auto", {2, 3}, True, False),
    ("auto", set(), True, False),    # a transformer
    ("auto", {2}, False, False),     # GPU: not assumed
    ("on", {3}, True, True),
    ("on", set(), True, False),
    ("off", {2}, True, False),
])
def test_auto_is_on_for_2d_conv_nets_on_cpu_only(requested, dims, cpu, expected):
    choice = choose_memory_format(requested, dims, cpu)
    assert choice.channels_last is expected and choice.reason


def test_conv_dims_and_a_bad_setting():
    assert conv_dims(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 2))) == {2}
    assert conv_dims(nn.Conv3d(1, 2, 3)) == {3} and conv_dims(nn.Linear(2, 2)) == set()
    with pytest.raises(ConfigError, match="channels_last"):
        FitConfig(output_dir="x", channels_last="yes")


def _conv_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    return apply(net, LoraConfig(r=2, alpha=4, targets=r"^(0|3)$"))


def test_conversion_keeps_values_parameters_and_the_lora_branch_in_one_format():
    net = _conv_net()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    params = list(net.parameters())
    to_channels_last(net)
    assert list(net.parameters()) == params  # the same objects: an optimizer keeps working
    four_d = [(n, p) for n, p in net.named_parameters() if p.dim() == 4]
    assert any("lora" in n for n, _ in four_d)  # the LoRA factors are converted with the base
    assert all(p.is_contiguous(memory_format=torch.channels_last) for _, p in four_d)
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())
    to_contiguous(net)
    assert all(p.is_contiguous() for p in net.parameters())


class _Task:
    """Cross-entropy; records whether each step saw every 4-D weight channels-last."""

    def __init__(self):
        self.channels_last: list[bool] = []

    def step(self, model, batch):
        x, y = batch
        self.channels_last.append(all(p.is_contiguous(memory_format=torch.channels_last)
                                      for p in model.parameters() if p.dim() == 4))
        return {"loss": nn.functional.cross_entropy(model(x), y)}


def _loader():
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(24, 3, 8, 8, generator=g), torch.randint(0, 2, (24,), generator=g))
    return DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(2))


def _fit(tmp_path, name, net, **kw):
    config = FitConfig(**{**dict(output_dir=str(tmp_path / name), lr=1e-2, log_every=1, save_every=0, progress=False, seed=4,
                                 device="cpu", channels_last="on", schedule="constant"), **kw})
    task = _Task()
    fit(net, task, _loader(), None, config)
    assert set(task.channels_last) == {config.channels_last == "on"}
    return trained_tensors(net)


def test_channels_last_training_resumes_bit_exactly_and_returns_ordinary_weights(tmp_path):
    straight = _conv_net()
    a = _fit(tmp_path, "a", straight, max_steps=10)
    assert all(p.is_contiguous() for p in straight.parameters())  # back to the default format
    assert "memory format in training: channels-last (asked for)" in (tmp_path / "a" / "report.md").read_text()
    _fit(tmp_path, "b", _conv_net(), max_steps=5, save_every=5)
    resumed = _conv_net()
    with torch.no_grad():
        for p in resumed.parameters():
            p.add_(1.0) if p.requires_grad else None  # the checkpoint, not this model, must decide the trained weights
    b = _fit(tmp_path, "b", resumed, max_steps=10, save_every=5, resume=True)
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_channels_last_and_default_format_train_to_the_same_weights_within_float_noise(tmp_path):
    on = _fit(tmp_path, "on", _conv_net(), max_steps=6)
    off = _fit(tmp_path, "off", _conv_net(), max_steps=6, channels_last="off")
    assert "default (contiguous) (off asked for)" in (tmp_path / "off" / "report.md").read_text()
    for name, value in off.items():
        torch.testing.assert_close(value, on[name], atol=1e-4, rtol=1e-4)
