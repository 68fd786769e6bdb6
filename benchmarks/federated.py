"""Federated site adaptation on heterogeneous synthetic scanners: a base trained on scanner A is
adapted with LoRA to three other scanners (different calibration, noise and voxel spacing) that
never pool their data. Per-site Dice on each site's held-out cases, side by side in one run:

* base: no adaptation;
* local only: each site trains alone for the same rounds x local steps;
* naive FedAvg: A and B averaged separately;
* exact: stacked factors, SVD back to rank r (the truncation error is reported);
* FedSA-LoRA: A shared, B kept per site (personalised);
* pooled central: one adapter trained on the three sites' training cases together (what
  federation approximates without moving data), with the federation's total steps.

Budgets: every arm runs ``rounds`` fits with a fresh optimizer each (the simulator's rounds); a
federated or local site takes ``local_steps`` steps per round, the pooled arm ``3 x local_steps``,
so pooled central takes as many optimizer steps and sees as many patches as the three sites
together (the table states both). Each site is scored on its own held-out cases, a separate
folder of the same scanner (``--val-data``), so the held-out cases are several per site and
never trained on; the mean ± std are over seeds (each seed: new phantoms, base, splits and
initial adapter), as is each arm's difference to local-only training paired by seed.

Also: bytes a site sends and receives per round, and the simulator's wall time for 3 sites x 3
rounds (the exact arm, in-process, no sockets).

    python benchmarks/federated.py            # 16^3 volumes, 4 + 4 held-out cases per site, 5 seeds (~6 min a seed, 2 cores at load 14)
    python benchmarks/federated.py --quick    # 2 seeds, fewer steps
    python benchmarks/federated.py --timing   # only the simulator timing section (keeps the Dice table)

Timing section: the simulator on 3 sites x 3 rounds with a small stated budget (UNet (4, 8),
16^3 patches, TIMING_STEPS local steps), side by side with the same sites each trained the same
total steps in one ``fit`` without federation; the difference is the simulator's overhead
(per-round fit set-up, adapter load/extract, aggregation, the server's state writes).

Writes docs/benchmarks/federated.md. Within a seed every arm starts from the same base, the same
splits and the same initial adapter.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai.data import list_data_collate

from scalpel.core.federated.server import Coordinator, RoundRules
from scalpel.core.federated.simulate import simulate
from scalpel.core.federated.sites import pipeline_site
from scalpel.core.federated.tensors import adapter_tensors, tensor_bytes
from scalpel.core.files import atomic_write
from scalpel.core.fit import fit
from scalpel.medical.adapt import BaseSpec, train_base
from scalpel.medical.segmentation import UNetSpec
from scalpel.medical.synthetic import SCANNERS, STRUCTURES, write_site

ROOT = Path(__file__).resolve().parents[1]
#: Three target scanners that differ from the base's scanner A and from each other.
TARGETS = {
    "B": SCANNERS["B"],
    "C": dataclasses.replace(SCANNERS["B"], name="C", gain=0.7, offset=120.0, noise_hu=12.0, pixel_spacing=(1.2, 1.2),
                             slice_spacing=3.0, rescale_slope=1.0, rescale_intercept=-1024.0, manufacturer="Synthetic Scanner C"),
    "D": dataclasses.replace(SCANNERS["B"], name="D", gain=1.3, offset=-320.0, noise_hu=70.0, pixel_spacing=(0.7, 0.7),
                             slice_spacing=1.5, rescale_slope=1.0, rescale_intercept=-2048.0, manufacturer="Synthetic Scanner D"),
}
ARMS = ("base", "local only", "naive FedAvg (A, B apart)", "exact (stack + SVD)", "FedSA-LoRA (personal B)", "pooled central")


@dataclasses.dataclass(frozen=True)
class Size:
    edge: int
    cases: int
    held_out: int
    seeds: int
    base_steps: int
    local_steps: int
    rounds: int = 3
    r: int = 4


FULL = Size(edge=16, cases=4, held_out=4, seeds=5, base_steps=60, local_steps=6)
QUICK = Size(edge=16, cases=3, held_out=2, seeds=2, base_steps=30, local_steps=4)
TIMING = Size(edge=16, cases=3, held_out=0, seeds=1, base_steps=5, local_steps=2)
TIMING_HEADER = "## Simulator wall time"


def one_seed(size: Size, seed: int, root: Path) -> dict:
    """Every arm on one seed's scanners, base and splits; per-site Dice per arm, budgets and traffic."""
    shape = (size.edge,) * 3
    write_site(root / "A", "A", cases=size.cases, shape=shape, seed=1000 * seed)
    for k, (name, profile) in enumerate(TARGETS.items()):
        write_site(root / name, profile, cases=size.cases, shape=shape, seed=1000 * seed + 10 * (k + 1))
        write_site(root / "held-out" / name, profile, cases=size.held_out, shape=shape, seed=1000 * seed + 10 * (k + 1) + 5)
    spec = BaseSpec(UNetSpec(out_channels=len(STRUCTURES) + 1, channels=(4, 8), strides=(2,)), STRUCTURES, patch=shape)
    train_base(root / "A", root / "base", spec, steps=size.base_steps, seed=seed, progress=False)
    # the patch is the whole volume, so one crop per volume (a second would be the same volume differently augmented)
    settings = {"base": str(root / "base"), "method": "lora", "r": size.r, "alpha": 2.0 * size.r, "max_steps": size.local_steps,
                "lr": 1e-2, "seed": seed, "deidentify": False, "progress": False, "device": "cpu", "samples_per_volume": 1}

    def sites(arm: str, aggregator: str = "exact", steps: int | None = None):
        made = [pipeline_site("medical.segmentation", root / name, root / "runs" / arm / name,
                              {**settings, "max_steps": steps or size.local_steps, "val_data": str(root / "held-out" / name)},
                              aggregator=aggregator) for name in TARGETS]
        for client in made:
            client.task.hd95 = False  # Dice only: HD95's surface distances would dominate the run
        return made

    def dice(clients) -> dict[str, float]:
        return {c.site: c.evaluate()["dice"] for c in clients}

    rows, traffic = {}, {}
    clients = sites("base")
    rows["base"] = dice(clients)
    patches = len(next(iter(clients[0].train_data))["image"])  # patches per optimizer step (volumes x crops)
    budget = {"base": (0, 0, 0)}
    for client in clients:  # each site alone: a federation of one
        simulate([client], Coordinator("exact", RoundRules(), None), size.rounds)
    rows["local only"] = dice(clients)
    federated_steps = size.rounds * size.local_steps
    for arm in ARMS[1:5]:
        budget[arm] = (federated_steps, len(TARGETS) * federated_steps, patches)
    for arm, aggregator in (("naive FedAvg (A, B apart)", "naive"), ("exact (stack + SVD)", "exact"),
                            ("FedSA-LoRA (personal B)", "fedsa")):
        clients = sites(aggregator, aggregator)
        coordinator = Coordinator(aggregator, RoundRules(quorum=3), None, total_sites=3)
        started = time.perf_counter()
        history = simulate(clients, coordinator, size.rounds)
        seconds = time.perf_counter() - started
        rows[arm] = dice(clients)
        traffic[aggregator] = {"up": statistics.mean(b for h in history for b in h["bytes_up"].values()),
                               "down": statistics.mean(h["bytes_down"] for h in history), "seconds": seconds,
                               "truncation": max(h["max_truncation_error"] for h in history),
                               "adapter": tensor_bytes(adapter_tensors(clients[0].model))}
    central_steps = len(TARGETS) * size.local_steps
    rows["pooled central"], pooled_patches = pooled(sites("pooled", steps=central_steps), size.rounds)
    budget["pooled central"] = (size.rounds * central_steps, size.rounds * central_steps, pooled_patches)
    return {"dice": rows, "traffic": traffic, "budget": budget}


