"""Each vision pipeline end to end on its embedded synthetic default, in tmp_path, through
the run contract (``Pipeline.run`` -> ``RunResult``); the vision options and defaults."""

import pytest
import torch

from scalpel.core.errors import ConfigError, ScalpelError
from scalpel.core.files import read_safetensors
from scalpel.core.flags import parse_run_flags
from scalpel.core.pipeline import get_pipeline
from scalpel.core.run import RunResult
from scalpel.vision.config import DetectionOptions, SegmentationOptions
from scalpel.vision.models import build_model
from scalpel.vision.pipelines import classification, detection, load_adapted, segmentation


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
    result = pipeline.run(output_dir=str(tmp_path / "run"), quick=True, method=method)
    run_dir = tmp_path / "run"
    for file in ("adapter/scalpel.json", "adapter/adapter_model.safetensors", "report.md", "examples.png",
                 "result.json", "merged/model.safetensors", "metrics.jsonl"):
        assert (run_dir / file).is_file(), file
    assert RunResult.read(run_dir) == result and result.pipeline == name and result.metric == headline
    assert 0.0 <= result.after[headline] <= 1.0 and headline in result.before
    assert 0 < result.trainable < result.total and result.steps == 4  # --quick: at most 4 steps
    assert result.extras["merged"] == str(run_dir / "merged" / "model.safetensors")
    assert result.extras["base_on_source"] and headline in result.extras["base_on_source"]
    report = (run_dir / "report.md").read_text()
    assert "| " + headline + " |" in report and "## Data" in report and "![examples](examples.png)" in report
    if headline == "accuracy":  # classification reports its confusion matrix, one row per class
        assert "## Confusion matrix" in report and all(f"| {c} |" in report for c in result.extras["class_names"])

    adapted, extra = load_adapted(run_dir / "adapter")
    _merged_equals_adapted(run_dir, adapted, extra)

    # the synthetic data and the source-trained base are cached beside the run, not in it
    image = next((tmp_path / ".vision-cache" / "data").rglob("*.png"))
    rows = pipeline.predict(run_dir / "adapter", [str(image)], {"threshold": "0.0"})
    assert len(rows) == 1 and rows[0]["image"] == str(image)


def test_predict_names_a_missing_adapter(tmp_path):
    from scalpel.core.errors import AdapterError

    with pytest.raises(AdapterError, match="does not exist"):
        get_pipeline("vision.detection").predict(tmp_path / "nope", ["x.png"], {})


def test_bad_options_list_every_problem():
    with pytest.raises(ConfigError) as err:
        DetectionOptions(val_fraction=1.5, image_size=0, train_images=0)
    assert len(err.value.problems) == 3
    with pytest.raises(ConfigError, match="needs --masks"):
        SegmentationOptions(data="some/images")
    with pytest.raises(ConfigError) as err:  # domain, method and training problems, reported together
        detection.settings(val_fraction=1.5, method_typo="lora", batch_size=0)
    assert any("did you mean 'method'" in p for p in err.value.problems)


def test_vision_defaults_and_what_quick_stands_for():
    plain = detection.settings()
    assert (plain.train.epochs, plain.train.batch_size, plain.train.lr, plain.train.log_every) == (3, 8, 2e-3, 5)
    assert plain.train.save_every is None and not plain.train.overwrite  # the run contract decides
    assert plain.method.density == 0.02 and plain.options.train_images == 160
    quick = segmentation.settings(quick=True)
    assert (quick.options.train_images, quick.options.base_steps, quick.train.epochs, quick.train.max_steps) == (24, 30, 1, 4)
    assert quick.method.scorer == "magnitude"
    given = classification.settings(quick=True, max_steps=6, scorer="fisher", train_images=40)  # given settings win
    assert (given.train.max_steps, given.method.scorer, given.options.train_images, given.train.batch_size) == (6, "fisher", 40, 16)
    assert given.options.image_size == 64 and given.options.model == "mobilenet_v3_small"


