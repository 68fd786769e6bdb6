"""Distillation losses for dense prediction: segmentation and detection. Pure functions.

Segmentation:
    * pixel-wise KL (Liu et al., 2019, "Structured Knowledge Distillation for Semantic
      Segmentation", CVPR): every pixel's class distribution is a Hinton target.
    * channel-wise distillation, CWD (Shu et al., 2021, "Channel-wise Knowledge
      Distillation for Dense Prediction", ICCV, arXiv:2011.13256): every channel's
      activation map becomes a distribution over the ``H * W`` locations, and the student
      matches the teacher's, which concentrates on the most salient regions of each class.

Detection (dense heads such as RetinaNet/FCOS/SSD, whose outputs are per anchor):
    * logit distillation of the per-anchor class scores (softmax or sigmoid heads) and
      imitation of the teacher's box regression, weighted by the teacher's confidence
      (after Chen et al., 2017, "Learning Efficient Object Detection Models with
      Knowledge Distillation", NeurIPS: soft targets for classification, teacher hints
      for regression);
    * feature imitation on backbone/FPN maps, optionally restricted to a mask of
      near-object locations (Wang et al., 2019, "Distilling Object Detectors with
      Fine-grained Feature Imitation", CVPR).

Teacher and student heads must produce the same anchors (same anchor generator, FPN
levels and input size); a shape mismatch raises ``ValueError``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from scalpel.core.distill.losses import _masked_mean, kl_per_position, logit_kd_loss


def pixel_kl_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0, mask: Tensor | None = None) -> Tensor:
    """Pixel-wise KD: ``T^2 * KL(p_T(x) || p_S(x))`` over classes, mean over pixels.

    Args:
        student_logits, teacher_logits: ``(B, C, *spatial)`` (2-D ``(B, C, H, W)`` or
            3-D ``(B, C, D, H, W)``); a student at lower resolution is upsampled
            bilinearly/trilinearly to the teacher's size first.
        temperature: ``T``.
        mask: optional ``(B, *spatial)`` bool, pixels to keep (e.g. labels != ignore).
    """
    student_logits = _resize_like(student_logits, teacher_logits)
    s = student_logits.movedim(1, -1)
    t = teacher_logits.movedim(1, -1)
    return logit_kd_loss(s, t, temperature=temperature, mask=mask)


def channel_wise_loss(student_maps: Tensor, teacher_maps: Tensor, temperature: float = 4.0) -> Tensor:
    """Channel-wise distillation (Shu et al., 2021, Eq. 2-3).

    For every image ``b`` and channel ``c``, ``phi(y)_{b,c,i} = softmax_i(y_{b,c,i} / T)``
    over the spatial locations ``i``; the loss is::

        T^2 / (B * C) * sum_{b,c} sum_i phi(y^T)_{b,c,i} log(phi(y^T)_{b,c,i} / phi(y^S)_{b,c,i})

    Args:
        student_maps, teacher_maps: ``(B, C, *spatial)`` logits or feature maps with the
            same channel count (project features first when widths differ); a student at
            lower resolution is upsampled to the teacher's.
        temperature: ``T`` (the paper uses 4 on logits, 1-4 on features).

    Returns:
        Scalar.
    """
    student_maps = _resize_like(student_maps, teacher_maps)
    if student_maps.shape[:2] != teacher_maps.shape[:2]:
        raise ValueError(f"channel-wise KD needs equal (B, C): {tuple(student_maps.shape)} vs {tuple(teacher_maps.shape)}")
    s = student_maps.flatten(2) / temperature
    t = teacher_maps.flatten(2) / temperature
    per = kl_per_position(F.log_softmax(t, -1), F.log_softmax(s, -1))  # (B, C)
    return temperature**2 * per.mean()


def detection_kd_loss(
    student_cls: Tensor,
    teacher_cls: Tensor,
    student_box: Tensor | None = None,
    teacher_box: Tensor | None = None,
    *,
    temperature: float = 1.0,
    sigmoid: bool = True,
    box_weight: float = 1.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Logit distillation for a dense detection head, per anchor.

    Classification: with ``sigmoid=True`` (RetinaNet, FCOS: one binary classifier per
    class) each class score is a Bernoulli target, ``T^2 * sum_c KL(Bern(sigma(t_c/T)) ||
    Bern(sigma(s_c/T)))``; with ``sigmoid=False`` (softmax heads with a background
    class: SSD, Faster R-CNN box predictor) it is :func:`logit_kd_loss` over classes.

    Regression: ``w * mean_k (b^S_k - b^T_k)^2`` with ``w`` the teacher's top class
    probability per anchor, so the student imitates boxes where the teacher sees an
    object rather than the (overwhelming) background anchors.

    Args:
        student_cls, teacher_cls: ``(B, A, C)`` class logits for ``A`` anchors.
        student_box, teacher_box: optional ``(B, A, 4)`` box regression outputs.
        temperature: ``T``.
        sigmoid: the head's activation (see above).
        box_weight: weight of the regression term.
        mask: optional ``(B, A)`` bool, anchors to keep.

    Returns:
        Scalar: classification term + ``box_weight`` * regression term, means over anchors.
    """
    if student_cls.shape != teacher_cls.shape:
        raise ValueError(
            f"student and teacher heads give different anchors/classes: {tuple(student_cls.shape)} vs "
            f"{tuple(teacher_cls.shape)}; use the same anchor generator, FPN levels and input size"
        )
    t = temperature
    if sigmoid:
        # Bernoulli KL = KL over the two-class distribution {sigma(x), 1 - sigma(x)}, i.e. logits (x, 0).
        s2 = torch.stack([student_cls / t, torch.zeros_like(student_cls)], -1)
        t2 = torch.stack([teacher_cls / t, torch.zeros_like(teacher_cls)], -1)
        per = kl_per_position(F.log_softmax(t2, -1), F.log_softmax(s2, -1)).sum(-1)  # (B, A)
        cls_term = t * t * _masked_mean(per, mask)
        confidence = torch.sigmoid(teacher_cls).amax(-1)
    else:
        cls_term = logit_kd_loss(student_cls, teacher_cls, temperature=t, mask=mask)
        confidence = torch.softmax(teacher_cls, -1)[..., 1:].amax(-1)  # class 0 = background
    if student_box is None or teacher_box is None:
        return cls_term
    if student_box.shape != teacher_box.shape:
        raise ValueError(f"box regression shapes differ: {tuple(student_box.shape)} vs {tuple(teacher_box.shape)}")
    per_box = confidence.detach() * (student_box - teacher_box).pow(2).mean(-1)
    return cls_term + box_weight * _masked_mean(per_box, mask)


def feature_imitation_loss(student_features: Tensor, teacher_features: Tensor, mask: Tensor | None = None) -> Tensor:
    """Masked feature imitation (Wang et al., 2019): squared error over channels at the
    kept locations, ``sum_{b,i in mask} sum_c (s - t)^2 / (N_mask * C)``.

    Args:
        student_features, teacher_features: ``(B, C, H, W)`` (project the student first
            when widths differ; a smaller student map is upsampled).
        mask: optional ``(B, H, W)`` bool of near-object locations; all locations if None.
    """
    student_features = _resize_like(student_features, teacher_features)
    if student_features.shape != teacher_features.shape:
        raise ValueError(f"feature shapes differ: {tuple(student_features.shape)} vs {tuple(teacher_features.shape)}")
    per = (student_features - teacher_features).pow(2).mean(1)  # (B, H, W)
    return _masked_mean(per, mask)


def _resize_like(x: Tensor, like: Tensor) -> Tensor:
    """Upsample ``x`` ``(B, C, *spatial)`` to ``like``'s spatial size when they differ."""
    if x.dim() < 3 or x.shape[2:] == like.shape[2:]:
        return x
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.dim() - 2]
    return F.interpolate(x, size=like.shape[2:], mode=mode, align_corners=False)