class PooledCases(torch.utils.data.ConcatDataset):
    """The sites' training sets as one. ``fit`` reseeds the augmentation of each epoch through
    ``set_epoch``, which a plain ``ConcatDataset`` would swallow (every epoch would then repeat
    epoch 0's crops and augmentations, unlike the sites' own loaders): pass it on to every part."""

    def set_epoch(self, epoch: int) -> None:
        for part in self.datasets:
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)


def pooled(clients, rounds: int) -> tuple[dict[str, float], int]:
    """One adapter trained on every site's training cases together (one set of normalisation
    statistics, as a central model has), scored on each site's held-out cases; also the patches per step."""
    central = clients[0]
    data = PooledCases([c.train_data.dataset for c in clients])
    central.train_data = torch.utils.data.DataLoader(data, batch_size=central.train_data.batch_size, shuffle=True,
                                                     collate_fn=list_data_collate, drop_last=len(data) > central.train_data.batch_size,
                                                     generator=torch.Generator().manual_seed(0))
    simulate([central], Coordinator("exact", RoundRules(), None), rounds)
    central.model.eval()
    with torch.no_grad():
        scores = {c.site: float(central.task.evaluate(central.model, c.eval_data)["dice"]) for c in clients}
    return scores, len(next(iter(central.train_data))["image"])


