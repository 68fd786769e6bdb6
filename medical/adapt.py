"""Site adaptation: a base segmentation checkpoint + a site's DICOM and labels -> one small adapter.

    base = save_base(model, BaseSpec(unet=UNetSpec(...), structures=[...], window=(-200, 600), patch=(32, 32, 32)), "base/")
    result = adapt_site("base/", "site_b/", "runs/site_b", AdaptOptions(method="lora", site="B"))
    model = load_site_adapter("base/", "runs/site_b/adapter")      # refuses an adapter of another base

A base is ``model.safetensors`` + ``model.json`` (the :class:`BaseSpec`). The flow of
:func:`adapt_site`: de-identified ingest (default) -> held-out split by case (or K folds) ->
base metrics on the held-out cases -> the method applied and trained with :func:`fit` ->
adapted metrics -> the adapter saved with the base's SHA-256 and the site -> ``report.md``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalpel.core import count_parameters, load_adapter, read_adapter_meta, save_adapter
from scalpel.core.config import raise_if_problems
from scalpel.core.errors import AdapterError, BaseModelMismatchError, DataError
from scalpel.core.files import atomic_write, read_json, write_json
from scalpel.core.fit import FitConfig, fit
from scalpel.core.recipes import adapt, method_names
from scalpel.core.sparse import ScoringData
from scalpel.medical.networks import (
    SPEC,
    NetworkSpec,
    checkpoint_sha256,
    load_checkpoint,
    lora_target_types,
    recorded_orientation,
    save_checkpoint,
    spec_from_dict,
)
from scalpel.medical.segmentation import SegmentationTask, UNetSpec
from scalpel.medical.site import Case, PatchBatches, T, eval_batches, ingest_site, load_cases, split_cases

#: ``extra.task`` of a site adapter (what the apps and ``scalpel medical sites`` look for).
SITE_TASK = "medical.site"


@dataclass(frozen=True)
class BaseSpec:
    """What a base checkpoint is: the network, the structures it segments, its input grid and normalisation.

    ``spacing`` and ``orientation`` are the grid the base was trained on. Left empty, every
    series is used on its own grid (voxel for voxel, as stored); set, every series is
    reoriented and resampled to them for training and inference, and predictions are
    resampled back onto the series' own grid (what a MONAI bundle trained at, say,
    1.5 x 1.5 x 2 mm in RAS needs).
    """

    unet: UNetSpec | NetworkSpec
    """the network: a UNetSpec, or any NetworkSpec (SegResNet, SwinUNETR, a dotted MONAI class)"""
    structures: tuple[str, ...]
    window: tuple[float, float] = (-200.0, 600.0)
    """HU window mapped onto [0, 1] before the network"""
    patch: tuple[int, ...] = (32, 32, 32)
    """training patch and inference window; two sizes for a 2-D network (axial slices)"""
    spacing: tuple[float, ...] = ()
    """voxel size in mm (x y z, after reorienting) the base expects; empty: each series' own"""
    orientation: str = ""
    """axis codes (``"RAS"``, ``"LPS"``...) the base expects; empty: the stored (column, row, slice) order"""

    def __post_init__(self) -> None:
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        problems = []
        if len(self.structures) != self.unet.out_channels - 1:
            problems.append(f"{len(self.structures)} structures but the network has {self.unet.out_channels} outputs (background + structures)")
        if self.window[1] <= self.window[0]:
            problems.append(f"window {self.window}: high must exceed low")
        if len(self.patch) != self.unet.spatial_dims or any(p % self.unet.downsampling for p in self.patch):
            problems.append(f"patch {self.patch} must have {self.unet.spatial_dims} sizes, each a multiple of {self.unet.downsampling}")
        if self.spacing and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            problems.append(f"spacing must be 3 positive sizes in mm (x y z) or empty, got {self.spacing}")
        if self.orientation and (len(self.orientation) != 3 or {c for c in self.orientation.upper()} - set("LRAPIS")):
            problems.append(f"orientation must be 3 axis codes from L/R, A/P, I/S (e.g. 'RAS') or empty, got {self.orientation!r}")
        raise_if_problems("base spec", problems)

    def to_dict(self) -> dict[str, Any]:
        """``model.json``: the keys a ``scalpel run medical.segmentation`` base has, so either tool reads either base."""
        return {"task": "medical.segmentation", "network": self.unet.to_dict(), "structures": list(self.structures),
                "window": list(self.window), "patch": list(self.patch), "spacing": list(self.spacing), "orientation": self.orientation}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseSpec:
        """Read a base written by :func:`save_base` (key ``network``, or ``unet`` before) or by the
        ``medical.segmentation`` pipeline (which always trains in RAS).

        Raises:
            AdapterError: a base of another task, or one without the segmentation facts.
        """
        task = data.get("task", "medical.segmentation")
        missing = [k for k in ("structures", "window", "patch") if k not in data]
        if task != "medical.segmentation" or missing or not (data.get("network") or data.get("unet")):
            why = f"a {task} model" if task != "medical.segmentation" else f"missing {', '.join(missing) or 'network'}"
            raise AdapterError(f"model.json is not a segmentation base ({why}); segmenting needs a base written by save_base "
                               "or `scalpel run medical.segmentation` (a classification base's adapters are served by "
                               "`scalpel predict ADAPTER SERIES_DIR`)")
        return cls(spec_from_dict(data.get("network") or data["unet"]), tuple(data["structures"]), tuple(data["window"]),
                   tuple(data["patch"]), tuple(data.get("spacing") or ()), recorded_orientation(data))

    @property
    def grid(self) -> dict[str, Any]:
        """``spacing`` and ``orientation``, as keyword arguments of :func:`~scalpel.medical.site.load_cases`."""
        return {"spacing": self.spacing, "orientation": self.orientation}


