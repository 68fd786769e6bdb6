"""One run of a vision pipeline: data -> base model -> PEFT method -> ``fit`` -> adapter,
merged export and ``report.md``.

The three tasks differ only in the pieces a :class:`TaskKit` names (loaders, datasets,
collate, task object); the run itself reads top to bottom in :func:`run_pipeline`.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from scalpel.core.config import config_to_dict
from scalpel.core.delta import count_parameters
from scalpel.core.delta import merge as merge_model
from scalpel.core.errors import DataError
from scalpel.core.files import write_json, write_safetensors
from scalpel.core.fit import FitConfig, fit
from scalpel.core.recipes import adapt
from scalpel.core.sparse import ScoringData
from scalpel.vision import data as vd
from scalpel.vision.config import VisionConfig
from scalpel.vision.metrics import headline
from scalpel.vision.models import adaptable_layers, build_model, head_modules, names_regex, spec_for
from scalpel.vision.synthetic import SHAPES, SOURCE, TARGET, write_classification_set, write_scenes
from scalpel.vision.tasks import ClassificationTask, DetectionTask, SegmentationTask


@dataclass
class Split:
    """Loaded data of one task: train/val datasets, class names, load reports."""

    train: torch.utils.data.Dataset
    val: torch.utils.data.Dataset
    class_names: list[str]
    reports: list[vd.DataReport]


# ------------------------------------------------------------------------------- data


def load_split(config: VisionConfig, data: str, images: str, masks: str, val: tuple[str, str, str] | None) -> Split:
    """Load training data (and validation data, or split it off) in the format of ``data``."""
    task = config.task
    names = list(config.class_names) or None

    def load(source: str, image_root: str, mask_root: str):
        if task == "detection":
            return vd.load_coco(source, image_root or None, strict=config.strict) if source.endswith(".json") else \
                vd.load_voc(source, class_names=names, strict=config.strict)
        if task == "segmentation":
            return vd.load_coco_masks(source, image_root or None, strict=config.strict) if source.endswith(".json") else \
                vd.load_mask_folders(source, mask_root, class_names=names, strict=config.strict)
        return vd.load_csv(source, root=image_root or None, class_names=names, strict=config.strict) if source.endswith(".csv") \
            else vd.load_image_folder(source, class_names=names, strict=config.strict)

    train = load(data, images, masks)
    held = load(*val) if val else None
    wrap = _dataset_factory(config)
    train_set, val_set = wrap(train, True), wrap(held or train, False)
    reports = [train.report] + ([held.report] if held else [])
    if held is None:  # a seeded split of one data set, the same in every run
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed)).tolist()
        cut = max(1, int(round(len(order) * config.val_fraction)))
        if len(order) - cut < 1:
            raise DataError(f"{data} has {len(order)} image(s): too few to hold out validation data; pass --val-data")
        train_set, val_set = Subset(train_set, sorted(order[cut:])), Subset(val_set, sorted(order[:cut]))
    return Split(train_set, val_set, list(train.class_names), reports)


def _dataset_factory(config: VisionConfig):
    size, task = config.image_size, config.task

    def wrap(loaded, train: bool):
        if task == "detection":
            return vd.DetectionDataset(loaded.records, vd.detection_transforms(train))
        if task == "segmentation":
            return vd.SegmentationDataset(loaded, vd.segmentation_transforms(train, size), getattr(config, "ignore_index", 255))
        return vd.ClassificationDataset(loaded, vd.classification_transforms(train, size))

    return wrap


def loader(config: VisionConfig, dataset, *, train: bool) -> DataLoader:
    collate = vd.collate_detection if config.task == "detection" else None
    if train and getattr(config, "group_aspect_ratio", False):
        base, indices = (dataset.dataset, dataset.indices) if isinstance(dataset, Subset) else (dataset, range(len(dataset)))
        ratios = [base.aspect_ratios()[i] for i in indices]
        sampler = vd.AspectRatioBatchSampler(ratios, config.batch_size, seed=config.seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    generator = torch.Generator().manual_seed(config.seed)
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=train, collate_fn=collate, generator=generator,
                      drop_last=train and len(dataset) > config.batch_size)


def synthetic_domains(config: VisionConfig, root: Path) -> dict[str, Path]:
    """Write (once) the synthetic source and target sets; return their paths."""
    count = min(24, config.train_images) if config.quick else config.train_images
    size = config.image_size
    paths = {}
    for style, seed in ((SOURCE, config.seed), (TARGET, config.seed + 1)):
        look = hashlib.sha256(repr(style).encode()).hexdigest()[:8]  # a changed style is written afresh
        folder = root / f"{config.task}-{style.name}-{count}x{size}-seed{seed}-{look}"
        if not (folder / "done").is_file():
            if config.task == "classification":
                write_classification_set(folder, count, style, seed=seed, size=size)
            else:
                write_scenes(folder, count, style, seed=seed, size=size)
            (folder / "done").write_text("complete\n")
        paths[style.name] = folder
    return paths


def synthetic_split(config: VisionConfig, folder: Path) -> Split:
    if config.task == "detection":
        return load_split(config, str(folder / "annotations.json"), str(folder / "images"), "", None)
    if config.task == "segmentation":
        return load_split(_with_classes(config, ("background", *SHAPES)), str(folder / "images"), "", str(folder / "masks"), None)
    return load_split(config, str(folder), "", "", None)


def _with_classes(config: VisionConfig, names: tuple[str, ...]) -> VisionConfig:
    return dataclasses.replace(config, class_names=names)


# ------------------------------------------------------------------------------ model


def make_task(config: VisionConfig, class_names: list[str], *, freeze_bn: bool = True):
    if config.task == "detection":
        return DetectionTask(class_names, freeze_bn=freeze_bn)
    if config.task == "segmentation":
        return SegmentationTask(class_names, ignore_index=getattr(config, "ignore_index", 255), freeze_bn=freeze_bn,
                                class_weights=getattr(config, "class_weights", ()) or None)
    return ClassificationTask(class_names, freeze_bn=freeze_bn)


def num_outputs(task: str, class_names: list[str]) -> int:
    return len(class_names) + 1 if task == "detection" else len(class_names)


def train_base(config: VisionConfig, split: Split, cache: Path) -> Path:
    """Train the model from scratch on the source domain (all weights, batch norm
    learning) with a plain AdamW loop and cache it as safetensors; reuse the cache when
    the same settings were trained before.

    torchvision's MobileNetV3 family (SSDlite, LR-ASPP, DeepLabV3-MobileNet) builds its
    batch norms with momentum 0.01-0.03, tuned for long ImageNet runs: after a few hundred
    steps from scratch their running statistics still hold the random-init activations,
    and the model, correct in train mode, predicts only background in eval mode. The base
    is therefore trained with momentum 0.1 (restored afterwards; it is not a saved value).
    """
    steps = min(30, config.base_steps) if config.quick else config.base_steps
    weights = list(getattr(config, "class_weights", ()) or ())
    key = json.dumps([config.task, config.model, config.image_size, steps, config.base_lr, config.seed, len(split.train),
                      split.class_names, weights])
    path = cache / f"{config.model}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"
    if path.is_file():
        return path
    torch.manual_seed(config.seed)
    model = build_model(config.model, num_outputs(config.task, split.class_names), image_size=config.image_size, task=config.task)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.1
    task = make_task(config, split.class_names, freeze_bn=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.base_lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.base_lr, total_steps=steps, pct_start=0.15)
    data, step = loader(config, split.train, train=True), 0
    while step < steps:
        for batch in data:
            loss = task.step(model, batch)["loss"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            step += 1
            if step == steps:
                break
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    write_safetensors(path, model.state_dict(), metadata={"model": config.model, "steps": str(steps)})
    return path


def evaluate(config: VisionConfig, model: nn.Module, task, dataset) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        return task.evaluate(model, loader(config, dataset, train=False))


def evaluate_base(config: VisionConfig, model: nn.Module, task, dataset, class_names: list[str],
                  weights: str, tag: str = "before", draw: bool = True) -> tuple[dict[str, float], str | None]:
    """The base model's validation metrics and a PNG of its predictions (``before``).

    ``weights``: the source-trained base of the embedded demo, beside which the result is
    cached (keyed by the evaluation settings), so runs of several methods on one base
    evaluate it once; empty for user weights (nothing is written next to them).
    """
    from scalpel.vision.report import example_grid, save_png

    cache = None
    if weights and Path(weights).is_file():
        stat = Path(weights).stat()
        key = json.dumps([Path(weights).name, stat.st_size, stat.st_mtime_ns, config.task, config.image_size, len(dataset),
                          config.seed, class_names])
        cache = Path(weights).parent / f"{tag}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        if cache.with_suffix(".json").is_file() and (not draw or cache.with_suffix(".png").is_file()):
            return json.loads(cache.with_suffix(".json").read_text()), str(cache.with_suffix(".png")) if draw else None
    before = evaluate(config, model, task, dataset)
    if cache is None:
        return before, None
    if draw:
        save_png(cache.with_suffix(".png"), example_grid(model, task, dataset, class_names))
    write_json(cache.with_suffix(".json"), before)
    return before, str(cache.with_suffix(".png")) if draw else None


# -------------------------------------------------------------------------------- run


def run_pipeline(config: VisionConfig) -> dict[str, Any]:
    """Train an adapter for ``config`` and return ``{"run_dir", "metrics", "before", ...}``."""
    from scalpel.vision.report import write_report

    run_dir = Path(config.output_dir)
    torch.manual_seed(config.seed)
    weights = config.weights
    demo_base = ""  # the source-trained base of the embedded default, when this run trained or reused it
    if config.data:
        val = (config.val_data, config.val_images, config.val_masks) if config.val_data else None
        split = load_split(config, config.data, config.images, config.masks, val)
        source = None
    else:  # the embedded default: adapt a source-trained base to the shifted target domain
        shared = Path(config.base_dir) if config.base_dir else run_dir
        domains = synthetic_domains(config, shared / "data")
        split = synthetic_split(config, domains["target"])
        source = synthetic_split(config, domains["source"])
        if not weights:
            weights = demo_base = str(train_base(config, source, shared / "base"))
    class_names = split.class_names
    spec = spec_for(config.model, config.task)
    model = build_model(config.model, num_outputs(config.task, class_names), weights=weights or None,
                        image_size=config.image_size, task=config.task)
    task = make_task(config, class_names)
    before, base_examples = evaluate_base(config, model, task, split.val, class_names, demo_base)
    base_on_source = None
    if source is not None:  # the demo: how well the base learned its own (source) domain
        base_on_source, _ = evaluate_base(config, model, task, source.val, class_names, demo_base, tag="source", draw=False)
    if config.teacher:  # distillation composes with any method: only the loss changes
        from scalpel.vision.distill import VisionDistillTask

        teacher = build_model(config.teacher_model or config.model, num_outputs(config.task, class_names),
                              weights=config.teacher, image_size=config.image_size, task=config.task)
        task = VisionDistillTask(task, teacher, alpha=config.distill_alpha, temperature=config.distill_temperature)

    options: dict[str, Any] = {}
    if config.method in ("lora", "dora", "rslora"):
        options = {"r": config.r, "alpha": config.alpha}
    elif config.method == "sparse":
        options = {"density": config.density, "scorer": "magnitude" if config.quick else "fisher", "num_batches": 2}
    elif config.method == "layerwise":
        options = {"blocks": tuple(config.blocks) or spec.blocks}
    targets = names_regex(adaptable_layers(model, spec)) if config.method in ("lora", "dora", "rslora", "sparse") else None
    train_batches = loader(config, split.train, train=True)
    scoring = None
    if config.method == "sparse":  # Fisher scores from the task's own loss on two training batches
        scoring = ScoringData(list(itertools.islice(iter(train_batches), 2)), loss_fn=lambda m, b: task.step(m, b)["loss"])
    model = adapt(model, config.method, targets=targets, head=head_modules(model, spec), data=scoring, **options)
    trainable, total = count_parameters(model)

    key, _ = headline({}, config.task)
    max_steps = (min(8, config.max_steps) if config.max_steps else 4) if config.quick else config.max_steps
    fit_config = FitConfig(
        output_dir=str(run_dir), epochs=1 if config.quick else config.epochs, max_steps=max_steps,
        lr=config.lr, weight_decay=1e-4, warmup_ratio=0.05, metric=key, greater_is_better=True, device=config.device,
        seed=config.seed, save_every=0, overwrite=True, progress=False, log_every=5,
    )
    extra = {
        "task": config.task, "model": config.model, "num_classes": num_outputs(config.task, class_names),
        "class_names": class_names, "image_size": config.image_size,
        "ignore_index": getattr(config, "ignore_index", 255), "base_weights": str(Path(weights).resolve()) if weights else "",
    }
    started = time.perf_counter()
    result = fit(model, task, train_batches, loader(config, split.val, train=False), fit_config,
                 run_config=config_to_dict(config),
                 adapter_metadata={"extra": extra, "base_model": {"name_or_path": config.model, "weights": extra["base_weights"]}})
    seconds = time.perf_counter() - started
    after = result.metrics or evaluate(config, model, task, split.val)

    merged_path = None
    if config.export_merged:
        merged = merge_model(copy.deepcopy(model))
        merged_path = run_dir / "merged" / "model.safetensors"
        write_safetensors(merged_path, merged.state_dict(), metadata={"model": config.model})
        write_json(run_dir / "merged" / "model.json", {k: extra[k] for k in ("task", "model", "num_classes", "class_names", "image_size")})
    summary = {
        "task": config.task, "method": config.method, "model": config.model, "class_names": class_names,
        "before": before, "after": after, "base_on_source": base_on_source, "trainable_parameters": trainable, "total_parameters": total,
        "train_seconds": seconds, "steps": result.steps, "teacher": config.teacher or None, "data": [r.as_dict() for r in split.reports],
    }
    write_json(run_dir / "summary.json", summary)
    write_report(run_dir, config, summary, model, task, split.val, class_names)
    return {"run_dir": str(run_dir), "metrics": after, "before": before, "base_examples": base_examples,
            "adapter_dir": str(result.adapter_dir),
            "merged": str(merged_path) if merged_path else None, "summary": summary}
