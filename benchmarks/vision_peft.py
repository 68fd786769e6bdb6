"""Vision PEFT side by side: LoRA, layer-wise, sparse and full fine-tuning adapting a
source-trained SSDlite detector and LR-ASPP segmenter to a shifted target domain
(the embedded synthetic demo). Prints a markdown table and writes docs/benchmarks/vision.md.

    python benchmarks/vision_peft.py [--quick] [--output-dir runs/bench-vision]

Times are reported as ratios to full fine-tuning of the same task in the same run.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from scalpel.core.files import atomic_write
from scalpel.vision.demo import run_demo, table

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data, a few steps (< 1 min on CPU); figures are not meaningful")
    parser.add_argument("--output-dir", default="runs/bench-vision")
    parser.add_argument("--no-write", action="store_true", help="print only; do not write docs/benchmarks/vision.md")
    args = parser.parse_args()
    rows = run_demo(args.output_dir, quick=args.quick)
    lines = table(rows)
    print("\n".join(lines))
    if args.no_write:
        return
    text = [
        "# Vision: PEFT methods on a synthetic domain shift",
        "",
        f"`python benchmarks/vision_peft.py{' --quick' if args.quick else ''}` on {platform.machine()} CPU, "
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s).",
        "",
        "Base: trained from scratch on the source domain (plain shapes); target: other colours and sizes on",
        "real-photo textures. before = base on target validation images; after = adapted.",
        "",
        *lines,
        "",
    ]
    with atomic_write(ROOT / "docs" / "benchmarks" / "vision.md", "w") as f:
        f.write("\n".join(text))


if __name__ == "__main__":
    main()
