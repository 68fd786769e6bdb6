"""The ``scalpel`` command. Subcommands come from the ``scalpel.cli`` entry-point group,
so domain packages add theirs (``scalpel dicom ...``) without the core importing them. An
entry point's name is the command it registers; only the command named on the line is loaded.

A :class:`~scalpel.core.errors.ScalpelError` is printed as one clear message and the
command exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path

from scalpel.core.errors import ScalpelError
from scalpel.core.pipeline import COMMAND_GROUP, available_pipelines, get_pipeline


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scalpel", description="Parameter-efficient fine-tuning, from the core to the clinic.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_run(commands, argv)
    _add_predict(commands)
    plugins = sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name)
    # Importing a domain's command pulls in its libraries (MONAI, transformers: seconds each), so
    # only the command named is loaded; every one is for the overview (--help, no or a mistyped command).
    named = next((a for a in argv or () if not a.startswith("-")), None)
    if named in ("run", "predict"):
        plugins = []
    elif any(ep.name == named for ep in plugins):
        plugins = [ep for ep in plugins if ep.name == named]
    for ep in plugins:
        ep.load()(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # One progress bar per run (fit's, titled with the run): not the weight-loading and download
    # bars of transformers / huggingface_hub, which read this before they are imported.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        parser = build_parser(argv)
        # `predict NAME --adapter DIR "text" ...`: argparse gives the positional inputs up once
        # an option follows the pipeline name, so inputs after options come back as extras.
        args, extras = parser.parse_known_args(argv)
        if extras and getattr(args, "command", None) == "predict" and not any(e.startswith("-") for e in extras):
            args.inputs = list(args.inputs) + extras
        elif extras:
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        return int(args.handler(args) or 0)
    except ScalpelError as err:
        print(f"scalpel: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("scalpel: interrupted", file=sys.stderr)
        return 130


def _add_run(commands: argparse._SubParsersAction, argv: Sequence[str] | None) -> None:
    names = sorted(available_pipelines())
    run = commands.add_parser("run", help="train a domain pipeline", add_help=False,
                              description=f"pipelines: {', '.join(names) or 'none installed'}; "
                                          "`scalpel run NAME --help` lists a pipeline's flags")
    run.add_argument("pipeline", nargs="?", help="e.g. " + (names[0] if names else "nlp.sentiment"))
    run.add_argument("rest", nargs=argparse.REMAINDER, help="-c/--config FILE.yaml and the pipeline's flags")
    run.set_defaults(handler=_run, parser=run)


def _run(args: argparse.Namespace) -> int:
    if not args.pipeline or args.pipeline.startswith("-"):
        args.parser.print_help()
        return 0 if args.pipeline in (None, "-h", "--help") else 2
    from scalpel.core.flags import parse_run_flags  # tyro and the run's libraries: only when running

    pipeline = get_pipeline(args.pipeline)
    result = pipeline.run(parse_run_flags(pipeline, args.rest))
    print(json.dumps(dataclasses.asdict(result), indent=2, default=str))
    return 0


def _add_predict(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser("predict", help="predict with a trained adapter")
    predict.add_argument("pipeline")
    predict.add_argument("--adapter", type=Path, action="append", required=True,
                         help="adapter directory (runs/<name>/adapter); repeat it to compare adapters on the same inputs")
    predict.add_argument("--file", type=Path, help="read inputs from this file (one per line, or a CSV)")
    predict.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="pipeline-specific option")
    predict.add_argument("inputs", nargs="*", help="inputs (texts, image paths, ...)")
    predict.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    pipeline = get_pipeline(args.pipeline)
    if pipeline.predict is None:
        raise ScalpelError(f"pipeline {pipeline.name!r} has no predict command")
    options = dict(o.split("=", 1) for o in args.option if "=" in o)
    if args.file:
        options["file"] = str(args.file)
    if not args.inputs and not args.file:
        raise ScalpelError("give inputs on the command line or --file FILE")
    if len(args.adapter) == 1:
        for row in pipeline.predict(args.adapter[0], args.inputs, options):
            print(json.dumps(row, default=str))
        return 0
    if len(set(args.adapter)) != len(args.adapter):
        raise ScalpelError(f"--adapter names the same folder twice: {[str(a) for a in args.adapter]}")
    if pipeline.compare is not None:  # e.g. one mixed-adapter pass (scalpel.core.lora.mixed)
        per_adapter = pipeline.compare(args.adapter, args.inputs, options)
    else:
        per_adapter = [pipeline.predict(a, args.inputs, options) for a in args.adapter]
    for row in compared_rows([str(a) for a in args.adapter], per_adapter):
        print(json.dumps(row, default=str))
    return 0


#: Row keys that describe the input, not a prediction: shown once per input when adapters are compared.
INPUT_KEYS = ("text", "image", "series", "path", "true_label")


def compared_rows(adapters: list[str], per_adapter: list[list[dict]]) -> list[dict]:
    """One row per input from each adapter's rows: the input (:data:`INPUT_KEYS`, when all
    adapters report it alike) at the top, the predictions under ``"adapters"`` by adapter directory."""
    if len({len(rows) for rows in per_adapter}) > 1:
        raise ScalpelError("the adapters returned different numbers of results for the same inputs")
    merged = []
    for rows in zip(*per_adapter):
        shared = {k: rows[0][k] for k in INPUT_KEYS if k in rows[0] and all(r.get(k) == rows[0][k] for r in rows)}
        merged.append({**shared, "adapters": {a: {k: v for k, v in r.items() if k not in shared}
                                              for a, r in zip(adapters, rows)}})
    return merged


if __name__ == "__main__":
    raise SystemExit(main())
