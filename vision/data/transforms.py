"""Datasets and paired image/target transforms on torchvision ``transforms.v2`` + ``tv_tensors``.

Boxes travel as :class:`tv_tensors.BoundingBoxes` and masks as :class:`tv_tensors.Mask`,
so one random draw (a flip, a crop) is applied to the image and its targets alike.
Detection images are *not* resized or normalised here: torchvision detectors do both
inside the model (``GeneralizedRCNNTransform``). Segmentation and classification
models are plain networks, so their inputs are resized and normalised with the ImageNet
mean and standard deviation the torchvision weights were trained with.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from scalpel.core.errors import DataError
from scalpel.vision.data.images import load_rgb
from scalpel.vision.data.imagefolder import ClassificationData
from scalpel.vision.data.masks import SegmentationData, check_mask_values, read_mask
from scalpel.vision.data.records import DetectionRecord

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IGNORE_INDEX = 255


def detection_transforms(train: bool) -> v2.Transform:
    """Flip and photometric jitter for training; both end in float images in ``[0, 1]``."""
    steps: list[v2.Transform] = [v2.RandomHorizontalFlip(0.5), v2.RandomPhotometricDistort(p=0.3)] if train else []
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.SanitizeBoundingBoxes()])


def segmentation_transforms(train: bool, size: int) -> v2.Transform:
    """Resize to ``size x size`` (masks with nearest neighbour), flip when training, normalise."""
    steps: list[v2.Transform] = [v2.Resize((size, size), antialias=True)]
    if train:
        steps += [v2.RandomHorizontalFlip(0.5), v2.RandomPhotometricDistort(p=0.3)]
    return v2.Compose([*steps, v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                       v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def classification_transforms(train: bool, size: int) -> v2.Transform:
    steps: list[v2.Transform] = [v2.Resize((size, size), antialias=True)]
    if train:
        steps += [v2.RandomHorizontalFlip(0.5)]
    return v2.Compose([*steps, v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def to_image(array: np.ndarray) -> tv_tensors.Image:
    """``[H, W, 3]`` uint8 -> ``tv_tensors.Image [3, H, W]`` uint8."""
    return tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1))


class DetectionDataset(Dataset):
    """``(image [3, H, W] float, {"boxes": [N, 4] xyxy, "labels": [N] int64, "image_id": int})``."""

    def __init__(self, records: Sequence[DetectionRecord], transform: Callable | None = None):
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.records[index]
        image = to_image(load_rgb(record.path))
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.from_numpy(record.boxes).reshape(-1, 4), format="XYXY",
                                              canvas_size=tuple(image.shape[-2:])),
            "labels": torch.from_numpy(record.labels),
            "image_id": index,
        }
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target

    def aspect_ratios(self) -> list[float]:
        return [r.width / max(r.height, 1) for r in self.records]


class SegmentationDataset(Dataset):
    """``(image [3, S, S] float normalised, mask [S, S] int64)`` with ``ignore_index`` kept as is."""

    def __init__(self, data: SegmentationData, transform: Callable | None = None, ignore_index: int = IGNORE_INDEX):
        self.data = data
        self.transform = transform
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.data.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        item = self.data.items[index]
        array = load_rgb(item.image)
        mask = read_mask(item)
        if mask.shape != array.shape[:2]:
            raise DataError(f"mask of {item.image} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                            f"{array.shape[1]}x{array.shape[0]}; masks must match their image pixel for pixel")
        check_mask_values(mask, self.data.num_classes, self.ignore_index, item.mask or item.image)
        image, target = to_image(array), tv_tensors.Mask(torch.from_numpy(mask))
        if self.transform is not None:
            image, target = self.transform(image, target)
        return image, target.as_subclass(torch.Tensor).long()


class ClassificationDataset(Dataset):
    """``(image [3, S, S] float normalised, label int)``."""

    def __init__(self, data: ClassificationData, transform: Callable | None = None):
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.data.items[index]
        image = to_image(load_rgb(path))
        return (self.transform(image) if self.transform else image), label


def collate_detection(batch: list[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """Detectors take lists: images differ in size and targets in object count."""
    images, targets = zip(*batch)
    return [img.as_subclass(torch.Tensor) for img in images], [
        {"boxes": t["boxes"].as_subclass(torch.Tensor).float(), "labels": t["labels"], "image_id": t["image_id"]} for t in targets
    ]


class AspectRatioBatchSampler(Sampler[list[int]]):
    """Batches of images with similar aspect ratio (fewer padded pixels per batch).

    Images fall into bins by ``log2(width / height)`` rounded to ``resolution``; each epoch
    the indices are shuffled, a bin yields a batch when it holds ``batch_size`` indices,
    and the leftovers are batched together at the end, so every index appears once.
    """

    def __init__(self, aspect_ratios: Sequence[float], batch_size: int, *, shuffle: bool = True, seed: int = 0, resolution: float = 0.5):
        self.bins = [round(math.log2(max(a, 1e-6)) / resolution) for a in aspect_ratios]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = torch.randperm(len(self.bins), generator=generator).tolist() if self.shuffle else range(len(self.bins))
        pending: dict[int, list[int]] = {}
        for index in order:
            bucket = pending.setdefault(self.bins[index], [])
            bucket.append(index)
            if len(bucket) == self.batch_size:
                yield bucket
                pending[self.bins[index]] = []
        leftovers = [i for bucket in pending.values() for i in bucket]
        for start in range(0, len(leftovers), self.batch_size):
            yield leftovers[start : start + self.batch_size]

    def __len__(self) -> int:
        # Per bin, n // batch_size full batches whatever the order; the remainders are pooled.
        counts = Counter(self.bins).values()
        return sum(n // self.batch_size for n in counts) + math.ceil(sum(n % self.batch_size for n in counts) / self.batch_size)

