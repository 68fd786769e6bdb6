"""One run for every pipeline: ``run_adaptation(kit, method, train) -> RunResult``.

A pipeline supplies a :class:`Kit` (its data, base model, task, metric and the facts of its
model family); the run is the same for all of them, top to bottom:

    claim the run directory -> metrics BEFORE -> apply the method (+ teacher) -> fit
    -> metrics AFTER -> adapter (with metrics) -> report.md -> result.json

The run directory contract lives here: a folder holding an earlier run is refused unless
``overwrite`` (it is then deleted whole); ``resume`` continues an interrupted run from its
last step checkpoint; step checkpoints are written ten times a run unless ``save_every`` says
otherwise, so a kill loses at most a tenth of the training.
"""

from __future__ import annotations

import dataclasses
import math
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalpel.core.artifacts import adapter_bytes, save_adapter
from scalpel.core.checkpoint import list_checkpoints
from scalpel.core.config import config_to_dict
from scalpel.core.delta import count_parameters
from scalpel.core.errors import ConfigError, ScalpelError
from scalpel.core.files import atomic_write, read_json, write_json
from scalpel.core.fit import Task, fit
from scalpel.core.layerwise import LayerwiseConfig
from scalpel.core.options import MethodOptions, TrainOptions
from scalpel.core.recipes import ModelDefaults, adapt_model, method_configs
from scalpel.core.sparse import ScoringData, SparseConfig

RESULT_FILE = "result.json"
#: What marks a folder as a run of ours (so ``overwrite`` never deletes a folder that is not).
RUN_MARKERS = ("config.yaml", "metrics.jsonl", RESULT_FILE, "adapter", "checkpoints")


@dataclass
class Kit:
    """The domain-specific part of a run; everything else is :func:`run_adaptation`.

    Attributes:
        pipeline: the pipeline's name (``"nlp.sentiment"``).
        model: the base model, before any method is applied.
        task: turns a batch into ``{"loss": ...}`` and evaluation batches into metrics.
        train_data: training batches (a DataLoader, or a re-iterable with ``len()``).
        eval_data: validation batches that pick the best adapter; None: keep the last weights.
        metric: the metric reported before/after and that picks the best adapter.
        greater_is_better: direction of ``metric``.
        defaults: head trained in full, default LoRA/sparse targets and layer-wise blocks.
        model_id: a short name of the base for tables.
        adapter_metadata: ``save_adapter`` keywords (``extra``, ``base_model``, ``data_fingerprint``).
        evaluate: model -> metrics, before and after training (a test split, or generation
            metrics); default: ``task.evaluate`` on ``eval_data``.
        teacher: (task, method options) -> the task with distillation from ``method.teacher``.
        report: (model, result) -> extra markdown lines for report.md.
        finish: (model, result) -> extras, after the adapter is written (files beside it,
            samples); they land in ``RunResult.extras``.
    """

    pipeline: str
    model: nn.Module
    task: Task
    train_data: Iterable[Any]
    eval_data: Iterable[Any] | None
    metric: str
    greater_is_better: bool = True
    defaults: ModelDefaults = field(default_factory=ModelDefaults)
    model_id: str = ""
    adapter_metadata: dict[str, Any] = field(default_factory=dict)
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None
    teacher: Callable[[Task, MethodOptions], Task] | None = None
    report: Callable[[nn.Module, RunResult], list[str]] | None = None
    finish: Callable[[nn.Module, RunResult], dict[str, Any]] | None = None


