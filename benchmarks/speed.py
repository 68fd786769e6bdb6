"""Speed of the training defaults: for each pipeline's embedded default, fp32 with the old
defaults (plain shuffling, default memory format) against the new defaults
(``mixed_precision=auto``, ``channels_last=auto``, length-grouped text batches), and
``scalpel run nlp.sentiment`` against a Hugging Face Trainer + PEFT script on the same files.

    python benchmarks/speed.py            # sentiment 2,000 / 500 / 500 texts, every pipeline's --quick run
    python benchmarks/speed.py --quick    # sentiment 600 / 200 / 200 texts (what a 2-core machine under load allows)
    python benchmarks/speed.py --compile  # also a sentiment row with --compile
    python benchmarks/speed.py --pipelines nlp.chat vision.segmentation   # a subset of the pairs

What ``auto`` picks depends on the machine (bf16 only with AMX-BF16 or AVX512-BF16, see
core/fit/precision.py; channels-last only for 2-D conv nets on CPU, see
core/fit/memory_format.py), so the table names the CPU's features and what each new-defaults
row resolved to (from its report.md). Every import is done once before the first row, so no
row pays for them. The sentiment rows compare wall time (model and data loading, every
evaluation, the report); the other pairs compare fit's training time, because the first run
of a pair also pre-trains the small base the second one reuses. Writes docs/benchmarks/speed.md.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from scalpel.core.fit.precision import choose_precision, cpu_summary, this_hardware
from scalpel.nlp.sentiment.config import SentimentOptions
from scalpel.nlp.sentiment.data import load_splits
from scalpel.nlp.sentiment.model import default_model_path
from scalpel.nlp.sentiment.pipeline import PIPELINE

#: The settings both sides of the Trainer comparison share (LoRA on query/value, [CLS] head).
SHARED = dict(r=8, alpha=16, lr=5e-4, batch_size=32, warmup_ratio=0.06, seed=0)


def write_splits(folder: Path, size: dict) -> dict[str, str]:
    """The embedded corpus's splits (as the pipeline makes them) as CSV files both sides read."""
    options = SentimentOptions(max_train_samples=size["train"], max_eval_samples=size["eval"])
    splits = load_splits(options, seed=0)
    files = {}
    for name, table in (("train", splits.train), ("validation", splits.validation), ("test", splits.test)):
        files[name] = str(folder / f"{name}.csv")
        with open(files[name], "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(zip(table.texts, table.labels))
    return files


def scalpel_run(out: str, files: dict[str, str], size: dict, **options) -> dict:
    started = time.perf_counter()
    result = PIPELINE.run(output_dir=out, train_file=files["train"], validation_file=files["validation"], test_file=files["test"],
                          max_length=size["max_length"], epochs=size["epochs"], device="cpu", save_every=0, progress=False,
                          **{**SHARED, **options})
    return {"wall_s": time.perf_counter() - started, "train_s": result.train_seconds, "accuracy": result.after["accuracy"],
            "padding": result.extras.get("padding_share_grouped" if options.get("group_by_length", True) else "padding_share_shuffled")}


def trainer_run(out: str, files: dict[str, str], size: dict) -> dict:
    """The plain Hugging Face way: datasets-free CSV reading, AutoModelForSequenceClassification,
    PEFT LoRA (SEQ_CLS keeps the classifier trainable), Trainer with dynamic padding."""
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    started = time.perf_counter()
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)

    def read(name):
        with open(files[name], newline="") as f:
            rows = list(csv.DictReader(f))
        labels = sorted({r["label"] for r in rows}) if name == "train" else None
        return rows, labels

    train_rows, names = read("train")
    index = {n: i for i, n in enumerate(names)}

    def encode(rows):
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=size["max_length"])
        return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i], "labels": index[r["label"]]}
                for i, r in enumerate(rows)]

    # the same warm-up as fit's (transformers 5 has no warmup_ratio): ceil(ratio x optimizer steps)
    warmup = math.ceil(SHARED["warmup_ratio"] * math.ceil(len(train_rows) / SHARED["batch_size"]) * size["epochs"])
    torch.manual_seed(SHARED["seed"])
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(names))
    model = get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=SHARED["r"], lora_alpha=SHARED["alpha"],
                                             target_modules=["query", "value"], lora_dropout=0.0))
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=SHARED["batch_size"], per_device_eval_batch_size=64,
                             learning_rate=SHARED["lr"], warmup_steps=warmup, num_train_epochs=size["epochs"],
                             lr_scheduler_type="linear", eval_strategy="epoch", save_strategy="no", logging_steps=10,
                             seed=SHARED["seed"], use_cpu=True, report_to=[], disable_tqdm=True)

    def accuracy(prediction):
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    trainer = Trainer(model=model, args=args, train_dataset=encode(train_rows), eval_dataset=encode(read("validation")[0]),
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=accuracy)
    trained = trainer.train()
    test = trainer.evaluate(encode(read("test")[0]), metric_key_prefix="test")
    return {"wall_s": time.perf_counter() - started, "train_s": trained.metrics["train_runtime"], "accuracy": test["test_accuracy"],
            "padding": math.nan}


