"""MONAI networks by name: every family builds in 2D and 3D, LoRA reaches convolutions and Swin
attention and merges exactly, layer-wise and sparse selection work, distillation from a teacher."""

from __future__ import annotations

import pytest
import torch

from scalpel.core import apply, count_parameters, merge
from scalpel.core.lora import LoraConfig
from scalpel.core.errors import ConfigError
from scalpel.core.layerwise import block_map
from scalpel.core.recipes import adapt
from scalpel.medical.networks import FAMILIES, NetworkSpec, build_network, lora_target_types, spec_from_dict
from scalpel.medical.segmentation import SegmentationTask, UNetSpec, distillation_task

#: The smallest options of every family; a family missing here fails the coverage test below.
TINY = {
    "unet": {"channels": (4, 8), "strides": (2,), "num_res_units": 1},
    "segresnet": {"init_filters": 8, "blocks_down": (1, 1), "blocks_up": (1,)},
    # group norm: instance norm needs > 1 voxel at the 1/32 bottleneck, so 64-voxel inputs
    "swinunetr": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 4,
                  "norm_name": ("group", {"num_groups": 3})},
    "densenet121": {"init_features": 8, "growth_rate": 4, "block_config": (1, 1, 1, 1)},
    "resnet10": {"widen_factor": 0.125},
    "resnet18": {"widen_factor": 0.125},
    "resnet34": {"widen_factor": 0.125},
    "resnet50": {"widen_factor": 0.125},
}


def tiny(name: str, dims: int, out: int = 3) -> NetworkSpec:
    return NetworkSpec(name, spatial_dims=dims, out_channels=out, options=TINY[name])


def test_every_registered_family_has_a_tiny_config():
    assert sorted(TINY) == FAMILIES.names()


# 3-D SwinUNETR is built in the LoRA test below (one build of it is enough)
@pytest.mark.parametrize(("name", "dims"), [(n, d) for n in sorted(TINY) for d in (2, 3) if (n, d) != ("swinunetr", 3)])
def test_every_family_builds_and_gives_the_expected_output_shape(name, dims):
    spec = tiny(name, dims)
    model = spec.build().eval()
    size = 32 if spec.task == "segmentation" else 33  # classifiers take any size
    with torch.no_grad():
        out = model(torch.randn(2, 1, *(size,) * dims))
    if spec.task == "segmentation":
        assert out.shape == (2, 3, *(size,) * dims)
        assert size % spec.downsampling == 0
    else:
        assert out.shape == (2, 3)
    assert NetworkSpec.from_dict(spec.to_dict()) == spec


def test_lora_reaches_swin_attention_and_convolutions_and_merges_exactly():
    torch.manual_seed(0)
    spec = NetworkSpec("swinunetr", spatial_dims=3, out_channels=3, options=TINY["swinunetr"])
    model = spec.build()
    types = lora_target_types(model)
    assert types == ("Conv3d", "Linear")
    model = apply(model, LoraConfig(r=2, alpha=4.0, target_types=types, exclude="out"))
    names = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert any("attn.qkv" in n for n in names) and any("attn.proj" in n for n in names)
    assert any("encoder1" in n for n in names)  # a Conv3d of the CNN decoder path
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    model.eval()
    task = SegmentationTask(["a", "b"], roi_size=(32, 32, 32), hd95=False)
    image = torch.randn(1, 1, 32, 32, 40)
    before = task.logits(model, image)
    after = task.logits(merge(model), image)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["segresnet", "swinunetr"])
def test_layerwise_trains_only_the_selected_block(name):
    model = tiny(name, 2).build()
    first = block_map(model).blocks[0]
    model = adapt(model, "layerwise", blocks=("first 1",))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(first.modules[0]) for n in trained)


def test_sparse_delta_on_a_segresnet_trains_the_requested_share():
    model = tiny("segresnet", 3).build()
    targeted = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Conv3d))
    model = adapt(model, "sparse", density=0.02, scorer="magnitude")
    trainable, _ = count_parameters(model)
    assert trainable == pytest.approx(0.02 * targeted, rel=0.05)


def test_a_monai_class_by_dotted_path_and_a_module_passed_in():
    spec = NetworkSpec("monai.networks.nets.AttentionUnet", spatial_dims=2, out_channels=3,
                       options={"channels": (4, 8), "strides": (2,)})
    model = spec.build()
    assert type(model).__name__ == "AttentionUnet"
    assert model(torch.randn(1, 1, 16, 16)).shape == (1, 3, 16, 16)
    assert build_network(model) is model
    assert isinstance(build_network(UNetSpec(spatial_dims=2, channels=(4, 8), strides=(2,))), torch.nn.Module)


def test_specs_round_trip_through_dicts():
    assert isinstance(spec_from_dict(UNetSpec().to_dict()), UNetSpec)
    spec = tiny("segresnet", 3)
    assert spec_from_dict(spec.to_dict()) == spec


def test_bad_network_specs_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="unknown network 'vnet2'.*segresnet"):
        NetworkSpec("vnet2")
    with pytest.raises(ConfigError, match="cannot import"):
        NetworkSpec("monai.networks.nets.NoSuchNet").build()
    with pytest.raises(ConfigError, match="not an nn.Module class"):
        NetworkSpec("os.path.join").build()
    with pytest.raises(ConfigError, match="multiple of 12"):
        NetworkSpec("swinunetr", options={"feature_size": 16}).build()
    with pytest.raises(ConfigError, match="out_channels"):
        NetworkSpec("unet", out_channels=1)
    with pytest.raises(ConfigError, match="unknown key"):
        NetworkSpec.from_dict({"name": "unet", "depth": 3})
    with pytest.raises(ConfigError, match="segresnet.*bogus"):
        NetworkSpec("segresnet", options={"bogus": 1}).build()


def test_swinunetr_without_einops_names_the_package(monkeypatch):
    import sys

    from scalpel.core.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "einops", None)  # import einops now raises ImportError
    with pytest.raises(MissingDependencyError, match="einops"):
        tiny("swinunetr", 2).build()


def test_distillation_from_a_frozen_teacher_into_a_lora_student(tmp_path):
    from scalpel.core.fit import FitConfig, fit

    torch.manual_seed(0)
    teacher = tiny("unet", 2).build().eval()
    student = adapt(tiny("segresnet", 2).build(), "lora", target_types=("Conv2d",), r=2)
    task = SegmentationTask(["a", "b"], roi_size=(16, 16), hd95=False)
    kd = distillation_task(task, teacher, alpha=1.0, temperature=1.0)
    image = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        label = teacher(image).argmax(1, keepdim=True)
    batch = {"image": image, "label": label}
    out = kd.step(student, batch)
    assert set(out) >= {"loss", "task_loss", "kd_loss"}
    torch.testing.assert_close(out["loss"].detach(), out["kd_loss"])  # alpha = 1: the KD term alone
    teacher_before = [p.clone() for p in teacher.parameters()]
    fit(student, kd, [batch] * 4, None, FitConfig(output_dir=str(tmp_path / "kd"), epochs=5, lr=1e-2, progress=False, save_every=0))
    after = kd.step(student, batch)["kd_loss"]
    assert float(after) < 0.7 * float(out["kd_loss"])
    assert all(torch.equal(a, b) for a, b in zip(teacher_before, teacher.parameters(), strict=True))
    with pytest.raises(ConfigError, match="pixel_kl or cwd"):
        distillation_task(task, teacher, loss="kd")
