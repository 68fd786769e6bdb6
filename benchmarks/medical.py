"""Site adaptation on the synthetic scanners: base trained on scanner A, adapted to scanner B
with LoRA, sparse, layer-wise and full fine-tuning; Dice/HD95 on B's held-out cases side by side.

    python benchmarks/medical.py            # 32^3 volumes, 6 cases per site
    python benchmarks/medical.py --quick    # 16^3 volumes, < 1 min on CPU

Writes docs/benchmarks/medical.md. Every method starts from the same base and the same
split. Each method runs in its own child process, so its peak memory can be measured alone:
on CPU, the peak resident set size (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) of that
process, and the same for a reference child that loads the base and the cases and scores the
base without training; on GPU also ``torch.cuda.max_memory_allocated`` (tensors only).
Python's tracemalloc would not see torch's allocations, so it is not used.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch

from scalpel.core.files import atomic_write
from scalpel.medical.adapt import AdaptOptions, BaseSpec, adapt_site, load_base, train_base
from scalpel.medical.segmentation import UNetSpec
from scalpel.medical.synthetic import STRUCTURES, write_site

METHODS = ("lora", "sparse", "layerwise", "full")


def _status_mib(name: str) -> float | None:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status in MiB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def start_measuring() -> float | None:
    """Reset the kernel's peak-RSS mark to the current RSS (``echo 5 > /proc/self/clear_refs``,
    Linux >= 4.0) and return the current RSS in MiB; None where that is not possible."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_mib("VmRSS")


def peak_memory(start_rss: float | None) -> dict[str, float | None]:
    """Peak RSS of the process (MiB), the rise of RSS over ``start_rss`` during the measured
    work (peak since the reset minus RSS at the reset), and the CUDA tensor peak."""
    cuda = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    peak_since_reset = _status_mib("VmHWM")
    rise = peak_since_reset - start_rss if start_rss is not None and peak_since_reset is not None else None
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_rise_mib": rise, "cuda_peak_mib": cuda}


def child(method: str, root: Path, options: dict) -> None:
    """One measurement in a fresh process: ``method`` adapted (or, for ``reference``, the base only
    scored on the held-out cases); writes ``root/<method>.json``."""
    from scalpel.medical.segmentation import SegmentationTask
    from scalpel.medical.site import eval_batches, load_cases, split_cases

    start = start_measuring()
    if method == "reference":
        model, spec, _ = load_base(root / "base")
        cases, _ = load_cases(root / "B" / "dicom", root / "B" / "labels", window=spec.window, min_size=spec.patch, **spec.grid)
        _, held_out = split_cases(cases, options["holdout"], options["seed"])
        result = {"dice": SegmentationTask(spec.structures, spec.patch).evaluate(model, eval_batches(held_out))["dice"]}
    else:
        result = adapt_site(root / "base", root / "B", root / method, AdaptOptions(**{**options, "method": method}))
    result.update(peak_memory(start))
    (root / f"{method}.json").write_text(json.dumps(result))


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def run_child(method: str, root: Path, options: AdaptOptions) -> dict:
    options_json = json.dumps({k: v for k, v in asdict(options).items() if k != "method"})
    subprocess.run([sys.executable, __file__, "--child", method, "--root", str(root), "--options", options_json], check=True)
    return json.loads((root / f"{method}.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs/benchmarks/medical.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--options", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.root, json.loads(args.options))
        return
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
        options = AdaptOptions(site="B", steps=steps, deidentify=False, holdout=0.34)
        reference = run_child("reference", root, options)
        rows = [run_child(method, root, options) for method in METHODS]
    full = next(r for r in rows if r["method"] == "full")["adapted"]["dice"]
    lines = [
        f"# Medical site adaptation (synthetic scanner A -> B{', quick' if args.quick else ''})", "",
        f"Base: MONAI UNet channels {channels}, trained {base['steps']} steps on scanner A ({cases} cases of {size}^3). "
        f"Adaptation: {steps} steps on scanner B, {rows[0]['train_cases']} training / {rows[0]['eval_cases']} held-out case(s). "
        f"Command: `python benchmarks/medical.py{' --quick' if args.quick else ''}`.", "",
        "| method | trainable % | Dice base | Dice adapted | % of full FT Dice | HD95 adapted (mm) | train time / full "
        "| peak RSS (MiB) | RSS rise during the run (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    full_time = next(r for r in rows if r["method"] == "full")["train_seconds"]
    for r in rows:
        lines.append(f"| {r['method']} | {100 * r['trainable'] / r['total']:.2f} | {r['base']['dice']:.3f} | {r['adapted']['dice']:.3f} | "
                     f"{100 * r['adapted']['dice'] / max(full, 1e-9):.0f}% | {r['adapted']['hd95']:.2f} | {r['train_seconds'] / full_time:.2f} "
                     f"| {r['peak_rss_mib']:.0f} | {_mib(r['rss_rise_mib'])} |")
    lines += ["", "Trainable % = trainable parameters after the method is applied (scalpel.core.count_parameters) / all. "
              "Train time / full: wall-clock training time over full fine-tuning's, each method in its own process one after "
              "another on a machine shared with other jobs, so these ratios are noisy.",
              "",
              "Peak memory (CPU): each method runs in its own process. *Peak RSS* is that process's high-water mark of resident "
              "memory (`getrusage(RUSAGE_SELF).ru_maxrss`); it includes the Python interpreter, torch and MONAI, which dominate "
              "at this network size. *RSS rise* is measured around the work alone: the kernel's peak-RSS mark is reset "
              "(`/proc/self/clear_refs`) just before `adapt_site` (load base, read cases, apply the method, train, evaluate, "
              "save) and the rise is the new peak (`VmHWM`) minus the RSS at the reset; it counts weights, gradients, optimizer "
              "state, activations and the sparse Fisher scoring, plus whatever the allocator keeps. Reference: a process that "
              f"loads the same base and cases and scores the base without training: peak RSS {reference['peak_rss_mib']:.0f} MiB, "
              f"rise {_mib(reference['rss_rise_mib'])} MiB."]
    if reference.get("cuda_peak_mib") is not None:
        lines += ["", "CUDA tensor peak (torch.cuda.max_memory_allocated, MiB): "
                  + ", ".join(f"{r['method']} {r['cuda_peak_mib']:.0f}" for r in rows) + "."]
    goal = [r for r in rows if r["method"] in ("lora", "sparse") and 100 * r["trainable"] / r["total"] <= 5
            and r["adapted"]["dice"] >= 0.95 * full]
    lines += ["", "Goal (issue 10): LoRA or sparse reaches >= 95% of full fine-tuning's Dice on scanner B with <= 5% trainable "
              "parameters: " + (f"**met** by {', '.join(r['method'] for r in goal)}." if goal else "**not met** in this run.")]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out, "w") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
