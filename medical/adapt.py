"""Site adaptation: a base checkpoint + a site's DICOM and labels -> one small adapter.

    result = adapt_site("base/", "site_b/", "runs/site_b", method="lora", site="B", folds=5)
    model = load_site_adapter("base/", "runs/site_b/adapter")      # refuses an adapter of another base
    baseline = recalibrate_site("base/", "site_b/", "runs/site_b-adabn")   # AdaBN: statistics only

Site adaptation is the medical pipeline of the base's task (``scalpel run medical.segmentation``
or ``medical.classification``, :mod:`scalpel.medical.pipelines`) with ``base``, ``data`` and
``output_dir`` set, and takes the same flat settings (``method``, ``r``, ``max_steps``, ``folds``,
``site``, ``deidentify``, ``val_fraction``, ...). ``scalpel medical adapt BASE SITE --out RUN``
is the command.
"""

from __future__ import annotations

import itertools
import os
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from scalpel.core.errors import ConfigError
from scalpel.core.files import read_json
from scalpel.core.pipeline import Pipeline
from scalpel.core.run import RunResult
from scalpel.medical.base import SEGMENTATION, BaseSpec, load_base, load_site_adapter, save_base  # noqa: F401  (the site API)
from scalpel.medical.networks import SPEC, checkpoint_sha256
from scalpel.medical.pipelines import PIPELINES, build_kit, train_base  # noqa: F401  (the site API)
from scalpel.medical.site import kfold_cases  # noqa: F401  (the site API)

#: Settings of earlier releases' ``AdaptOptions`` -> today's names.
RENAMED = {"steps": "max_steps", "holdout": "val_fraction"}


def pipeline_for(base_dir: str | os.PathLike) -> Pipeline:
    """The medical pipeline of the base in ``base_dir`` (its ``model.json`` task; segmentation when unrecorded).

    Raises:
        AdapterError: no base checkpoint there.
    """
    checkpoint_sha256(base_dir)  # refuses a folder that is not a checkpoint, naming what is missing
    task = read_json(Path(base_dir) / SPEC).get("task") or SEGMENTATION
    if task not in PIPELINES:
        raise ConfigError("site adaptation", [f"the base {base_dir} is a {task} model; give a base of {', '.join(PIPELINES)}"])
    return PIPELINES[task]


def adapt_site(base_dir: str | os.PathLike, site_dir: str | os.PathLike, run_dir: str | os.PathLike,
               options: Mapping[str, Any] | None = None, **settings: Any) -> RunResult:
    """Adapt the base in ``base_dir`` to the labelled cases in ``site_dir``, into ``run_dir``.

    Args:
        options, settings: flat settings of the base's pipeline (flag names: ``method="sparse"``,
            ``max_steps=60``, ``folds=3``, ``site="B"``, ``deidentify=False``, ``overwrite=True``...).

    Returns:
        The run's record: ``before``/``after`` are the base's and the adapter's metrics on the
        held-out cases (with ``folds``: the K-fold means and ``<metric>_std``); ``extras`` hold
        ``train_cases``, ``eval_cases``, ``skipped``, ``site``, ``evaluation`` and ``folds``.

    Raises:
        ScalpelError: bad input (no base, a label off its series' grid, a series smaller than
            the patch, no usable case, fewer cases than folds, ...), with the fix.
    """
    given = {RENAMED.get(k, k): v for k, v in {**(options or {}), **settings}.items()}
    return pipeline_for(base_dir).run(**given, base=str(base_dir), data=str(site_dir), output_dir=str(run_dir))


def AdaptOptions(**settings: Any) -> dict[str, Any]:  # noqa: N802  (the name earlier releases' callers use)
    """Deprecated: :func:`adapt_site` takes the pipeline's flat settings. Returns them, old names
    (``steps``, ``holdout``) translated."""
    warnings.warn("AdaptOptions is deprecated; pass the settings to adapt_site (max_steps=, val_fraction=, ...)",
                  FutureWarning, stacklevel=2)
    return {RENAMED.get(k, k): v for k, v in settings.items()}


def recalibrate_site(base_dir: str | os.PathLike, site_dir: str | os.PathLike, run_dir: str | os.PathLike, *,
                     batches: int = 16, **settings: Any) -> dict[str, Any]:
    """The zero-parameter baseline of site adaptation (AdaBN, Li et al. 2016, arXiv:1603.04779):
    the base with its BatchNorm running statistics re-estimated on ``batches`` training batches of
    the site (the split :func:`adapt_site` makes with the same ``settings``), scored on its
    held-out cases. Nothing is trained; compare it with every method on a BatchNorm network.

    Returns:
        ``{"model", "before": metrics, "after": metrics, "seconds", "train_cases", "eval_cases"}``.

    Raises:
        ConfigError: no held-out case to score (``folds``, or ``val_fraction`` 0).
    """
    from scalpel.core.layerwise import recalibrate_norm_statistics

    values = pipeline_for(base_dir).settings({RENAMED.get(k, k): v for k, v in settings.items()},
                                             base=str(base_dir), data=str(site_dir), output_dir=str(run_dir))
    if values.options.folds or not (values.options.val_fraction or values.options.val_data):
        raise ConfigError("AdaBN baseline", ["it is scored on one held-out split: leave out --folds, keep --val-fraction > 0"])
    torch.manual_seed(values.train.seed)  # as run_adaptation does before building a kit: the same crops
    kit = build_kit(values.options, values.method, values.train, Path(run_dir))
    model, extra = kit.model, kit.adapter_metadata["extra"]
    before = kit.task.evaluate(model, kit.eval_data)
    started = time.perf_counter()
    training = itertools.chain.from_iterable(itertools.repeat(kit.train_data))  # epoch after epoch: new crops each
    recalibrate_norm_statistics(model, itertools.islice(training, batches))
    seconds = time.perf_counter() - started
    return {"model": model, "before": before, "after": kit.task.evaluate(model, kit.eval_data), "seconds": seconds,
            "train_cases": extra["train_cases"], "eval_cases": extra["eval_cases"]}
