"""The task-specific half of a medical run: records -> MONAI datasets -> loaders, the task and
what the adapter records about its inputs (:class:`TaskData`).

Segmentation: cached, windowed, resampled volumes; training patches cropped and augmented per
epoch; whole held-out volumes scored by sliding windows (Dice, HD95 in mm). Classification: the
same preprocessing, then one resized sample per volume or axial slice, its class from a CSV or
from the presence of a structure in the label map (AUC, sensitivity, specificity, accuracy).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scalpel.core.errors import ConfigError, DataError
from scalpel.core.options import TrainOptions
from scalpel.medical.base import CLASSIFICATION, Base, BaseSpec
from scalpel.medical.classification import ClassificationSamples, ClassificationTask, class_samples, presence_samples
from scalpel.medical.options import ClassificationOptions, SegmentationOptions
from scalpel.medical.segmentation import SegmentationTask
from scalpel.medical.transforms import PreprocessConfig, cached_dataset, intensity_augmentation, preprocessing, segmentation_transforms

Records = list[dict[str, Any]]


@dataclass
class TaskData:
    """Loaders, the task, its headline metric and the input facts an adapter records (window, grid, ...)."""

    task: Any
    train: torch.utils.data.DataLoader
    evaluation: torch.utils.data.DataLoader | None
    metric: str
    facts: dict[str, Any]


def segmentation_spec(options: SegmentationOptions, base: Base) -> BaseSpec:
    """The base's spec (its structures, window, patch and grid win), or one from the options for a
    network trained from scratch.

    Raises:
        ConfigError: ``--structures`` that differ from the base's; AdapterError: not a segmentation base.
    """
    if not base.facts:
        return BaseSpec(base.network, options.structures, options.window, options.patch, options.spacing, options.orientation)
    spec = BaseSpec.from_dict({**base.facts, "network": base.network.to_dict()})
    if options.structures and tuple(options.structures) != spec.structures:
        raise ConfigError("medical.segmentation", [f"--structures {list(options.structures)} differ from the base's "
                                                   f"{list(spec.structures)}; leave --structures out to use the base's"])
    return spec


def segmentation_data(options: SegmentationOptions, spec: BaseSpec, train_records: Records, held_out: Records,
                      train: TrainOptions) -> TaskData:
    """Cached volumes on the base's grid: augmented training patches, whole held-out volumes (Dice, HD95 in mm)."""
    pre = spec.preprocess(samples_per_volume=options.samples_per_volume, augment=options.augment)
    transform = segmentation_transforms(pre, train=True)
    train_set = EpochSeeded(cached_dataset(train_records, transform, cache=options.cache), transform, train.seed)
    evaluation = cached_dataset(held_out, segmentation_transforms(pre, train=False), cache=options.cache) if held_out else None
    facts = spec.to_dict()
    del facts["network"]
    # HD95 of whole volumes is the slow part of scoring; a --quick run checks the set-up, not the surfaces
    return TaskData(SegmentationTask(spec.structures, spec.patch, hd95=not train.quick), loader(train_set, train, shuffle=True),
                    loader(evaluation, train, batch_size=1), "dice", facts)


def classification_facts(options: ClassificationOptions, base: Base, csv_classes: list[str]) -> dict[str, Any]:
    """What the classifier sees and says: the base's facts where it has them, else the options'.

    Raises:
        DataError: CSV classes the base does not know.
    """
    facts = base.facts
    names = list(facts.get("class_names") or csv_classes or ("absent", "present"))
    unknown = sorted(set(csv_classes) - set(names))
    if unknown:
        raise DataError(f"classes {unknown} of the labels CSV are not among the base's {names}; use the base's class names")
    return {"task": CLASSIFICATION, "class_names": names, "structure": int(facts.get("structure") or options.structure),
            "spatial_dims": int(facts.get("spatial_dims") or options.spatial_dims), "size": int(facts.get("size") or options.size),
            "window": list(facts.get("window") or options.window), "spacing": list(facts.get("spacing") or options.spacing),
            "orientation": str(facts.get("orientation", options.orientation))}


def classification_preprocess(facts: dict[str, Any]) -> PreprocessConfig:
    """Window and grid of a classifier; no patch (inputs are resized to ``size``), so no size check."""
    return PreprocessConfig(window=tuple(facts["window"]), spacing=tuple(facts["spacing"]), orientation=facts["orientation"],
                            patch=(1, 1, 1))


def classification_data(options: ClassificationOptions, facts: dict[str, Any], train_records: Records, held_out: Records,
                        train: TrainOptions) -> TaskData:
    """One resized sample per volume (or axial slice), its class from the CSV or the label map (AUC, ...)."""
    from monai.transforms import Compose

    pre = classification_preprocess(facts)
    names, dims, size = facts["class_names"], facts["spatial_dims"], facts["size"]
    if dims == 2 and train_records and "class" in train_records[0]:
        raise ConfigError("medical.classification", ["a labels CSV classifies whole volumes; use a 3-D classifier "
                                                     "(--spatial-dims 3), or label maps for axial slices"])

    def samples(records: Records) -> list[dict[str, Any]]:
        if records and "class" in records[0]:  # image-level classes from a CSV
            volumes = cached_dataset(records, Compose(preprocessing(pre, keys=("image",))), cache=False)
            return class_samples(((v["case"], v["image"], names.index(r["class"])) for v, r in zip(volumes, records)), size=size)
        volumes = cached_dataset(records, Compose(preprocessing(pre)), cache=False)
        return presence_samples(((v["case"], v["image"], v["label"]) for v in volumes), facts["structure"], spatial_dims=dims, size=size)

    augmentation = intensity_augmentation(pre, dims)
    train_set = EpochSeeded(ClassificationSamples(samples(train_records), augmentation), augmentation, train.seed)
    evaluation = ClassificationSamples(samples(held_out)) if held_out else None
    return TaskData(ClassificationTask(names), loader(train_set, train, shuffle=True),
                    loader(evaluation, train), "auc", facts)


def loader(dataset: Any, train: TrainOptions, *, shuffle: bool = False, batch_size: int = 0) -> torch.utils.data.DataLoader | None:
    """A seeded DataLoader of MONAI samples (None for no dataset)."""
    from monai.data import list_data_collate

    if dataset is None:
        return None
    size = batch_size or train.batch_size
    # a last training batch of one sample breaks BatchNorm in training mode: drop the remainder
    return torch.utils.data.DataLoader(dataset, batch_size=size, shuffle=shuffle, collate_fn=list_data_collate,
                                       generator=torch.Generator().manual_seed(train.seed), drop_last=shuffle and len(dataset) > size)


class EpochSeeded(torch.utils.data.Dataset):
    """``dataset`` whose random transforms draw from a seed of (seed, epoch, index), not from a stream.

    Sample ``i`` of epoch ``e`` is then the same patch with the same augmentation however the
    epoch was reached: a resumed run skips the batches it already trained on without loading them
    (so a stream would be behind), yet sees exactly what the uninterrupted run saw.
    ``fit`` calls :meth:`set_epoch` (through Accelerate's data loader) before each epoch.
    """

    def __init__(self, dataset: Any, transform: Any, seed: int):
        self.dataset, self.transform, self.seed, self.epoch = dataset, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        state = np.random.SeedSequence([self.seed, self.epoch, int(index)]).generate_state(1)[0]
        self.transform.set_random_state(seed=int(state))
        return self.dataset[index]
