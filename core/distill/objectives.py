"""Distillation objectives: which loss compares the student's outputs with the teacher's.

An objective is a small callable ``objective(student_out, teacher_out, batch) -> scalar``
built by name from :data:`OBJECTIVES` (``"kd"``, ``"forward_kl"``, ``"reverse_kl"``,
``"jsd"``, ``"pixel_kl"``, ``"cwd"``, ``"detection"``), so :class:`DistillationTask`
holds no ``if`` chain on loss names. It finds its mask in the batch itself:

* ``kd`` (classification logits ``(B, C)``; no mask);
* ``forward_kl`` / ``reverse_kl`` / ``jsd`` (LM logits ``(B, L, V)``): the mask is
  :func:`token_mask` of ``batch["labels"]`` (``-100`` = padding / prompt), else
  ``batch["attention_mask"]``; ``shift_labels=True`` for causal LMs;
* ``pixel_kl`` / ``cwd`` (segmentation logits ``(B, C, H, W)``);
* ``detection`` (a dict with ``"cls_logits"`` ``(B, A, C)`` and optionally
  ``"bbox_regression"`` ``(B, A, 4)``, as a RetinaNet head returns).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

from scalpel.core.distill import dense, losses
from scalpel.core.registry import Registry

Objective = Callable[[Any, Any, Mapping[str, Any]], Tensor]

#: name -> factory(temperature=..., beta=..., shift_labels=...) returning an objective.
OBJECTIVES: Registry[Callable[..., Objective]] = Registry("distillation loss")


def _lm_mask(batch: Mapping[str, Any], shift: bool) -> Tensor | None:
    if isinstance(batch, Mapping) and batch.get("labels") is not None and batch["labels"].dim() == 2:
        return losses.token_mask(batch["labels"], shift=shift)
    if isinstance(batch, Mapping) and batch.get("attention_mask") is not None:
        return batch["attention_mask"].bool()
    return None


@dataclass(frozen=True)
class LogitKD:
    """Hinton KD on ``(..., C)`` logits: ``T^2 KL(p_T || p_S)``."""

    temperature: float = 4.0

    def __call__(self, student: Tensor, teacher: Tensor, batch: Mapping[str, Any]) -> Tensor:
        return losses.logit_kd_loss(student, teacher, temperature=self.temperature)


@dataclass(frozen=True)
class TokenDivergence:
    """Token-level divergence for language models, masked from the batch's labels.

    ``beta`` selects the divergence as in GKD: 0 = forward KL, 1 = reverse KL, in
    between the generalized JSD.
    """

    beta: float = 0.5
    temperature: float = 1.0
    shift_labels: bool = True

    def __call__(self, student: Tensor, teacher: Tensor, batch: Mapping[str, Any]) -> Tensor:
        mask = _lm_mask(batch, self.shift_labels)
        return losses.generalized_jsd_loss(student, teacher, beta=self.beta, mask=mask, temperature=self.temperature)


@dataclass(frozen=True)
class PixelKL:
    """Pixel-wise KD on ``(B, C, H, W)`` segmentation logits."""

    class_axis: ClassVar[int] = 1

    temperature: float = 1.0

    def __call__(self, student: Tensor, teacher: Tensor, batch: Mapping[str, Any]) -> Tensor:
        return dense.pixel_kl_loss(student, teacher, temperature=self.temperature)


@dataclass(frozen=True)
class ChannelWise:
    """Channel-wise distillation (Shu et al., 2021) on ``(B, C, H, W)`` logits."""

    class_axis: ClassVar[int] = 1

    temperature: float = 4.0

    def __call__(self, student: Tensor, teacher: Tensor, batch: Mapping[str, Any]) -> Tensor:
        return dense.channel_wise_loss(student, teacher, temperature=self.temperature)


@dataclass(frozen=True)
class DetectionKD:
    """Per-anchor class-logit KD plus confidence-weighted box imitation (dict outputs)."""

    temperature: float = 1.0
    sigmoid: bool = True
    box_weight: float = 1.0

    def __call__(self, student: Mapping[str, Tensor], teacher: Mapping[str, Tensor], batch: Mapping[str, Any]) -> Tensor:
        return dense.detection_kd_loss(
            student["cls_logits"],
            teacher["cls_logits"],
            student.get("bbox_regression"),
            teacher.get("bbox_regression"),
            temperature=self.temperature,
            sigmoid=self.sigmoid,
            box_weight=self.box_weight,
        )


OBJECTIVES.add("kd", lambda temperature=4.0, **_: LogitKD(temperature))
OBJECTIVES.add("forward_kl", lambda temperature=1.0, shift_labels=True, **_: TokenDivergence(0.0, temperature, shift_labels))
OBJECTIVES.add("reverse_kl", lambda temperature=1.0, shift_labels=True, **_: TokenDivergence(1.0, temperature, shift_labels))
OBJECTIVES.add(
    "jsd", lambda temperature=1.0, beta=0.5, shift_labels=True, **_: TokenDivergence(beta, temperature, shift_labels)
)
OBJECTIVES.add("pixel_kl", lambda temperature=1.0, **_: PixelKL(temperature))
OBJECTIVES.add("cwd", lambda temperature=4.0, **_: ChannelWise(temperature))
OBJECTIVES.add("detection", lambda temperature=1.0, **_: DetectionKD(temperature))


def build_objective(name: str, **options: Any) -> Objective:
    """The objective registered as ``name``, built with the options it uses (others ignored)."""
    return OBJECTIVES.get(name)(**options)
