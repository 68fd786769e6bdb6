"""The kit of a vision run; the run itself is :func:`scalpel.core.run.run_adaptation`:

    data (--data, or the synthetic domains and a source-trained base) -> base model,
    task, loaders, head / default targets / default blocks              (build_kit, here)
    -> metrics before -> method (+ teacher) -> fit -> metrics after -> adapter  (run_adaptation)
    -> examples.png, merged/ export, report sections                    (VisionOutputs, here)

The three tasks differ only in what :mod:`scalpel.vision.splits` loads and
:func:`scalpel.vision.tasks.make_task` builds; nothing here depends on the method.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalpel.core.delta import merge as merge_model
from scalpel.core.files import write_json, write_safetensors
from scalpel.core.options import MethodOptions, TrainOptions
from scalpel.core.recipes import ModelDefaults
from scalpel.core.run import Kit, RunResult
from scalpel.vision.base import base_views, synthetic
from scalpel.vision.config import VisionOptions
from scalpel.vision.distill import distillation_task
from scalpel.vision.metrics import headline
from scalpel.vision.models import adaptable_layers, build_model, head_modules, names_regex, num_outputs, spec_for
from scalpel.vision.report import confusion_lines, example_grid, report_lines, save_png
from scalpel.vision.splits import Split, loader, user_split
from scalpel.vision.tasks import make_task

#: The adapter's ``extra`` keys a plain torchvision model needs, written beside the merged export.
MERGED_KEYS = ("task", "model", "num_classes", "class_names", "image_size")


def build_kit(options: VisionOptions, method: MethodOptions, train: TrainOptions, run_dir: Path) -> Kit:
    """Data, the base model (user weights, or the embedded default's source-trained base) and its task.

    Args:
        options: the data and model options.
        method: not read here (the kit names the head, default targets and blocks; which
            method uses them is the run's business), except by the teacher hook.
        train: batch size and seed of the loaders and of the embedded default's base.
        run_dir: the claimed run directory; the default cache folder lies beside it.
    """
    spec = spec_for(options.model, options.task)  # an unknown model stops the run before any data is written
    source = None
    if options.data:
        split = user_split(options, train.seed)
    else:  # the embedded default: adapt a source-trained base to the shifted target domain
        source = synthetic(options, run_dir, seed=train.seed, batch_size=train.batch_size)
        split = source.target
    weights = options.weights or (source.base if source else "")
    names = split.class_names
    model = build_model(options.model, num_outputs(options.task, names), weights=weights or None,
                        image_size=options.image_size, task=options.task)
    views: tuple[dict[str, float] | None, str | None] = (None, None)
    if source is not None:  # the demo: the base on its own (source) domain, and its predictions on the target
        views = base_views(options, model, source, names, seed=train.seed, batch_size=train.batch_size)
    defaults = ModelDefaults(head=tuple(head_modules(model, spec)), targets=names_regex(adaptable_layers(model, spec)),
                             blocks=spec.blocks)
    task = make_task(options, names)
    base_weights = str(Path(weights).resolve()) if weights and Path(weights).is_file() else weights
    extra = {"task": options.task, "model": options.model, "num_classes": num_outputs(options.task, names), "class_names": names,
             "image_size": options.image_size, "ignore_index": getattr(options, "ignore_index", 255), "base_weights": base_weights}
    outputs = VisionOutputs(options, split, task, extra, *views)

    def batches(dataset: Any, training: bool) -> Any:
        return loader(options, dataset, batch_size=train.batch_size, seed=train.seed, training=training)

    # Training the base (or evaluating it) draws from torch's generator, reading it from the
    # cache does not: reseed, so the method's initialisation is the same either way (a run
    # and its --resume, or the methods of the demo, start from the same draws).
    torch.manual_seed(train.seed)
    return Kit(
        pipeline=f"vision.{options.task}", model=model, task=task, train_data=batches(split.train, True),
        eval_data=batches(split.val, False), metric=headline({}, options.task)[0], greater_is_better=True,
        defaults=defaults, model_id=options.model,
        adapter_metadata={"extra": extra, "base_model": {"name_or_path": options.model, "weights": base_weights}},
        teacher=lambda plain, chosen: distillation_task(plain, chosen, options, names),
        report=outputs.report, finish=outputs.finish)


class VisionOutputs:
    """What a vision run writes beside the common outputs: the kit's ``finish`` and ``report``.

    Args:
        options: the run's data and model options.
        split: the loaded data (validation images are drawn; load reports go in the report).
        task: the task (what the drawings show).
        extra: the adapter's ``extra`` (the merged export's ``model.json`` repeats part of it).
        base_on_source: the demo base's metrics on its source domain; None for user data.
        base_examples: a PNG of the demo base's predictions on target images; None for user weights.
    """

    def __init__(self, options: VisionOptions, split: Split, task: Any, extra: dict[str, Any],
                 base_on_source: dict[str, float] | None = None, base_examples: str | None = None):
        self.options, self.split, self.task, self.extra = options, split, task, extra
        self.base_on_source, self.base_examples = base_on_source, base_examples

    def finish(self, model: nn.Module, result: RunResult) -> dict[str, Any]:
        """Draw ``examples.png`` and write ``merged/``; return the run's extras."""
        run_dir = Path(result.run_dir)
        names = self.split.class_names
        save_png(run_dir / "examples.png", example_grid(model, self.task, self.split.val, names))
        merged = None
        if self.options.export_merged:
            merged = run_dir / "merged" / "model.safetensors"
            write_safetensors(merged, merge_model(copy.deepcopy(model)).state_dict(), metadata={"model": self.options.model})
            write_json(merged.parent / "model.json", {k: self.extra[k] for k in MERGED_KEYS})
        return {"examples": str(run_dir / "examples.png"), "merged": str(merged) if merged else None,
                "base_examples": self.base_examples, "base_on_source": self.base_on_source, "class_names": names,
                "data": [r.as_dict() for r in self.split.reports]}

    def report(self, model: nn.Module, result: RunResult) -> list[str]:
        """Data counts, the base on its source domain (demo), the confusion matrix (classification), examples."""
        names = self.split.class_names
        confusion = confusion_lines(model, self.split.val, names) if self.options.task == "classification" else []
        return report_lines(self.options.task, result.extras, metric=result.metric, confusion=confusion,
                            merged=self.options.export_merged)
