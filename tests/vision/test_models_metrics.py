"""Vision models (weights, heads, adaptable layers), metrics and tasks."""

import numpy as np
import pytest
import torch
import torchvision
from sklearn.metrics import f1_score

from scalpel.core.errors import ConfigError, DataError, UnknownNameError
from scalpel.core.files import write_safetensors
from scalpel.vision.metrics import ClassificationMeter, DetectionMeter, SegmentationMeter
from scalpel.vision.models import SPECS, adaptable_layers, build_model, head_modules
from scalpel.vision.tasks import DetectionTask, SegmentationTask, freeze_batchnorm


def test_local_weights_load_and_the_head_is_resized(tmp_path):
    source = build_model("lraspp_mobilenet_v3_large", 6)
    write_safetensors(tmp_path / "w.safetensors", source.state_dict())
    torch.save(source.state_dict(), tmp_path / "w.pth")
    for file in ("w.safetensors", "w.pth"):
        model = build_model("lraspp_mobilenet_v3_large", 3, weights=str(tmp_path / file))
        assert torch.equal(model.backbone["0"][0].weight, source.backbone["0"][0].weight)
        assert model.classifier.high_classifier.weight.shape[0] == 3


def test_weights_of_another_architecture_are_refused(tmp_path):
    write_safetensors(tmp_path / "w.safetensors", build_model("resnet18", 3).state_dict())
    with pytest.raises(DataError, match="do not fit this architecture"):
        build_model("mobilenet_v3_small", 3, weights=str(tmp_path / "w.safetensors"))
    with pytest.raises(DataError, match="does not exist"):
        build_model("resnet18", 3, weights=str(tmp_path / "none.pth"))
    with pytest.raises(UnknownNameError, match="unknown detection model"):
        build_model("resnet18", 3, task="detection")
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):  # a weights name that is no enum member lists the members
        build_model("resnet18", 3, weights="COCO_V9")


def test_adaptable_layers_skip_heads_and_depthwise_convs():
    model = build_model("ssdlite320_mobilenet_v3_large", 4, image_size=64)
    spec = SPECS["ssdlite320_mobilenet_v3_large"]
    names = adaptable_layers(model, spec)
    modules = dict(model.named_modules())
    assert names and all(getattr(modules[n], "groups", 1) == 1 for n in names)
    assert not any(n.startswith("head.classification_head") for n in names)
    assert head_modules(model, spec) == ["head.classification_head"]


def test_segmentation_meter_matches_hand_counts():
    meter = SegmentationMeter(["bg", "a", "b"], ignore_index=255)
    target = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 1]]])
    predicted = torch.tensor([[[0, 1, 1, 1], [2, 0, 2, 0]]])
    meter.update(predicted, target)
    out = meter.compute()
    # bg: tp 1, fp 2 (two pixels of a and b predicted bg), fn 1 -> 1/4; a: tp 2, fp 1, fn 1 -> 2/4; b: tp 1, fn 1 -> 1/2
    assert out["iou/bg"] == pytest.approx(1 / 4) and out["iou/a"] == pytest.approx(0.5) and out["iou/b"] == pytest.approx(0.5)
    assert out["miou"] == pytest.approx((1 / 4 + 0.5 + 0.5) / 3)
    assert out["pixel_accuracy"] == pytest.approx(4 / 7)


