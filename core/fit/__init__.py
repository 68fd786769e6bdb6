"""``fit``: the one training loop every Scalpel pipeline uses, on Hugging Face Accelerate.

    result = fit(model, task, train_loader, eval_loader, FitConfig(output_dir="runs/x", epochs=3))

Modules: ``config`` (:class:`FitConfig`), ``setup`` (the Accelerator, AdamW groups, the
per-epoch batch order), ``state`` (what is trained, checkpoints and exact resume),
``fsdp`` (full state dicts under FSDP) and ``loop`` (:func:`fit` itself).
"""

from scalpel.core.fit.config import FitConfig
from scalpel.core.fit.loop import FitResult, Task, fit

__all__ = ["FitConfig", "FitResult", "Task", "fit"]
