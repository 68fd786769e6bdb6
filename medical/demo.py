"""The embedded medical demo (no network): a segmentation base trained on synthetic scanner A,
adapted to scanner B with LoRA, sparse, layer-wise and full fine-tuning, side by side.

    python -m scalpel.medical.demo [--quick] [--output-dir runs/demo/medical]

Layout of ``output_dir``::

    data/A, data/B      the two synthetic scanners (real DICOM CT series + NIfTI labels)
    base/               the base checkpoint trained on A (reused by every method; its training run in base/fit)
    adabn/              the AdaBN baseline's metrics.json
    <method>/           one site-adaptation run per method (adapter/, report.md, metrics.jsonl, result.json),
                        replaced by a rerun
    examples/           a held-out B slice: image, truth, base and adapted predictions (PNG)

The rows follow the demo contract of :mod:`scalpel.apps.demo`: mean Dice on B's held-out
cases before (the base) and after adaptation, trainable parameters, training time and the
adapter's size on disk. The first row is the zero-parameter baseline every method on a
BatchNorm network should beat: the base with its normalisation statistics re-estimated on
B (AdaBN); the synthetic scanners differ mostly in intensity calibration, which that undoes
to a large degree.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalpel.core.compare import comparison_table
from scalpel.core.delta import norm_statistics
from scalpel.core.files import atomic_write, read_json, write_json
from scalpel.medical.adapt import adapt_site, recalibrate_site
from scalpel.medical.base import BaseSpec, load_base, load_site_adapter
from scalpel.medical.pipelines import train_base
from scalpel.medical.segmentation import SegmentationTask, UNetSpec
from scalpel.medical.site import label_file
from scalpel.medical.synthetic import STRUCTURES, write_site
from scalpel.medical.transforms import cached_dataset, segmentation_transforms

METHODS = ("lora", "sparse", "layerwise", "full")
TASK = "segmentation (scanner A -> B)"


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: volume edge, cases per scanner, optimizer steps, network width, patch."""

    size: int
    cases: int
    base_steps: int
    steps: int
    channels: tuple[int, ...]
    patch: int


FULL = DemoSize(size=48, cases=8, base_steps=200, steps=80, channels=(16, 32, 64), patch=32)
QUICK = DemoSize(size=16, cases=3, base_steps=30, steps=12, channels=(4, 8), patch=16)


def run_demo(output_dir: str | Path = "runs/demo/medical", quick: bool = False,
             methods: Sequence[str] = METHODS) -> list[dict[str, Any]]:
    """Write the scanners, train (or reuse) the base, adapt it once per method; return the rows."""
    output_dir = Path(output_dir)
    size = QUICK if quick else FULL
    data = output_dir / "data"
    if not (data / "B" / "labels").is_dir():
        write_site(data / "A", "A", cases=size.cases, shape=(size.size,) * 3, seed=0)
        write_site(data / "B", "B", cases=size.cases, shape=(size.size,) * 3, seed=1)
    base_dir = output_dir / "base"
    if not (base_dir / "model.json").is_file():
        spec = BaseSpec(UNetSpec(out_channels=len(STRUCTURES) + 1, channels=size.channels, strides=(2,) * (len(size.channels) - 1)),
                        STRUCTURES, patch=(size.patch,) * 3)
        train_base(data / "A", base_dir, spec, steps=size.base_steps)
    # the demo owns its folder: a rerun replaces its runs (the synthetic data needs no de-identification)
    site = {"site": "B", "deidentify": False, "val_fraction": 0.34}
    rows = [adabn_baseline(base_dir, data / "B", output_dir / "adabn", site)]
    for method in methods:
        started = time.perf_counter()
        result = adapt_site(base_dir, data / "B", output_dir / method, method=method, max_steps=size.steps, overwrite=True, **site)
        rows.append({"domain": "medical", **result.row(), "task": TASK, "model": f"MONAI UNet {size.channels}",
                     "wall_seconds": time.perf_counter() - started, "curve": str(Path(result.run_dir) / "metrics.jsonl"),
                     "examples": []})
    best = max((r for r in rows if r["method"] in methods and r["method"] != "full"), key=lambda r: r["after"], default=None)
    if best is not None:
        best["examples"] = [write_example(base_dir, Path(best["run_dir"]) / "adapter", data / "B", output_dir / "examples", best["method"])]
    write_json(output_dir / "results.json", rows)
    with atomic_write(output_dir / "report.md", "w") as handle:
        handle.write("# Medical demo: synthetic scanner A -> B\n\n" + "\n".join(table(rows)) + "\n")
    return rows


