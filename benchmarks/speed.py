"""Speed of the training defaults: fp32 with plain shuffling against the new defaults
(``mixed_precision=auto``, length-grouped text batches), and ``scalpel run nlp.sentiment``
against a Hugging Face Trainer + PEFT script on the same files and settings.

    python benchmarks/speed.py            # 4,000 / 1,000 / 1,000 texts, max_length 64, 1 epoch
    python benchmarks/speed.py --quick    # 1,000 / 300 / 300 texts (what a 2-core machine under load allows)
    python benchmarks/speed.py --compile  # also a row with --compile

What ``auto`` picks depends on the CPU (bf16 only with AMX-BF16 or AVX512-BF16; see
core/fit/precision.py), so the table names the CPU's features: on a CPU without them the
"new defaults" row differs from fp32 only by its batching. The pipelines without text
(vision, medical) change only by precision, so on such a CPU their rows would be the fp32
rows again and are not run. Writes docs/benchmarks/speed.md.
"""

from __future__ import annotations

import argparse
import csv
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
    trainer.train()
    test = trainer.evaluate(encode(read("test")[0]), metric_key_prefix="test")
    return {"wall_s": time.perf_counter() - started, "train_s": math.nan, "accuracy": test["test_accuracy"], "padding": math.nan}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compile", action="store_true", help="add a row with --compile")
    parser.add_argument("--train", type=int, help="training texts (default: 4,000; 1,000 with --quick)")
    parser.add_argument("--eval", type=int, help="validation and test texts each (default: 1,000; 300 with --quick)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "speed.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    size = dict(train=1000, eval=300, max_length=64, epochs=1) if args.quick else dict(train=4000, eval=1000, max_length=64, epochs=1)
    size.update({k: v for k, v in (("train", args.train), ("eval", args.eval)) if v})
    auto = choose_precision("auto", this_hardware(cpu=True))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = write_splits(Path(tmp), size)
        runs = [
            ("scalpel, fp32, shuffled batches (old defaults)", lambda o: scalpel_run(o, files, size, targets="query|value",
                                                                                     pooling="cls", mixed_precision="no", group_by_length=False)),
            (f"scalpel, new defaults ({auto.label}, length-grouped)", lambda o: scalpel_run(o, files, size, targets="query|value", pooling="cls")),
            ("HF Trainer + PEFT (fp32, shuffled)", lambda o: trainer_run(o, files, size)),
        ]
        if args.compile:
            runs.append(("scalpel, new defaults + --compile", lambda o: scalpel_run(o, files, size, targets="query|value",
                                                                                      pooling="cls", compile=True)))
        for i, (name, run) in enumerate(runs):
            row = {"name": name, **run(f"{tmp}/run{i}")}
            rows.append(row)
            print(f"{name}: {row['wall_s']:.0f} s, accuracy {row['accuracy']:.4f}", file=sys.stderr, flush=True)
    text = table(rows, size, auto, args)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


def table(rows: list[dict], size: dict, auto, args) -> str:
    base, trainer = rows[0], rows[2]
    n = size["eval"]
    acc = base["accuracy"]
    noise = 100 * math.sqrt(2 * acc * (1 - acc) / n)
    lines = [f"# Speed: old defaults, new defaults and a Hugging Face Trainer script ({'quick' if args.quick else 'standard'} mode)", "",
             f"CPU: {cpu_summary()}; {torch.get_num_threads()} torch threads, torch {torch.__version__}. "
             f"`mixed_precision=auto` here: **{auto.label}** ({auto.reason}).", "",
             f"nlp.sentiment on its embedded data (VADER movie snippets, MiniLM-L6): {size['train']} training, {n} validation and "
             f"{n} test texts written to CSV files that every row reads, max_length {size['max_length']}, {size['epochs']} epoch(s), "
             f"LoRA r={SHARED['r']} alpha={SHARED['alpha']} on query/value, [CLS] classifier trained in full, batch "
             f"{SHARED['batch_size']}, lr {SHARED['lr']}, warm-up {SHARED['warmup_ratio']}, seed 0. "
             f"Command: `python benchmarks/speed.py{' --quick' if args.quick else ''}{' --compile' if args.compile else ''}"
             f"{f' --train {args.train}' if args.train else ''}{f' --eval {args.eval}' if args.eval else ''}`.", "",
             "| run | wall time | time / fp32 | time / Trainer | test accuracy | padding share of training tokens |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        pad = "-" if math.isnan(r["padding"]) else f"{r['padding']:.1%}"
        lines.append(f"| {r['name']} | {r['wall_s']:.0f} s | {r['wall_s'] / base['wall_s']:.2f} | "
                     f"{r['wall_s'] / trainer['wall_s']:.2f} | {r['accuracy']:.4f} | {pad} |")
    new = rows[1]
    lines += ["", f"Noise: the standard error of a difference of two accuracies on {n} test texts is about {noise:.1f} points "
              "(binomial, unpaired). Wall time includes loading the model and the data and the evaluations, for every row.",
              f"Goal of issue 22 (sentiment <= 0.65x the Trainer's wall time at >= its accuracy): "
              f"{new['wall_s'] / trainer['wall_s']:.2f}x at {new['accuracy'] - trainer['accuracy']:+.4f} accuracy: "
              f"{'met' if new['wall_s'] <= 0.65 * trainer['wall_s'] and new['accuracy'] >= trainer['accuracy'] - noise / 100 else 'NOT met'}"
              " on this machine.",
              "", "Times are wall-clock on the machine that ran it, side by side in one process, and only comparable within this table."]
    if os.cpu_count() and os.cpu_count() <= 4:
        lines.append(f"This machine has {os.cpu_count()} cores shared with other work: the ratios are rough.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
