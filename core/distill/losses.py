"""Distillation losses over class and token distributions: pure functions.

Notation: ``s`` are the student's logits, ``t`` the teacher's, both ``(..., V)`` with
``V`` classes (or vocabulary entries) on the last axis; every leading position
(example, token, pixel) is one distribution. ``p_T = softmax(t / T)`` and
``p_S = softmax(s / T)`` at temperature ``T``; ``KL(p || q) = sum_v p_v (log p_v - log q_v)``.

A ``mask`` of shape ``(...)`` (the logits' shape without ``V``) keeps the positions
where it is True; the loss is the mean over kept positions (0 when none is kept, with
a gradient path, so a batch of prompts only does not give NaN). For causal LMs build
it with :func:`token_mask` from ``labels`` (``-100`` marks padding and prompt tokens).

References:
    Hinton, Vinyals, Dean (2015), "Distilling the Knowledge in a Neural Network", arXiv:1503.02531.
    Agarwal et al. (2024), "On-Policy Distillation of Language Models: Learning from
    Self-Generated Mistakes" (GKD), ICLR 2024, arXiv:2306.13649 (generalized JSD, Eq. 1).
    Gu et al. (2024), "MiniLLM: Knowledge Distillation of Large Language Models" (reverse KL), arXiv:2306.08543.
    Romero et al. (2015), "FitNets: Hints for Thin Deep Nets", arXiv:1412.6550.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100


def token_mask(labels: Tensor, *, shift: bool = True, ignore_index: int = IGNORE_INDEX) -> Tensor:
    """Which logit positions carry a target token.

    Args:
        labels: ``(B, L)`` token ids aligned with ``input_ids``; ``ignore_index`` marks
            padding and prompt positions (the Hugging Face convention).
        shift: True for causal LMs, whose logits at position ``i`` predict token ``i + 1``
            (``mask[:, i] = labels[:, i + 1] != ignore_index``, the last position is
            False); False when logits and labels are already aligned (encoders, seq2seq).

    Returns:
        ``(B, L)`` bool mask over logit positions.
    """
    keep = labels != ignore_index
    if not shift:
        return keep
    return torch.cat([keep[:, 1:], torch.zeros_like(keep[:, :1])], dim=1)


def _masked_mean(per_position: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``per_position`` ``(...)`` over the kept positions of ``mask`` ``(...)``."""
    if mask is None:
        return per_position.mean()
    mask = mask.to(device=per_position.device, dtype=torch.bool)
    if mask.shape != per_position.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} must equal the logits' positions {tuple(per_position.shape)}")
    return per_position[mask].sum() / mask.sum().clamp_min(1)


def _check_pair(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ; "
            "distillation compares distributions over the same classes at the same positions"
        )


def kl_per_position(p_log: Tensor, q_log: Tensor) -> Tensor:
    """``KL(p || q) = sum_v exp(p_log) (p_log - q_log)`` over the last axis.

    Args:
        p_log, q_log: ``(..., V)`` log-probabilities.

    Returns:
        ``(...)`` divergences (0 where ``p`` puts no mass, as ``0 log 0 = 0``).
    """
    return F.kl_div(q_log, p_log, reduction="none", log_target=True).sum(-1)


def logit_kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0, mask: Tensor | None = None) -> Tensor:
    """Hinton et al. (2015) soft-target loss: ``T^2 * KL(p_T || p_S)``, mean over positions.

    The ``T^2`` factor keeps the gradient's magnitude independent of ``T``: the soft
    targets' gradient ``(p_S - p_T) / T`` shrinks as ``1 / T^2`` for large ``T``
    (Hinton et al., Sec. 2), so the loss can be mixed with the hard-label loss with a
    weight that does not depend on the temperature.

    Args:
        student_logits, teacher_logits: ``(..., C)``.
        temperature: ``T > 0``; larger spreads the teacher's "dark knowledge" over classes.
        mask: optional ``(...)`` bool, positions to keep.

    Returns:
        Scalar loss.
    """
    _check_pair(student_logits, teacher_logits)
    t = temperature
    per = kl_per_position(F.log_softmax(teacher_logits / t, -1), F.log_softmax(student_logits / t, -1))
    return (t * t) * _masked_mean(per, mask)