def timing(size: Size, root: Path, repeats: int = 3) -> dict:
    """Wall and CPU seconds of ``simulate`` (3 sites x ``size.rounds`` rounds, exact, with server state
    writes) and of the same sites trained ``rounds x local_steps`` steps each in one ``fit``, taken
    alternately ``repeats`` times; the fastest of each is kept (the least disturbed by other load)."""
    write_site(root / "A", "A", cases=size.cases, shape=(size.edge,) * 3, seed=0)
    for k, (name, profile) in enumerate(TARGETS.items()):
        write_site(root / name, profile, cases=size.cases, shape=(size.edge,) * 3, seed=10 * (k + 1))
    spec = BaseSpec(UNetSpec(out_channels=len(STRUCTURES) + 1, channels=(4, 8), strides=(2,)), STRUCTURES, patch=(size.edge,) * 3)
    train_base(root / "A", root / "base", spec, steps=size.base_steps, seed=0, progress=False)
    settings = {"base": str(root / "base"), "method": "lora", "r": size.r, "alpha": 2.0 * size.r, "max_steps": size.local_steps,
                "lr": 1e-2, "seed": 0, "deidentify": False, "progress": False, "device": "cpu"}
    started = time.perf_counter()
    fed = [pipeline_site("medical.segmentation", root / n, root / "fed" / n, settings) for n in TARGETS]
    build = (time.perf_counter() - started) / len(fed)
    solo = [pipeline_site("medical.segmentation", root / n, root / "solo" / n, settings) for n in TARGETS]
    best = {"federated": (float("inf"), 0.0), "plain": (float("inf"), 0.0)}
    for k in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        simulate(fed, Coordinator("exact", RoundRules(quorum=len(fed)), root / f"server-{k}", total_sites=len(fed)), size.rounds)
        best["federated"] = min(best["federated"], (time.perf_counter() - wall, time.process_time() - cpu))
        wall, cpu = time.perf_counter(), time.process_time()
        for client in solo:  # the same training without federation: one fit of rounds x local steps per site
            local = dataclasses.replace(client.local, steps=size.rounds * size.local_steps)
            fit(client.model, client.task, client.train_data, None, local.fit_config(client.work_dir / "plain", 1))
        best["plain"] = min(best["plain"], (time.perf_counter() - wall, time.process_time() - cpu))
    batch = len(next(iter(fed[0].train_data))["image"])
    seconds = {f"{arm}_{unit}": best[arm][i] for arm in best for i, unit in enumerate(("wall", "cpu"))}
    return {"build": build, "repeats": repeats, "batch": batch, **seconds}


def timing_lines(t: dict, size: Size) -> list[str]:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    rows = [("simulator, 3 sites x 3 rounds (exact, state saved each round)", t["federated_wall"], t["federated_cpu"]),
            (f"same sites, {size.rounds * size.local_steps} steps each in one fit (no federation)", t["plain_wall"], t["plain_cpu"])]
    lines = [TIMING_HEADER, "", f"`python benchmarks/federated.py --timing`: MONAI UNet (4, 8), LoRA r={size.r}, {size.cases} cases of "
             f"{size.edge}^3 per site, {size.local_steps} local steps per round (batch {t['batch']}), CPU; fastest of {t['repeats']} alternating "
             "repeats. Overhead = federated minus plain: per-round fit set-up (Accelerator, run folder), adapter load and "
             "extraction, aggregation, the server's state writes.", "",
             "| run | wall (s) | CPU (s) |", "|---|---:|---:|"]
    lines += [f"| {name} | {wall:.2f} | {cpu:.2f} |" for name, wall, cpu in rows]
    overhead = t["federated_wall"] - t["plain_wall"]
    lines += [f"| ratio federated / plain | {t['federated_wall'] / t['plain_wall']:.2f} | {t['federated_cpu'] / t['plain_cpu']:.2f} |",
              f"| simulator overhead share of the federated wall time | {overhead / t['federated_wall']:.0%} | "
              f"{(t['federated_cpu'] - t['plain_cpu']) / t['federated_cpu']:.0%} |", "",
              f"Building a site (base load, de-identified cache read, adapter applied) takes {t['build']:.2f} s once, before "
              f"round 1; it is not in the rows. Taken on {torch.get_num_threads()} CPU thread(s), {sys.platform}, load average "
              f"{load:.1f} (wall times scale with what else the machine runs; CPU seconds much less)."]
    return lines