@dataclass(frozen=True)
class RunResult:
    """What one run produced; written to ``<run_dir>/result.json`` (last, so its presence marks a finished run)."""

    pipeline: str
    run_dir: str
    adapter_dir: str
    model: str
    method: str
    metric: str
    greater_is_better: bool
    before: dict[str, float]
    after: dict[str, float]
    trainable: int
    total: int
    train_seconds: float
    adapter_bytes: int
    peak_memory: int
    """bytes: peak CUDA memory allocated on a GPU; the process's peak resident memory on CPU"""
    steps: int
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def score(self) -> float:
        """The headline metric after training (NaN when the run was not evaluated)."""
        return float(self.after.get(self.metric, math.nan))

    def row(self) -> dict[str, Any]:
        """The row :func:`scalpel.core.compare.comparison_table` prints."""
        before = self.before.get(self.metric)
        return {"task": self.pipeline, "model": self.model, "method": self.method, "metric": self.metric, "before": before,
                "after": self.score, "trainable": self.trainable, "total": self.total, "train_seconds": self.train_seconds,
                "adapter_bytes": self.adapter_bytes, "run_dir": self.run_dir}

    @classmethod
    def read(cls, run_dir: str | Path) -> RunResult:
        path = Path(run_dir) / RESULT_FILE
        if not path.is_file():
            raise ScalpelError(f"{run_dir} holds no finished run ({RESULT_FILE} is missing); run it, or --resume it if it was interrupted")
        data = read_json(path)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def run_adaptation(kit_builder: Callable[[Path], Kit], method: MethodOptions, train: TrainOptions, *,
                   run_config: dict[str, Any] | None = None, default_dir: str = "runs/run", claim: bool = True) -> RunResult:
    """Run one adaptation: the same steps for every pipeline.

    Args:
        kit_builder: run directory -> :class:`Kit`; called once the directory is claimed
            (so a refused run loads nothing, and an overwritten one starts clean).
        method: what is trained.
        train: how; ``train.output_dir`` (default ``default_dir``) is the run directory.
        run_config: the full resolved settings, written to ``config.yaml`` under ``run:``.
        claim: apply :func:`claim_run_dir`; False when the caller already claimed the folder
            (a fold loop that claims the site's run once, then writes folds and the final run into it).
    """
    run_dir = Path(train.output_dir or default_dir)
    resuming = claim_run_dir(run_dir, train) if claim else bool(train.resume and list_checkpoints(run_dir / "checkpoints"))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(train.seed)
    kit = kit_builder(run_dir)
    evaluate = kit.evaluate or (lambda model: _evaluate_task(kit.task, model, kit.eval_data))
    before = evaluate(kit.model) if kit.evaluate or kit.eval_data is not None else {}

    configs = method_configs(method, kit.defaults)
    model = adapt_model(kit.model, method, kit.defaults, data=_scoring_data(configs, kit, method))
    trainable, total = count_parameters(model)
    task = _with_teacher(kit, method)
    param_groups, hooks = _groups_and_hooks(model, task, method, configs, kit, train)
    total_steps = planned_steps(kit.train_data, train)
    # the pipeline's registered builder rebuilds the base from the adapter alone (scalpel adapter merge)
    metadata = {**kit.adapter_metadata, "base_model": {"builder": kit.pipeline, **kit.adapter_metadata.get("base_model", {})}}
    fit_config = dataclasses.replace(  # the progress bar's title says which run it is, e.g. "nlp.sentiment/lora"
        train.fit_config(str(run_dir), metric=kit.metric, greater_is_better=kit.greater_is_better, total_steps=total_steps),
        resume=resuming, run_name=f"{kit.pipeline}/{run_dir.name}")
    fitted = fit(model, task, kit.train_data, kit.eval_data, fit_config, param_groups=param_groups, hooks=hooks,
                 run_config=run_config, adapter_metadata=metadata)

    model.eval()
    after = evaluate(model) if kit.evaluate else dict(fitted.metrics)  # fit's metrics are of the weights it returned
    adapter_dir = save_adapter(model, run_dir / "adapter", metrics=after, **metadata)
    result = RunResult(
        pipeline=kit.pipeline, run_dir=str(run_dir), adapter_dir=str(adapter_dir), model=kit.model_id or type(model).__name__,
        method=method.method, metric=kit.metric, greater_is_better=kit.greater_is_better, before=dict(before),
        after=dict(after or {}), trainable=trainable, total=total, train_seconds=fitted.train_seconds,
        adapter_bytes=adapter_bytes(adapter_dir), peak_memory=peak_memory(), steps=fitted.steps)
    if kit.finish is not None:  # files it adds beside the adapter (a tokenizer) ship with it, so count them
        extras = kit.finish(model, result) or {}
        result = dataclasses.replace(result, extras=extras, adapter_bytes=adapter_bytes(adapter_dir))
    _append_report(run_dir, result, method, kit.report(model, result) if kit.report else [])
    write_json(run_dir / RESULT_FILE, dataclasses.asdict(result))
    return result


def claim_run_dir(run_dir: Path, train: TrainOptions) -> bool:
    """Apply the run directory contract; True when an interrupted run is to be resumed from its
    own step checkpoints (False also when ``resume`` continues a run whose parts, such as the
    folds of a K-fold run, live in subfolders and resume each on its own).

    Raises:
        ScalpelError: the folder holds an earlier run (and neither ``overwrite`` nor
            ``resume``), holds files that are not a run, or has nothing to resume.
    """
    if train.resume and train.overwrite:
        raise ConfigError("training options", ["resume and overwrite exclude each other: resume continues the run, overwrite deletes it"])
    entries = sorted(p.name for p in run_dir.iterdir()) if run_dir.is_dir() else []
    is_run = any(name in RUN_MARKERS for name in entries)
    if train.resume:
        if list_checkpoints(run_dir / "checkpoints"):
            return True
        if is_run and RESULT_FILE not in entries and _has_parts(run_dir, entries):
            return False  # runs in parts (folds): finished parts are read back, the interrupted one resumes
        state = "finished" if (run_dir / RESULT_FILE).is_file() else "holds no step checkpoint" if is_run else "is not a run"
        raise ScalpelError(f"cannot resume {run_dir}: it {state}; leave out --resume to start a run "
                           f"(with --overwrite to replace what is there)")
    if is_run and not train.overwrite:
        raise ScalpelError(f"{run_dir} holds an earlier run; pass --overwrite to replace it, --resume to continue it "
                           "if it was interrupted, or choose another --output-dir")
    if entries and not is_run:
        raise ScalpelError(f"{run_dir} is not empty and holds no Scalpel run ({', '.join(entries[:3])}, ...); "
                           "choose a new or empty --output-dir")
    if is_run:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return False