@dataclass(frozen=True)
class AdaptOptions:
    method: str = field(default="lora", metadata={"help": "lora, sparse, layerwise, full, ..."})
    site: str = field(default="site", metadata={"help": "site name recorded in the adapter"})
    deidentify: bool = field(default=True, metadata={"help": "de-identify the DICOM into the run directory before reading"})
    holdout: float = field(default=0.34, metadata={"help": "fraction of cases held out for evaluation"})
    folds: int = field(default=0, metadata={"help": "K-fold evaluation by case instead of --holdout (0: held-out split); "
                                                   "the saved adapter is then trained on all cases"})
    steps: int = field(default=60, metadata={"help": "optimizer steps"})
    lr: float = field(default=5e-3, metadata={"help": "peak learning rate"})
    batch_size: int = field(default=2, metadata={"help": "patches per step"})
    r: int = field(default=4, metadata={"help": "LoRA rank"})
    density: float = field(default=0.03, metadata={"help": "sparse: fraction of weights trained"})
    blocks: str = field(default="first 1", metadata={"help": "layer-wise: blocks to train"})
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.method not in method_names():
            problems.append(f"method {self.method!r} unknown; choose from {', '.join(method_names())}")
        if self.folds == 1 or self.folds < 0:
            problems.append(f"folds must be 0 (held-out split) or >= 2, got {self.folds}")
        if not 0 < self.holdout < 1:
            problems.append(f"holdout must be in (0, 1), got {self.holdout}")
        if self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        raise_if_problems("adapt options", problems)


def save_base(model: nn.Module, spec: BaseSpec, folder: str | os.PathLike) -> Path:
    """Write a base checkpoint: ``model.safetensors`` + ``model.json`` (:meth:`BaseSpec.to_dict`)."""
    facts = spec.to_dict()
    del facts["network"]
    return save_checkpoint(model, spec.unet, folder, **facts)


def load_base(folder: str | os.PathLike) -> tuple[nn.Module, BaseSpec, str]:
    """Rebuild a base: ``(model in eval mode, spec, SHA-256 of its weights)``.

    Raises:
        AdapterError: no checkpoint there, weights that do not fit, or not a segmentation base.
    """
    model, _, facts, sha = load_checkpoint(folder)
    return model, BaseSpec.from_dict(facts), sha


def method_options(options: AdaptOptions, model: nn.Module | None = None) -> dict[str, Any]:
    """Options for :func:`scalpel.core.recipes.adapt`: LoRA on every convolution of the network
    and, where it has them (SwinUNETR), its linear layers, attention included."""
    if options.method in ("lora", "dora", "rslora"):
        types = lora_target_types(model) if model is not None else ("Conv2d", "Conv3d")
        return {"target_types": types, "r": options.r, "alpha": 2.0 * options.r}
    if options.method == "sparse":
        return {"density": options.density, "scorer": "fisher", "num_batches": 4}
    if options.method == "layerwise":
        return {"blocks": (options.blocks,)}
    return {}


