"""``scalpel demo [--quick]``: the main job. Every domain's embedded default, side by side.

Runs the NLP, vision and medical demos one after another (each compares its PEFT methods
with full fine-tuning on real offline data or on a synthetic domain shift, see their
``demo`` modules), writes the runs under ``runs/demo/<domain>`` where the Streamlit app
finds them, and ends with one table and a report::

    runs/demo/report.html   the table, metric-vs-trainable-parameters and training-curve
                            plots per domain, and example predictions (self-contained)
    runs/demo/results.json  every row

Each domain module provides ``run_demo(output_dir, quick) -> list[dict]`` with the row
keys of :data:`ROW_KEYS`. A domain that fails is reported and the others still run; the
command then exits non-zero.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from scalpel.apps.report import COLUMNS, cells, write_report
from scalpel.core.errors import ConfigError, ScalpelError
from scalpel.core.files import write_json

DOMAINS = ("nlp", "vision", "medical")
ROW_KEYS = ("domain", "task", "method", "metric", "before", "after", "trainable", "total", "train_seconds", "adapter_bytes", "run_dir")


def register(commands: argparse._SubParsersAction) -> None:
    demo = commands.add_parser("demo", help="run every domain's embedded demo and print one table",
                               description=__doc__.splitlines()[0])
    demo.add_argument("--quick", action="store_true", help="tiny sizes and a few steps (< 3 min on 2 CPU cores)")
    demo.add_argument("--output-dir", type=Path, default=Path("runs/demo"), help="where the runs and the report go (default: runs/demo)")
    demo.add_argument("--domains", nargs="+", default=list(DOMAINS), choices=DOMAINS, metavar="DOMAIN",
                      help=f"run only these ({', '.join(DOMAINS)})")
    demo.set_defaults(handler=_demo)


def run_all(output_dir: str | Path, quick: bool = False, domains: Sequence[str] = DOMAINS,
            say: Callable[[str], None] = print) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Run each domain's demo into ``output_dir/<domain>``; return the rows and the failures by domain."""
    unknown = sorted(set(domains) - set(DOMAINS))
    if unknown:
        raise ConfigError("demo", [f"unknown domain {d!r}; choose from {', '.join(DOMAINS)}" for d in unknown])
    output_dir = Path(output_dir)
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    for n, domain in enumerate(domains, 1):
        say(f"[{n}/{len(domains)}] {domain}: training{' (quick)' if quick else ''} ...")
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                _quiet_known_warnings()
                module = importlib.import_module(f"scalpel.{domain}.demo")
                domain_rows = module.run_demo(output_dir / domain, quick=quick)
        except ScalpelError as err:
            failures[domain] = str(err)
            say(f"[{n}/{len(domains)}] {domain}: failed: {err}")
            continue
        except Exception:  # a bug: keep the traceback, but let the other domains run
            failures[domain] = traceback.format_exc()
            say(f"[{n}/{len(domains)}] {domain}: failed with a bug:\n{failures[domain]}")
            continue
        for row in domain_rows:
            missing = [k for k in ROW_KEYS if k not in row]
            if missing:
                raise ScalpelError(f"the {domain} demo returned a row without {', '.join(missing)} (see scalpel.apps.demo.ROW_KEYS)")
        rows.extend(domain_rows)
        say(f"[{n}/{len(domains)}] {domain}: {len(domain_rows)} runs in {time.perf_counter() - started:.0f} s")
    return rows, failures


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The closing table: domain, task, method, metric (before -> after), trainable parameters, time, adapter size."""
    body = [cells(r) for r in rows]
    widths = [max(len(c) for c in column) for column in zip(COLUMNS, *body, strict=True)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths, strict=True)).rstrip()  # noqa: E731
    return [line(COLUMNS), line(["-" * w for w in widths]), *map(line, body)]


def _quiet_known_warnings() -> None:
    # MONAI's HD95 warns per empty class and about a deprecated argument it passes itself;
    # the demo's tables already show what these mean.
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"monai\.")
    warnings.filterwarnings("ignore", message=r"the (prediction|ground truth) of class \d+ is all 0")


def _demo(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    rows, failures = run_all(args.output_dir, args.quick, args.domains, say=lambda s: print(s, file=sys.stderr, flush=True))
    write_json(args.output_dir / "results.json", rows)
    report = write_report(args.output_dir, rows, failures, quick=args.quick)
    print(f"\nScalpel demo{' (quick)' if args.quick else ''}: {len(rows)} runs in {(time.perf_counter() - started) / 60:.1f} min")
    print("\n".join(table(rows)))
    print(f"\nreport: {report}")
    if failures:
        print(f"failed: {', '.join(failures)} (messages above)")
    print(f"open the app on these runs: scalpel app --runs {args.output_dir}   (or: make app)")
    return 1 if failures else 0
