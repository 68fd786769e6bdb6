"""Each vision pipeline end to end on its embedded synthetic default, in tmp_path."""

import json

import pytest
import torch

from scalpel.core.errors import ConfigError
from scalpel.core.files import read_safetensors
from scalpel.core.pipeline import get_pipeline
from scalpel.vision.config import DetectionConfig, SegmentationConfig
from scalpel.vision.models import build_model
from scalpel.vision.pipelines import load_adapted


def _merged_equals_adapted(run_dir, adapted, extra):
    plain = build_model(extra["model"], extra["num_classes"], image_size=extra["image_size"], task=extra["task"])
    plain.load_state_dict(read_safetensors(run_dir / "merged" / "model.safetensors"))
    plain.eval()
    assert not any(hasattr(m, "base_layer") for m in plain.modules())  # a plain torchvision model
    torch.manual_seed(1)
    size = extra["image_size"]
    with torch.no_grad():
        if extra["task"] == "detection":
            x = [torch.rand(3, size, size)]
            got, want = plain(x)[0], adapted(x)[0]
            n = min(len(got["scores"]), len(want["scores"]), 20)
            assert n > 0
            torch.testing.assert_close(got["scores"][:n], want["scores"][:n], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(got["boxes"][:n], want["boxes"][:n], atol=1e-2, rtol=1e-4)
        else:
            x = torch.rand(2, 3, size, size)
            got, want = plain(x), adapted(x)
            got, want = (got["out"], want["out"]) if isinstance(got, dict) else (got, want)
            torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.integration
@pytest.mark.parametrize(
    ("name", "method", "headline"),
    [("vision.detection", "lora", "map"), ("vision.segmentation", "sparse", "miou"), ("vision.classification", "layerwise", "accuracy")],
)
def test_pipeline_end_to_end(tmp_path, name, method, headline):
    pipeline = get_pipeline(name)
    config = pipeline.config_cls(output_dir=str(tmp_path / "run"), quick=True, method=method)
    result = pipeline.run(config)
    run_dir = tmp_path / "run"
    for file in ("adapter/scalpel.json", "adapter/adapter_model.safetensors", "report.md", "examples.png",
                 "summary.json", "merged/model.safetensors", "metrics.jsonl"):
        assert (run_dir / file).is_file(), file
    assert 0.0 <= result["metrics"][headline] <= 1.0 and headline in result["before"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert 0 < summary["trainable_parameters"] < summary["total_parameters"]
    assert "| " + headline + " |" in (run_dir / "report.md").read_text()
    if headline == "accuracy":  # classification reports its confusion matrix, one row per class
        report = (run_dir / "report.md").read_text()
        assert "## Confusion matrix" in report and all(f"| {c} |" in report for c in result["summary"]["class_names"])

    adapted, extra = load_adapted(run_dir / "adapter")
    _merged_equals_adapted(run_dir, adapted, extra)

    image = next((run_dir / "data").rglob("*.png"))
    rows = pipeline.predict(run_dir / "adapter", [str(image)], {"threshold": "0.0"})
    assert len(rows) == 1 and rows[0]["image"] == str(image)


def test_predict_names_a_missing_adapter(tmp_path):
    from scalpel.core.errors import AdapterError

    with pytest.raises(AdapterError, match="does not exist"):
        get_pipeline("vision.detection").predict(tmp_path / "nope", ["x.png"], {})


def test_bad_config_lists_every_problem():
    with pytest.raises(ConfigError) as err:
        DetectionConfig(method="magic", val_fraction=1.5, batch_size=0)
    assert len(err.value.problems) == 3
    with pytest.raises(ConfigError, match="needs --masks"):
        SegmentationConfig(data="some/images")


@pytest.mark.integration
def test_classification_with_a_teacher_distils(tmp_path):
    pipeline = get_pipeline("vision.classification")
    first = pipeline.run(pipeline.config_cls(output_dir=str(tmp_path / "teacher"), quick=True, method="full"))
    config = pipeline.config_cls(output_dir=str(tmp_path / "student"), quick=True, method="lora",
                                 base_dir=str(tmp_path / "teacher"), teacher=first["merged"], distill_alpha=0.7)
    pipeline.run(config)
    summary = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert summary["teacher"] == first["merged"] and (tmp_path / "student" / "adapter" / "scalpel.json").is_file()


def test_aspect_ratio_grouping_feeds_every_training_image_once(tmp_path):
    from scalpel.vision.run import loader, synthetic_domains, synthetic_split

    config = DetectionConfig(output_dir=str(tmp_path), quick=True, group_aspect_ratio=True, batch_size=4)
    split = synthetic_split(config, synthetic_domains(config, tmp_path / "data")["target"])
    batches = list(loader(config, split.train, train=True))
    assert sum(len(images) for images, _ in batches) == len(split.train)
    assert all(len(images) <= 4 for images, _ in batches)


def test_class_weights_from_the_command_line_and_their_checks():
    from scalpel.vision.tasks import SegmentationTask

    assert SegmentationConfig(class_weights=("0.3", "1", "1")).class_weights == (0.3, 1.0, 1.0)  # argparse gives strings
    with pytest.raises(ConfigError, match="must be numbers"):
        SegmentationConfig(class_weights=("heavy",))
    with pytest.raises(ConfigError, match="class_weights has 2 values but class_names has 3"):
        SegmentationConfig(class_weights=(1, 2), class_names=("bg", "a", "b"))
    with pytest.raises(ConfigError, match="one weight per class"):
        SegmentationTask(["bg", "a"], class_weights=[1.0])
