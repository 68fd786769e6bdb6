"""Site adaptation of a classification base: ``scalpel medical adapt`` when the base classifies.

    summary = adapt_classifier("cls_base/", "site_b/", "runs/site_b", AdaptOptions(method="lora", site="B", folds=3))

The same flow as segmentation (:func:`scalpel.medical.adapt.adapt_site`), on the
``medical.classification`` pipeline's data and task: de-identified ingest -> cases split by
case (held-out or K folds) -> base and adapted AUC, sensitivity, specificity and accuracy
(per class and macro) on the held-out cases -> one adapter saved with the base's SHA-256 and
the site -> ``report.md``. Labels come from ``site/labels.csv`` (columns ``case,label``: a
class per volume) or, without it, from the label maps ``site/labels/<case>.nii.gz`` (presence
of the structure the base was trained on, per volume or per axial slice as the base does).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from scalpel.core.artifacts import SCALPEL_FILE, read_adapter_meta
from scalpel.core.errors import DataError
from scalpel.core.files import atomic_write, write_json
from scalpel.medical.adapt import AdaptOptions, kfold_cases, mean_metrics, metric_cell, report_head
from scalpel.medical.classification import read_class_labels
from scalpel.medical.pipelines import ClassificationConfig, run_medical, site_records
from scalpel.medical.site import ingest_site, split_cases

LABELS_CSV = "labels.csv"
#: the metrics a classification site report shows, in order (per-class ones follow)
HEADLINE = ("auc", "sensitivity", "specificity", "accuracy")


def adapt_classifier(base_dir: str | os.PathLike, site: str | os.PathLike, run_dir: str | os.PathLike, options: AdaptOptions,
                     base_sha: str) -> dict[str, Any]:
    """Adapt the classification base in ``base_dir`` to ``site``; the summary of :func:`adapt_site`.

    Raises:
        DataError: no labelled case (no ``labels.csv`` row or label map for any series), fewer
            cases than folds, fewer than 2 cases for a held-out split.
    """
    run_dir, site = Path(run_dir), Path(site)
    series_root = ingest_site(site, run_dir, deidentify=options.deidentify)
    records, skipped = classification_records(site, series_root)
    config = ClassificationConfig(
        data=str(site), base=str(base_dir), method=options.method, r=options.r, alpha=2.0 * options.r, density=options.density,
        blocks=(options.blocks,), steps=options.steps, lr=options.lr, batch_size=options.batch_size, seed=options.seed,
        labels_csv=str(site / LABELS_CSV) if (site / LABELS_CSV).is_file() else "", output_dir=str(run_dir))
    folds: list[dict[str, Any]] = []
    if options.folds:
        for k, (train, held_out) in enumerate(kfold_cases(records, options.folds, options.seed)):
            result = run_medical(replace(config, output_dir=str(run_dir / f"fold{k}")), split=(train, held_out))
            folds.append({"fold": k, "eval_cases": [r["case"] for r in held_out], "base": result["before"],
                          "adapted": result["metrics"], "train_seconds": result["train_seconds"]})
        base_metrics, adapted_metrics = mean_metrics([f["base"] for f in folds]), mean_metrics([f["adapted"] for f in folds])
        train, held_out = records, []
    else:
        train, held_out = split_cases(records, options.holdout, options.seed)  # by case, at least one on each side
    result = run_medical(config, split=(train, held_out))
    if not options.folds:
        base_metrics, adapted_metrics = result["before"], result["metrics"]
    adapter_dir = Path(result["adapter_dir"])
    _record_site(adapter_dir, adapted_metrics, {
        "site": options.site, "base_sha256": base_sha, "evaluation": f"{options.folds}-fold" if options.folds else "held-out",
        "train_cases": [r["case"] for r in train], "eval_cases": [r["case"] for r in held_out]})
    summary = {"run_dir": str(run_dir), "adapter_dir": str(adapter_dir), "base": base_metrics, "adapted": adapted_metrics,
               "trainable": result["trainable"], "total": result["total"], "train_seconds": result["train_seconds"],
               "steps": result["summary"]["steps"], "train_cases": len(train), "eval_cases": len(held_out), "skipped": skipped,
               "method": options.method, "site": options.site, "folds": folds, "task": "medical.classification"}
    report = run_dir / "report.md"
    with atomic_write(report, "w") as handle:
        handle.write(format_classification_report(summary))
    summary["report"] = str(report)
    write_json(run_dir / "summary.json", summary)
    return summary


def classification_records(site: Path, series_root: Path) -> tuple[list[dict[str, str]], list[str]]:
    """``[{"image": ingested series folder, "case", "class" | "label"}]`` and why cases were skipped."""
    if (site / LABELS_CSV).is_file():
        records, _, skipped = read_class_labels(site, site / LABELS_CSV)
    else:
        records, skipped = site_records(site)
    usable = []
    for record in records:
        folder = series_root / record["case"]
        if not folder.is_dir() or (folder / ".skipped").is_file():
            why = (folder / ".skipped").read_text() if (folder / ".skipped").is_file() else "not ingested"
            skipped.append(f"{record['case']}: {why}")
        else:
            usable.append({**record, "image": str(folder)})
    if not usable:
        raise DataError(f"no usable labelled series in {site}: {'; '.join(skipped) or 'no cases'}")
    return usable, skipped


def _record_site(adapter_dir: Path, metrics: dict[str, float], site: dict[str, Any]) -> None:
    """Put the site, the evaluation and its metrics into the adapter's ``scalpel.json`` (atomically)."""
    meta = read_adapter_meta(adapter_dir)
    meta["metrics"] = metrics
    meta["extra"] = {**meta.get("extra", {}), **site}
    write_json(adapter_dir / SCALPEL_FILE, meta)


def format_classification_report(s: dict[str, Any]) -> str:
    lines = report_head(s, f"{s['site']} ({s['method']}, classification)", [("AUC", "auc", 3), ("accuracy", "accuracy", 3)])
    keys = [k for k in HEADLINE if k in s["adapted"]]
    per_class = sorted(k for k in s["adapted"] if "/" in k and not k.endswith("_std"))
    keys += per_class if sum(k.startswith("auc/") for k in per_class) > 1 else []  # binary: the macro rows are the class's
    lines += ["| metric | base | adapted |", "|---|---|---|"]
    lines += [f"| {k} | {metric_cell(s['base'], k, 3)} | {metric_cell(s['adapted'], k, 3)} |" for k in keys]
    if s["skipped"]:
        lines += ["", "Skipped cases:", *[f"- {why}" for why in s["skipped"]]]
    return "\n".join(lines) + "\n"
