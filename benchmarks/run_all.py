"""Run every benchmark one after another, then rebuild ``docs/benchmarks.md``.

Full mode writes each table to ``docs/benchmarks/`` (as each script does on its own) and
then runs ``collect.py``. Quick mode is a smoke run of every script: the tables go to a
scratch folder (default ``runs/bench-quick/``) with their own ``benchmarks.md``, so quick
figures never replace the real ones in ``docs/``. The scripts run in this interpreter's
environment, one at a time (they time themselves; running them side by side would
distort the ratios). A failing script is reported and the others still run; the exit
status is 1 if any failed.

    python benchmarks/run_all.py                  # everything, full settings (hours on 2 CPU cores)
    python benchmarks/run_all.py --quick          # every script in its < 1-2 min mode
    python benchmarks/run_all.py --only sparse --only distill
    python benchmarks/run_all.py --list
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from collect import BENCHMARKS, ROOT, Benchmark, collect  # noqa: E402  (a sibling script, not a package)


def command(benchmark: Benchmark, quick: bool, scratch: Path) -> list[str]:
    """The argv that runs one benchmark; in quick mode its table goes to ``scratch``."""
    argv = [sys.executable, str(ROOT / "benchmarks" / benchmark.script)]
    argv += list(benchmark.quick_args if quick else benchmark.args)
    if quick:
        if benchmark.out_flag:
            argv += [benchmark.out_flag, str(scratch / f"{benchmark.name}.md")]
        else:
            argv += [a.format(dir=scratch) for a in benchmark.quick_out]
    elif benchmark.out_flag and benchmark.name != benchmark.script.removesuffix(".py"):
        # a second table from the same script (e.g. layerwise_mild_corruption)
        argv += [benchmark.out_flag, str(ROOT / "docs" / "benchmarks" / f"{benchmark.name}.md")]
    return argv


def selected(only: list[str] | None) -> list[Benchmark]:
    # gpu_smoke writes gpu_smoke.md on CUDA and gpu_smoke_cpu.md elsewhere: one run, two names.
    runnable = [b for b in BENCHMARKS if b.name != "gpu_smoke_cpu"]
    if not only:
        return runnable
    names = {b.name for b in runnable}
    unknown = sorted(set(only) - names - {"gpu_smoke_cpu"})
    if unknown:
        sys.exit(f"unknown benchmark(s) {', '.join(unknown)}; choose from: {', '.join(sorted(names))}")
    return [b for b in runnable if b.name in only or (b.name == "gpu_smoke" and "gpu_smoke_cpu" in only)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every script's quick mode; tables to --scratch, not docs/")
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this benchmark (repeatable)")
    parser.add_argument("--scratch", type=Path, default=ROOT / "runs" / "bench-quick", help="where quick tables go")
    parser.add_argument("--list", action="store_true", help="print the commands and exit")
    parser.add_argument("--no-collect", action="store_true", help="do not rebuild benchmarks.md afterwards")
    args = parser.parse_args(argv)

    benchmarks = selected(args.only)
    if args.list:
        for b in benchmarks:
            print(f"{b.name:<26} {subprocess.list2cmdline(command(b, args.quick, args.scratch)[1:])}")
        return 0
    if args.quick:
        args.scratch.mkdir(parents=True, exist_ok=True)
    failed = []
    for i, b in enumerate(benchmarks, 1):
        argv_b = command(b, args.quick, args.scratch)
        print(f"[{i}/{len(benchmarks)}] {b.name}: {subprocess.list2cmdline(argv_b[1:])}", flush=True)
        started = time.perf_counter()
        code = subprocess.call(argv_b, cwd=ROOT)
        print(f"[{i}/{len(benchmarks)}] {b.name}: {'ok' if code == 0 else f'FAILED (exit {code})'} "
              f"in {time.perf_counter() - started:.0f} s", flush=True)
        if code != 0:
            failed.append(b.name)
    if not args.no_collect:
        src, out = (args.scratch, args.scratch / "benchmarks.md") if args.quick else (
            ROOT / "docs" / "benchmarks", ROOT / "docs" / "benchmarks.md")
        collect(src, out)
        print(f"wrote {out}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
