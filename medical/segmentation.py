"""Volumetric segmentation with MONAI networks: model spec, training task, sliding-window inference.

    spec = UNetSpec(spatial_dims=3, out_channels=3)            # background + 2 structures
    model = spec.build()                                       # monai.networks.nets.UNet
    task = SegmentationTask(["liver", "lesion"], roi_size=(32, 32, 32))
    result = fit(model, task, train_batches, eval_batches, FitConfig(output_dir=...))
    mask = task.predict(model, image[None])                    # (1, 1, X, Y, Z) int64
    kd = distillation_task(task, teacher, alpha=0.5)           # a frozen teacher's soft labels too

Other networks (SegResNet, SwinUNETR, any MONAI class) come from
:class:`scalpel.medical.networks.NetworkSpec`, which has the same interface as ``UNetSpec``.

Loss: Dice + cross-entropy (``monai.losses.DiceCELoss``; Milletari et al. 2016,
arXiv:1606.04797, for the soft Dice). Metrics per structure, background excluded:
Dice = 2|P ∩ G| / (|P| + |G|) and HD95, the 95th percentile of the symmetric surface
distances (Huttenlocher et al. 1993), in mm when the batch carries ``spacing`` and in
voxels otherwise (``monai.metrics.DiceMetric`` / ``HausdorffDistanceMetric``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from scalpel.core.config import raise_if_problems
from scalpel.core.errors import ConfigError, DataError


@dataclass(frozen=True)
class UNetSpec:
    """How to build a MONAI UNet (Ronneberger et al. 2015 with residual units, Kerfoot et al. 2018).

    Stored as ``model.json`` beside a base checkpoint so the base can be rebuilt
    exactly; the input is ``(B, in_channels, *spatial)``, the output logits
    ``(B, out_channels, *spatial)`` (``out_channels`` counts the background).
    """

    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 2
    channels: tuple[int, ...] = (8, 16, 32)
    strides: tuple[int, ...] = (2, 2)
    num_res_units: int = 1
    norm: str = "batch"
    architecture: str = field(default="monai.UNet", metadata={"help": "network family; only monai.UNet is built here"})

    def __post_init__(self) -> None:
        problems = []
        if self.spatial_dims not in (2, 3):
            problems.append(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.in_channels < 1:
            problems.append(f"in_channels must be >= 1, got {self.in_channels}")
        if self.out_channels < 2:
            problems.append(f"out_channels must be >= 2 (background + at least one structure), got {self.out_channels}")
        if len(self.channels) < 2 or len(self.strides) != len(self.channels) - 1:
            problems.append(f"need >= 2 channels and one stride fewer than channels, got channels={self.channels} strides={self.strides}")
        if self.architecture != "monai.UNet":
            problems.append(f"architecture {self.architecture!r} unknown; use 'monai.UNet' or pass your own MONAI network")
        raise_if_problems("UNet spec", problems)

    @property
    def downsampling(self) -> int:
        """Every spatial size fed to the network must be a multiple of this."""
        return math.prod(self.strides)

    def build(self) -> nn.Module:
        from monai.networks.nets import UNet

        return UNet(
            spatial_dims=self.spatial_dims,
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            channels=tuple(self.channels),
            strides=tuple(self.strides),
            num_res_units=self.num_res_units,
            norm=self.norm,
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError("model spec", [f"unknown key {k!r}; known: {sorted(known)}" for k in unknown])
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


class SegmentationTask:
    """DiceCE training and sliding-window evaluation for :func:`scalpel.core.fit.fit`.

    Batches are dicts ``{"image": (B, C, *spatial) float, "label": (B, 1, *spatial) int}``,
    optionally ``"spacing": (B, D)`` in mm (then HD95 is in mm). Training batches are
    patches of ``roi_size``; evaluation batches may be whole volumes of any size, which
    are predicted window by window (``monai.inferers.sliding_window_inference``). With a
    2-D ``roi_size`` and 3-D volumes, a 2-D network predicts every axial slice
    (``monai.inferers.SliceInferer`` over the last axis) and the metrics are 3-D.

    Args:
        structure_names: one name per foreground class (label values 1..N).
        roi_size: window size for inference; each entry a multiple of the network's
            downsampling factor.
        sw_batch_size: windows per forward pass.
        overlap: window overlap fraction in [0, 1).
        hd95: also compute HD95 in :meth:`evaluate` (slower on large volumes).
    """

    name = "medical.segmentation"

    def __init__(
        self,
        structure_names: Sequence[str],
        roi_size: Sequence[int],
        *,
        sw_batch_size: int = 4,
        overlap: float = 0.25,
        hd95: bool = True,
    ):
        problems = []
        if not structure_names:
            problems.append("give at least one structure name (one per foreground label value)")
        if not 0 <= overlap < 1:
            problems.append(f"overlap must be in [0, 1), got {overlap}")
        if any(int(s) < 1 for s in roi_size):
            problems.append(f"roi_size entries must be >= 1, got {tuple(roi_size)}")
        raise_if_problems("segmentation task", problems)
        from monai.losses import DiceCELoss

        self.structure_names = list(structure_names)
        self.num_classes = len(self.structure_names) + 1
        self.roi_size = tuple(int(s) for s in roi_size)
        self.sw_batch_size = sw_batch_size
        self.overlap = overlap
        self.hd95 = hd95
        self.loss = DiceCELoss(to_onehot_y=True, softmax=True)

    def step(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        image, label = _image_label(batch)
        logits = model(image)
        # logits stay attached: a distillation wrapper's KD loss backpropagates through them
        return {"loss": self.loss(logits, label), "logits": logits}

    @torch.no_grad()
    def logits(self, model: nn.Module, image: Tensor) -> Tensor:
        """``(B, C, *spatial)`` -> ``(B, num_classes, *spatial)`` by sliding-window inference."""
        from monai.inferers import sliding_window_inference

        if image.dim() - 2 == len(self.roi_size) + 1:  # a 2-D network on a volume: slice by slice (axial, last axis)
            from monai.inferers import SliceInferer

            inferer = SliceInferer(spatial_dim=2, roi_size=self.roi_size, sw_batch_size=self.sw_batch_size,
                                   overlap=self.overlap, mode="gaussian")
            out = inferer(image, model)
        else:
            _check_roi(image, self.roi_size)
            out = sliding_window_inference(image, self.roi_size, self.sw_batch_size, model, overlap=self.overlap, mode="gaussian")
        return out.as_tensor() if hasattr(out, "as_tensor") else out

    @torch.no_grad()
    def predict(self, model: nn.Module, image: Tensor) -> Tensor:
        """``(B, C, *spatial)`` -> label map ``(B, 1, *spatial)`` int64 (argmax of the logits)."""
        logits = self.logits(model, image)
        return logits.argmax(dim=1, keepdim=True)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        """Mean Dice (``dice``), per-structure ``dice/<name>`` and ``hd95/<name>``, and ``hd95``."""
        per_case: dict[str, list[list[float]]] = {}
        model.eval()
        seen = 0
        for batch in batches:
            image, label = _image_label(batch)
            prediction = self.predict(model, image)
            spacing = batch.get("spacing") if isinstance(batch, dict) else None
            for b in range(image.shape[0]):
                scores = score_segmentation(
                    prediction[b : b + 1], label[b : b + 1], self.num_classes,
                    spacing=None if spacing is None else [float(s) for s in spacing[b]], hd95=self.hd95,
                )
                for key, values in scores.items():
                    per_case.setdefault(key, []).append(values)
                seen += 1
        if not seen:
            raise DataError("no evaluation batches: give at least one labelled volume to evaluate on")
        return summarize_scores(per_case, self.structure_names)


def distillation_task(
    task: SegmentationTask, teacher: nn.Module, *, alpha: float = 0.5, temperature: float = 2.0, loss: str = "pixel_kl"
) -> Any:
    """``task`` plus a frozen teacher network's soft labels (:class:`scalpel.core.distill.DistillationTask`).

    ``loss = (1 - alpha) * DiceCE + alpha * KD`` where KD is the pixel-wise (voxel-wise)
    ``T^2 KL(p_teacher || p_student)`` over classes (Liu et al., CVPR 2019; ``"pixel_kl"``) or
    channel-wise distillation (Shu et al., ICCV 2021; ``"cwd"``). The teacher sees the same
    patch as the student and must predict the same classes; the student may be any network
    (smaller, or the teacher's own architecture adapted by LoRA, sparse or layer-wise).
    ``evaluate`` is the task's: the student is judged on Dice and HD95 alone.
    """
    from scalpel.core.distill import DistillationTask

    if loss not in ("pixel_kl", "cwd"):
        raise ConfigError("segmentation distillation", [f"loss must be pixel_kl or cwd, got {loss!r}"])
    return DistillationTask(task, teacher, loss, alpha=alpha, temperature=temperature)


def score_segmentation(
    prediction: Tensor, label: Tensor, num_classes: int, *, spacing: Sequence[float] | None = None, hd95: bool = True
) -> dict[str, list[float]]:
    """Dice and HD95 per foreground class for one case.

    Args:
        prediction, label: ``(1, 1, *spatial)`` integer label maps.
        num_classes: including the background (class 0, excluded from the scores).
        spacing: voxel size in mm per spatial axis (HD95 in mm), or None (in voxels).

    Returns:
        ``{"dice": [per class], "hd95": [per class]}``; Dice is 1 where a structure is absent
        from both, HD95 is NaN where it is absent from either (undefined).
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance
    from monai.networks.utils import one_hot

    p = one_hot(prediction.long(), num_classes)
    g = one_hot(label.long(), num_classes)
    dice = compute_dice(p, g, include_background=False, ignore_empty=False)[0]
    result = {"dice": [float(v) for v in dice]}
    if hd95:
        present = [(bool(p[0, c].any()) and bool(g[0, c].any())) for c in range(1, num_classes)]
        distances = compute_hausdorff_distance(p, g, include_background=False, percentile=95, spacing=spacing)[0]
        result["hd95"] = [float(d) if ok else float("nan") for d, ok in zip(distances, present, strict=True)]
    return result


def summarize_scores(per_case: dict[str, list[list[float]]], structure_names: Sequence[str]) -> dict[str, float]:
    """Average per-case scores into ``{"dice", "dice/<name>", "hd95", "hd95/<name>"}``; NaNs skipped."""
    metrics: dict[str, float] = {}
    for key, cases in per_case.items():
        values = torch.tensor(cases, dtype=torch.float64)  # (cases, structures)
        per_structure = values.nanmean(dim=0)
        for name, v in zip(structure_names, per_structure.tolist(), strict=True):
            metrics[f"{key}/{name}"] = v
        metrics[key] = float(per_structure.nanmean())
    return metrics


def _image_label(batch: Any) -> tuple[Tensor, Tensor]:
    if not isinstance(batch, dict) or "image" not in batch or "label" not in batch:
        raise DataError("segmentation batches must be dicts with 'image' (B, C, *spatial) and 'label' (B, 1, *spatial)")
    image, label = torch.as_tensor(batch["image"]), torch.as_tensor(batch["label"])
    if image.shape[0] != label.shape[0] or image.shape[2:] != label.shape[2:]:
        raise DataError(f"image {tuple(image.shape)} and label {tuple(label.shape)} differ in batch or spatial size")
    return image.float(), label.long()


def _check_roi(image: Tensor, roi_size: Sequence[int]) -> None:
    if image.dim() - 2 != len(roi_size):
        raise DataError(f"image has {image.dim() - 2} spatial dims but roi_size {tuple(roi_size)} has {len(roi_size)}")
