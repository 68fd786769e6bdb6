"""Site adaptation on the synthetic scanners: base trained on scanner A, adapted to scanner B
with LoRA, sparse, layer-wise and full fine-tuning, beside the zero-parameter AdaBN baseline;
Dice/HD95 on B's held-out cases side by side, over several seeds.

    python benchmarks/medical.py            # 32^3 volumes, 6 cases per site, 3 seeds (~4 min on 2 cores)
    python benchmarks/medical.py --quick    # 16^3 volumes, 1 seed, < 1 min on CPU

Writes docs/benchmarks/medical.md. Within a seed every method starts from the same base and
the same split; each seed draws new phantoms for both scanners, a new base and a new split. Each method runs in its own child process, so its peak memory can be measured alone:
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
from scalpel.medical.adapt import adapt_site, recalibrate_site
from scalpel.medical.base import BaseSpec
from scalpel.medical.pipelines import build_kit, segmentation, train_base
from scalpel.medical.segmentation import UNetSpec
from scalpel.medical.synthetic import STRUCTURES, write_site

METHODS = ("lora", "sparse", "layerwise", "full")
#: the zero-parameter baseline: BatchNorm statistics re-estimated on B (no training)
ADABN = "adabn"


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
    scored on the held-out cases, read as every run reads them); writes ``root/<method>.json``."""
    start = start_measuring()
    if method == "reference":
        values = segmentation.settings(options, base=str(root / "base"), data=str(root / "B"), output_dir=str(root / method))
        kit = build_kit(values.options, values.method, values.train, root / method)
        result = {"dice": kit.task.evaluate(kit.model, kit.eval_data)["dice"]}
    elif method == ADABN:
        adabn = recalibrate_site(root / "base", root / "B", root / method, **options)
        model = adabn.pop("model")
        result = {**adabn, "method": ADABN, "trainable": 0, "total": sum(p.numel() for p in model.parameters()),
                  "train_seconds": adabn["seconds"]}
    else:
        result = asdict(adapt_site(root / "base", root / "B", root / method, options, method=method))
    result.update(peak_memory(start))
    (root / f"{method}.json").write_text(json.dumps(result))


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def run_child(method: str, root: Path, options: dict) -> dict:
    options_json = json.dumps(options)
    subprocess.run([sys.executable, __file__, "--child", method, "--root", str(root), "--options", options_json], check=True)
    return json.loads((root / f"{method}.json").read_text())


