"""Site adaptation on the synthetic scanners: base trained on scanner A, adapted to scanner B
with LoRA, sparse, layer-wise and full fine-tuning; Dice/HD95 on B's held-out cases side by side.

    python benchmarks/medical.py            # 32^3 volumes, 6 cases per site
    python benchmarks/medical.py --quick    # 16^3 volumes, < 1 min on CPU

Writes docs/benchmarks/medical.md. Every method starts from the same base and the same
split; the methods run one after another in one process (same machine state).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from scalpel.core.files import atomic_write
from scalpel.medical.adapt import AdaptOptions, BaseSpec, adapt_site, train_base
from scalpel.medical.segmentation import UNetSpec
from scalpel.medical.synthetic import STRUCTURES, write_site

METHODS = ("lora", "sparse", "layerwise", "full")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/benchmarks/medical.md")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    size, cases, base_steps, steps, channels, patch = (
        (16, 3, 30, 15, (4, 8), (16, 16, 16)) if args.quick else (32, 6, 150, 60, (8, 16, 32), (24, 24, 24)))
    strides = (2,) * (len(channels) - 1)
    spec = BaseSpec(UNetSpec(out_channels=3, channels=channels, strides=strides), STRUCTURES, patch=patch)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_site(root / "A", "A", cases=cases, shape=(size,) * 3, seed=0)
        write_site(root / "B", "B", cases=cases, shape=(size,) * 3, seed=1)
        base = train_base(root / "A", root / "base", spec, steps=base_steps)
        rows = []
        for method in METHODS:
            s = adapt_site(root / "base", root / "B", root / method,
                           AdaptOptions(method=method, site="B", steps=steps, deidentify=False, holdout=0.34))
            rows.append(s)
    full = next(r for r in rows if r["method"] == "full")["adapted"]["dice"]
    lines = [
        f"# Medical site adaptation (synthetic scanner A -> B{', quick' if args.quick else ''})", "",
        f"Base: MONAI UNet channels {channels}, trained {base['steps']} steps on scanner A ({cases} cases of {size}^3). "
        f"Adaptation: {steps} steps on scanner B, {rows[0]['train_cases']} training / {rows[0]['eval_cases']} held-out case(s). "
        f"Command: `python benchmarks/medical.py{' --quick' if args.quick else ''}`.", "",
        "| method | trainable % | Dice base | Dice adapted | % of full FT Dice | HD95 adapted (mm) | train time / full |",
        "|---|---|---|---|---|---|---|",
    ]
    full_time = next(r for r in rows if r["method"] == "full")["train_seconds"]
    for r in rows:
        lines.append(f"| {r['method']} | {100 * r['trainable'] / r['total']:.2f} | {r['base']['dice']:.3f} | {r['adapted']['dice']:.3f} | "
                     f"{100 * r['adapted']['dice'] / max(full, 1e-9):.0f}% | {r['adapted']['hd95']:.2f} | {r['train_seconds'] / full_time:.2f} |")
    lines += ["", "Trainable % = trainable parameters after the method is applied (scalpel.core.count_parameters) / all. "
              "Peak memory is not measured yet."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out, "w") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
