"""The training loop on tiny models: what it trains, writes, restores and refuses."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from fit_toy import CountingHook, RegressionTask, loader, toy_data, toy_lora_model, toy_model
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader

from scalpel.core import load_adapter
from scalpel.core.checkpoint import list_checkpoints
from scalpel.core.errors import CheckpointError, ConfigError, DataError, ScalpelError, TrainingError
from scalpel.core.fit import FitConfig, FitResult, Task, fit
from scalpel.core.schedules import lr_at


def cfg(tmp_path, **kw) -> FitConfig:
    base = dict(output_dir=str(tmp_path / "run"), lr=1e-2, log_every=1, save_every=0, progress=False)
    return FitConfig(**{**base, **kw})


def flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_fit_trains_and_writes_the_run_directory(tmp_path):
    model = toy_model(dropout=0.0)
    before = RegressionTask().evaluate(model, loader(shuffle=False))["loss"]
    result = fit(model, RegressionTask(), loader(), loader(shuffle=False), cfg(tmp_path, epochs=4, save_every=10, lr=5e-2),
                 run_config={"task": "toy"})
    assert isinstance(result, FitResult) and result.steps == 4 * 12
    assert result.metrics["loss"] < 0.5 * before
    assert result.best_metric == min(r["eval/loss"] for r in _records(tmp_path) if "eval/loss" in r)
    run = tmp_path / "run"
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["fit"]["epochs"] == 4 and config["run"] == {"task": "toy"}
    records = _records(tmp_path)
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 49))
    assert {"lr", "samples_per_second", "grad_norm", "epoch"} <= set(records[0])
    assert [r["step"] for r in records if "eval/loss" in r] == [12, 24, 36, 48]  # epoch ends
    report = (run / "report.md").read_text()
    assert "trainable 178 of 178 parameters" in report and "steps: 48" in report
    assert [p.name for p in list_checkpoints(run / "checkpoints")] == ["step-00000040", "step-00000048"]
    saved = load_file(str(run / "adapter/trainable.safetensors"))  # no adapter state: trained tensors
    assert set(saved) == {n for n, _ in model.named_parameters()}


def test_fit_saves_the_best_lora_adapter_and_returns_the_best_weights(tmp_path):
    model = toy_lora_model()
    result = fit(model, RegressionTask(), loader(), loader(shuffle=False), cfg(tmp_path, max_steps=12, eval_every=2, lr=0.3))
    evals = {r["step"]: r["eval/loss"] for r in _records(tmp_path) if "eval/loss" in r}
    assert result.best_step == min(evals, key=evals.get) and result.best_metric == min(evals.values())
    assert result.adapter_dir == tmp_path / "run/adapter"
    assert result.metrics["loss"] == pytest.approx(RegressionTask().evaluate(model, loader(shuffle=False))["loss"], rel=1e-5)
    reloaded = load_adapter(toy_model(dropout=0.0), result.adapter_dir)
    x = toy_data()[:8][0]
    torch.testing.assert_close(reloaded(x), model(x))
    assert json.loads((result.adapter_dir / "scalpel.json").read_text())["metrics"]["loss"] == result.best_metric


def test_early_stopping_on_a_greater_is_better_metric(tmp_path):
    result = fit(toy_model(), RegressionTask(), loader(), loader(shuffle=False),
                 cfg(tmp_path, max_steps=200, eval_every=1, lr=0.5, metric="neg_loss", greater_is_better=True,
                     early_stopping_patience=2, early_stopping_min_delta=1e9, save_every=50))  # nothing counts as better after the first
    assert result.stopped_early and result.steps == 3 and result.best_step == 1
    assert result.final_metrics != result.metrics and result.metrics["neg_loss"] == result.best_metric
    again = fit(toy_model(), RegressionTask(), loader(), loader(shuffle=False),  # resuming a stopped run trains no more
                cfg(tmp_path, max_steps=200, eval_every=1, lr=0.5, metric="neg_loss", greater_is_better=True,
                    early_stopping_patience=2, early_stopping_min_delta=1e9, save_every=50, resume=True))
    assert again.stopped_early and again.steps == 3 and again.best_step == 1


def test_param_groups_scale_the_scheduled_learning_rate_and_hooks_see_every_step(tmp_path):
    model = toy_model()
    seen = []

    class LrProbe(CountingHook):
        def after_step(self, step, model, optimizer):
            super().after_step(step, model, optimizer)
            seen.append([g["lr"] for g in optimizer.param_groups])

    groups = [{"params": list(model[0].parameters()), "lr_scale": 0.25, "block": "first"},
              {"params": list(model[3].parameters()), "lr_scale": 2.0}]
    hook = LrProbe()
    fit(model, RegressionTask(), loader(), config=cfg(tmp_path, max_steps=5, warmup_steps=2, schedule="cosine"),
        param_groups=groups, hooks=(hook,))
    assert hook.steps == [1, 2, 3, 4, 5]
    for step, lrs in enumerate(seen):
        expected = lr_at(step, lr=1e-2, total_steps=5, warmup_steps=2, schedule="cosine")
        assert lrs == pytest.approx([0.25 * expected, 2.0 * expected])


def test_param_groups_must_cover_every_trainable_parameter(tmp_path):
    model = toy_model()
    with pytest.raises(ScalpelError, match="in no param group"):
        fit(model, RegressionTask(), loader(), config=cfg(tmp_path, max_steps=1),
            param_groups=[{"params": list(model[0].parameters())}])


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    a, b = toy_model(dropout=0.0), toy_model(dropout=0.0)
    fit(a, RegressionTask(), loader(batch_size=8, shuffle=False), config=cfg(tmp_path / "a", max_steps=5))
    fit(b, RegressionTask(), loader(batch_size=2, shuffle=False), config=cfg(tmp_path / "b", max_steps=5, grad_accum_steps=4))
    torch.testing.assert_close(flat(a), flat(b), rtol=1e-5, atol=1e-6)
    assert not torch.equal(flat(a), flat(toy_model(dropout=0.0)))


def test_clipping_bounds_the_update_and_logs_the_norm_before_clipping(tmp_path):
    start = flat(toy_model(dropout=0.0))
    model = toy_model(dropout=0.0)
    fit(model, RegressionTask(), loader(batch_size=48), config=cfg(tmp_path, max_steps=1, max_grad_norm=1e-3, schedule="constant", lr=1.0))
    assert _records(tmp_path)[0]["grad_norm"] > 1.0  # the raw norm; the step used the clipped one
    # AdamW normalises the step, so compare with plain SGD semantics via the first Adam step: |delta| = lr
    assert (flat(model) - start).abs().max() == pytest.approx(1.0, rel=1e-3)


def test_a_seed_makes_a_cpu_run_reproducible(tmp_path):
    a, b, c = toy_model(), toy_model(), toy_model()
    fit(a, RegressionTask(), loader(), config=cfg(tmp_path / "a", max_steps=7, seed=4))
    fit(b, RegressionTask(), loader(), config=cfg(tmp_path / "b", max_steps=7, seed=4))
    fit(c, RegressionTask(), loader(), config=cfg(tmp_path / "c", max_steps=7, seed=5))
    assert torch.equal(flat(a), flat(b)) and not torch.equal(flat(a), flat(c))


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path):
    class NanAtStep7(RegressionTask):
        calls = 0

        def step(self, model, batch):
            self.calls += 1
            out = super().step(model, batch)
            return {"loss": out["loss"] * float("nan")} if self.calls == 7 else out

    model = toy_model()
    with pytest.raises(TrainingError, match=r"nan at step 7 .*step-00000005"):
        fit(model, NanAtStep7(), loader(), config=cfg(tmp_path, max_steps=20, save_every=5))
    assert [p.name for p in list_checkpoints(tmp_path / "run/checkpoints")] == ["step-00000005"]
    saved = load_file(str(tmp_path / "run/checkpoints/step-00000005/trainable.safetensors"))
    assert all(torch.isfinite(t).all() for t in saved.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the bad step never reached the weights
    resumed = toy_model()  # and the run resumes from it
    result = fit(resumed, RegressionTask(), loader(), config=cfg(tmp_path, max_steps=8, save_every=5, resume=True))
    assert result.steps == 8


def test_an_infinite_gradient_stops_before_the_weights_change(tmp_path):
    model = toy_model()
    model[0].weight.register_hook(lambda grad: grad * float("inf"))  # a finite loss, an infinite gradient
    start = flat(model)
    with pytest.raises(TrainingError, match=r"gradient norm is (inf|nan) at step 1"):
        fit(model, RegressionTask(), loader(), config=cfg(tmp_path, max_steps=3))
    assert torch.equal(flat(model), start)


def test_the_task_receives_eval_mode_and_no_grad(tmp_path):
    seen = {}

    class Probe(RegressionTask):
        def evaluate(self, model, batches):
            seen["training"], seen["grad"] = model.training, torch.is_grad_enabled()
            return super().evaluate(model, batches)

    model = toy_model()
    fit(model, Probe(), loader(), loader(), cfg(tmp_path, max_steps=2))
    assert seen == {"training": False, "grad": False} and model.training


def test_gradient_checkpointing_is_enabled_on_models_that_support_it(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 64, (8, 12), generator=torch.Generator().manual_seed(0))

    class LmTask:
        def step(self, model, batch):
            return {"loss": model(input_ids=batch, labels=batch).loss}

    fit(model, LmTask(), [ids[:4], ids[4:]], config=cfg(tmp_path, max_steps=2, gradient_checkpointing=True))
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
    with pytest.raises(ScalpelError, match="does not support gradient checkpointing"):
        fit(toy_model(), RegressionTask(), loader(), config=cfg(tmp_path / "b", max_steps=1, gradient_checkpointing=True))


# ------------------------------------------------------------------------ bad input


def test_empty_training_data_is_refused(tmp_path):
    with pytest.raises(DataError, match="empty"):
        fit(toy_model(), RegressionTask(), DataLoader(toy_data(0), batch_size=4), config=cfg(tmp_path))
    with pytest.raises(DataError, match="empty"):
        fit(toy_model(), RegressionTask(), [], config=cfg(tmp_path))


def test_a_batch_the_task_cannot_read_names_the_batch_and_the_task(tmp_path):
    batches = [(torch.randn(4, 8), torch.randn(4, 2))] * 3 + [(torch.randn(4, 5), torch.randn(4, 2))]
    with pytest.raises(DataError, match=r"RegressionTask\.step failed on training batch 3 of epoch 0"):
        fit(toy_model(), RegressionTask(), batches, config=cfg(tmp_path))
    with pytest.raises(DataError, match=r"RegressionTask\.evaluate failed at evaluation batch 1"):
        fit(toy_model(), RegressionTask(), batches[:2], batches[2:], config=cfg(tmp_path / "eval"))


def test_an_unwritable_output_dir_is_refused(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(ScalpelError, match="not writable"):
        fit(toy_model(), RegressionTask(), loader(), config=cfg(tmp_path, output_dir=str(blocker / "run")))


def test_resuming_from_another_runs_checkpoint_is_refused(tmp_path):
    fit(toy_model(), RegressionTask(), loader(), config=cfg(tmp_path, max_steps=3, save_every=3))
    with pytest.raises(CheckpointError, match=r"another run: the config differs \(lr: 0.01 -> 0.02\)"):
        fit(toy_model(), RegressionTask(), loader(), config=cfg(tmp_path, max_steps=6, save_every=3, lr=2e-2, resume=True))
    wider = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 2))
    with pytest.raises(CheckpointError, match="base model differs"):
        fit(wider, RegressionTask(), loader(), config=cfg(tmp_path, max_steps=6, save_every=3, resume=True))
    with pytest.raises(ScalpelError, match="already holds checkpoints"):
        fit(toy_model(), RegressionTask(), loader(), config=cfg(tmp_path, max_steps=6, save_every=3))
    result = fit(toy_model(), RegressionTask(), loader(), config=cfg(tmp_path, max_steps=2, save_every=3, overwrite=True))
    assert result.steps == 2


def test_a_damaged_checkpoint_is_reported(tmp_path):
    fit(toy_model(), RegressionTask(), loader(), config=cfg(tmp_path, max_steps=3, save_every=3))
    (tmp_path / "run/checkpoints/step-00000003/state.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="damaged"):
        fit(toy_model(), RegressionTask(), loader(), config=cfg(tmp_path, max_steps=6, save_every=3, resume=True))


def test_config_problems_are_reported_together():
    with pytest.raises(ConfigError) as err:
        FitConfig(output_dir="x", lr=0, grad_accum_steps=0, schedule="step", trackers=("wandb",))
    assert len(err.value.problems) == 4


def test_a_task_without_a_loss_or_without_step_is_refused(tmp_path):
    class NoLoss:
        def step(self, model, batch):
            return {"logits": model(batch[0])}

    with pytest.raises(TrainingError, match="without a scalar 'loss'"):
        fit(toy_model(), NoLoss(), loader(), config=cfg(tmp_path))
    with pytest.raises(ScalpelError, match="no step"):
        fit(toy_model(), object(), loader(), config=cfg(tmp_path))
    assert isinstance(RegressionTask(), Task)


def _records(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (Path(tmp_path) / "run/metrics.jsonl").read_text().splitlines()]


def test_metrics_lines_are_standard_json(tmp_path):
    from scalpel.core.run_files import RunDirectory

    run = RunDirectory(tmp_path)
    run.log({"step": 1, "loss": math.inf})
    assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "loss": "inf"}



def test_tensorboard_tracker_receives_the_metrics(tmp_path):
    pytest.importorskip("tensorboardX")
    fit(toy_model(), RegressionTask(), loader(), loader(shuffle=False),
        cfg(tmp_path, max_steps=4, eval_every=2, trackers=("tensorboard",), run_name="tb"))
    events = list((tmp_path / "run").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    tags = _event_tags(events[0])
    assert {"loss", "lr", "eval/loss"} <= tags


def _event_tags(path) -> set[str]:
    """Scalar tags in a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    tags, data = set(), path.read_bytes()
    offset = 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
        tags.update(v.tag for v in event.summary.value)
        offset += 12 + length + 4
    return tags


