"""K-fold evaluation by case: one run per fold inside the site's run folder, then the final adapter
trained on every case, recorded with the K-fold means.

    RUN/fold0/ ... RUN/fold{K-1}/   an adapter trained on the other folds, base and adapted scored
                                    on the fold's cases (each a run_adaptation, claim=False)
    RUN/adapter/                    trained on all cases; its metrics are the folds' means (± std)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalpel.core.options import MethodOptions, TrainOptions
from scalpel.core.run import RESULT_FILE, Kit, RunResult, run_adaptation
from scalpel.core.run_files import RunDirectory
from scalpel.medical.site import T, kfold_cases


def run_folds(kit_for: Callable[[list[T], list[T], int], Callable[[Path], Kit]], cases: list[T], folds: int,
              method: MethodOptions, train: TrainOptions, run_dir: Path, run_config: dict[str, Any]) -> list[dict[str, Any]]:
    """Train and score one adapter per fold into ``run_dir/fold<k>``; one summary per fold.

    Args:
        kit_for: ``(train cases, held-out cases, fold) -> kit builder`` of one fold's run.
        cases: the site's labelled cases (records with a ``case`` name).

    On ``resume``, folds that finished are read back, an interrupted one continues from its
    last checkpoint, and the rest run.

    Raises:
        DataError: fewer cases than folds.
    """
    if not (run_dir / "config.yaml").is_file():  # marks the folder as a run from the first fold on (--resume finds it)
        RunDirectory(run_dir).write_config({}, run_config)
    summaries = []
    for k, (train_cases, held_out) in enumerate(kfold_cases(cases, folds, train.seed)):
        fold_dir = run_dir / f"fold{k}"
        if train.resume and (fold_dir / RESULT_FILE).is_file():
            result = RunResult.read(fold_dir)
        else:
            # the site's run folder is claimed once (by its own run); each fold writes into its subfolder
            fold_train = dataclasses.replace(train, output_dir=str(fold_dir))
            result = run_adaptation(kit_for(train_cases, held_out, k), method, fold_train, run_config=run_config, claim=False)
        summaries.append({"fold": k, "eval_cases": [c["case"] for c in held_out], "before": result.before, "after": result.after,
                          "train_seconds": result.train_seconds, "run_dir": str(fold_dir)})
    return summaries


class FoldMeans:
    """The final run's ``evaluate`` under K folds: no case is left to score the adapter trained on
    all of them, so its "before" is the base's mean over the folds and its "after" the fold
    adapters' mean (``<metric>_std``: the population standard deviation over folds)."""

    def __init__(self, folds: list[dict[str, Any]]):
        self.answers = iter([mean_metrics([f["before"] for f in folds]), mean_metrics([f["after"] for f in folds])])

    def __call__(self, model: nn.Module) -> dict[str, float]:
        return next(self.answers)  # called twice by run_adaptation: before training, then after


def mean_metrics(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over folds (NaN folds skipped), plus ``<key>_std`` (population std)."""
    out: dict[str, float] = {}
    for key in per_fold[0]:
        values = torch.tensor([f[key] for f in per_fold], dtype=torch.float64)
        values = values[~values.isnan()]
        out[key] = float(values.mean()) if len(values) else math.nan
        out[f"{key}_std"] = float(values.std(unbiased=False)) if len(values) else math.nan
    return out


def fold_report(folds: list[dict[str, Any]], metrics: tuple[str, ...], cases: int) -> list[str]:
    """The report section of a K-fold run: one row per fold and the means ± std, base and adapted."""
    metrics = tuple(m for m in metrics if m in folds[0]["after"])  # HD95 is left out of --quick runs
    headers = " | ".join(f"{m} {side}" for m in metrics for side in ("base", "adapted"))
    lines = [f"## {len(folds)}-fold evaluation", "",
             "Each fold: an adapter trained on the other folds, base and adapted scored on the fold's cases. The adapter saved "
             f"here was then trained on all {cases} case(s); no case is left to score it, so the metrics it records are the "
             f"{len(folds)}-fold means (± population std).", "",
             f"| fold | held-out cases | {headers} |", "|---|---|" + "---:|" * 2 * len(metrics)]
    for f in folds:
        cells = " | ".join(f"{f[side].get(m, math.nan):.3f}" for m in metrics for side in ("before", "after"))
        lines.append(f"| {f['fold']} | {', '.join(f['eval_cases'])} | {cells} |")
    means = {side: mean_metrics([f[side] for f in folds]) for side in ("before", "after")}
    cells = " | ".join(f"{means[side][m]:.3f} ± {means[side][m + '_std']:.3f}" for m in metrics for side in ("before", "after"))
    return lines + [f"| mean ± std | | {cells} |"]
