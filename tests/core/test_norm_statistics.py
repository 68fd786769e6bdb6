"""Every adapter carries the running statistics of the model's normalisation layers.

BatchNorm updates ``running_mean``/``running_var`` in training mode whatever the method
trains, so without them a reloaded LoRA or sparse adapter would not reproduce the model
it was trained as (and a domain-shift adaptation loses much of its effect).
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from scalpel.core import load_adapter, save_adapter, trainable_parameters
from scalpel.core.artifacts import STATS_PREFIX, WEIGHTS_DIGEST
from scalpel.core.errors import BaseModelMismatchError
from scalpel.core.files import sha256_digest
from scalpel.core.recipes import adapt


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


def train_on_shifted_data(model: nn.Module) -> None:
    generator = torch.Generator().manual_seed(1)
    optimizer = torch.optim.SGD(list(trainable_parameters(model).values()), lr=0.05)
    model.train()
    for _ in range(5):  # inputs far from the statistics the base saw (mean 0, std 1)
        x = 3.0 + 2.0 * torch.randn(4, 3, 8, 8, generator=generator)
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("method, options", [("lora", {"target_types": ("Conv2d",), "r": 2}), ("sparse", {"density": 0.1, "scorer": "magnitude"}),
                                             ("full", {})])
def test_reloaded_adapter_reproduces_the_trained_model(tmp_path, method, options):
    base_state = small_cnn().state_dict()
    model = adapt(small_cnn(), method, **options)
    train_on_shifted_data(model)
    x = 3.0 + 2.0 * torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = model.eval()(x)
    save_adapter(model, tmp_path / "adapter")

    fresh = small_cnn()
    fresh.load_state_dict(base_state)
    assert not torch.allclose(fresh.eval()(x), expected, atol=1e-3)
    loaded = load_adapter(fresh, tmp_path / "adapter").eval()
    torch.testing.assert_close(loaded(x), expected)
    torch.testing.assert_close(loaded[1].running_mean, model[1].running_mean)


def test_statistics_of_another_architecture_are_refused(tmp_path):
    model = adapt(small_cnn(), "lora", target_types=("Conv2d",), r=2)
    save_adapter(model, tmp_path / "adapter")
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert f"{STATS_PREFIX}1.running_var" in tensors
    tensors[f"{STATS_PREFIX}7.running_var"] = torch.ones(8)  # a norm layer the base does not have
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    save_file(tensors, str(weights), metadata={"format": "pt"})
    # as a tool that edits adapters would: the digest matches, so only the architecture check can object
    meta_file = tmp_path / "adapter" / "scalpel.json"
    meta = json.loads(meta_file.read_text())
    meta[WEIGHTS_DIGEST] = sha256_digest(weights.read_bytes())
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(BaseModelMismatchError, match="7.running_var"):
        load_adapter(small_cnn(), tmp_path / "adapter")


def test_adabn_matches_the_target_statistics_and_leaves_weights_alone():
    from scalpel.core.layerwise import recalibrate_norm_statistics

    model = small_cnn()
    weights = {n: p.clone() for n, p in model.named_parameters()}
    batches = [3.0 + 2.0 * torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    recalibrate_norm_statistics(model, batches)
    assert not model.training
    conv_out = torch.cat([model[0](b) for b in batches])
    # equal-size batches: the cumulative average of per-batch means is the mean over all
    torch.testing.assert_close(model[1].running_mean, conv_out.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert model[1].momentum == 0.1  # restored
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_adabn_needs_batchnorm_and_batches():
    from scalpel.core.errors import ConfigError
    from scalpel.core.layerwise import recalibrate_norm_statistics

    with pytest.raises(ConfigError, match="no BatchNorm"):
        recalibrate_norm_statistics(nn.Linear(2, 2), [torch.zeros(1, 2)])
    with pytest.raises(ConfigError, match="no batches"):
        recalibrate_norm_statistics(small_cnn(), [])