def forward_kl_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """Forward KL ``KL(p_T || p_S)`` per token, mean over kept tokens (mode covering).

    The token-level objective of word-level KD (Kim & Rush, 2016). No ``T^2`` factor (as
    in TRL's GKD trainer); the temperature only softens both distributions.

    Args:
        student_logits, teacher_logits: ``(B, L, V)`` (or any ``(..., V)``).
        mask: ``(B, L)`` bool, e.g. :func:`token_mask` of the labels.
    """
    _check_pair(student_logits, teacher_logits)
    t = temperature
    per = kl_per_position(F.log_softmax(teacher_logits / t, -1), F.log_softmax(student_logits / t, -1))
    return _masked_mean(per, mask)


def reverse_kl_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """Reverse KL ``KL(p_S || p_T)`` per token, mean over kept tokens (mode seeking, MiniLLM).

    Args:
        student_logits, teacher_logits: ``(B, L, V)`` (or any ``(..., V)``).
        mask: ``(B, L)`` bool.
    """
    _check_pair(student_logits, teacher_logits)
    t = temperature
    per = kl_per_position(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1))
    return _masked_mean(per, mask)


def generalized_jsd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 0.5,
    mask: Tensor | None = None,
    temperature: float = 1.0,
) -> Tensor:
    """Generalized Jensen-Shannon divergence of GKD (Agarwal et al., 2024, Eq. 1), per token.

    With the mixture ``m = beta * p_T + (1 - beta) * p_S``::

        JSD_beta = beta * KL(p_T || m) + (1 - beta) * KL(p_S || m)

    ``beta = 0.5`` is the symmetric Jensen-Shannon divergence (bounded by ``log 2``). At
    the ends the mixture degenerates, so, following TRL's ``generalized_jsd_loss``,
    ``beta = 0`` is defined as the forward KL ``KL(p_T || p_S)`` and ``beta = 1`` as the
    reverse KL ``KL(p_S || p_T)``. ``log m`` is computed with ``logsumexp`` for stability.

    Args:
        student_logits, teacher_logits: ``(B, L, V)`` (or any ``(..., V)``).
        beta: in [0, 1].
        mask: ``(B, L)`` bool, positions to keep.
        temperature: divides both logits.

    Returns:
        Scalar: the mean over kept positions of the per-token divergence.
    """
    _check_pair(student_logits, teacher_logits)
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    s_log = F.log_softmax(student_logits / temperature, -1)
    t_log = F.log_softmax(teacher_logits / temperature, -1)
    if beta == 0.0:
        per = kl_per_position(t_log, s_log)
    elif beta == 1.0:
        per = kl_per_position(s_log, t_log)
    else:
        m_log = torch.logsumexp(torch.stack([t_log + math.log(beta), s_log + math.log1p(-beta)]), dim=0)
        per = beta * kl_per_position(t_log, m_log) + (1.0 - beta) * kl_per_position(s_log, m_log)
    return _masked_mean(per, mask)


def hint_loss(student_features: Tensor, teacher_features: Tensor, mask: Tensor | None = None) -> Tensor:
    """FitNets hint loss: mean squared error between (projected) student and teacher features.

    Args:
        student_features: ``(B, ..., D)`` already projected to the teacher's width.
        teacher_features: same shape.
        mask: optional ``(B, ...)`` bool (e.g. the attention mask of token features).

    Returns:
        ``mean over kept positions of mean_d (s_d - t_d)^2``.
    """
    if student_features.shape != teacher_features.shape:
        raise ValueError(f"hint shapes differ: {tuple(student_features.shape)} vs {tuple(teacher_features.shape)}")
    per = (student_features - teacher_features).pow(2).mean(-1)
    return _masked_mean(per, mask)


def cosine_hint_loss(student_features: Tensor, teacher_features: Tensor, mask: Tensor | None = None) -> Tensor:
    """``1 - cos(s, t)`` over the last axis, mean over kept positions (scale-free hints,
    as DistilBERT's cosine loss on hidden states)."""
    per = 1.0 - F.cosine_similarity(student_features, teacher_features, dim=-1)
    return _masked_mean(per, mask)
