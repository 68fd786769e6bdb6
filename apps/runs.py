"""Finding trained runs and switching adapters on a base loaded once (no Streamlit here).

A *run* is any directory below the runs root that holds an adapter (a folder with
``scalpel.json``, written by :func:`scalpel.core.save_adapter`). Each page filters the runs
by the ``extra.task`` its pipeline records (``nlp.sentiment``, ``nlp.chat``, ``detection``...).

:class:`AdapterSlots` keeps one base model and loads each adapter onto it once under its
own name; switching is :func:`scalpel.core.set_active_adapter` plus restoring the fully
trained base tensors (heads) of that adapter, which :func:`load_adapter` copies into the
shared base parameters and another adapter may have overwritten.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalpel.core.artifacts import SCALPEL_FILE, STATS_PREFIX, WEIGHTS_FILE, load_adapter
from scalpel.core.delta import adapter_of, base_name, load_norm_statistics, set_active_adapter
from scalpel.core.errors import AdapterError
from scalpel.core.files import read_json, read_safetensors
from scalpel.core.run import RESULT_FILE

RUNS_ENV = "SCALPEL_RUNS"
DEFAULT_RUNS = "runs"
MAX_DEPTH = 6  # runs/<name>/adapter ... runs/demo/vision/detection/lora/adapter
HOW_TO_MAKE_ONE = "No trained runs found in `{root}`. Make one with `make demo` (or `scalpel run {pipeline} ...`), " \
                  "or point the runs directory in the sidebar (or the SCALPEL_RUNS environment variable) at your runs."


#: Headline metrics (all: higher is better) looked for in ``scalpel.json`` when a run has no ``result.json``.
HEADLINE_METRICS = ("accuracy", "test_accuracy", "answer_accuracy", "dice", "map_50", "miou", "macro_f1")


def default_runs_dir() -> str:
    """``$SCALPEL_RUNS`` if set, else ``runs``."""
    return os.environ.get(RUNS_ENV) or DEFAULT_RUNS


@dataclass(frozen=True)
class RunInfo:
    """One adapter found under the runs root, with what the apps show about it."""

    name: str  # path relative to the root, e.g. "sentiment-lora/adapter"
    adapter_dir: Path
    task: str  # extra.task ("nlp.sentiment", "nlp.chat", "detection", ...) or ""
    methods: tuple[str, ...]
    base_model: str
    trainable_parameters: int | None
    total_parameters: int | None
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    before: dict[str, Any] = field(default_factory=dict)
    """the base's metrics, from the run's ``result.json`` (:class:`scalpel.core.run.RunResult`) when it has one"""
    metric: str = ""
    """the run's headline metric (``result.json``), e.g. ``accuracy``; "" without a result.json"""
    greater_is_better: bool = True
    source: str = ""
    """where the numbers come from: the run's ``result.json``, else the adapter's ``scalpel.json``"""

    @property
    def method(self) -> str:
        return str(self.extra.get("method") or "+".join(self.methods) or "?")

    @property
    def score(self) -> float | None:
        """The headline metric after training, when recorded."""
        value = self.metrics.get(self.metric) if self.metric else None
        return float(value) if isinstance(value, (int, float)) else None

    def provenance(self) -> str:
        """One line for the page: the base the adapter runs on, the headline metric and its source."""
        line = f"Adapter `{self.name}` ({self.method}) runs on the base **{self.base_model or '?'}**."
        if self.score is not None:
            before = self.before.get(self.metric)
            was = f"{before:.4g} (base) -> " if isinstance(before, (int, float)) else ""
            line += f" Held-out {self.metric}: {was}{self.score:.4g}."
        return line + (f" Numbers from `{self.source}`." if self.source else "")

    @property
    def trainable_percent(self) -> float | None:
        if not self.trainable_parameters or not self.total_parameters:
            return None
        return 100.0 * self.trainable_parameters / self.total_parameters

    def summary(self) -> dict[str, Any]:
        """A flat, display-ready row (method, base model, trainable parameters, metrics)."""
        row: dict[str, Any] = {
            "run": self.name, "task": self.task or "?", "method": "+".join(self.methods) or "?",
            "base model": self.base_model or "?",
            "trainable": f"{self.trainable_parameters:,}" if self.trainable_parameters is not None else "?",
            "total": f"{self.total_parameters:,}" if self.total_parameters is not None else "?",
            "trainable %": round(self.trainable_percent, 3) if self.trainable_percent is not None else None,
        }
        for key, value in self.metrics.items():
            if isinstance(value, (int, float)):
                row[key] = round(float(value), 4)
                if isinstance(self.before.get(key), (int, float)):
                    row[f"{key} (base)"] = round(float(self.before[key]), 4)
        return row