def adapt_site(base_dir: str | os.PathLike, site: str | os.PathLike, run_dir: str | os.PathLike,
               options: AdaptOptions | None = None) -> dict[str, Any]:
    """Adapt the base in ``base_dir`` to the labelled cases in ``site``; return the results.

    A classification base (``model.json`` task ``medical.classification``) goes the same way
    through :func:`scalpel.medical.site_classification.adapt_classifier` (AUC, sensitivity,
    specificity and accuracy instead of Dice and HD95).

    With ``options.folds = K >= 2`` the cases are split into K folds by case: each fold is
    evaluated (base and adapted) with an adapter trained on the other folds, and the saved
    adapter is then trained on every case; its recorded metrics are the K-fold means.
    Otherwise one held-out split (``options.holdout``) is evaluated and the adapter trained
    on the rest is saved.

    Returns:
        ``{"run_dir", "adapter_dir", "report", "base": metrics, "adapted": metrics,
        "trainable", "total", "train_seconds", "train_cases", "eval_cases", "skipped",
        "folds": per-fold results (K-fold only)}``.

    Raises:
        DataError: see :func:`~scalpel.medical.site.load_cases`; fewer cases than folds.
        AdapterError: no base there.
    """
    options = options or AdaptOptions()
    run_dir = Path(run_dir)
    if _base_task(base_dir) == "medical.classification":
        from scalpel.medical.site_classification import adapt_classifier

        return adapt_classifier(base_dir, site, run_dir, options, checkpoint_sha256(base_dir))
    _, spec, base_sha = load_base(base_dir)
    series_root = ingest_site(site, run_dir, deidentify=options.deidentify)
    cases, skipped = load_cases(series_root, Path(site) / "labels", window=spec.window, min_size=spec.patch, **spec.grid)
    task = SegmentationTask(spec.structures, spec.patch)
    folds: list[dict[str, Any]] = []
    if options.folds:
        for k, (train, held_out) in enumerate(kfold_cases(cases, options.folds, options.seed)):
            trained = _train_adapter(base_dir, train, held_out, task, options, run_dir / f"fold{k}")
            folds.append({"fold": k, "eval_cases": [c.name for c in held_out], **trained.pop("metrics"),
                          "train_seconds": trained["seconds"]})
        base_metrics = mean_metrics([f["base"] for f in folds])
        adapted_metrics = mean_metrics([f["adapted"] for f in folds])
        train, held_out = cases, []
        trained = _train_adapter(base_dir, train, None, task, options, run_dir)
    else:
        train, held_out = split_cases(cases, options.holdout, options.seed)
        trained = _train_adapter(base_dir, train, held_out, task, options, run_dir)
        base_metrics, adapted_metrics = trained["metrics"]["base"], trained["metrics"]["adapted"]
    model = trained["model"]
    adapter_dir = save_adapter(
        model, run_dir / "adapter", metrics=adapted_metrics,
        extra={"task": SITE_TASK, "site": options.site, "method": options.method, "base_sha256": base_sha,
               "base_dir": str(Path(base_dir).resolve()), "structures": list(spec.structures),
               "train_cases": [c.name for c in train], "eval_cases": [c.name for c in held_out],
               "evaluation": f"{options.folds}-fold" if options.folds else "held-out"},
        base_model={"spec": spec.to_dict(), "sha256": base_sha},
    )
    summary = {"run_dir": str(run_dir), "adapter_dir": str(adapter_dir), "base": base_metrics, "adapted": adapted_metrics,
               "trainable": trained["trainable"], "total": trained["total"], "train_seconds": trained["seconds"],
               "steps": trained["steps"], "train_cases": len(train), "eval_cases": len(held_out), "skipped": skipped,
               "method": options.method, "site": options.site, "folds": folds}
    report = run_dir / "report.md"
    with atomic_write(report, "w") as handle:
        handle.write(format_report(summary, spec.structures))
    summary["report"] = str(report)
    write_json(run_dir / "summary.json", summary)
    return summary


