"""The data of one vision run: training and validation datasets in the format of ``--data``
(or the embedded synthetic domains), and their loaders."""

from __future__ import annotations

import dataclasses
import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from scalpel.core.errors import DataError
from scalpel.vision import data as vd
from scalpel.vision.config import VisionOptions
from scalpel.vision.synthetic import SHAPES, SOURCE, TARGET, write_classification_set, write_scenes


@dataclass
class Split:
    """Loaded data of one task: train/val datasets, class names, load reports."""

    train: Dataset
    val: Dataset
    class_names: list[str]
    reports: list[vd.DataReport]


def load_split(options: VisionOptions, data: str, images: str, masks: str, val: tuple[str, str, str] | None,
               *, seed: int) -> Split:
    """Load training data (and validation data, or split it off with ``seed``) in the format of ``data``."""
    train = _load(options, data, images, masks)
    held = _load(options, *val) if val else None
    train_set, val_set = _dataset(options, train, True), _dataset(options, held or train, False)
    reports = [train.report] + ([held.report] if held else [])
    for report in reports:  # what was dropped or skipped is said on the console, not only in report.md
        if report.boxes_dropped or report.skipped:
            print(f"scalpel: {report.summary()}", file=sys.stderr)
    if held is None:  # a seeded split of one data set, the same in every run
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(seed)).tolist()
        cut = max(1, int(round(len(order) * options.val_fraction)))
        if len(order) - cut < 1:
            raise DataError(f"{data} has {len(order)} image(s): too few to hold out validation data; pass --val-data")
        train_set, val_set = Subset(train_set, sorted(order[cut:])), Subset(val_set, sorted(order[:cut]))
    return Split(train_set, val_set, list(train.class_names), reports)


def user_split(options: VisionOptions, seed: int) -> Split:
    """The split of the user's ``--data`` (and ``--val-data``)."""
    val = (options.val_data, options.val_images, options.val_masks) if options.val_data else None
    return load_split(options, options.data, options.images, options.masks, val, seed=seed)


def _load(options: VisionOptions, source: str, image_root: str, mask_root: str) -> Any:
    names, strict = list(options.class_names) or None, options.strict
    if options.task == "detection":
        return vd.load_coco(source, image_root or None, strict=strict) if source.endswith(".json") else \
            vd.load_voc(source, class_names=names, strict=strict)
    if options.task == "segmentation":
        return vd.load_coco_masks(source, image_root or None, strict=strict) if source.endswith(".json") else \
            vd.load_mask_folders(source, mask_root, class_names=names, strict=strict)
    return vd.load_csv(source, root=image_root or None, class_names=names, strict=strict) if source.endswith(".csv") \
        else vd.load_image_folder(source, class_names=names, strict=strict)


def _dataset(options: VisionOptions, loaded: Any, train: bool) -> Dataset:
    if options.task == "detection":
        return vd.DetectionDataset(loaded.records, vd.detection_transforms(train))
    if options.task == "segmentation":
        return vd.SegmentationDataset(loaded, vd.segmentation_transforms(train, options.image_size), getattr(options, "ignore_index", 255))
    return vd.ClassificationDataset(loaded, vd.classification_transforms(train, options.image_size))


def loader(options: VisionOptions, dataset: Dataset, *, batch_size: int, seed: int, training: bool) -> DataLoader:
    """Batches of ``dataset``: shuffled (seeded) and without a ragged last batch when ``training``."""
    collate = vd.collate_detection if options.task == "detection" else None
    if training and getattr(options, "group_aspect_ratio", False):
        base, indices = (dataset.dataset, dataset.indices) if isinstance(dataset, Subset) else (dataset, range(len(dataset)))
        ratios = [base.aspect_ratios()[i] for i in indices]
        sampler = vd.AspectRatioBatchSampler(ratios, batch_size, seed=seed)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
    return DataLoader(dataset, batch_size=batch_size, shuffle=training, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed), drop_last=training and len(dataset) > batch_size)


def synthetic_domains(options: VisionOptions, root: Path, seed: int) -> dict[str, Path]:
    """Write (once) the synthetic source and target sets under ``root``; return their folders by domain."""
    count, size = options.train_images, options.image_size
    paths = {}
    for style, style_seed in ((SOURCE, seed), (TARGET, seed + 1)):
        look = hashlib.sha256(repr(style).encode()).hexdigest()[:8]  # a changed style is written afresh
        folder = root / f"{options.task}-{style.name}-{count}x{size}-seed{style_seed}-{look}"
        if not (folder / "done").is_file():  # the marker is written last: a killed write is redone
            if options.task == "classification":
                write_classification_set(folder, count, style, seed=style_seed, size=size)
            else:
                write_scenes(folder, count, style, seed=style_seed, size=size)
            (folder / "done").write_text("complete\n")
        paths[style.name] = folder
    return paths


def synthetic_split(options: VisionOptions, folder: Path, seed: int) -> Split:
    """The split of one synthetic domain folder, read by the loaders user data goes through."""
    if options.task == "detection":
        return load_split(options, str(folder / "annotations.json"), str(folder / "images"), "", None, seed=seed)
    if options.task == "segmentation":
        with_classes = dataclasses.replace(options, class_names=("background", *SHAPES))
        return load_split(with_classes, str(folder / "images"), "", str(folder / "masks"), None, seed=seed)
    return load_split(options, str(folder), "", "", None, seed=seed)
