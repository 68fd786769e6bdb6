"""Segmentation task: merged vs unmerged LoRA predictions, metrics against hand counts, a short fit."""

from __future__ import annotations

import math

import pytest
import torch

from scalpel.core import merge
from scalpel.core.errors import ConfigError, DataError
from scalpel.core.recipes import adapt
from scalpel.medical.segmentation import SegmentationTask, UNetSpec, score_segmentation


def _lora_unet_3d(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = UNetSpec(spatial_dims=3, out_channels=3, channels=(4, 8, 16), strides=(2, 2)).build()
    model = adapt(model, "lora", target_types=("Conv3d",), r=2)
    with torch.no_grad():  # B starts at zero: give the delta a real effect
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    return model.eval()


def test_merged_and_unmerged_lora_conv3d_predict_the_same():
    model = _lora_unet_3d()
    adapted = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert adapted, "LoRA adapted no Conv3d"
    task = SegmentationTask(["a", "b"], roi_size=(16, 16, 16), hd95=False)
    image = torch.randn(1, 1, 24, 20, 16)
    before = task.logits(model, image)
    base_only = UNetSpec(spatial_dims=3, out_channels=3, channels=(4, 8, 16), strides=(2, 2)).build().eval()
    merged = merge(model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    after = task.logits(merged, image)
    assert before.shape == (1, 3, 24, 20, 16)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    # the delta mattered: a fresh base gives other logits
    assert not torch.allclose(task.logits(base_only, image), before, atol=1e-3)


def test_scores_match_hand_counts():
    label = torch.zeros(1, 1, 10, 10, 10, dtype=torch.long)
    label[..., 2:6, 2:6, 2:6] = 1  # 64 voxels
    prediction = torch.zeros_like(label)
    prediction[..., 2:6, 2:6, 3:7] = 1  # 64 voxels, 48 shared
    prediction[..., 8, 8, 8] = 2  # class 2 predicted but absent from the label
    scores = score_segmentation(prediction, label, 3)
    assert scores["dice"][0] == pytest.approx(2 * 48 / 128)
    assert scores["dice"][1] == pytest.approx(0.0)
    assert scores["hd95"][0] == pytest.approx(1.0)  # the shifted face is one voxel away
    assert math.isnan(scores["hd95"][1])
    scaled = score_segmentation(prediction, label, 3, spacing=[1.0, 1.0, 2.5])
    assert scaled["hd95"][0] == pytest.approx(2.5)


def test_evaluate_reports_per_structure_and_perfect_model():
    task = SegmentationTask(["ball"], roi_size=(8, 8, 8))
    label = torch.zeros(1, 1, 12, 12, 12, dtype=torch.long)
    label[..., 3:9, 3:9, 3:9] = 1

    class Oracle(torch.nn.Module):
        def forward(self, x):
            return torch.cat([-x, x], dim=1)  # class 1 wherever the image is positive

    metrics = task.evaluate(Oracle(), [{"image": label.float() * 2 - 1, "label": label}])
    assert metrics["dice/ball"] == pytest.approx(1.0)
    assert metrics["hd95/ball"] == pytest.approx(0.0)
    assert metrics["dice"] == metrics["dice/ball"]


def test_fit_lowers_the_loss_on_a_2d_unet(tmp_path):
    from scalpel.core.fit import FitConfig, fit

    torch.manual_seed(0)
    spec = UNetSpec(spatial_dims=2, out_channels=2, channels=(4, 8), strides=(2,))
    model = spec.build()
    task = SegmentationTask(["square"], roi_size=(16, 16), hd95=False)
    batches = []
    for k in range(4):
        label = torch.zeros(2, 1, 16, 16, dtype=torch.long)
        label[..., 2 + k : 10 + k, 3:11] = 1
        batches.append({"image": label.float() + 0.3 * torch.randn(2, 1, 16, 16), "label": label})
    start = task.evaluate(model, batches)["dice"]
    result = fit(model, task, batches, batches[:1], FitConfig(output_dir=str(tmp_path / "run"), epochs=6, lr=1e-2,
                                                         progress=False, save_every=0, metric="dice", greater_is_better=True))
    assert result.metrics["dice"] > max(start, 0.8)


def test_bad_input_is_refused():
    with pytest.raises(ConfigError, match="out_channels"):
        UNetSpec(out_channels=1)
    with pytest.raises(ConfigError, match="stride"):
        UNetSpec(channels=(4, 8), strides=(2, 2))
    task = SegmentationTask(["a"], roi_size=(8, 8, 8))
    with pytest.raises(DataError, match="'image'"):
        task.step(torch.nn.Identity(), (torch.zeros(1), torch.zeros(1)))
    with pytest.raises(DataError, match="no evaluation batches"):
        task.evaluate(torch.nn.Identity(), [])
    with pytest.raises(ConfigError, match="unknown key"):
        UNetSpec.from_dict({"spatial_dims": 3, "depth": 4})
    assert UNetSpec.from_dict(UNetSpec().to_dict()) == UNetSpec()


def test_a_2d_network_segments_a_volume_slice_by_slice():
    torch.manual_seed(0)
    model = UNetSpec(spatial_dims=2, out_channels=3, channels=(4, 8), strides=(2,)).build().eval()
    task = SegmentationTask(["a", "b"], roi_size=(16, 12), hd95=False)
    volume = torch.randn(1, 1, 16, 12, 5)
    logits = task.logits(model, volume)
    assert logits.shape == (1, 3, 16, 12, 5)
    with torch.no_grad():  # one window per slice: exactly the network's output on that slice
        expected = torch.stack([model(volume[..., z]) for z in range(5)], dim=-1)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