def table(results: list[dict], size: Size, argv: list[str], seconds: float) -> list[str]:
    names = list(TARGETS)
    lines = ["# Federated site adaptation (synthetic scanners)", "",
             f"`{shlex.join(['python', 'benchmarks/federated.py', *argv])}`", "",
             f"Base: MONAI UNet (4, 8) with BatchNorm trained {size.base_steps} steps on scanner A. Sites B, C, D: "
             f"{size.cases} training cases of {size.edge}^3 each, scored on {size.held_out} held-out cases of the same scanner "
             f"(a separate folder, never trained on); LoRA r={size.r} on every convolution, lr 1e-2 constant, "
             f"{size.rounds} rounds; normalisation statistics stay at each site (FedBN) in the federated and local arms. "
             f"{len(results)} seed(s){'' if len(results) == size.seeds else f' (of {size.seeds} asked; the run was cut short)'}: "
             "mean ± std (over seeds) of the held-out Dice. Scanners: "
             + "; ".join(f"{n}: gain {p.gain}, offset {p.offset:+.0f} HU, noise {p.noise_hu:.0f} HU, "
                         f"{p.pixel_spacing[0]}x{p.pixel_spacing[1]}x{p.slice_spacing} mm" for n, p in TARGETS.items()) + ".", "",
             "| arm | " + " | ".join(f"Dice {n}" for n in names) + " | mean | mean - local only (paired by seed) |",
             "|---|" + "---:|" * (len(names) + 2)]
    local = [statistics.mean(r["dice"]["local only"].values()) for r in results]
    for arm in ARMS:
        cells = [_cell([r["dice"][arm][n] for r in results]) for n in names]
        means = [statistics.mean(r["dice"][arm].values()) for r in results]
        diff = "" if arm == "local only" else _cell([m - b for m, b in zip(means, local, strict=True)], signed=True)
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {_cell(means)} | {diff} |")
    lines += ["", "Training budget of each arm (every arm: the same base, seed and initial adapter; "
              f"{size.rounds} fits of a fresh optimizer, one per round):", "",
              "| arm | optimizer steps per adapter | optimizer steps in all | patches per step | patches seen in all |",
              "|---|---:|---:|---:|---:|"]
    for arm in ARMS:
        per, total, patches = results[0]["budget"][arm]
        lines.append(f"| {arm} | {per} | {total} | {patches} | {total * patches} |")
    lines += ["", "| aggregator | bytes up per site per round | bytes down | adapter tensors (bytes) | up / adapter | "
              "max truncation error | simulator wall time, 3 sites x 3 rounds |", "|---|---:|---:|---:|---:|---:|---:|"]
    for agg in ("naive", "exact", "fedsa"):
        t = [r["traffic"][agg] for r in results]
        up, adapter = statistics.mean(x["up"] for x in t), statistics.mean(x["adapter"] for x in t)
        lines.append(f"| {agg} | {up:,.0f} | {statistics.mean(x['down'] for x in t):,.0f} | {adapter:,.0f} | {up / adapter:.2f} | "
                     f"{max(x['truncation'] for x in t):.3f} | {statistics.mean(x['seconds'] for x in t):.1f} s |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines += ["", f"Whole run: {seconds:.0f} s on {torch.get_num_threads()} CPU thread(s) ({sys.platform}, load average "
              f"{load:.1f} at the end: wall times scale with what else the machine runs). A difference smaller than its "
              "std over seeds is noise. FedSA-LoRA sends A only (B stays at the site; in a convolution A, r x in x k^3, "
              "is the larger factor); naive and exact send the same tensors and differ only in how the server combines "
              "them; the adapter tensors not sent are the BatchNorm statistics (FedBN). Pooled central training needs the "
              "data in one place and has one set of normalisation statistics for the three scanners; the federated and "
              "local arms each keep their site's own. Reading of the results: docs/federated.md."]
    return lines


def _cell(values: list[float], signed: bool = False) -> str:
    mean = f"{statistics.mean(values):+.3f}" if signed else f"{statistics.mean(values):.3f}"
    return mean + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 + 2 held-out cases, fewer steps, 2 seeds")
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 5, 2 with --quick)")
    parser.add_argument("--timing", action="store_true", help="only the simulator timing section (the Dice table is kept)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "federated.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="scalpel-federated-timing-") as scratch:
        timed = timing_lines(timing(TIMING, Path(scratch)), TIMING)
    if args.timing:
        kept = args.out.read_text().split(TIMING_HEADER)[0].rstrip().splitlines() if args.out.is_file() else []
        return _write(args.out, kept + ([""] if kept else []) + timed)
    size = QUICK if args.quick else FULL
    size = dataclasses.replace(size, seeds=args.seeds or size.seeds)
    started = time.perf_counter()
    results: list[dict] = []
    shown = [a for i, a in enumerate(argv) if not a.startswith("--out") and not (i and argv[i - 1] == "--out")]
    for seed in range(size.seeds):  # the table is written after every seed: an interrupted run keeps the seeds it finished
        with tempfile.TemporaryDirectory(prefix="scalpel-federated-") as scratch:
            results.append(one_seed(size, seed, Path(scratch)))
        _write(args.out, table(results, size, shown, time.perf_counter() - started) + [""] + timed, echo=False)
    return _write(args.out, table(results, size, shown, time.perf_counter() - started) + [""] + timed)


def _write(out: Path, lines: list[str], echo: bool = True) -> int:
    with atomic_write(out, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    if echo:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
