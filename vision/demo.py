"""The embedded vision demo (no network): adapt a source-trained detector and segmenter
to a shifted target domain with LoRA, layer-wise, sparse and full fine-tuning, side by side.

    python -m scalpel.vision.demo [--quick] [--output-dir runs/demo/vision]

No pre-trained detector can be had offline, so each task first trains a small base on the
synthetic *source* domain (plain shapes on plain backgrounds), cached in
``<output-dir>/<task>/base`` and shared by every method, then runs the pipeline once per
method on the *target* domain (other colours and sizes, real-photo textures). Layout::

    <task>/data/          source and target scenes (COCO JSON, image + mask folders)
    <task>/base/          the source-trained base (safetensors), its target metrics, base_examples.png
    <task>/<method>/      one pipeline run: adapter/, merged/, metrics.jsonl, report.md, examples.png
    report.md, results.json

The rows follow the demo contract of :mod:`scalpel.apps.demo`: the headline metric on the
target validation images before (the base) and after adaptation, trainable parameters,
training time, adapter size, the run's ``metrics.jsonl`` and its prediction PNGs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scalpel.core.artifacts import adapter_bytes
from scalpel.core.compare import comparison_table
from scalpel.core.files import atomic_write, write_json
from scalpel.vision.config import DetectionConfig, SegmentationConfig, VisionConfig
from scalpel.vision.run import run_pipeline

METHODS = ("lora", "layerwise", "sparse", "full")
#: Per-method peak learning rates: full fine-tuning moves every weight, so it gets a smaller step.
LEARNING_RATES = {"lora": 3e-3, "layerwise": 2e-3, "sparse": 3e-3, "full": 2e-3}
#: The number each task is judged by in the table: (key in the pipeline's metrics, label).
HEADLINE = {"detection": ("map_50", "mAP50"), "segmentation": ("miou", "mIoU")}


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: images per domain, input sizes, optimizer steps, batch size."""

    images: int
    detection_size: int
    segmentation_size: int
    base_steps: int
    steps: int
    batch_size: int


FULL = DemoSize(images=160, detection_size=128, segmentation_size=64, base_steps=120, steps=48, batch_size=8)
QUICK = DemoSize(images=24, detection_size=64, segmentation_size=64, base_steps=20, steps=8, batch_size=4)

#: Layer-wise blocks of the demo: the stem and the first 8 blocks. The synthetic shift is at
#: the input (colours, textures, backgrounds), and for input-level shifts tuning the first
#: layers adapts best (Lee et al., "Surgical Fine-Tuning Improves Adaptation to
#: Distribution Shifts", ICLR 2023). SSDlite's old default "last 2" (its two smallest extra
#: layers) moved target mAP from 0.003 to 0.004 where LoRA reached 0.10.
DEMO_BLOCKS = ("stem", "first 8")
#: Segmentation loss weights (background, circle, square, triangle): objects cover ~10% of
#: the pixels, and with equal weights a short run from scratch learns "all background".
SEGMENTATION_WEIGHTS = (0.3, 1.0, 1.0, 1.0)


def demo_configs(output_dir: Path, quick: bool, methods: Sequence[str] = METHODS) -> list[VisionConfig]:
    """One pipeline config per task x method; all runs of a task share one base and one data set."""
    size = QUICK if quick else FULL
    configs: list[VisionConfig] = []
    for cls, image_size, extra in ((DetectionConfig, size.detection_size, {}),
                                   (SegmentationConfig, size.segmentation_size, {"class_weights": SEGMENTATION_WEIGHTS})):
        root = output_dir / cls.task
        for method in methods:
            configs.append(cls(
                output_dir=str(root / method), base_dir=str(root), method=method, quick=quick, lr=LEARNING_RATES[method],
                image_size=image_size, train_images=size.images, base_steps=size.base_steps, max_steps=size.steps,
                batch_size=size.batch_size, blocks=DEMO_BLOCKS, **extra,
            ))
    return configs


@contextmanager
def torch_threads() -> Iterator[int]:
    """Intra-op threads for the demo: ``OMP_NUM_THREADS`` when set, else at most 2.

    The demo's networks and batches are small: more threads than cores (or several
    processes each using every core) make a step slower, not faster.
    """
    previous = torch.get_num_threads()
    wanted = int(os.environ.get("OMP_NUM_THREADS") or 0) or min(2, os.cpu_count() or 1)
    torch.set_num_threads(wanted)
    try:
        yield wanted
    finally:
        torch.set_num_threads(previous)


def run_demo(output_dir: str | Path = "runs/demo/vision", quick: bool = False, methods: Sequence[str] = METHODS) -> list[dict[str, Any]]:
    """Run every task x method; write ``<output_dir>/report.md`` and ``results.json``; return the rows."""
    output_dir = Path(output_dir)
    rows = []
    with torch_threads():
        for config in demo_configs(output_dir, quick, methods):
            result = run_pipeline(config)
            rows.append(row_of(config, result, first=not any(r["task"] == config.task for r in rows)))
    write_json(output_dir / "results.json", rows)
    with atomic_write(output_dir / "report.md", "w") as f:
        f.write("# Vision demo: source-trained base adapted to the shifted target domain\n\n" + "\n".join(table(rows)) + "\n")
    return rows


def row_of(config: VisionConfig, result: dict[str, Any], *, first: bool) -> dict[str, Any]:
    """The demo-contract row of one pipeline run (``first``: also show the base's predictions)."""
    summary, run_dir = result["summary"], Path(result["run_dir"])
    key, label = HEADLINE[config.task]
    examples = []
    if first and result.get("base_examples"):
        examples.append({"caption": f"{config.task}: the source-trained base on target validation images (before adaptation)",
                         "image": result["base_examples"]})
    what = "predicted boxes (score >= 0.3)" if config.task == "detection" else "ground truth | prediction overlays"
    examples.append({"caption": f"{config.task}, {config.method}: {what} on target validation images", "image": str(run_dir / "examples.png")})
    curve = run_dir / "metrics.jsonl"
    return {
        "domain": "vision", "task": config.task, "model": config.model, "method": config.method, "metric": label,
        "before": float(result["before"][key]), "after": float(result["metrics"][key]),
        "trainable": summary["trainable_parameters"], "total": summary["total_parameters"],
        "train_seconds": summary["train_seconds"], "adapter_bytes": adapter_bytes(result["adapter_dir"]),
        "run_dir": str(run_dir), "curve": str(curve) if curve.is_file() else None, "examples": examples,
        "steps": summary["steps"], "base_on_source": (summary.get("base_on_source") or {}).get(key),
    }


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table; time is given relative to full fine-tuning of the same task (a ratio, not seconds)."""
    return comparison_table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data and a few steps (< 1 min on CPU)")
    parser.add_argument("--output-dir", default="runs/demo/vision")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    args = parser.parse_args(argv)
    rows = run_demo(args.output_dir, args.quick, args.methods)
    print("\n".join(table(rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
