"""``scalpel medical adapt|predict|sites``: site adapters on a base checkpoint.

    scalpel medical adapt BASE SITE --out RUN [--folds K]     one small adapter per site, base-vs-adapted report
    scalpel medical predict --base BASE --adapter RUN/adapter SERIES_DIR --seg-out pred.dcm
    scalpel medical sites --base BASE --runs runs/            the site adapters trained on BASE
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    from scalpel.medical.adapt import AdaptOptions

    medical = commands.add_parser("medical", help="medical imaging: site adaptation, prediction to DICOM SEG")
    sub = medical.add_subparsers(dest="medical_command", metavar="ACTION", required=True)
    adapt = sub.add_parser(
        "adapt",
        help="adapt a base segmentation or classification checkpoint to a site's DICOM studies and labels",
        description="SITE holds dicom/<case>/ series and labels/<case>.nii.gz (or .dcm, a DICOM SEG); a classification base "
                    "reads SITE/labels.csv (columns case,label) when present. Writes RUN/adapter, RUN/report.md, RUN/summary.json.",
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

    predict = sub.add_parser(
        "predict",
        help="segment a DICOM series with a base (+ site adapter) and write a DICOM SEG",
        description="Reads one image series from SERIES_DIR, predicts on its own grid, and writes a DICOM SEG that "
                    "references the series and names the algorithm and adapter.",
    )
    predict.add_argument("series_dir", type=Path, metavar="SERIES_DIR", help="folder holding one DICOM image series")
    predict.add_argument("--base", type=Path, required=True, help="base checkpoint folder (model.safetensors + model.json)")
    predict.add_argument("--adapter", type=Path, help="site adapter folder (RUN/adapter); omit for the base alone")
    predict.add_argument("--seg-out", type=Path, required=True, help="DICOM SEG file to write")
    predict.add_argument("--series", help="SeriesInstanceUID, when SERIES_DIR holds several series")
    predict.add_argument("--device", help="cpu, cuda, cuda:1... (default: cuda when available)")
    predict.set_defaults(handler=_predict)

    sites = sub.add_parser("sites", help="list the site adapters trained on a base checkpoint")
    sites.add_argument("--base", type=Path, required=True, help="base checkpoint folder")
    sites.add_argument("--runs", type=Path, default=Path("runs"), help="folder searched for adapters (default: runs)")
    sites.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sites.set_defaults(handler=_sites)


def _adapt(args: argparse.Namespace) -> int:
    from scalpel.medical.adapt import AdaptOptions, adapt_site

    values = {f.name: getattr(args, f.name) for f in fields(AdaptOptions) if f.name != "deidentify"}
    summary = adapt_site(args.base, args.site_dir, args.out, AdaptOptions(deidentify=not args.no_deidentify, **values))
    print(Path(summary["report"]).read_text())
    print(json.dumps({k: summary[k] for k in ("adapter_dir", "report", "trainable", "total")}, indent=2))
    return 0


def _predict(args: argparse.Namespace) -> int:
    import numpy as np

    from scalpel.medical.dicom.seg import write_seg
    from scalpel.medical.predict import SiteAdapters, read_series

    sites = SiteAdapters(args.base, device=args.device)
    sites.use(args.adapter)
    series = read_series(args.series_dir, series_uid=args.series)
    labels = sites.predict(series)
    path = write_seg(sites.seg(series, labels), args.seg_out)
    counts = {name: int(np.sum(labels == k)) for k, name in enumerate(sites.spec.structures, start=1)}
    print(json.dumps({"seg": str(path), "series_uid": series.series_uid, "shape": list(labels.shape), "voxels": counts,
                      "adapter": str(args.adapter) if args.adapter else None}, indent=2))
    return 0


def _sites(args: argparse.Namespace) -> int:
    from scalpel.medical.predict import find_site_adapters

    rows, others = find_site_adapters(args.base, args.runs)
    if args.json:
        print(json.dumps({"adapters": rows, "other_bases": others}, indent=2))
        return 0
    if not rows:
        print(f"no site adapters for {args.base} under {args.runs}; make one with: scalpel medical adapt {args.base} SITE --out RUN")
    else:
        print(f"{'site':<12} {'method':<10} {'score':>10} {'trainable':>12} {'%':>7}  {'created':<25} adapter")
        for r in rows:
            metric = "dice" if isinstance(r["dice"], (int, float)) else "auc"
            dice = f"{metric} {r[metric]:.3f}" if isinstance(r[metric], (int, float)) else "?"
            share = f"{100 * r['trainable'] / r['total']:.2f}" if r["trainable"] and r["total"] else "?"
            print(f"{r['site']:<12} {r['method']:<10} {dice:>10} {r['trainable'] or 0:>12,} {share:>7}  {r['created']:<25} {r['adapter_dir']}")
    if others:
        print(f"({others} site adapter(s) of other base checkpoints not listed)")
    return 0
