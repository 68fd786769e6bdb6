"""``scalpel medical federate``: adapt one base to several sites without pooling their data, in one
process (the in-process simulator of :mod:`scalpel.core.federated`, the same client step a Flower
deployment runs).

    result = federate_sites("base/", ["site_a/", "site_b/", "site_c/"], "runs/fed", rounds=3, aggregator="exact",
                            settings={"max_steps": 20, "method": "lora", "r": 4})

Each site is the base's medical pipeline on its own folder (its own de-identified ingest, its own
held-out cases). Writes::

    OUT/server/              the server's state (resumable: rerun the command to continue)
    OUT/<site>/adapter/      the site's final adapter: the global one, plus what it kept (FedSA's B, FedBN statistics)
    OUT/federation.json      per-round records and the sites' metrics before and after
    OUT/report.md
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scalpel.core.config import raise_if_problems
from scalpel.core.federated.cli import add_round_flags, coordinator_from, round_lines  # argparse only: the CLI stays light

if TYPE_CHECKING:
    from scalpel.core.federated.client import SiteClient


def federate_sites(base: str | os.PathLike, sites: Sequence[str | os.PathLike], out: str | os.PathLike, *, rounds: int = 3,
                   args: argparse.Namespace | None = None, settings: Mapping[str, Any] | None = None,
                   aggregator: str = "exact") -> dict[str, Any]:
    """Federate the base over ``sites`` for ``rounds`` rounds into ``out``; returns what federation.json holds.

    Args:
        args: round flags (``--aggregator --quorum --timeout --noise ...``, :func:`add_round_flags`); default: all sites, exact.
        settings: the medical pipeline's flat settings for every site (``max_steps`` = local steps per round).

    Raises:
        ScalpelError: fewer than two sites, a site named twice, no base checkpoint, or a site the pipeline refuses.
    """
    from scalpel.core.federated.simulate import simulate
    from scalpel.core.federated.sites import pipeline_site
    from scalpel.core.files import atomic_write, write_json
    from scalpel.medical.adapt import pipeline_for

    out = Path(out)
    names = [Path(s).name for s in sites]
    raise_if_problems("federation", [
        "give at least two site folders" if len(sites) < 2 else "",
        f"site folder names must differ, got {names}" if len(set(names)) != len(names) else "",
        f"rounds must be >= 1, got {rounds}" if rounds < 1 else "",
    ])
    args = args or round_defaults(aggregator)
    pipeline = pipeline_for(base).name
    given = {"deidentify": True, **(settings or {}), "base": str(base)}
    clients = [pipeline_site(pipeline, site, out / name, {**given, "site": name}, aggregator=args.aggregator,
                             keep_stats_local=not args.share_statistics) for site, name in zip(sites, names)]
    before = {c.site: c.evaluate() for c in clients}
    coordinator = coordinator_from(args, len(clients), out / "server")
    simulate(clients, coordinator, rounds)
    after = {c.site: c.evaluate() for c in clients}
    adapters = {c.site: str(save_site_adapter(c, out / c.site / "adapter", after[c.site], coordinator.state.round, args.aggregator))
                for c in clients}
    summary = {"pipeline": pipeline, "base": str(base), "aggregator": args.aggregator, "rounds": coordinator.state.round,
               "before": before, "after": after, "adapters": adapters, "history": coordinator.state.history}
    write_json(out / "federation.json", summary)
    with atomic_write(out / "report.md", "w") as handle:
        handle.write("\n".join(report(summary)) + "\n")
    return summary


def round_defaults(aggregator: str = "exact") -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_round_flags(parser)
    return parser.parse_args(["--aggregator", aggregator])


def save_site_adapter(client: SiteClient, folder: Path, metrics: dict[str, float], rounds: int, aggregator: str) -> Path:
    from scalpel.core.artifacts import save_adapter

    return save_adapter(client.model, folder, metrics=metrics,
                        extra={"site": client.site, "federated": {"rounds": rounds, "aggregator": aggregator}})


def report(summary: dict[str, Any]) -> list[str]:
    metric = next(iter(next(iter(summary["after"].values()), {})), "dice")
    lines = [f"# Federated adaptation: {len(summary['after'])} sites, {summary['rounds']} rounds, aggregator {summary['aggregator']}",
             "", f"| site | {metric} before | {metric} after | adapter |", "|---|---:|---:|---|"]
    for site, after in summary["after"].items():
        lines.append(f"| {site} | {summary['before'][site].get(metric, float('nan')):.3f} | {after.get(metric, float('nan')):.3f} "
                     f"| `{summary['adapters'][site]}` |")
    return lines + ["", "## Rounds", ""] + [f"- {line}" for line in round_lines(summary["history"])]


def register_federate(sub: argparse._SubParsersAction) -> None:
    """``scalpel medical federate BASE SITE SITE ... --out OUT`` (called by medical/adapt_cli.py)."""
    federate = sub.add_parser("federate", help="adapt a base to several sites by federated rounds (simulation, no data pooled)",
                              description="Adapt one base to several sites by federated rounds in this process; the "
                                          "sites exchange only adapter tensors. Rerun the same command to resume.")
    federate.add_argument("base", type=Path, help="base checkpoint folder (model.safetensors + model.json)")
    federate.add_argument("sites", type=Path, nargs="+", help="site folders (dicom/<case>/, labels/<case>.nii.gz)")
    federate.add_argument("--out", type=Path, required=True, help="output folder (rerun to resume the rounds)")
    federate.add_argument("--rounds", type=int, default=3, help="federated rounds")
    federate.add_argument("--local-steps", type=int, default=20, help="optimizer steps per site per round")
    federate.add_argument("--method", default="lora", help="method every site trains (lora, dora, sparse, layerwise...)")
    federate.add_argument("--r", type=int, default=4, help="LoRA rank")
    federate.add_argument("--lr", type=float, default=5e-3, help="local learning rate")
    federate.add_argument("--seed", type=int, default=0, help="seed of every site's split, initialisation and data order")
    federate.add_argument("--no-deidentify", action="store_true", help="read the sites as they are (data already cleared)")
    add_round_flags(federate)
    federate.set_defaults(handler=_federate)


def _federate(args: argparse.Namespace) -> int:
    settings = {"max_steps": args.local_steps, "method": args.method, "r": args.r, "alpha": 2.0 * args.r, "lr": args.lr,
                "seed": args.seed, "deidentify": not args.no_deidentify, "progress": False}
    summary = federate_sites(args.base, args.sites, args.out, rounds=args.rounds, args=args, settings=settings)
    print("\n".join(report(summary)))
    print(json.dumps({"report": str(args.out / "report.md"), "adapters": summary["adapters"]}, indent=2))
    return 0