def recalibrate_site(base_dir: str | os.PathLike, site: str | os.PathLike, options: AdaptOptions | None = None) -> dict[str, Any]:
    """The zero-parameter baseline of site adaptation (AdaBN, Li et al. 2016, arXiv:1603.04779):
    the base with its BatchNorm running statistics re-estimated on the site's training cases
    (the held-out split :func:`adapt_site` makes with the same ``options``), scored on its
    held-out cases. Nothing is trained; compare it with every method on a BatchNorm network.

    Returns:
        ``{"model", "base": metrics, "adapted": metrics, "seconds", "train_cases", "eval_cases"}``.
    """
    from scalpel.core.layerwise import recalibrate_norm_statistics

    options = options or AdaptOptions()
    model, spec, _ = load_base(base_dir)
    cases, _ = load_cases(Path(site) / "dicom", Path(site) / "labels", window=spec.window, min_size=spec.patch, **spec.grid)
    train, held_out = split_cases(cases, options.holdout, options.seed)
    task = SegmentationTask(spec.structures, spec.patch)
    before = task.evaluate(model, eval_batches(held_out))
    started = time.perf_counter()
    recalibrate_norm_statistics(model, PatchBatches(train, spec.patch, batch_size=options.batch_size, batches=16, seed=options.seed))
    seconds = time.perf_counter() - started
    return {"model": model, "base": before, "adapted": task.evaluate(model, eval_batches(held_out)), "seconds": seconds,
            "train_cases": [c.name for c in train], "eval_cases": [c.name for c in held_out]}


def _base_task(base_dir: str | os.PathLike) -> str:
    path = Path(base_dir) / SPEC
    return str(read_json(path).get("task", "medical.segmentation")) if path.is_file() else "medical.segmentation"