def read_run(adapter_dir: Path, root: Path | None = None) -> RunInfo:
    """The :class:`RunInfo` of one adapter directory (reads ``scalpel.json`` only, not weights)."""
    adapter_dir = Path(adapter_dir)
    try:
        meta = read_json(adapter_dir / SCALPEL_FILE)
    except Exception as err:  # noqa: BLE001  damaged JSON is a user-fixable problem, named below
        raise AdapterError(f"{adapter_dir / SCALPEL_FILE} cannot be read ({err}); save the adapter again") from err
    if not isinstance(meta, dict):
        raise AdapterError(f"{adapter_dir / SCALPEL_FILE} is not a JSON object; save the adapter again")
    base = meta.get("base_model") or {}
    extra = meta.get("extra") or {}
    base_text = str(base.get("name_or_path") or base.get("embedded") or extra.get("model") or extra.get("base_dir")
                    or base.get("class") or "")
    name = str(adapter_dir.relative_to(root)) if root is not None and adapter_dir.is_relative_to(root) else adapter_dir.name
    return RunInfo(
        name=name, adapter_dir=adapter_dir, task=str(extra.get("task", "")),
        methods=tuple(str(m.get("method", "?")) for m in meta.get("methods", []) if isinstance(m, dict)),
        base_model=base_text, trainable_parameters=meta.get("trainable_parameters"),
        total_parameters=meta.get("total_parameters"), extra=dict(extra),
        **{"metrics": dict(meta.get("metrics") or {}), **_result_fields(adapter_dir, meta)},
        created=str(meta.get("created", "")),
    )