def test_classification_meter_agrees_with_sklearn():
    rng = np.random.default_rng(0)
    labels, predicted = rng.integers(0, 4, 50), rng.integers(0, 4, 50)
    meter = ClassificationMeter(list("wxyz"))
    meter.update(torch.from_numpy(predicted), torch.from_numpy(labels))
    out = meter.compute()
    assert out["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert out["accuracy"] == pytest.approx((labels == predicted).mean())
    assert sum(map(sum, meter.confusion_matrix())) == 50


def test_detection_map_is_one_for_perfect_boxes_and_lower_for_shifted():
    targets = [{"boxes": torch.tensor([[10.0, 10, 40, 40], [50, 50, 90, 80]]), "labels": torch.tensor([1, 2])}]
    perfect = [{**targets[0], "scores": torch.tensor([0.9, 0.8])}]
    meter = DetectionMeter(["a", "b"])
    meter.update(perfect, targets)
    out = meter.compute()
    assert out["map"] == pytest.approx(1.0) and out["ap/a"] == pytest.approx(1.0)
    shifted = [{"boxes": targets[0]["boxes"] + 3, "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.8])}]
    meter = DetectionMeter(["a", "b"])
    meter.update(shifted, targets)
    worse = meter.compute()
    assert worse["map"] < 0.6 and worse["map_50"] == pytest.approx(1.0) and worse["map_75"] == 0.0  # IoUs 0.68, 0.71


def test_detection_task_trains_on_empty_images_and_keeps_bn_statistics():
    model = build_model("ssdlite320_mobilenet_v3_large", 3, image_size=64)
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    before = bn.running_mean.clone()
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    targets = [{"boxes": torch.tensor([[5.0, 5, 30, 30]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    out = DetectionTask(["a", "b"]).step(model, (images, targets))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and torch.equal(bn.running_mean, before)
    DetectionTask(["a", "b"], freeze_bn=False).step(model, (images, targets))
    assert not torch.equal(bn.running_mean, before)


def test_segmentation_task_adds_aux_loss_and_ignores_pixels():
    model = build_model("deeplabv3_mobilenet_v3_large", 3, aux_loss=True)
    freeze_batchnorm(model)
    images = torch.rand(2, 3, 64, 64)
    masks = torch.full((2, 64, 64), 255, dtype=torch.long)
    masks[:, :8] = 1
    out = SegmentationTask(["bg", "a", "b"]).step(model, (images, masks))
    assert float(out["loss"]) == pytest.approx(float(out["main_loss"] + 0.5 * out["aux_loss"]), rel=1e-5)
    masks[:, 8:] = 2  # the ignored pixels now count, so the loss changes
    assert SegmentationTask(["bg", "a", "b"]).step(model, (images, masks))["main_loss"].item() != pytest.approx(out["main_loss"].item())


def test_detection_meter_agrees_with_torchmetrics_on_random_predictions():
    from torchmetrics.detection import MeanAveragePrecision

    generator = torch.Generator().manual_seed(0)

    def boxes(n):
        xy = torch.rand(n, 2, generator=generator) * 80
        return torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=generator) * 30], 1)

    targets, predictions = [], []
    for n in (3, 0, 2, 4):  # an image without objects counts too
        truth = {"boxes": boxes(n), "labels": torch.randint(1, 3, (n,), generator=generator)}
        noisy = torch.cat([truth["boxes"] + torch.randn(n, 4, generator=generator) * 3, boxes(3)])
        targets.append(truth)
        predictions.append({"boxes": noisy, "scores": torch.rand(n + 3, generator=generator),
                            "labels": torch.cat([truth["labels"], torch.randint(1, 3, (3,), generator=generator)])})
    ours = DetectionMeter(["a", "b"])
    ours.update(predictions, targets)
    mine = ours.compute()
    reference = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True, backend="pycocotools")
    reference.update(predictions, targets)
    theirs = reference.compute()
    assert 0 < mine["map"] < 1
    # torchmetrics builds the IoU and recall thresholds in float32 (0.7 -> 0.69999999), so a
    # recall that lands exactly on a threshold may be counted one step apart: equal to ~1e-3.
    for key in ("map", "map_50", "map_75", "mar_100"):
        assert mine[key] == pytest.approx(float(theirs[key]), abs=2e-3), key
    for label, ap in zip(theirs["classes"].tolist(), theirs["map_per_class"].tolist()):
        assert mine[f"ap/{'ab'[label - 1]}"] == pytest.approx(ap, abs=2e-3)


@pytest.mark.integration
@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_model_takes_lora_trains_and_merges_to_a_plain_torchvision_model(name):
    """LoRA on the backbone (and FPN / attention projections), the head resized and trained
    in full; merging gives the same outputs from a module with no adapter wrapper left."""
    import copy
    import re

    from scalpel.core.delta import merge
    from scalpel.core.recipes import adapt
    from scalpel.vision.models import names_regex

    spec = SPECS[name]
    size = 64 if spec.task != "classification" else 32
    model = build_model(name, 3, image_size=size, task=spec.task)
    head = head_modules(model, spec)
    layers = adaptable_layers(model, spec)
    if "fpn" in name:
        assert any(".fpn." in n for n in layers)  # the feature pyramid is adapted, not only the body
    if name == "swin_t":  # its attention reads qkv.weight directly: a LoRA wrapper there would be bypassed
        assert not any(".attn." in n for n in layers) and any(".mlp." in n for n in layers)
    if name == "vit_b_16":  # the fused attention is split so that LoRA reaches q, k, v and the output projection
        assert {n.rsplit(".", 1)[1] for n in layers if ".self_attention." in n} == {"q", "k", "v", "out_proj"}
    torch.manual_seed(0)
    with torch.no_grad():  # ViT zero-initialises its head, which would stop every gradient below it
        for n, p in model.named_parameters():
            if n.startswith(head[0] + ".") and n.endswith("weight"):
                p.normal_(0, 0.02)
    model = adapt(model, "lora", targets=names_regex(layers), head=head, r=2, alpha=4)
    freeze_batchnorm(model.train())
    if spec.task == "detection":
        images = [torch.rand(3, size, size)]
        loss = sum(model(images, [{"boxes": torch.tensor([[4.0, 6, 40, 44]]), "labels": torch.tensor([2])}]).values())
    elif spec.task == "segmentation":
        loss = SegmentationTask(["bg", "a", "b"]).step(model, (torch.rand(2, 3, size, size), torch.randint(0, 3, (2, size, size))))["loss"]
    else:
        loss = torch.nn.functional.cross_entropy(model(torch.rand(2, 3, size, size)), torch.tensor([0, 2]))
    loss.backward()
    trained = {n for n, p in model.named_parameters() if p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0}
    assert any("lora_B" in n for n in trained) or any("lora_A" in n for n in trained)
    assert any(re.search(re.escape(head[0]), n) for n in trained)  # the resized head trains in full
    with torch.no_grad():  # move the zero-initialised LoRA B so that merging has something to fold in
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    model.eval()
    plain = merge(copy.deepcopy(model))
    assert not any(hasattr(m, "base_layer") for m in plain.modules())
    fresh = torchvision.models.get_model(name, weights=None, num_classes=3, **_plain_options(name, size, spec.task))
    fresh.load_state_dict(plain.state_dict())  # torchvision's own model takes the merged weights
    if name.startswith("ssdlite"):
        fresh.transform = plain.transform  # Scalpel's fixed-size transform (no parameters)
    fresh.eval()
    x = torch.rand(1, 3, size, size)
    with torch.no_grad():
        if spec.task == "detection":
            got, want = fresh.backbone(fresh.transform([x[0]])[0].tensors), model.backbone(model.transform([x[0]])[0].tensors)
            got, want = list(got.values()) if isinstance(got, dict) else got, list(want.values()) if isinstance(want, dict) else want
        elif spec.task == "segmentation":
            got, want = [fresh(x)["out"]], [model(x)["out"]]
        else:
            got, want = [fresh(x)], [model(x)]
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # folding changes float rounding in deep nets


def _plain_options(name, size, task):
    options = {}
    if task in ("detection", "segmentation"):
        options["weights_backbone"] = None
    if task == "segmentation" and not name.startswith("lraspp"):
        options["aux_loss"] = True
    if task == "detection" and not name.startswith("ssdlite"):
        options.update(min_size=size, max_size=size)
    if name.startswith("vit"):
        options["image_size"] = size
    return options


def test_split_attention_is_torchvision_attention_and_keeps_its_state_dict_layout():
    torch.manual_seed(0)
    reference = torchvision.models.get_model("vit_b_16", weights=None, num_classes=3, image_size=32).eval()
    model = build_model("vit_b_16", 3, image_size=32).eval()
    assert not any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())
    assert model.state_dict().keys() == reference.state_dict().keys()
    model.load_state_dict(reference.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), atol=1e-5, rtol=1e-5)


def test_ssdlite_layerwise_default_is_the_last_stage_and_the_extra_layers():
    from scalpel.core.layerwise import block_map

    model = build_model("ssdlite320_mobilenet_v3_large", 4, image_size=96)
    chosen = [b.name for b in block_map(model).select(SPECS["ssdlite320_mobilenet_v3_large"].blocks)]
    assert chosen[0] == "backbone.features.1.0" and chosen[-1] == "backbone.extra.3"
    assert all(n.startswith(("backbone.features.1.", "backbone.extra.")) for n in chosen)
    assert SPECS["resnet18"].blocks == ("last 2",)