def test_flags_reach_every_option_set():
    with pytest.warns(FutureWarning, match="--teacher-arch"):
        settings = parse_run_flags(segmentation, [
            "--quick", "--method", "dora", "--r", "4", "--blocks", "stem", "first 8", "--class-weights", "0.3", "1", "1", "1",
            "--teacher-model", "deeplabv3_mobilenet_v3_large", "--no-export-merged", "--batch-size", "2"])
    assert settings.options.class_weights == (0.3, 1.0, 1.0, 1.0) and not settings.options.export_merged
    assert (settings.method.method, settings.method.r, settings.method.blocks) == ("dora", 4, ("stem", "first 8"))
    assert settings.method.teacher_arch == "deeplabv3_mobilenet_v3_large"
    assert (settings.train.batch_size, settings.train.max_steps) == (2, 4)


@pytest.mark.integration
def test_a_rerun_is_refused_and_overwrite_keeps_the_cached_base(tmp_path):
    settings = dict(output_dir=str(tmp_path / "run"), quick=True, method="bitfit", train_images=12, base_steps=2,
                    max_steps=1, export_merged=False)
    first = classification.run(**settings)
    base = tmp_path / ".vision-cache" / "base"
    cached = {p: p.stat().st_mtime_ns for p in base.iterdir()}
    with pytest.raises(ScalpelError, match="holds an earlier run; pass --overwrite"):
        classification.run(**settings)
    second = classification.run(**settings, overwrite=True)
    assert {p: p.stat().st_mtime_ns for p in base.iterdir()} == cached  # neither trained nor evaluated again
    assert second.before == first.before and second.extras["merged"] is None
    assert not (tmp_path / "run" / "merged").exists()


@pytest.mark.integration
def test_classification_with_a_teacher_distils(tmp_path, monkeypatch):
    from scalpel.vision.distill import VisionDistillTask

    first = classification.run(output_dir=str(tmp_path / "teacher"), quick=True, method="full")
    kd_losses, step = [], VisionDistillTask.step

    def counted(self, model, batch):
        out = step(self, model, batch)
        kd_losses.append(out["kd_loss"])
        return out

    monkeypatch.setattr(VisionDistillTask, "step", counted)
    student = classification.run(output_dir=str(tmp_path / "student"), quick=True, method="lora",
                                 teacher=first.extras["merged"], distill_alpha=0.7)
    assert len(kd_losses) == student.steps and all(torch.isfinite(kd) for kd in kd_losses)  # every step distilled
    assert (tmp_path / "student" / "adapter" / "scalpel.json").is_file()
    assert f"distilled from {first.extras['merged']} (alpha 0.7" in (tmp_path / "student" / "report.md").read_text()
    assert student.before == first.before  # one cached base beside both runs
    # a run folder works as a teacher too; a teacher trained for other classes is refused
    classification.run(output_dir=str(tmp_path / "from-folder"), quick=True, max_steps=1, teacher=str(tmp_path / "teacher"))
    other = build_model("mobilenet_v3_small", 5)
    torch.save(other.state_dict(), tmp_path / "five.pth")
    with pytest.raises(ConfigError, match="does not fit the data's 3 classes"):
        classification.run(output_dir=str(tmp_path / "wrong"), quick=True, max_steps=1, teacher=str(tmp_path / "five.pth"))


def test_aspect_ratio_grouping_feeds_every_training_image_once(tmp_path):
    from scalpel.vision.splits import loader, synthetic_domains, synthetic_split

    options = DetectionOptions(train_images=24, group_aspect_ratio=True)
    split = synthetic_split(options, synthetic_domains(options, tmp_path / "data", seed=0)["target"], seed=0)
    batches = list(loader(options, split.train, batch_size=4, seed=0, training=True))
    assert sum(len(images) for images, _ in batches) == len(split.train)
    assert all(len(images) <= 4 for images, _ in batches)


def test_class_weights_and_their_checks():
    from scalpel.vision.tasks import SegmentationTask

    assert SegmentationOptions(class_weights=("0.3", 1, 1)).class_weights == (0.3, 1.0, 1.0)  # numbers kept as floats
    with pytest.raises(ConfigError, match="must be numbers"):
        SegmentationOptions(class_weights=("heavy",))
    with pytest.raises(ConfigError, match="class_weights has 2 values but class_names has 3"):
        SegmentationOptions(class_weights=(1, 2), class_names=("bg", "a", "b"))
    with pytest.raises(ConfigError, match="one weight per class"):
        SegmentationTask(["bg", "a"], class_weights=[1.0])
