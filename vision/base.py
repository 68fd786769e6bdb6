"""The embedded default's base: synthetic source and target domains, a small model trained
from scratch on the source, and what the demo shows of it (its source-domain metrics, its
predictions on target images).

All of it is cached under the cache folder (``--base-dir``, by default ``.vision-cache``
beside the run directory), outside the run, so ``--overwrite`` of a run and the other
methods of the demo reuse it instead of training the base again. Every cached file is
keyed by the settings it depends on, so a changed setting writes a new one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalpel.core.files import write_json, write_safetensors
from scalpel.vision.config import VisionOptions
from scalpel.vision.models import build_model, num_outputs
from scalpel.vision.report import example_grid, save_png
from scalpel.vision.splits import Split, loader, synthetic_domains, synthetic_split
from scalpel.vision.tasks import make_task

#: The cache folder's name beside the run directory when ``--base-dir`` is not given.
CACHE = ".vision-cache"


@dataclass
class Synthetic:
    """The embedded default's data and base.

    Attributes:
        source: the source domain the base learned.
        target: the shifted domain the run adapts to.
        base: the source-trained base's weights file; empty when the user gave ``--weights``.
    """

    source: Split
    target: Split
    base: str


def cache_dir(options: VisionOptions, run_dir: Path) -> Path:
    return Path(options.base_dir) if options.base_dir else run_dir.parent / CACHE


def synthetic(options: VisionOptions, run_dir: Path, *, seed: int, batch_size: int) -> Synthetic:
    """Write (once) the synthetic domains and train (once) the base on the source, unless ``--weights`` names one."""
    root = cache_dir(options, run_dir)
    domains = synthetic_domains(options, root / "data", seed)
    source = synthetic_split(options, domains["source"], seed)
    target = synthetic_split(options, domains["target"], seed)
    base = "" if options.weights else str(train_base(options, source, root / "base", domains["source"].name,
                                                     seed=seed, batch_size=batch_size))
    return Synthetic(source, target, base)


def train_base(options: VisionOptions, split: Split, cache: Path, data_id: str, *, seed: int, batch_size: int) -> Path:
    """Train the model from scratch on the source domain (all weights, batch norm learning)
    with a plain AdamW loop and cache it as safetensors; reuse the cache when the same
    settings were trained before.

    torchvision's MobileNetV3 family (SSDlite, LR-ASPP, DeepLabV3-MobileNet) builds its
    batch norms with momentum 0.01-0.03, tuned for long ImageNet runs: after a few hundred
    steps from scratch their running statistics still hold the random-init activations,
    and the model, correct in train mode, predicts only background in eval mode. The base
    is therefore trained with momentum 0.1 (restored afterwards; it is not a saved value).
    """
    steps = options.base_steps
    weights = list(getattr(options, "class_weights", ()))
    key = json.dumps([options.task, options.model, options.image_size, steps, options.base_lr, seed, batch_size, data_id,
                      len(split.train), split.class_names, weights])
    path = cache / f"{options.model}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.safetensors"
    if path.is_file():
        return path
    torch.manual_seed(seed)
    model = build_model(options.model, num_outputs(options.task, split.class_names), image_size=options.image_size,
                        task=options.task)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.1
    task = make_task(options, split.class_names, freeze_bn=False)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.base_lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=options.base_lr, total_steps=steps, pct_start=0.15)
    data, step = loader(options, split.train, batch_size=batch_size, seed=seed, training=True), 0
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
    write_safetensors(path, model.state_dict(), metadata={"model": options.model, "steps": str(steps)})
    return path


def base_views(options: VisionOptions, model: nn.Module, data: Synthetic, class_names: list[str], *,
               seed: int, batch_size: int) -> tuple[dict[str, float], str | None]:
    """How well the base learned its own (source) domain, and a PNG of its predictions on
    target validation images (only for a source-trained base: nothing is written beside
    user weights).

    Both are cached beside the base, keyed by the evaluation settings, so the methods of
    the demo, which share one base, evaluate and draw it once.
    """
    task = make_task(options, class_names)
    metrics_file = picture = None
    if data.base:
        stem = _cache_stem(Path(data.base), options, len(data.source.val), seed, class_names)
        metrics_file, picture = stem.with_name(f"source-{stem.name}.json"), stem.with_name(f"examples-{stem.name}.png")
    if metrics_file is not None and metrics_file.is_file():
        on_source = json.loads(metrics_file.read_text())
    else:
        model.eval()
        with torch.no_grad():
            on_source = task.evaluate(model, loader(options, data.source.val, batch_size=batch_size, seed=seed, training=False))
        if metrics_file is not None:
            write_json(metrics_file, on_source)
    if picture is not None and not picture.is_file():
        save_png(picture, example_grid(model, task, data.target.val, class_names))
    return on_source, str(picture) if picture else None


def _cache_stem(weights: Path, options: VisionOptions, size: int, seed: int, class_names: list[str]) -> Path:
    stat = weights.stat()
    key: list[Any] = [weights.name, stat.st_size, stat.st_mtime_ns, options.task, options.image_size, size, seed, class_names]
    return weights.parent / hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]
