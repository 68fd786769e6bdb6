"""Feature (hint) distillation: match intermediate activations, through a learned
projection when the student is narrower than the teacher.

FitNets (Romero et al., 2015, arXiv:1412.6550) regress the teacher's hidden features
from the student's with a small learned "regressor"; here that is a linear map from
the student's width ``d_S`` to the teacher's ``d_T`` on the feature axis (the last axis
of token features ``(B, L, d)``, the channel axis of maps ``(B, d, H, W)``, i.e. a 1x1
convolution). The projections are parameters of the distillation task and must be
trained with the student: :meth:`DistillationTask.extra_parameters` hands them over.

Features are captured with forward hooks on named modules, so no model is edited.
A module that returns a tuple (transformers layers) contributes its first element; one
that returns a dict of tensors (an FPN) contributes every entry, matched by key.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor, nn

from scalpel.core.config import raise_if_problems
from scalpel.core.distill import dense, losses
from scalpel.core.errors import TargetNotFoundError

HINT_LOSSES = ("mse", "cosine", "cwd")


@dataclass(frozen=True)
class FeatureHint:
    """One pair of modules whose outputs the student should match.

    Example:
        >>> FeatureHint("bert.encoder.layer.1", "bert.encoder.layer.3", student_dim=128, teacher_dim=256)
    """

    student: str
    """Module name in the student (as in ``student.named_modules()``)."""
    teacher: str
    """Module name in the teacher."""
    student_dim: int | None = None
    """Width of the student's feature; with ``teacher_dim``, a projection is learned when they differ."""
    teacher_dim: int | None = None
    layout: Literal["last", "channel"] = "last"
    """Feature axis: ``"last"`` for ``(B, L, d)`` tokens/vectors, ``"channel"`` for ``(B, d, H, W)`` maps."""
    loss: str = "mse"
    """``"mse"`` (FitNets), ``"cosine"`` (DistilBERT) or ``"cwd"`` (channel-wise, maps only)."""
    weight: float = 1.0
    temperature: float = 1.0
    """Temperature of the ``"cwd"`` hint loss."""
    mask_padding: bool = field(default=True)
    """Token features: average over ``batch["attention_mask"]`` positions only."""

    def __post_init__(self) -> None:
        problems = []
        if self.loss not in HINT_LOSSES:
            problems.append(f"loss must be one of {', '.join(HINT_LOSSES)}, got {self.loss!r}")
        if self.layout not in ("last", "channel"):
            problems.append(f"layout must be 'last' or 'channel', got {self.layout!r}")
        if (self.student_dim is None) != (self.teacher_dim is None):
            problems.append("give both student_dim and teacher_dim (or neither, when the widths are equal)")
        if self.loss == "cwd" and self.layout != "channel":
            problems.append("the 'cwd' hint loss needs layout='channel' feature maps")
        if self.weight < 0:
            problems.append(f"weight must be >= 0, got {self.weight}")
        raise_if_problems(f"feature hint {self.student} -> {self.teacher}", problems)

    @property
    def needs_projection(self) -> bool:
        return self.student_dim is not None and self.student_dim != self.teacher_dim


class HintProjection(nn.Module):
    """``y = W x + b`` on the feature axis, ``W: (d_T, d_S)``; identity when no projection is needed."""

    def __init__(self, hint: FeatureHint):
        super().__init__()
        self.channel_axis = 1 if hint.layout == "channel" else -1
        self.linear = nn.Linear(hint.student_dim, hint.teacher_dim) if hint.needs_projection else None

    def forward(self, x: Tensor) -> Tensor:
        if self.linear is None:
            return x
        if self.channel_axis == 1:
            return self.linear(x.movedim(1, -1)).movedim(-1, 1)
        return self.linear(x)


def hint_key(name: str) -> str:
    """A module name as a ``ModuleDict`` key (dots are not allowed there)."""
    return name.replace(".", "/")


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP/FSDP/compile wrapper, so module names match the user's."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


@contextmanager
def capture_features(model: nn.Module, names: Sequence[str]) -> Iterator[dict[str, Tensor | dict[str, Tensor]]]:
    """Record the outputs of ``names`` while the block runs.

    Yields a dict filled during the forward pass: ``name -> Tensor`` (or a dict of
    tensors for modules that return one). Raises :class:`TargetNotFoundError` for a
    name the model does not have.
    """
    model = unwrap(model)
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        close = [m for m in modules if m.endswith(missing[0].split(".")[-1])][:5]
        raise TargetNotFoundError(
            f"feature hint module(s) {missing} not found in {type(model).__name__}; "
            f"use names from model.named_modules(), e.g. {close or list(modules)[1:6]}"
        )
    captured: dict[str, Tensor | dict[str, Tensor]] = {}
    handles = []
    for name in names:
        def record(_module, _inputs, output, name=name):
            captured[name] = _first_tensor(output)
        handles.append(modules[name].register_forward_hook(record))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _first_tensor(output):
    if isinstance(output, Tensor):
        return output
    if isinstance(output, dict):
        return {k: v for k, v in output.items() if isinstance(v, Tensor)}
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    raise TypeError(f"cannot take a feature from a module output of type {type(output).__name__}")


def hint_distance(hint: FeatureHint, student: Tensor, teacher: Tensor, attention_mask: Tensor | None) -> Tensor:
    """The hint's loss between the projected student feature and the teacher's."""
    if hint.loss == "cwd":
        return dense.channel_wise_loss(student, teacher, temperature=hint.temperature)
    if hint.layout == "channel":
        student = dense._resize_like(student, teacher)
        student, teacher = student.movedim(1, -1), teacher.movedim(1, -1)
    mask = None
    if hint.mask_padding and attention_mask is not None and attention_mask.shape == student.shape[:-1]:
        mask = attention_mask.bool()
    distance = losses.cosine_hint_loss if hint.loss == "cosine" else losses.hint_loss
    return distance(student, teacher.to(student.dtype), mask)


def pair_features(student: Tensor | dict[str, Tensor], teacher: Tensor | dict[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Pairs of tensors to compare: one pair, or one per shared key of dict outputs (FPN levels)."""
    if isinstance(student, dict) and isinstance(teacher, dict):
        shared = [k for k in student if k in teacher]
        if not shared:
            raise ValueError(f"student and teacher feature dicts share no key: {list(student)} vs {list(teacher)}")
        return [(student[k], teacher[k]) for k in shared]
    if isinstance(student, Tensor) and isinstance(teacher, Tensor):
        return [(student, teacher)]
    raise TypeError("a hint compares two tensors or two dicts of tensors, not a mix")
