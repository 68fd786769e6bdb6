"""Domain pipelines as data: a config dataclass, a run function and a predict function.

Domain packages publish pipelines through the ``scalpel.pipelines`` entry-point group
(``"nlp.sentiment" = "scalpel.nlp.sentiment:PIPELINE"``), so the core finds them without
importing any domain package by name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from scalpel.core.errors import UnknownNameError

PIPELINE_GROUP = "scalpel.pipelines"
COMMAND_GROUP = "scalpel.cli"


@dataclass(frozen=True)
class Pipeline:
    """A ready training pipeline.

    Attributes:
        name: ``"<domain>.<task>"``, as typed after ``scalpel run``.
        config_cls: the pipeline's config dataclass; the CLI flags are generated from it.
        run: ``config -> dict`` of results (at least ``{"run_dir": ..., "metrics": {...}}``).
        predict: ``(adapter_dir, inputs, options) -> one result dict per input``.
        summary: one line for ``scalpel run --help``.
    """

    name: str
    config_cls: type
    run: Callable[[Any], dict[str, Any]]
    predict: Callable[[Path, Sequence[str], dict[str, Any]], list[dict[str, Any]]] | None = None
    summary: str = ""


def available_pipelines() -> dict[str, Any]:
    """Entry points of every installed pipeline, by name (not yet imported)."""
    return {ep.name: ep for ep in entry_points(group=PIPELINE_GROUP)}


def get_pipeline(name: str) -> Pipeline:
    found = available_pipelines()
    if name not in found:
        raise UnknownNameError(f"unknown pipeline {name!r}; installed: {', '.join(sorted(found)) or 'none'}")
    return found[name].load()
