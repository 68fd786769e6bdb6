"""Classification: AUC / sensitivity / specificity against hand counts, presence labels from
label maps, a short fit of a MONAI network, and the batches it refuses."""

from __future__ import annotations

import math
from itertools import product

import pytest
import torch

from scalpel.core.errors import ConfigError, DataError
from scalpel.medical.classification import ClassificationTask, classification_metrics, presence_samples
from scalpel.medical.networks import NetworkSpec


def pairwise_auc(scores, positive):
    """AUC as the share of (positive, negative) pairs ranked correctly, ties counting half."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in product(pos, neg))
    return wins / (len(pos) * len(neg))


def test_binary_metrics_match_hand_counts():
    p1 = torch.tensor([0.9, 0.8, 0.4, 0.3, 0.6, 0.2, 0.7])
    labels = torch.tensor([1, 1, 1, 0, 0, 0, 0])
    m = classification_metrics(torch.stack([1 - p1, p1], 1), labels, ["absent", "present"])
    assert m["auc"] == pytest.approx(pairwise_auc(p1.tolist(), labels.bool().tolist()))
    # predicted present (p > 0.5): 0.9, 0.8, 0.6, 0.7 -> TP 2, FN 1, FP 2, TN 2
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(2 / 4)
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["auc/present"] == m["auc"]


def test_multiclass_metrics_are_one_vs_rest_with_macro_means():
    torch.manual_seed(0)
    probabilities = torch.rand(12, 3).softmax(1)
    labels = torch.tensor([0, 1, 2] * 4)
    names = ["none", "dim", "bright"]
    m = classification_metrics(probabilities, labels, names)
    predicted = probabilities.argmax(1)
    for c, name in enumerate(names):
        positive = labels == c
        assert m[f"auc/{name}"] == pytest.approx(pairwise_auc(probabilities[:, c].tolist(), positive.tolist()))
        tp = int(((predicted == c) & positive).sum())
        assert m[f"sensitivity/{name}"] == pytest.approx(tp / int(positive.sum()))
        tn = int(((predicted != c) & ~positive).sum())
        assert m[f"specificity/{name}"] == pytest.approx(tn / int((~positive).sum()))
    assert m["auc"] == pytest.approx(sum(m[f"auc/{n}"] for n in names) / 3)


def test_auc_is_nan_when_a_class_has_no_positive_example():
    probabilities = torch.tensor([[0.7, 0.3], [0.6, 0.4]])
    m = classification_metrics(probabilities, torch.tensor([0, 0]), ["absent", "present"])
    assert math.isnan(m["auc"]) and math.isnan(m["sensitivity"])
    assert m["specificity"] == 1.0


def test_presence_labels_follow_the_label_map_per_volume_and_per_slice():
    label = torch.zeros(1, 8, 8, 6, dtype=torch.long)
    label[0, 2:4, 2:4, 1:3] = 2
    label[0, 5:7, 5:7, 4] = 1
    image = label.float()
    volumes = [("a", image, label), ("b", image * 0, label * 0)]
    per_volume = presence_samples(volumes, 2, spatial_dims=3, size=16)
    assert [s["label"] for s in per_volume] == [1, 0]
    assert per_volume[0]["image"].shape == (1, 16, 16, 16)
    per_slice = presence_samples(volumes[:1], 2, spatial_dims=2, size=12)
    assert [s["label"] for s in per_slice] == [0, 1, 1, 0, 0, 0]
    assert per_slice[0]["image"].shape == (1, 12, 12)


def test_fit_separates_bright_blobs_on_a_2d_resnet(tmp_path):
    from scalpel.core.fit import FitConfig, fit

    torch.manual_seed(0)
    images = 0.1 * torch.randn(32, 1, 16, 16)
    labels = torch.arange(32) % 2
    for i in range(32):
        if labels[i]:
            r, c = torch.randint(2, 10, (2,)).tolist()
            images[i, 0, r : r + 4, c : c + 4] += 1.0
    batches = [{"image": images[i : i + 8], "label": labels[i : i + 8]} for i in range(0, 32, 8)]
    model = NetworkSpec("resnet10", spatial_dims=2, out_channels=2, options={"widen_factor": 0.25}).build()
    task = ClassificationTask(["absent", "present"])
    result = fit(model, task, batches, batches, FitConfig(output_dir=str(tmp_path / "run"), epochs=6, lr=3e-3, progress=False,
                                                          save_every=0, metric="auc", greater_is_better=True))
    assert result.metrics["auc"] > 0.9
    assert set(result.metrics) >= {"auc", "sensitivity", "specificity", "accuracy"}


def test_bad_batches_and_class_lists_are_refused():
    with pytest.raises(ConfigError, match="at least two"):
        ClassificationTask(["only"])
    task = ClassificationTask(["a", "b"])
    model = NetworkSpec("resnet10", spatial_dims=2, out_channels=3, options={"widen_factor": 0.125}).build()
    with pytest.raises(DataError, match="out_channels"):
        task.step(model, {"image": torch.randn(2, 1, 16, 16), "label": torch.tensor([0, 1])})
    with pytest.raises(DataError, match=r"class indices in \[0, 2\)"):
        task.step(model, {"image": torch.randn(2, 1, 16, 16), "label": torch.tensor([0, 5])})
    with pytest.raises(DataError, match="'image'"):
        task.step(model, (torch.randn(2, 1, 16, 16), torch.tensor([0, 1])))
    with pytest.raises(DataError, match="no evaluation batches"):
        task.evaluate(model, [])
