"""``fit``: the one training loop every Scalpel pipeline uses, on Hugging Face Accelerate.

    result = fit(model, task, train_loader, eval_loader, FitConfig(output_dir="runs/x", epochs=3))

Modules: ``config`` (:class:`FitConfig`), ``setup`` (the Accelerator, AdamW groups, the
per-epoch batch order), ``state`` (what is trained, checkpoints and exact resume),
``fsdp`` (full state dicts under FSDP) and ``loop`` (:func:`fit` itself).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from scalpel.core.fit.config import FitConfig

__all__ = ["FitConfig", "FitResult", "Task", "fit"]


def __getattr__(name: str) -> Any:
    # the loop (torch, Accelerate) is imported when first used: the options that name
    # FitConfig's fields are read by commands that never train (`scalpel dicom deid --help`)
    if name in ("FitResult", "Task", "fit"):
        value = getattr(importlib.import_module("scalpel.core.fit.loop"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'scalpel.core.fit' has no attribute {name!r}")


if TYPE_CHECKING:
    from scalpel.core.fit.loop import FitResult, Task, fit  # noqa: F401
