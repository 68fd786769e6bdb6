"""A sentiment run passes over each evaluation split no more often than its results need:
the test split before and after training, the validation split once per epoch in ``fit``. The
validation metrics of the returned weights in the run's extras are fit's own, not a second pass."""

from __future__ import annotations

import json

import torch

from scalpel.nlp.sentiment import task as task_module
from scalpel.nlp.sentiment.pipeline import PIPELINE
from scalpel.nlp.sentiment.task import ClassificationTask


def test_a_run_evaluates_each_split_only_as_often_as_its_results_need(tmp_path, tiny_bert_dir, monkeypatch):
    passes = []
    real = task_module.predict_batches

    def counted(model, batches):
        y_true, y_pred, loss, n = real(model, batches)
        passes.append(n)
        return y_true, y_pred, loss, n

    monkeypatch.setattr(task_module, "predict_batches", counted)
    result = PIPELINE.run(output_dir=str(tmp_path / "run"), model=str(tiny_bert_dir), max_train_samples=64, max_eval_samples=20,
                          max_length=32, epochs=1, batch_size=16, device="cpu", progress=False, save_every=0)
    # test before, validation after the epoch (in fit), test after: no validation pass in finish
    assert passes == [20, 20, 20]
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    (evaluation,) = [r for r in lines if "eval/accuracy" in r]
    assert result.extras["validation"] == {k: evaluation[f"eval/{k}"] for k in ("loss", "accuracy", "macro_f1")}


def test_the_remembered_metrics_are_dropped_once_the_weights_change():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    task = ClassificationTask(("a", "b"))

    class Out:
        def __init__(self, logits):
            self.logits = logits

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return Out(self.inner(x))

    wrapped = Wrapped()
    batches = [{"x": torch.randn(4, 3), "labels": torch.tensor([0, 1, 0, 1])}]
    assert task.last_metrics_of(wrapped) is None
    metrics = task.evaluate(wrapped, batches)
    assert task.last_metrics_of(wrapped) == metrics
    with torch.no_grad():
        model[0].weight.add_(1.0)  # what an optimizer step or loading the best weights does
    assert task.last_metrics_of(wrapped) is None
