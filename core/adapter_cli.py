"""``scalpel adapter info DIR`` and ``scalpel adapter merge``."""

from __future__ import annotations

import argparse
import json

from scalpel.core.artifacts import adapter_info


def register(commands: argparse._SubParsersAction) -> None:
    adapter = commands.add_parser("adapter", help="inspect and merge adapters")
    sub = adapter.add_subparsers(dest="adapter_command", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="method, targets, size, base fingerprint, metrics")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    info.set_defaults(handler=_info)


def _info(args: argparse.Namespace) -> int:
    info = adapter_info(args.path)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    for key, value in info.items():
        if key == "methods":
            for entry in value:
                print(f"method: {entry['method']}")
                for k, v in entry["config"].items():
                    print(f"  {k}: {v}")
                for k, v in entry.get("details", {}).items():
                    print(f"  {k}: {v}")
        elif isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {v}")
        else:
            print(f"{key}: {value}")
    return 0