#: pipeline -> (its pipeline object, what this benchmark's --quick changes in the pipeline's own --quick run)
PAIRS = {
    "nlp.chat": ("scalpel.nlp.chat.pipeline:PIPELINE", {"max_train_samples": 160}),
    "vision.detection": ("scalpel.vision.pipelines:detection", {"train_images": 16, "base_steps": 10}),
    "vision.segmentation": ("scalpel.vision.pipelines:segmentation", {"train_images": 16, "base_steps": 10}),
    "medical.segmentation": ("scalpel.medical.pipelines:segmentation", {"base_steps": 20, "max_steps": 6}),
    "medical.classification": ("scalpel.medical.pipelines:classification", {"base_steps": 20, "max_steps": 6}),
}
#: The settings the defaults had before issue 22.
OLD_DEFAULTS = dict(mixed_precision="no", channels_last="off", group_by_length=False)


def warm_imports() -> None:
    """Import what any row imports (transformers' BERT, PEFT, the Trainer, every pipeline), so no row pays for it."""
    import importlib

    import peft  # noqa: F401
    import transformers.models.bert.modeling_bert  # noqa: F401
    from transformers import Trainer  # noqa: F401

    for target, _ in PAIRS.values():
        importlib.import_module(target.partition(":")[0])


def pipeline_pair(name: str, out: str, quick: bool) -> list[dict]:
    """The pipeline's --quick run (smaller still with ``quick``) with the old defaults, then with
    the new ones (one base for both)."""
    import importlib

    target, smaller = PAIRS[name]
    overrides = smaller if quick else {}
    module, _, attr = target.partition(":")
    pipeline = getattr(importlib.import_module(module), attr)
    rows = []
    for label, options in (("fp32, old defaults", OLD_DEFAULTS), ("new defaults", {})):
        kw = dict(output_dir=f"{out}/{label.split(',')[0].replace(' ', '-')}", quick=True, device="cpu", progress=False,
                  save_every=0, seed=0, **overrides, **options)
        if "base_dir" in {f.name for f in dataclasses.fields(pipeline.options_cls)}:
            kw["base_dir"] = f"{out}/base"
        started = time.perf_counter()
        result = pipeline.run(**kw)
        rows.append({"pipeline": name, "name": label, "wall_s": time.perf_counter() - started, "train_s": result.train_seconds,
                     "metric": result.metric, "score": result.score, "resolved": resolved(Path(result.run_dir) / "report.md")})
        print(f"{name} {label}: train {result.train_seconds:.1f} s, {result.metric} {result.score:.4f}", file=sys.stderr, flush=True)
    return rows