def one_seed(seed: int, spec: BaseSpec, size: int, cases: int, base_steps: int, steps: int) -> tuple[dict, list[dict], dict]:
    """(reference, one row per method and AdaBN, the base's training) for one seed, in a fresh folder."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_site(root / "A", "A", cases=cases, shape=(size,) * 3, seed=2 * seed)
        write_site(root / "B", "B", cases=cases, shape=(size,) * 3, seed=2 * seed + 1)
        base = asdict(train_base(root / "A", root / "base", spec, steps=base_steps, seed=seed))
        options = {"site": "B", "max_steps": steps, "deidentify": False, "val_fraction": 0.34, "seed": seed}
        reference = run_child("reference", root, options)
        rows = [run_child(method, root, options) for method in (ADABN, *METHODS)]
    return reference, rows, base


def _mean_std(values: list[float], digits: int, scale: float = 1.0) -> str:
    t = torch.tensor(values, dtype=torch.float64) * scale
    return f"{float(t.mean()):.{digits}f}" + (f" ± {float(t.std(unbiased=False)):.{digits}f}" if len(values) > 1 else "")


def table(per_seed: list[list[dict]]) -> list[str]:
    """One row per method: means (± population std over seeds); ratios to full fine-tuning per seed first."""
    lines = ["| method | trainable % | Dice base | Dice adapted | % of full FT Dice | HD95 adapted (mm) | train time / full "
             "| peak RSS (MiB) | RSS rise during the run (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
    for method in (ADABN, *METHODS):
        runs = [next(r for r in rows if r["method"] == method) for rows in per_seed]
        fulls = [next(r for r in rows if r["method"] == "full") for rows in per_seed]
        share = [100 * r["trainable"] / r["total"] for r in runs]
        rise = [r["rss_rise_mib"] for r in runs if r["rss_rise_mib"] is not None]
        lines.append(" | ".join([
            f"| {'adabn (statistics only)' if method == ADABN else method}", f"{share[0]:.2f}",
            _mean_std([r["before"]["dice"] for r in runs], 3), _mean_std([r["after"]["dice"] for r in runs], 3),
            _mean_std([r["after"]["dice"] / max(f["after"]["dice"], 1e-9) for r, f in zip(runs, fulls)], 1, 100) + "%",
            _mean_std([r["after"]["hd95"] for r in runs], 2),
            "-" if method == ADABN else _mean_std([r["train_seconds"] / f["train_seconds"] for r, f in zip(runs, fulls)], 2),
            f"{max(r['peak_rss_mib'] for r in runs):.0f}", f"{max(rise):.0f}" if rise else "n/a"]) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 3, 1 with --quick)")
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
    seeds = args.seeds or (1 if args.quick else 3)
    strides = (2,) * (len(channels) - 1)
    spec = BaseSpec(UNetSpec(out_channels=3, channels=channels, strides=strides), STRUCTURES, patch=patch)
    results = [one_seed(seed, spec, size, cases, base_steps, steps) for seed in range(seeds)]
    references, per_seed, base = [r[0] for r in results], [r[1] for r in results], results[0][2]
    first = per_seed[0][1]
    command = f"python benchmarks/medical.py{' --quick' if args.quick else ''}{f' --seeds {args.seeds}' if args.seeds else ''}"
    lines = [
        f"# Medical site adaptation (synthetic scanner A -> B{', quick' if args.quick else ''})", "",
        f"Base: MONAI UNet channels {channels}, trained {base['steps']} steps on scanner A ({cases} cases of {size}^3). "
        f"Adaptation: {steps} steps on scanner B, {len(first['extras']['train_cases'])} training / {len(first['extras']['eval_cases'])} held-out case(s). "
        f"{seeds} seed(s) (new phantoms, base and split each); mean ± population std over seeds. Command: `{command}`.", "",
        *table(per_seed),
    ]
    lines += ["", "Trainable % = trainable parameters after the method is applied (scalpel.core.count_parameters) / all. "
              "*adabn*: the base with its BatchNorm running statistics re-estimated on B's training cases "
              "(`scalpel.medical.adapt.recalibrate_site`), nothing trained: what PEFT must beat on a BatchNorm network, since "
              "every adapter also carries those statistics. % of full FT Dice and train time / full are taken per seed, then "
              "averaged. Train time / full: wall-clock training time over full fine-tuning's, each method in its own process one "
              "after another on a machine shared with other jobs, so these ratios are noisy.",
              "",
              "Peak memory (CPU, the highest over seeds): each method runs in its own process. *Peak RSS* is that process's "
              "high-water mark of resident memory (`getrusage(RUSAGE_SELF).ru_maxrss`); it includes the Python interpreter, torch "
              "and MONAI, which dominate at this network size. *RSS rise* is measured around the work alone: the kernel's peak-RSS "
              "mark is reset (`/proc/self/clear_refs`) just before `adapt_site` (load base, read cases, apply the method, train, "
              "evaluate, save) and the rise is the new peak (`VmHWM`) minus the RSS at the reset; it counts weights, gradients, "
              "optimizer state, activations and the sparse Fisher scoring, plus whatever the allocator keeps. Reference: a process "
              "that loads the same base and cases and scores the base without training: peak RSS "
              f"{max(r['peak_rss_mib'] for r in references):.0f} MiB, rise {_mib(references[0]['rss_rise_mib'])} MiB."]
    if references[0].get("cuda_peak_mib") is not None:
        lines += ["", "CUDA tensor peak (torch.cuda.max_memory_allocated, MiB, seed 0): "
                  + ", ".join(f"{r['method']} {r['cuda_peak_mib']:.0f}" for r in per_seed[0]) + "."]
    goal = []
    for method in ("lora", "sparse"):
        runs = [(next(r for r in rows if r["method"] == method), next(r for r in rows if r["method"] == "full")) for rows in per_seed]
        ratio = sum(r["after"]["dice"] / f["after"]["dice"] for r, f in runs) / len(runs)
        if ratio >= 0.95 and all(100 * r["trainable"] / r["total"] <= 5 for r, _ in runs):
            met = sum(r["after"]["dice"] >= 0.95 * f["after"]["dice"] for r, f in runs)
            goal.append(f"{method} ({100 * ratio:.1f}% on average, {met} of {len(runs)} seeds)")
    lines += ["", "Goal (issue 10): LoRA or sparse reaches >= 95% of full fine-tuning's Dice on scanner B with <= 5% trainable "
              "parameters: " + (f"**met** by {', '.join(goal)}." if goal else "**not met** in this run.")]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(args.out, "w") as handle:
        handle.write(text)


if __name__ == "__main__":
    main()