def adabn_baseline(base_dir: Path, site: Path, run_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The zero-parameter baseline (:func:`~scalpel.medical.adapt.recalibrate_site`), as a demo row."""
    result = recalibrate_site(base_dir, site, run_dir, **settings)
    base, spec = result["model"], load_base(base_dir)[1]
    before, after = result["before"]["dice"], result["after"]["dice"]
    statistics = norm_statistics(base, "")
    write_json(run_dir / "metrics.json", {"dice_before": before, "dice": after, "eval_cases": result["eval_cases"]})
    return {"domain": "medical", "task": TASK, "model": f"MONAI UNet {spec.unet.channels}",
            "method": "adabn (statistics only)", "metric": "dice", "before": before, "after": after, "trainable": 0,
            "total": sum(p.numel() for p in base.parameters()), "train_seconds": result["seconds"], "wall_seconds": result["seconds"],
            "adapter_bytes": sum(t.numel() * t.element_size() for t in statistics.values()), "run_dir": str(run_dir),
            "curve": None, "examples": []}


def write_example(base_dir: Path, adapter_dir: Path, site: Path, folder: Path, method: str) -> dict[str, str]:
    """A PNG of the middle slice of the first held-out case: image, truth, base and adapted labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, spec, _ = load_base(base_dir)
    adapted = load_site_adapter(base_dir, adapter_dir).eval()
    held_out = read_json(adapter_dir / "scalpel.json").get("extra", {}).get("eval_cases", [])
    name = held_out[0] if held_out else sorted(p.name for p in (site / "dicom").iterdir())[0]
    record = {"image": str(site / "dicom" / name), "label": str(label_file(site / "labels", name)), "case": name}
    case = cached_dataset([record], segmentation_transforms(spec.preprocess(), train=False), cache=False)[0]  # as scored
    image, truth = case["image"], case["label"]
    task = SegmentationTask(spec.structures, spec.patch, hd95=False)
    with torch.no_grad():
        before = task.predict(base, image[None])[0, 0]
        after = task.predict(adapted, image[None])[0, 0]
    z = image.shape[-1] // 2
    panels = [("scanner B image", image[0]), ("truth", truth[0]), ("base (trained on A)", before), (f"adapted ({method})", after)]
    figure, axes = plt.subplots(1, 4, figsize=(12, 3.2))
    for axis, (title, volume) in zip(axes, panels, strict=True):
        axis.imshow(image[0, ..., z].T, cmap="gray", origin="lower")
        if title != "scanner B image":  # labels over the image; background (0) left transparent
            labels = volume[..., z].T.numpy()
            axis.imshow(np.ma.masked_equal(labels, 0), cmap="autumn", alpha=0.6, vmin=1, vmax=len(spec.structures),
                        origin="lower", interpolation="nearest")
        axis.set_title(title, fontsize=9)
        axis.axis("off")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"scanner_b_{name}.png"
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=90, bbox_inches="tight")
    plt.close(figure)
    return {"caption": f"held-out scanner-B case {name}, middle slice: base vs {method}", "image": str(path)}


def table(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table; time relative to full fine-tuning (a ratio, not seconds)."""
    return comparison_table(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="16^3 volumes and a few steps (< 1 min on CPU)")
    parser.add_argument("--output-dir", default="runs/demo/medical")
    args = parser.parse_args(argv)
    print("\n".join(table(run_demo(args.output_dir, args.quick))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