def _train_adapter(base_dir: str | os.PathLike, train: list[Case], held_out: list[Case] | None, task: SegmentationTask,
                   options: AdaptOptions, out: Path) -> dict[str, Any]:
    """A fresh base, the method applied, trained on ``train``; metrics before/after on ``held_out``."""
    model, spec, _ = load_base(base_dir)
    evaluation = eval_batches(held_out) if held_out else None
    base_metrics = task.evaluate(model, evaluation) if evaluation else None
    train_batches = PatchBatches(train, spec.patch, batch_size=options.batch_size, batches=4, seed=options.seed)
    # data-driven selection (sparse Fisher scores) scores with the task's own DiceCE loss
    scoring = ScoringData(train_batches, lambda m, b: task.step(m, b)["loss"])
    model = adapt(model, options.method, data=scoring, **method_options(options, model))
    trainable, total = count_parameters(model)
    started = time.perf_counter()
    result = fit(model, task, train_batches, evaluation,
                 FitConfig(output_dir=str(out / "fit"), max_steps=options.steps, lr=options.lr, eval_every=max(1, options.steps // 3),
                           metric="dice", greater_is_better=True, save_every=0, progress=False, seed=options.seed, overwrite=True))
    seconds = time.perf_counter() - started
    metrics = {"base": base_metrics, "adapted": task.evaluate(model, evaluation)} if evaluation else {}
    return {"model": model, "trainable": trainable, "total": total, "seconds": seconds, "steps": result.steps, "metrics": metrics}


def kfold_cases(cases: list[T], folds: int, seed: int) -> list[tuple[list[T], list[T]]]:
    """K folds by case (never by patch), shuffled with ``seed``: ``[(train, held_out), ...]``; every
    case is held out exactly once, fold sizes differ by at most one.

    Raises:
        DataError: fewer cases than folds.
    """
    if folds < 2 or len(cases) < folds:
        raise DataError(f"{folds}-fold evaluation needs at least {max(folds, 2)} labelled cases, the site has {len(cases)}; "
                        "use fewer --folds or the held-out split (--folds 0)")
    order = torch.randperm(len(cases), generator=torch.Generator().manual_seed(seed)).tolist()
    chunks = [order[k::folds] for k in range(folds)]
    return [([cases[i] for i in order if i not in chunk], [cases[i] for i in chunk]) for chunk in chunks]


def mean_metrics(per_fold: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each metric over folds (NaN folds skipped), plus ``<key>_std`` (population std)."""
    out: dict[str, float] = {}
    for key in per_fold[0]:
        values = torch.tensor([f[key] for f in per_fold], dtype=torch.float64)
        values = values[~values.isnan()]
        out[key] = float(values.mean()) if len(values) else float("nan")
        out[f"{key}_std"] = float(values.std(unbiased=False)) if len(values) else float("nan")
    return out


def load_site_adapter(base_dir: str | os.PathLike, adapter_dir: str | os.PathLike) -> nn.Module:
    """The base with a site adapter loaded; refuses an adapter trained on another base.

    Raises:
        BaseModelMismatchError: the adapter records another base checkpoint (SHA-256) or shapes.
    """
    model, _, sha = load_base(base_dir)
    recorded = read_adapter_meta(adapter_dir).get("extra", {}).get("base_sha256")
    if recorded and recorded != sha:
        raise BaseModelMismatchError(f"the adapter {adapter_dir} was trained on the base with SHA-256 {recorded[:12]}..., "
                                     f"not on {base_dir} ({sha[:12]}...); load it onto its own base or adapt this base again")
    return load_adapter(model, adapter_dir)


def train_base(site: str | os.PathLike, base_dir: str | os.PathLike, spec: BaseSpec, *, steps: int = 150,
               lr: float = 1e-2, seed: int = 0) -> dict[str, Any]:
    """Train a base network from scratch on every labelled case of ``site`` (no de-identification:
    a base is built from data already cleared for it) and save it with :func:`save_base`."""
    torch.manual_seed(seed)
    model = spec.unet.build()
    cases, _ = load_cases(Path(site) / "dicom", Path(site) / "labels", window=spec.window, min_size=spec.patch, **spec.grid)
    task = SegmentationTask(spec.structures, spec.patch, hd95=False)
    batches = PatchBatches(cases, spec.patch, batch_size=2, batches=4, seed=seed)
    result = fit(model, task, batches, None, FitConfig(output_dir=str(Path(base_dir) / "fit"), max_steps=steps, lr=lr,
                                                      save_every=0, progress=False, seed=seed, overwrite=True))
    save_base(model.eval(), spec, base_dir)
    return {"base_dir": str(base_dir), "steps": result.steps, "train_seconds": result.train_seconds, "cases": len(cases)}


def report_head(s: dict[str, Any], title: str, fold_columns: list[tuple[str, str, int]]) -> list[str]:
    """The lines a site report starts with: what was trained and scored and, with K folds, one row
    per fold; ``fold_columns`` are ``(header, metric, digits)``, each shown base and adapted."""
    folds = s.get("folds") or []
    share = f"trainable parameters {s['trainable']:,} of {s['total']:,} ({100 * s['trainable'] / max(1, s['total']):.2f}%)."
    if not folds:
        return [f"# Site adaptation: {title}", "",
                f"{s['train_cases']} training case(s), {s['eval_cases']} held-out case(s); {s['steps']} steps in "
                f"{s['train_seconds']:.1f} s; " + share, ""]
    headers = " | ".join(f"{name} {side}" for name, _, _ in fold_columns for side in ("base", "adapted"))
    lines = [f"# Site adaptation: {title}, {len(folds)}-fold evaluation", "",
             f"Each fold: an adapter trained on the other folds, base and adapted scored on the fold's cases. "
             f"The saved adapter was then trained on all {s['train_cases']} case(s) ({s['steps']} steps in "
             f"{s['train_seconds']:.1f} s); no case is left to score it, so its metrics are the {len(folds)}-fold means. " + share, "",
             f"| fold | held-out cases | {headers} |", "|---|---|" + "---|" * 2 * len(fold_columns)]
    for f in folds:
        cells = " | ".join(f"{f[side][key]:.{digits}f}" for _, key, digits in fold_columns for side in ("base", "adapted"))
        lines.append(f"| {f['fold']} | {', '.join(f['eval_cases'])} | {cells} |")
    return lines + ["", "Mean ± std over folds:", ""]


def format_report(s: dict[str, Any], structures: tuple[str, ...]) -> str:
    lines = report_head(s, f"{s['site']} ({s['method']})", [("Dice", "dice", 3), ("HD95 (mm)", "hd95", 2)])
    lines += ["| structure | Dice base | Dice adapted | HD95 base (mm) | HD95 adapted (mm) |", "|---|---|---|---|---|"]
    for name in [*structures, None]:
        key = f"/{name}" if name else ""
        label = name or "**mean**"
        cells = [metric_cell(s[side], metric + key, digits) for metric, digits in (("dice", 3), ("hd95", 2)) for side in ("base", "adapted")]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if s["skipped"]:
        lines += ["", "Skipped cases:", *[f"- {why}" for why in s["skipped"]]]
    return "\n".join(lines) + "\n"


def metric_cell(metrics: dict[str, float], key: str, digits: int) -> str:
    text = f"{metrics[key]:.{digits}f}"
    return f"{text} ± {metrics[key + '_std']:.{digits}f}" if key + "_std" in metrics else text
