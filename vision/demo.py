"""The embedded vision demo (no network): adapt a source-trained detector and segmenter
to a shifted target domain with LoRA, layer-wise, sparse and full fine-tuning, side by side.

    python -m scalpel.vision.demo [--quick] [--output-dir runs/vision-demo]

Each task trains one small base on the synthetic source domain (cached in
``<output-dir>/<task>/base`` and shared by every method), then runs the pipeline once per
method on the target domain. The table reports the headline metric of the base
("before") and of each adapted model ("after"), trainable parameters and training time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scalpel.core.files import atomic_write, write_json
from scalpel.vision.config import DetectionConfig, SegmentationConfig
from scalpel.vision.metrics import headline
from scalpel.vision.run import run_pipeline

METHODS = ("lora", "layerwise", "sparse", "full")
#: Per-method learning rates: full fine-tuning moves every weight, so it gets a smaller step.
LEARNING_RATES = {"lora": 3e-3, "layerwise": 1e-3, "sparse": 3e-3, "full": 5e-4}


def demo_configs(output_dir: Path, quick: bool) -> list[Any]:
    configs = []
    for cls in (DetectionConfig, SegmentationConfig):
        root = output_dir / cls.task
        for method in METHODS:
            configs.append(cls(output_dir=str(root / method), base_dir=str(root), method=method, quick=quick,
                               lr=LEARNING_RATES[method], epochs=3))
    return configs


def run_demo(output_dir: str | Path = "runs/vision-demo", quick: bool = False, methods: Sequence[str] = METHODS) -> list[dict[str, Any]]:
    """Run every task x method; write ``<output_dir>/report.md`` and ``results.json``; return the rows."""
    output_dir = Path(output_dir)
    rows = []
    for config in demo_configs(output_dir, quick):
        if config.method not in methods:
            continue
        started = time.perf_counter()
        result = run_pipeline(config)
        summary = result["summary"]
        key, after = headline(result["metrics"], config.task)
        rows.append({
            "task": config.task, "model": config.model, "method": config.method, "metric": key,
            "before": headline(result["before"], config.task)[1], "after": after,
            "trainable": summary["trainable_parameters"], "total": summary["total_parameters"],
            "train_seconds": summary["train_seconds"], "wall_seconds": time.perf_counter() - started,
            "run_dir": result["run_dir"],
        })
    write_json(output_dir / "results.json", rows)
    with atomic_write(output_dir / "report.md", "w") as f:
        f.write("# Vision demo: source-trained base adapted to the shifted target domain\n\n" + "\n".join(table(rows)) + "\n")
    return rows


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table; time is given relative to full fine-tuning of the same task (a ratio, not seconds)."""
    full = {r["task"]: r["train_seconds"] for r in rows if r["method"] == "full"}
    lines = ["| task | model | method | metric | before | after | trainable | share | time vs full |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r['train_seconds'] / full[r['task']]:.2f}x" if full.get(r["task"]) else "-"
        lines.append(f"| {r['task']} | {r['model']} | {r['method']} | {r['metric']} | {r['before']:.3f} | {r['after']:.3f} | "
                     f"{r['trainable']:,} | {100 * r['trainable'] / max(r['total'], 1):.1f}% | {ratio} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and a few steps (< 1 min on CPU)")
    parser.add_argument("--output-dir", default="runs/vision-demo")
    args = parser.parse_args(argv)
    rows = run_demo(args.output_dir, args.quick)
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
