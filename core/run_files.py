"""The run directory (docs/architecture.md, "Artifacts"), as ``fit`` writes it (main process only)::

    <output_dir>/
      config.yaml      FitConfig under ``fit:`` and the caller's ``run:`` config
      metrics.jsonl    one JSON object per logged step / evaluation
      checkpoints/     step-XXXXXXXX/ folders (see core/checkpoint.py) and best.safetensors
      adapter/         the best (or final) adapter
      report.md        final metrics, trainable-parameter count, steps, time
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import yaml

from scalpel.core.errors import ScalpelError
from scalpel.core.files import atomic_write


class RunDirectory:
    """Paths of one run and the small files written into it."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.adapter = self.root / "adapter"
        self.best_weights = self.checkpoints / "best.safetensors"
        self.metrics_file = self.root / "metrics.jsonl"
        self.config_file = self.root / "config.yaml"
        self.report_file = self.root / "report.md"

    def create(self) -> None:
        """Make the folders and prove they are writable, or raise a :class:`ScalpelError` saying so."""
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            raise ScalpelError(
                f"output_dir {self.root} is not writable ({err.strerror or err}); "
                "choose a directory you can write to (FitConfig.output_dir)"
            ) from err

    def write_config(self, fit_config: dict[str, Any], run_config: dict[str, Any] | None) -> None:
        text = yaml.safe_dump({"fit": fit_config, "run": run_config or {}}, sort_keys=False)
        with atomic_write(self.config_file, "w") as f:
            f.write(text)

    def log(self, record: dict[str, Any]) -> None:
        """Append one line to metrics.jsonl. An append, not a rename: one short line per call;
        a line torn by a crash is dropped by :meth:`truncate_metrics` on resume."""
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(_finite(record)) + "\n")

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only records up to ``last_step`` (those after it will be logged again on resume)."""
        if not self.metrics_file.is_file():
            return
        kept = []
        for line in self.metrics_file.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= last_step:
                kept.append(line)
        with atomic_write(self.metrics_file, "w") as f:
            f.write("".join(k + "\n" for k in kept))

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_file.is_file():
            return []
        return [json.loads(line) for line in self.metrics_file.read_text().splitlines() if line.strip()]

    def write_report(self, lines: list[str]) -> None:
        with atomic_write(self.report_file, "w") as f:
            f.write("\n".join(lines) + "\n")


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN/inf: write them as strings so every line stays standard JSON."""
    return {k: (str(v) if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