def test_a_missing_tracker_package_is_named(tmp_path, monkeypatch):
    import importlib.util

    from scalpel.core.errors import MissingDependencyError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(MissingDependencyError, match="pip install mlflow"):
        fit(toy_model(), RegressionTask(), loader(), config=cfg(tmp_path, trackers=("mlflow",)))


def test_an_unknown_metric_lists_the_task_metrics(tmp_path):
    with pytest.raises(ScalpelError, match=r"metric is 'accuracy' but .*\['loss', 'neg_loss'\]"):
        fit(toy_model(), RegressionTask(), loader(), loader(), cfg(tmp_path, max_steps=2, metric="accuracy"))


def test_the_progress_bar_shows_on_a_terminal_only(tmp_path, capsys, monkeypatch):
    fit(toy_model(), RegressionTask(), loader(), config=cfg(tmp_path / "a", max_steps=3, progress=True))
    assert "3/3" not in capsys.readouterr().err
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    fit(toy_model(), RegressionTask(), loader(), config=cfg(tmp_path / "b", max_steps=3, progress=True))
    err = capsys.readouterr().err
    assert "3/3" in err and "loss=" in err and "lr=" in err and "samples_s=" in err


def _tiny_llama(layers: int = 4):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32))


class _LmTask:
    def step(self, model, batch):
        return {"loss": model(input_ids=batch, labels=batch).loss}


