"""``scalpel medical adapt|predict|sites``: site adapters on a base checkpoint.

    scalpel medical adapt BASE SITE --out RUN [--folds K]     one small adapter per site (the medical pipeline on BASE)
    scalpel medical predict --base BASE --adapter RUN/adapter SERIES_DIR --seg-out pred.dcm
    scalpel medical sites --base BASE --runs runs/            the site adapters trained on BASE
"""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

from scalpel.core.errors import ScalpelError

#: Spellings of this command -> the pipeline's flags (``--holdout`` is an earlier release's, with a warning).
ALIASES = {"--out": "--output-dir", "--holdout": "--val-fraction"}


def register(commands: argparse._SubParsersAction) -> None:
    medical = commands.add_parser("medical", help="medical imaging: site adaptation, prediction to DICOM SEG")
    sub = medical.add_subparsers(dest="medical_command", metavar="ACTION", required=True)
    adapt = sub.add_parser(
        "adapt", usage="scalpel medical adapt BASE SITE --out RUN [flags]",
        help="adapt a base segmentation or classification checkpoint to a site's DICOM studies and labels",
        description="BASE: a base checkpoint folder (model.safetensors + model.json). SITE holds dicom/<case>/ series and "
                    "labels/<case>.nii.gz (or .dcm, a DICOM SEG); a classification base reads SITE/labels.csv (columns "
                    "case,label) when present. The run is `scalpel run medical.segmentation` (or medical.classification, "
                    "as the base says) with --base BASE --data SITE --output-dir RUN, and takes its flags (--method, --r, "
                    "--max-steps, --folds, --site, --no-deidentify, ...: `scalpel run medical.segmentation --help` lists "
                    "them). Writes RUN/adapter, RUN/report.md, RUN/result.json; the de-identified copy goes to RUN-ingest/.",
    )
    adapt.add_argument("args", nargs=argparse.REMAINDER, metavar="BASE SITE --out RUN [flags]")
    adapt.set_defaults(handler=_adapt, parser=adapt)

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
    predict.add_argument("--push", metavar="URL", help="also send the SEG to this PACS (DICOMweb root or AE@host:port); "
                         "credentials from SCALPEL_PACS_* or --auth-file")
    predict.add_argument("--auth-file", type=Path, help="PACS credentials file for --push (see `scalpel dicom push --help`)")
    predict.add_argument("--key-file", type=Path, help="with --push: the key of a de-identified pull, to send the SEG back "
                         "under the original patient and UIDs")
    predict.set_defaults(handler=_predict)

    sites = sub.add_parser("sites", help="list the site adapters trained on a base checkpoint")
    sites.add_argument("--base", type=Path, required=True, help="base checkpoint folder")
    sites.add_argument("--runs", type=Path, default=Path("runs"), help="folder searched for adapters (default: runs)")
    sites.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sites.set_defaults(handler=_sites)

    from scalpel.medical.federate import register_federate

    register_federate(sub)  # scalpel medical federate BASE SITE SITE ... --out OUT


def _adapt(args: argparse.Namespace) -> int:
    from scalpel.core.flags import parse_run_flags
    from scalpel.medical.adapt import pipeline_for

    if any(a in ("-h", "--help") for a in args.args) or len(args.args) < 2 or args.args[0].startswith("-"):
        args.parser.print_help()
        return 0 if "-h" in args.args or "--help" in args.args else 2
    base, site, *flags = args.args
    flags = [_alias(flag) for flag in flags]
    if not any(f == "--output-dir" or f.startswith("--output-dir=") for f in flags):
        raise ScalpelError("give the run folder: scalpel medical adapt BASE SITE --out RUN")
    if site.startswith(("http://", "https://")):  # a PACS query as the site: pulled de-identified first
        from scalpel.medical.pacs.site import site_from_arguments

        site, flags = site_from_arguments(site, flags)
    pipeline = pipeline_for(base)
    result = pipeline.run(parse_run_flags(pipeline, ["--base", base, "--data", site, *flags]))
    print((Path(result.run_dir) / "report.md").read_text())
    print(json.dumps({"adapter_dir": result.adapter_dir, "report": str(Path(result.run_dir) / "report.md"),
                      "trainable": result.trainable, "total": result.total, "before": result.before, "after": result.after},
                     indent=2, default=str))
    return 0


def _alias(arg: str) -> str:
    flag, eq, value = arg.partition("=")
    if flag == "--holdout":
        warnings.warn("--holdout is deprecated; use --val-fraction", FutureWarning, stacklevel=2)
    return ALIASES.get(flag, flag) + eq + value


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
    pushed = _push_seg(args, path) if args.push else None
    print(json.dumps({"seg": str(path), "series_uid": series.series_uid, "shape": list(labels.shape), "voxels": counts,
                      "adapter": str(args.adapter) if args.adapter else None, **({"pushed": pushed} if pushed else {})}, indent=2))
    return 0


def _push_seg(args: argparse.Namespace, seg_path: Path) -> dict:
    from scalpel.medical.dicom.deid import read_key_file
    from scalpel.medical.pacs.cli import open_pacs
    from scalpel.medical.pacs.workflow import push_prediction

    key = read_key_file(args.key_file) if args.key_file else None
    return push_prediction(open_pacs(args, args.push), seg_path, args.series_dir, key).to_dict()


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
