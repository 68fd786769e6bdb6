"""Many LoRA adapters in one batch (core/lora/mixed.py) against one pass per adapter.

N adapters are compared on the same M inputs: either one mixed pass over N x M samples
(``compare_adapters``: each sample names its adapter) or N passes of M samples with
``set_active_adapter`` between them, which is what comparing adapters costs without
mixed batches. Both run on the same model in the same process, interleaved round by
round; the table reports the throughput ratio (separate time / mixed time, the fastest
call of each over all rounds) and the largest difference between their outputs.

Models are BERT encoders built from a config (speed only; the weights do not matter):
a small one (2 layers, width 128) and one of MiniLM-L6 shape (6 layers, width 384), with
LoRA r=8 on query/value and a per-adapter classifier head, inputs of 32 tokens.

On CPU the timer is this thread's CPU time (``time.thread_time``) with one torch thread,
so other processes on a shared machine disturb the ratios far less than wall time would.
Goal (issue 21): >= 2x throughput at N = 4 on CPU.

    python benchmarks/multi_adapter.py            # full table -> docs/benchmarks/multi_adapter.md
    python benchmarks/multi_adapter.py --quick    # < 1 min on CPU
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

import scalpel.core as sc
from scalpel.core.lora import LoraConfig
from scalpel.core.lora.mixed import compare_adapters

warnings.filterwarnings("ignore")
SEQ = 32


def build(hidden: int, layers: int, adapters: int) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=hidden // 64,
                        intermediate_size=4 * hidden, max_position_embeddings=512, num_labels=2)
    model = BertForSequenceClassification(config)
    for i in range(adapters):
        sc.apply(model, LoraConfig(r=8, alpha=16, targets="query|value", modules_to_save=("classifier",)),
                 adapter_name=f"adapter{i}")
        with torch.no_grad():  # distinct, non-zero adapters
            for p in sc.trainable_parameters(model).values():
                p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def separate(model: torch.nn.Module, names: list[str], batch: dict) -> dict[str, torch.Tensor]:
    out = {}
    for name in names:
        sc.set_active_adapter(model, name)
        out[name] = model(**batch).logits
    return out


def mixed(model: torch.nn.Module, names: list[str], batch: dict) -> dict[str, torch.Tensor]:
    return {k: v["logits"] for k, v in compare_adapters(model, names, batch).items()}


def _timed(fn, *args) -> tuple[float, object]:
    start = time.thread_time()
    out = fn(*args)
    return time.thread_time() - start, out


def run_case(hidden: int, layers: int, adapters: int, samples: int, rounds: int) -> dict[str, float]:
    model = build(hidden, layers, adapters)
    names = [f"adapter{i}" for i in range(adapters)]
    torch.manual_seed(1)
    batch = {"input_ids": torch.randint(1000, 30000, (samples, SEQ)), "attention_mask": torch.ones(samples, SEQ, dtype=torch.long)}
    best = {"separate": float("inf"), "mixed": float("inf")}
    with torch.no_grad():
        separate(model, names, batch), mixed(model, names, batch)  # warm-up
        for _ in range(rounds):
            for label, fn in (("separate", separate), ("mixed", mixed)):
                seconds, out = _timed(fn, model, names, batch)
                best[label] = min(best[label], seconds)
                if label == "separate":
                    reference = out
                else:
                    diff = max(float((out[n] - reference[n]).abs().max()) for n in names)
    return {"ratio": best["separate"] / best["mixed"], "diff": diff,
            "mixed_per_s": adapters * samples / best["mixed"], "separate_per_s": adapters * samples / best["separate"]}


def table(rows: list[tuple[str, int, int, dict[str, float]]]) -> str:
    lines = ["| model | adapters N | samples M | separate (samples/s) | mixed (samples/s) | speed-up mixed/separate | max abs diff |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for model, n, m, r in rows:
        lines.append(f"| {model} | {n} | {m} | {r['separate_per_s']:.0f} | {r['mixed_per_s']:.0f} | "
                     f"{r['ratio']:.2f}x | {r['diff']:.1e} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases and rounds, < 1 min on CPU")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/benchmarks/multi_adapter.md")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads; 1 (default) so thread CPU time measures all the work")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = {"BERT 2x128": (128, 2), "BERT 6x384 (MiniLM-L6 shape)": (384, 6)}
    if args.quick:
        cases, rounds = [("BERT 2x128", 4, m) for m in (1, 4)], 3
    else:
        cases = [(model, n, m) for model in models for n in (2, 4, 8) for m in (1, 4, 16) if n == 4 or m == 1]
        rounds = 5
    rows = []
    for model, n, m in cases:
        start = time.perf_counter()
        rows.append((model, n, m, run_case(*models[model], n, m, rounds)))
        print(f"  {model} N={n} M={m}: {rows[-1][3]['ratio']:.2f}x ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    command = "python benchmarks/multi_adapter.py" + (" --quick" if args.quick else "")
    command += f" --threads {args.threads}" if args.threads != 1 else ""
    at4 = [r["ratio"] for _, n, _, r in rows if n == 4]
    text = (
        "# Many adapters in one batch\n\n"
        f"Command: `{command}` (torch {torch.__version__}, cpu, {torch.get_num_threads()} thread(s), CPU thread time). "
        f"LoRA r=8 on query/value plus a per-adapter classifier head; inputs of {SEQ} tokens. *Separate*: N passes "
        "of M samples, switching the active adapter; *mixed*: one pass of N x M samples, each naming its adapter "
        "(`scalpel.core.lora.mixed.compare_adapters`). Speed-up = separate time / mixed time (fastest of "
        f"{rounds} interleaved rounds); max abs diff compares their logits.\n\n"
        + table(rows)
        + f"\n\nAt N = 4 the speed-up ranges over {min(at4):.2f}x-{max(at4):.2f}x (goal: >= 2x). One mixed pass reads "
        "the base weights once and calls each module once for all adapters; the gain is largest where that "
        "overhead dominates (few, short inputs, small models) and tends to 1x once the arithmetic dominates, "
        "since the mixed pass does the same multiply-adds as the separate ones.\n"
    )
    print(text)
    from scalpel.core.files import atomic_write

    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
