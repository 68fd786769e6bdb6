"""MONAI preprocessing and augmentation from one small typed config, and cached datasets.

    config = PreprocessConfig(window=(-200, 600), spacing=(1.5, 1.5, 2.0), patch=(32, 32, 32))
    train = cached_dataset(records, segmentation_transforms(config, train=True))    # CacheDataset
    loader = DataLoader(train, batch_size=2, shuffle=True, collate_fn=list_data_collate)
    evaluation = cached_dataset(records, segmentation_transforms(config, train=False))  # whole volumes

A record is ``{"image": <series folder>, "label": <NIfTI or DICOM SEG path>, "case": name}``.
The chain, in order (deterministic first, so ``CacheDataset`` stores the loaded, resampled,
windowed volumes once and only the random part runs every epoch):

1. ``LoadDicomSeriesd``: the series in RAS with HU, its label on the same grid (else an error);
   records may instead hold already-loaded MetaTensors (``load=False``);
2. ``Orientationd`` (``orientation``, e.g. ``"RAS"``) and ``Spacingd`` (``spacing`` in mm;
   bilinear for the image, nearest for the label), both skipped when left empty;
3. ``ScaleIntensityRanged``: the HU ``window`` onto [0, 1], clipped (a CT window);
4. a size check: every axis at least the training ``patch`` (else an error naming the fix);
5. training only: ``RandCropByPosNegLabeld`` (``samples_per_volume`` patches, foreground-centred
   with probability ``positive_fraction``; a 2-size ``patch`` cuts 2-D axial patches), ``RandFlipd`` per axis, ``RandRotate90d`` in the
   axial plane, small ``RandRotated``, ``RandScaleIntensityd`` / ``RandShiftIntensityd`` and
   ``RandGaussianNoised`` (random draws shared by image and label where both move).

Every sample also carries ``spacing`` (mm per axis, from the affine, so HD95 is in mm); image
and label leave the chain as plain tensors (the DICOM metadata does not collate into batches).

Prediction runs the same deterministic steps on a loaded series (:func:`to_model_grid`) and moves
the model's class probabilities back onto the series' own grid by inverting them
(:func:`to_series_grid`, MONAI's ``Invertd``): the one resampling path, both ways.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from monai.data import Dataset
from monai.transforms import MapTransform, Transform

from scalpel.core.config import raise_if_problems
from scalpel.core.errors import DataError, ScalpelError

KEYS = ("image", "label")
#: Orientationd's axis labels, given explicitly (MONAI warns that its default will change)
RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


@dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing (deterministic, cached) and augmentation (random, per epoch) of CT volumes."""

    window: tuple[float, float] = (-200.0, 600.0)
    """HU range mapped linearly onto [0, 1]; values outside are clipped"""
    spacing: tuple[float, ...] = ()
    """target voxel size in mm per axis; empty keeps each series' own grid"""
    orientation: str = "RAS"
    """axis codes to reorient to; empty keeps the stored orientation"""
    patch: tuple[int, ...] = (32, 32, 32)
    """training patch (and the smallest volume accepted); two sizes: 2-D axial patches (x, y) of the volumes"""
    samples_per_volume: int = 2
    """patches cropped from each cached volume per epoch"""
    positive_fraction: float = 0.5
    """share of patches centred on a foreground voxel (the rest on background)"""
    augment: bool = True
    """random flips, rotations and intensity changes on training patches"""
    flip_prob: float = 0.5
    """per axis"""
    rotate90_prob: float = 0.25
    """a multiple of 90 degrees in the axial plane"""
    rotate_degrees: float = 0.0
    """small rotations about each axis, uniform in +-this many degrees (0: none)"""
    intensity_scale: float = 0.1
    """multiply by 1 + U(-s, s) with probability 0.5"""
    intensity_shift: float = 0.05
    """add U(-s, s) (in [0, 1] units, after windowing) with probability 0.5"""
    noise_std: float = 0.0
    """Gaussian noise standard deviation after windowing (0: none)"""

    def __post_init__(self) -> None:
        problems = []
        if len(self.window) != 2 or self.window[1] <= self.window[0]:
            problems.append(f"window must be (low, high) HU with high > low, got {tuple(self.window)}")
        if len(self.patch) not in (2, 3) or any(int(p) < 1 for p in self.patch):
            problems.append(f"patch must be 2 or 3 sizes >= 1, got {tuple(self.patch)}")
        if self.spacing and (len(self.spacing) != 3 or any(s <= 0 for s in self.spacing)):
            problems.append(f"spacing must be 3 positive sizes in mm, one per volume axis (or empty), got {tuple(self.spacing)}")
        if self.samples_per_volume < 1:
            problems.append(f"samples_per_volume must be >= 1, got {self.samples_per_volume}")
        for name in ("positive_fraction", "flip_prob", "rotate90_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("rotate_degrees", "intensity_scale", "intensity_shift", "noise_std"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        raise_if_problems("preprocessing config", problems)


class RequireSized(MapTransform):
    """Refuse a volume smaller than ``min_size`` on any spatial axis (after resampling).

    ``base=True``: the volume is to be predicted by a base, so the fix is another series or base.
    """

    def __init__(self, keys: Sequence[Hashable], min_size: Sequence[int], *, base: bool = False):
        super().__init__(keys)
        self.min_size, self.base = tuple(int(s) for s in min_size), base

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            size = tuple(out[key].shape[1:])
            # a 2-D patch is cut from axial slices: only the in-plane axes must be large enough
            if len(size) < len(self.min_size) or any(s < m for s, m in zip(size, self.min_size, strict=False)):
                volume, patch = "x".join(map(str, size)), "x".join(map(str, self.min_size))
                if self.base:
                    raise DataError(f"{out.get('case', key)} is {volume} voxels (on the base's grid), smaller than the base's {patch} "
                                    "patch; this base cannot segment it (use a larger series, or a base trained with a smaller patch)")
                raise DataError(f"{out.get('case', key)}: the volume is {volume} voxels (after resampling), smaller than the "
                                f"{patch} patch; use a smaller patch, a finer spacing, or drop it")
        return out


class AddSpacingd(Transform):
    """``data["spacing"]``: the image's voxel size in mm per spatial axis, from its affine."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        image = out["image"]
        affine = getattr(image, "affine", None)
        dims = image.dim() - 1
        if affine is None:
            out["spacing"] = torch.ones(dims)
        else:
            out["spacing"] = torch.as_tensor(affine, dtype=torch.float64)[:dims, :dims].norm(dim=0).float()
        return out


def preprocessing(config: PreprocessConfig, *, load: bool = True, keys: Sequence[str] = KEYS, base: bool = False) -> list[Any]:
    """The deterministic transforms: load, orient, resample, window, size check, spacing
    (``base``: of a series to predict with a base; see :class:`RequireSized`)."""
    from monai.transforms import EnsureTyped, Orientationd, ScaleIntensityRanged, Spacingd

    from scalpel.medical.dicom import LoadDicomSeriesd

    steps: list[Any] = [LoadDicomSeriesd()] if load else []
    if config.orientation:
        steps.append(Orientationd(list(keys), axcodes=config.orientation, labels=RAS_LABELS, allow_missing_keys=True))
    if config.spacing:
        modes = ["bilinear" if k == "image" else "nearest" for k in keys]
        steps.append(Spacingd(list(keys), pixdim=tuple(config.spacing), mode=modes, allow_missing_keys=True))
    low, high = config.window
    steps.append(ScaleIntensityRanged("image", a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
    steps.append(RequireSized(["image"], config.patch, base=base))
    steps.append(AddSpacingd())
    # Plain tensors from here on: the DICOM metadata (per-slice UIDs, ...) does not collate into
    # batches, and what the network and the metrics need (the spacing) is already in its own key.
    steps.append(EnsureTyped(list(keys), data_type="tensor", track_meta=False, allow_missing_keys=True))
    return steps


def augmentation(config: PreprocessConfig, *, keys: Sequence[str] = KEYS) -> list[Any]:
    """The random transforms of a training patch (crop first, so the rest works on patches)."""
    from monai.transforms import (
        RandCropByPosNegLabeld,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandRotated,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    from monai.transforms import SqueezeDimd

    keys = list(keys)
    pos = config.positive_fraction
    slices = len(config.patch) == 2  # 2-D patches: a one-slice 3-D crop, then the slice axis dropped
    steps: list[Any] = [RandCropByPosNegLabeld(keys, label_key="label", spatial_size=tuple(config.patch) + ((1,) if slices else ()),
                                               pos=pos, neg=1.0 - pos, num_samples=config.samples_per_volume, image_key="image")]
    if slices:
        steps.append(SqueezeDimd(keys, dim=3))
    if not config.augment:
        return steps
    dims = len(config.patch)
    steps += [RandFlipd(keys, prob=config.flip_prob, spatial_axis=axis) for axis in range(dims)]
    if config.rotate90_prob:
        steps.append(RandRotate90d(keys, prob=config.rotate90_prob, spatial_axes=(0, 1)))
    if config.rotate_degrees:
        r = math.radians(config.rotate_degrees)
        ranges = {"range_x": r} if dims == 2 else {"range_x": r, "range_y": r, "range_z": r}
        steps.append(RandRotated(keys, prob=0.5, mode=["bilinear" if k == "image" else "nearest" for k in keys], **ranges))
    if config.intensity_scale:
        steps.append(RandScaleIntensityd("image", factors=config.intensity_scale, prob=0.5))
    if config.intensity_shift:
        steps.append(RandShiftIntensityd("image", offsets=config.intensity_shift, prob=0.5))
    if config.noise_std:
        steps.append(RandGaussianNoised("image", prob=0.5, std=config.noise_std))
    return steps


def intensity_augmentation(config: PreprocessConfig, dims: int) -> Any:
    """Array transforms for classification inputs ``(C, *spatial)``: flips and intensity changes."""
    from monai.transforms import Compose, RandFlip, RandGaussianNoise, RandScaleIntensity, RandShiftIntensity

    steps: list[Any] = [RandFlip(prob=config.flip_prob, spatial_axis=axis) for axis in range(dims)] if config.augment else []
    if config.augment and config.intensity_scale:
        steps.append(RandScaleIntensity(factors=config.intensity_scale, prob=0.5))
    if config.augment and config.intensity_shift:
        steps.append(RandShiftIntensity(offsets=config.intensity_shift, prob=0.5))
    if config.augment and config.noise_std:
        steps.append(RandGaussianNoise(prob=0.5, std=config.noise_std))
    return Compose(steps)


def segmentation_transforms(config: PreprocessConfig, *, train: bool, load: bool = True) -> Any:
    """``Compose`` of :func:`preprocessing` (+ :func:`augmentation` for training patches)."""
    from monai.transforms import Compose

    return Compose(preprocessing(config, load=load) + (augmentation(config) if train else []))


def cached_dataset(records: Sequence[Mapping[str, Any]], transform: Any, *, cache: bool = True) -> Any:
    """A ``monai.data.CacheDataset`` (the deterministic prefix of ``transform`` run once per record,
    in memory) or, with ``cache=False``, a ``monai.data.Dataset`` (each record loaded when read).

    Raises:
        ScalpelError: the first :class:`ScalpelError` a transform raised (bad label geometry,
            a volume smaller than the patch, ...), unwrapped from MONAI's ``RuntimeError``, here
            or (``cache=False``) when a sample is read.
    """
    from monai.data import CacheDataset

    if not records:
        raise DataError("no records to build a dataset from; give at least one series with its label")
    with scalpel_errors():
        if cache:
            return CacheDataset(list(records), transform, cache_rate=1.0, num_workers=0, progress=False)
        return _Dataset(list(records), transform)


def to_model_grid(config: PreprocessConfig, image: Any, name: str = "the series") -> tuple[dict[str, Any], Any]:
    """One loaded image (a MetaTensor with its affine) through the deterministic steps of training:
    ``(sample, chain)``; the sample's image keeps its metadata, so :func:`to_series_grid` can undo
    the reorientation and resampling.

    Raises:
        DataError: the image is smaller than ``config.patch`` on that grid.
    """
    from monai.transforms import Compose

    chain = Compose(preprocessing(config, load=False, keys=("image",), base=True)[:-1])  # less the last step: metadata kept
    with scalpel_errors():
        return chain({"image": image, "case": name}), chain


def to_series_grid(values: torch.Tensor, sample: dict[str, Any], chain: Any) -> torch.Tensor:
    """``values`` ``(C, *model grid)`` (class probabilities) moved back onto the image's own grid
    by inverting ``chain`` (bilinear); a plain ``(C, *series grid)`` tensor."""
    from monai.data import MetaTensor
    from monai.transforms import Invertd

    image = sample["image"]
    if not image.applied_operations:
        return values
    moved = MetaTensor(values, affine=image.affine, meta={k: v for k, v in image.meta.items() if k != "affine"})
    moved.applied_operations = list(image.applied_operations)
    back = Invertd(keys="values", transform=chain, orig_keys="image", nearest_interp=False)({"values": moved, "image": image})
    return back["values"].as_tensor()


@contextmanager
def scalpel_errors() -> Iterator[None]:
    """Re-raise the :class:`ScalpelError` inside MONAI's ``RuntimeError("applying transform ...")``
    chain as itself, so a user sees what to fix rather than a transform's traceback."""
    try:
        yield
    except RuntimeError as err:
        cause = scalpel_cause(err)
        if cause is err:
            raise
        raise cause from None


def scalpel_cause(err: BaseException) -> BaseException:
    """The :class:`ScalpelError` inside MONAI's ``RuntimeError("applying transform ...")`` chain, or ``err``."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, ScalpelError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return err


class _Dataset(Dataset):
    """A ``monai.data.Dataset`` whose transform errors come out as the :class:`ScalpelError` inside."""

    def __getitem__(self, index: Any) -> Any:
        with scalpel_errors():
            return super().__getitem__(index)
