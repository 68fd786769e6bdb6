"""``scalpel medical adapt BASE SITE --out RUN``: one small adapter per site, with a base-vs-adapted report."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    from scalpel.medical.adapt import AdaptOptions

    medical = commands.add_parser("medical", help="medical segmentation: site adaptation")
    sub = medical.add_subparsers(dest="medical_command", metavar="ACTION", required=True)
    adapt = sub.add_parser(
        "adapt",
        help="adapt a base segmentation checkpoint to a site's DICOM studies and labels",
        description="SITE holds dicom/<case>/ series and labels/<case>.nii.gz. Writes RUN/adapter, RUN/report.md, RUN/summary.json.",
    )
    adapt.add_argument("base", type=Path, help="base checkpoint folder (model.safetensors + model.json)")
    adapt.add_argument("site_dir", type=Path, metavar="site", help="site folder")
    adapt.add_argument("--out", type=Path, required=True, help="run directory")
    adapt.add_argument("--no-deidentify", action="store_true", help="read the site's DICOM as is (already de-identified)")
    for f in fields(AdaptOptions):
        if f.name == "deidentify":
            continue
        adapt.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default, help=f.metadata.get("help"))
    adapt.set_defaults(handler=_adapt)


def _adapt(args: argparse.Namespace) -> int:
    from scalpel.medical.adapt import AdaptOptions, adapt_site

    values = {f.name: getattr(args, f.name) for f in fields(AdaptOptions) if f.name != "deidentify"}
    summary = adapt_site(args.base, args.site_dir, args.out, AdaptOptions(deidentify=not args.no_deidentify, **values))
    print(Path(summary["report"]).read_text())
    print(json.dumps({k: summary[k] for k in ("adapter_dir", "report", "trainable", "total")}, indent=2))
    return 0