def test_the_lisa_hook_trains_through_fit_and_resumes_exactly(tmp_path):
    from scalpel.core import apply
    from scalpel.core.layerwise import LISA, FullConfig

    batches = list(torch.randint(0, 40, (10, 2, 8), generator=torch.Generator().manual_seed(0)))

    def run(out, steps, resume=False):
        model = apply(_tiny_llama(), FullConfig())
        lisa = LISA(model, gamma=1, every=2, seed=0)
        fit(model, _LmTask(), batches, config=cfg(tmp_path / out, max_steps=steps, schedule="constant", save_every=3, resume=resume),
            param_groups=lisa.param_groups(), hooks=(lisa,))
        return model, lisa

    straight, lisa_a = run("a", 8)
    run("b", 5)  # checkpoint at step 3 and at the end, step 5 (between two switches)
    resumed, lisa_b = run("b", 8, resume=True)
    assert lisa_a.active == lisa_b.active
    for (name, p), (_, q) in zip(straight.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), name
    assert not torch.equal(flat(straight), flat(apply(_tiny_llama(), FullConfig())))


def test_a_list_of_batches_resumes_at_the_same_batch(tmp_path):
    batches = [(x.unsqueeze(0).repeat(2, 1), y.unsqueeze(0).repeat(2, 1)) for x, y in toy_data(10)]
    a, b = toy_model(), toy_model()
    fit(a, RegressionTask(), batches, config=cfg(tmp_path / "a", max_steps=17, schedule="constant", grad_accum_steps=2))
    fit(b, RegressionTask(), batches, config=cfg(tmp_path / "b", max_steps=7, schedule="constant", grad_accum_steps=2, save_every=7))
    b = toy_model(seed=9)
    fit(b, RegressionTask(), batches, config=cfg(tmp_path / "b", max_steps=17, schedule="constant", grad_accum_steps=2, save_every=7, resume=True))
    assert torch.equal(flat(a), flat(b))
