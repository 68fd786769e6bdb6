"""The run contract (core/run.py, core/pipeline.py) on a toy pipeline: one result record, the
run directory owned by the run (refuse, overwrite, resume), settings checked all at once."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import pytest
import torch

from scalpel.core.errors import ConfigError, ScalpelError
from scalpel.core.files import read_safetensors
from scalpel.core.options import MethodOptions, TrainOptions
from scalpel.core.pipeline import Pipeline
from scalpel.core.run import RunResult
from toy_pipeline import STOP_AT, TOY, build_kit


def test_a_run_writes_its_result_report_and_adapter(tmp_path):
    result = TOY.run(method="lora", r=2, output_dir=str(tmp_path / "run"))
    assert isinstance(result, RunResult)
    assert RunResult.read(tmp_path / "run") == result
    assert (result.metric, result.method, result.pipeline, result.model) == ("accuracy", "lora", "toy", "mlp")
    assert 0 < result.trainable < result.total and result.adapter_bytes > 0 and result.peak_memory > 0
    assert result.steps == 3 * 8  # 3 epochs of 64 samples in batches of 8
    assert result.after["accuracy"] > result.before["accuracy"]  # the toy problem is easy
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## toy: lora" in report and f"| accuracy | {result.before['accuracy']:.4g} | {result.after['accuracy']:.4g} |" in report
    meta = json.loads((tmp_path / "run" / "adapter" / "scalpel.json").read_text())
    assert meta["metrics"] == result.after
    assert result.row()["after"] == result.score == result.after["accuracy"]


def test_a_second_run_into_the_same_folder_is_refused_and_overwrite_replaces_it_whole(tmp_path):
    TOY.run(output_dir=str(tmp_path / "run"), max_steps=2)
    (tmp_path / "run" / "leftover.txt").write_text("from the first run")
    with pytest.raises(ScalpelError, match="holds an earlier run; pass --overwrite"):
        TOY.run(output_dir=str(tmp_path / "run"), max_steps=2)
    assert (tmp_path / "run" / "leftover.txt").is_file()  # a refused run touches nothing
    TOY.run(output_dir=str(tmp_path / "run"), max_steps=2, overwrite=True)
    assert not (tmp_path / "run" / "leftover.txt").exists()
    assert RunResult.read(tmp_path / "run").steps == 2


def test_a_folder_that_is_not_a_run_is_never_deleted(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    for overwrite in (False, True):
        with pytest.raises(ScalpelError, match="holds no Scalpel run"):
            TOY.run(output_dir=str(tmp_path / "mine"), overwrite=overwrite)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_resume_needs_an_interrupted_run(tmp_path):
    with pytest.raises(ScalpelError, match="cannot resume .* is not a run"):
        TOY.run(output_dir=str(tmp_path / "none"), resume=True)
    TOY.run(output_dir=str(tmp_path / "done"), max_steps=2, save_every=0)
    with pytest.raises(ScalpelError, match="cannot resume .* finished"):
        TOY.run(output_dir=str(tmp_path / "done"), resume=True)
    with pytest.raises(ConfigError, match="resume and overwrite exclude each other"):
        TOY.run(output_dir=str(tmp_path / "done"), resume=True, overwrite=True)


def test_an_interrupted_run_resumes_to_the_same_adapter(tmp_path, monkeypatch):
    settings = dict(method="lora", r=2, max_steps=20, save_every=4, batch_size=8, epochs=1)
    straight = TOY.run(output_dir=str(tmp_path / "straight"), **settings)
    monkeypatch.setenv(STOP_AT, "10")  # steps 1-10 run; the 11th raises (checkpoint at step 8)
    with pytest.raises(KeyboardInterrupt):
        TOY.run(output_dir=str(tmp_path / "cut"), **settings)
    assert not (tmp_path / "cut" / "result.json").exists()
    monkeypatch.delenv(STOP_AT)
    resumed = TOY.run(output_dir=str(tmp_path / "cut"), resume=True, **settings)
    assert resumed.steps == straight.steps == 20
    a = read_safetensors(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    b = read_safetensors(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_step_checkpoints_are_written_by_default_a_tenth_of_the_run_apart(tmp_path):
    assert TrainOptions().checkpoint_interval(95) == 10 and TrainOptions(save_every=0).checkpoint_interval(95) == 0
    TOY.run(output_dir=str(tmp_path / "run"), max_steps=20, keep_checkpoints=0)
    steps = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step-"))
    assert steps == [f"step-{s:08d}" for s in range(2, 21, 2)]


def test_settings_report_every_problem_at_once():
    with pytest.raises(ConfigError) as caught:
        TOY.settings(epochs="three", r=0, lr=-1.0, samples="many", rank=4)
    text = str(caught.value)
    for problem in ("epochs must be int, got str 'three'", "samples must be int", "unknown setting 'rank'"):
        assert problem in text
    with pytest.raises(ConfigError) as caught:  # the option sets' own rules, together
        TOY.settings(r=0, lr=-1.0, density=2.0)
    assert {"r must be >= 1, got 0", "lr must be > 0, got -1.0", "density must be in (0, 1], got 2.0"} <= set(caught.value.problems)


def test_quick_fills_in_only_what_was_not_given():
    assert TOY.settings(quick=True).train.epochs == 1 and TOY.settings(quick=True).options.samples == 32
    assert TOY.settings(quick=True, epochs=5).train.epochs == 5
    assert TOY.settings().train.epochs == 3  # the pipeline's own default


def test_a_domain_may_not_reuse_a_shared_setting_name():
    @dataclass(frozen=True)
    class Clashing:
        lora_rank: int = 4
        epochs: int = field(default=3, metadata={"help": "a second meaning of --epochs"})

    with pytest.raises(ValueError, match=r"reuses shared option names \['epochs'\]"):
        Pipeline(name="bad", options_cls=Clashing, build_kit=build_kit)


def test_a_pipeline_without_a_teacher_refuses_distillation(tmp_path):
    with pytest.raises(ConfigError, match="toy cannot distil"):
        TOY.run(output_dir=str(tmp_path / "run"), teacher="somewhere")


def test_layerwise_lr_decay_and_sparse_regrowth_come_from_the_options(tmp_path):
    result = TOY.run(output_dir=str(tmp_path / "llrd"), method="full", lr_decay=0.5, max_steps=3)
    assert result.trainable == result.total
    result = TOY.run(output_dir=str(tmp_path / "sparse"), method="sparse", density=0.1, scorer="gradient",
                     regrow_every=2, max_steps=4)
    assert 0 < result.trainable < result.total


def test_method_options_are_one_object_for_every_method():
    options = MethodOptions(method="sparse", blocks="last 2")
    assert options.blocks == ("last 2",)
    assert dataclasses.replace(options, method="lora").density == options.density  # switching keeps the rest