def _result_fields(adapter_dir: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """From the run's ``result.json`` (when the adapter is the one its run wrote last): the base's
    metrics, the headline metric and its direction, the metrics after training; else the adapter's own."""
    result = adapter_dir.parent / RESULT_FILE
    metrics = meta.get("metrics") or {}
    guess = next((k for k in HEADLINE_METRICS if isinstance(metrics.get(k), (int, float))), "")
    fallback = {"metric": guess, "source": str(adapter_dir / SCALPEL_FILE) if metrics else ""}
    if not result.is_file():
        return fallback
    try:
        data = read_json(result)
    except Exception:  # noqa: BLE001  a damaged result.json only loses the "base" column
        return fallback
    if not (isinstance(data, dict) and Path(str(data.get("adapter_dir", ""))).name == adapter_dir.name):
        return fallback
    found = {"before": dict(data.get("before") or {}), "metric": str(data.get("metric") or ""),
             "greater_is_better": bool(data.get("greater_is_better", True)), "source": str(result)}
    if isinstance(data.get("after"), dict) and data["after"]:
        found["metrics"] = {**(meta.get("metrics") or {}), **data["after"]}
    return found


def best_run_index(runs: list[RunInfo]) -> int:
    """The run to preselect: the best by its headline metric, full fine-tuning only when nothing
    else has a score (it is the reference a PEFT method is measured against, not the demo's point)."""
    scored = [(i, r) for i, r in enumerate(runs) if r.score is not None]
    peft = [(i, r) for i, r in scored if r.method != "full"] or scored
    if not peft:
        return next((i for i, r in enumerate(runs) if r.method != "full"), 0)
    return max(peft, key=lambda ir: ir[1].score if ir[1].greater_is_better else -ir[1].score)[0]


def find_runs(root: str | os.PathLike, tasks: tuple[str, ...] | None = None) -> tuple[list[RunInfo], list[str]]:
    """All adapters below ``root`` (up to :data:`MAX_DEPTH` levels), newest first, optionally
    only those whose ``extra.task`` is in ``tasks``; returns ``(runs, problems)`` where
    problems name unreadable adapters (shown as warnings, never a crash).

    Checkpoint folders (``checkpoints/``) are skipped: they are resumable training state.
    Runs do not nest: below a run directory (one holding ``adapter/scalpel.json``) only its
    ``adapter/`` is read, so a pipeline's intermediate adapters (``<run>/fit/adapter``) are
    not listed as runs of their own.
    """
    root = Path(root)
    runs: list[RunInfo] = []
    problems: list[str] = []
    if not root.is_dir():
        return runs, problems
    for current, dirs, files in os.walk(root):
        here = Path(current)
        depth = len(here.relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "checkpoints") if depth < MAX_DEPTH else []
        if "adapter" in dirs and (here / "adapter" / SCALPEL_FILE).is_file():
            dirs[:] = ["adapter"]  # a run: its own adapter, nothing nested deeper
        if SCALPEL_FILE in files:
            try:
                info = read_run(here, root)
            except AdapterError as err:
                problems.append(str(err))
                continue
            if tasks is None or info.task in tasks:
                runs.append(info)
    runs.sort(key=lambda r: (r.created, r.name), reverse=True)
    return runs, problems


def slot_name(adapter_dir: Path) -> str:
    """An adapter name derived from its path (unique per directory, a valid module-name segment)."""
    return "app_" + re.sub(r"\W", "_", str(Path(adapter_dir).resolve()))[-80:]


class AdapterSlots:
    """A base model with several adapters loaded once each; :meth:`activate` switches.

    The base is never reloaded: loading an adapter adds its delta modules under its own
    name; the fully trained base tensors it carries (``scalpel.full.*``, e.g. a task head)
    and its normalisation statistics (``scalpel.stats.*``) are remembered and copied back
    whenever it is activated again. Before each switch the base's own tensors are restored
    from a copy taken at the start, so what one adapter trained in full (a ``full`` or
    layer-wise run) never leaks into another that does not carry those tensors.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self._full: dict[str, dict[str, Any]] = {}
        self.active: str | None = None
        self._base = {base_name(n): t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]
                      if adapter_of(n) is None}

    def _restore_base(self) -> None:
        with torch.no_grad():
            for n, t in [*self.model.named_parameters(), *self.model.named_buffers()]:
                original = self._base.get(base_name(n)) if adapter_of(n) is None else None
                if original is not None:
                    t.copy_(original)

    @property
    def loaded(self) -> list[str]:
        return list(self._full)

    def activate(self, adapter_dir: str | os.PathLike) -> nn.Module:
        """Load (first time) or re-activate the adapter at ``adapter_dir``; returns the model (eval mode)."""
        adapter_dir = Path(adapter_dir)
        name = slot_name(adapter_dir)
        self._restore_base()
        if name not in self._full:
            load_adapter(self.model, adapter_dir, adapter_name=name)
            tensors = read_safetensors(adapter_dir / WEIGHTS_FILE)
            self._full[name] = {k: v for k, v in tensors.items() if k.startswith(("scalpel.full.", STATS_PREFIX))}
        else:
            set_active_adapter(self.model, name)
            params = {base_name(n): p for n, p in self.model.named_parameters()}
            for key, value in self._full[name].items():
                if key.startswith("scalpel.full."):
                    params[key.removeprefix("scalpel.full.")].data.copy_(value)
            load_norm_statistics(self.model, self._full[name], STATS_PREFIX)
        self.active = name
        return self.model.eval()