def resolved(report: Path) -> str:
    """What the run's report says it trained with: precision and memory format."""
    found = []
    for line in report.read_text().splitlines():
        if line.startswith("- precision: "):
            found.append(line.removeprefix("- precision: ").split(" (")[0].split(";")[0])
        elif line.startswith("- memory format in training: "):
            found.append(line.removeprefix("- memory format in training: ").split(" (")[0])
    return ", ".join(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compile", action="store_true", help="add a sentiment row with --compile")
    parser.add_argument("--train", type=int, help="training texts (default: 2,000; 600 with --quick)")
    parser.add_argument("--eval", type=int, help="validation and test texts each (default: 500; 200 with --quick)")
    parser.add_argument("--pipelines", nargs="*", default=list(PAIRS), choices=list(PAIRS), help="the pairs to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "speed.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    size = dict(train=600, eval=200, max_length=64, epochs=1) if args.quick else dict(train=2000, eval=500, max_length=64, epochs=1)
    size.update({k: v for k, v in (("train", args.train), ("eval", args.eval)) if v})
    auto = choose_precision("auto", this_hardware(cpu=True))
    warm_imports()
    rows, pairs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        files = write_splits(Path(tmp), size)
        sentiment = dict(targets="query|value", pooling="cls")
        runs = [
            ("scalpel, fp32, old defaults (shuffled batches)", lambda o: scalpel_run(o, files, size, **sentiment, **OLD_DEFAULTS)),
            (f"scalpel, new defaults ({auto.label}, length-grouped)", lambda o: scalpel_run(o, files, size, **sentiment)),
            ("HF Trainer + PEFT (fp32, shuffled, dynamic padding)", lambda o: trainer_run(o, files, size)),
        ]
        if args.compile:
            runs.append(("scalpel, new defaults + --compile", lambda o: scalpel_run(o, files, size, **sentiment, compile=True)))
        for i, (name, run) in enumerate(runs):
            row = {"name": name, **run(f"{tmp}/run{i}")}
            rows.append(row)
            print(f"{name}: {row['wall_s']:.0f} s, accuracy {row['accuracy']:.4f}", file=sys.stderr, flush=True)
        for name in args.pipelines:
            pairs += pipeline_pair(name, f"{tmp}/{name}", args.quick)
    text = table(rows, size, auto, args) + pair_table(pairs, args.quick)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


def command(args) -> str:
    parts = ["python benchmarks/speed.py", "--quick" if args.quick else "", "--compile" if args.compile else "",
             f"--train {args.train}" if args.train else "", f"--eval {args.eval}" if args.eval else "",
             "" if args.pipelines == list(PAIRS) else "--pipelines " + " ".join(args.pipelines)]
    return " ".join(p for p in parts if p)


def table(rows: list[dict], size: dict, auto, args) -> str:
    base, trainer = rows[0], rows[2]
    n = size["eval"]
    acc = trainer["accuracy"]
    noise = 100 * math.sqrt(2 * acc * (1 - acc) / n)
    lines = [f"# Speed: old defaults, new defaults and a Hugging Face Trainer script ({'quick' if args.quick else 'standard'} mode)", "",
             f"CPU: {cpu_summary()}; {torch.get_num_threads()} torch threads, torch {torch.__version__}. "
             f"`mixed_precision=auto` here: **{auto.label}** ({auto.reason}). Command: `{command(args)}`.", "",
             "## nlp.sentiment against a Hugging Face Trainer + PEFT script", "",
             f"The embedded data (VADER movie snippets, MiniLM-L6): {size['train']} training, {n} validation and "
             f"{n} test texts written to CSV files that every row reads, max_length {size['max_length']}, {size['epochs']} epoch(s), "
             f"LoRA r={SHARED['r']} alpha={SHARED['alpha']} dropout 0 on query/value, [CLS] classifier trained in full, batch "
             f"{SHARED['batch_size']}, lr {SHARED['lr']}, linear decay after warm-up {SHARED['warmup_ratio']}, seed 0. "
             "Both evaluate the validation split after each epoch and the test split at the end, in batches of 64; "
             "Scalpel also scores the test split before training (the report's before/after). The Trainer pads each "
             "batch to its longest text (`DataCollatorWithPadding`), in shuffled order.", "",
             "| run | wall time | time / fp32 | time / Trainer | training time | test accuracy | padding share of training tokens |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        pad = "-" if math.isnan(r["padding"]) else f"{r['padding']:.1%}"
        train = "-" if math.isnan(r["train_s"]) else f"{r['train_s']:.0f} s"
        lines.append(f"| {r['name']} | {r['wall_s']:.0f} s | {r['wall_s'] / base['wall_s']:.2f} | "
                     f"{r['wall_s'] / trainer['wall_s']:.2f} | {train} | {r['accuracy']:.4f} | {pad} |")
    new = rows[1]
    met = new["wall_s"] <= 0.65 * trainer["wall_s"] and new["accuracy"] >= trainer["accuracy"] - noise / 100
    lines += ["", f"Noise: the standard error of a difference of two accuracies on {n} test texts is about {noise:.1f} points "
              "(binomial, unpaired). Wall time includes loading the model and the data, every evaluation and the "
              "run's files, for every row; imports are done once before the first row. The Trainer's training time "
              "(its `train_runtime`) includes its validation pass.",
              f"Goal of issue 22 (sentiment <= 0.65x the Trainer's wall time at >= its accuracy, within noise): "
              f"{new['wall_s'] / trainer['wall_s']:.2f}x at {new['accuracy'] - trainer['accuracy']:+.4f} accuracy: "
              f"{'met' if met else 'NOT met'} on this machine.", ""]
    return "\n".join(lines) + "\n"


def pair_table(pairs: list[dict], quick: bool) -> str:
    if not pairs:
        return ""
    lines = ["## Every pipeline's embedded default: old defaults (fp32) against the new defaults", "",
             "Each pipeline's `--quick` run (its own small data and base, seed 0"
             + ("; smaller still: " + "; ".join(f"{k} {v}" for k, (_, v) in PAIRS.items()) if quick else "") + "), once with "
             "`mixed_precision=no channels_last=off group_by_length=false` and once with the defaults. "
             "Times are fit's training time (the first run of a pair also pre-trains the base the second reuses). "
             "Where the new defaults resolve to the old settings on this machine, the pair measures the noise "
             "of the time and the metric differs only by float rounding.", "",
             "| pipeline | run | trained with | training time | time / old | metric | value |", "|---|---|---|---:|---:|---|---:|"]
    for old, new in zip(pairs[::2], pairs[1::2]):
        for r in (old, new):
            lines.append(f"| {r['pipeline']} | {r['name']} | {r['resolved']} | {r['train_s']:.1f} s | "
                         f"{r['train_s'] / old['train_s']:.2f} | {r['metric']} | {r['score']:.4f} |")
    lines.append("")
    lines.append("Times are wall-clock on the machine that ran it, side by side in one process, and only comparable within a table.")
    if os.cpu_count() and os.cpu_count() <= 4:
        lines.append(f"This machine has {os.cpu_count()} cores shared with other work: the ratios are rough.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