def _has_parts(run_dir: Path, entries: list[str]) -> bool:
    """Whether a subfolder of ``run_dir`` holds a run of its own (a fold of a K-fold run)."""
    return any((run_dir / name).is_dir() and any((run_dir / name / marker).exists() for marker in RUN_MARKERS)
               for name in entries if name not in RUN_MARKERS)


def planned_steps(train_data: Iterable[Any], train: TrainOptions) -> int:
    """Optimizer steps ``fit`` will take on one process: ``max_steps``, or epochs x steps per epoch."""
    if train.max_steps:
        return train.max_steps
    try:
        batches = len(train_data)  # type: ignore[arg-type]
    except TypeError:
        return 0
    return train.epochs * math.ceil(batches / train.grad_accum)


def peak_memory() -> int:
    """Peak CUDA memory allocated since the run began, or the process's peak resident set on CPU."""
    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def _evaluate_task(task: Task, model: nn.Module, batches: Iterable[Any] | None) -> dict[str, float]:
    if batches is None:
        return {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return {k: float(v) for k, v in task.evaluate(model, batches).items()}
    finally:
        model.train(was_training)


def _scoring_data(configs: list[Any], kit: Kit, method: MethodOptions) -> ScoringData | None:
    """Batches and the task's own loss for methods that pick what to train from data."""
    needs = any(isinstance(c, SparseConfig) and c.scorer not in ("random", "magnitude") for c in configs) or any(
        isinstance(c, LayerwiseConfig) and c.rgn_top_k for c in configs)
    if not needs:
        return None
    batches = list(islice(iter(kit.train_data), method.scoring_batches))
    return ScoringData(batches, loss_fn=lambda model, batch: kit.task.step(model, batch)["loss"])


def _with_teacher(kit: Kit, method: MethodOptions) -> Task:
    if not method.teacher:
        return kit.task
    if kit.teacher is None:
        raise ConfigError(f"{kit.pipeline} options", [f"{kit.pipeline} cannot distil from a teacher; leave out --teacher"])
    return kit.teacher(kit.task, method)


def _groups_and_hooks(model: nn.Module, task: Task, method: MethodOptions, configs: list[Any], kit: Kit,
                      train: TrainOptions) -> tuple[list[dict[str, Any]] | None, tuple[Any, ...]]:
    """Parameter groups (layer-wise LR decay, a teacher's projections) and step hooks (distillation, sparse regrowth)."""
    groups = None
    if method.lr_decay < 1:
        from scalpel.core.layerwise.blocks import block_map
        from scalpel.core.layerwise.llrd import llrd_param_groups

        groups = llrd_param_groups(model, method.lr_decay, block_map(model, kit.defaults.block_map))
    hooks: list[Any] = []
    if hasattr(task, "param_groups"):
        groups = task.param_groups(groups=groups) if groups is not None else task.param_groups(model)
    if callable(getattr(task, "after_step", None)):
        hooks.append(task)
    if any(isinstance(c, SparseConfig) and c.regrow_every for c in configs):
        from scalpel.core.sparse import SparseRegrowth

        hooks.append(SparseRegrowth.from_config(model, total_steps=planned_steps(kit.train_data, train)))
    return groups, tuple(hooks)


def _append_report(run_dir: Path, result: RunResult, method: MethodOptions, sections: list[str]) -> None:
    """Add the run's own section (what was trained, before/after) and the kit's to fit's report.md."""
    report = run_dir / "report.md"
    lines = report.read_text().splitlines() if report.is_file() else [f"# Training report: {run_dir.name}"]
    share = 100 * result.trainable / max(result.total, 1)
    lines += ["", f"## {result.pipeline}: {method.method}", "",
              f"- base: {result.model}; {result.trainable:,} of {result.total:,} parameters trained ({share:.2f}%)",
              f"- adapter: {result.adapter_bytes / 1024:,.0f} KiB; peak memory {result.peak_memory / 2**20:,.0f} MiB"]
    if method.teacher:
        lines.append(f"- distilled from {method.teacher} (alpha {method.distill_alpha}, temperature {method.distill_temperature})")
    keys = sorted(set(result.before) | set(result.after), key=lambda k: (k != result.metric, k))
    if keys:
        lines += ["", "| metric | before | after |", "|---|---:|---:|"]
        lines += [f"| {k} | {_cell(result.before.get(k))} | {_cell(result.after.get(k))} |" for k in keys]
    lines += ["", *sections] if sections else []
    with atomic_write(report, "w") as f:
        f.write("\n".join(lines) + "\n")


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, (int, float)) else str(value)
