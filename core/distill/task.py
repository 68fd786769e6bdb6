"""Knowledge distillation as a task: wrap any task, add a frozen teacher.

    task = DistillationTask(ClassificationTask(), teacher, loss="kd", alpha=0.5, temperature=4.0)
    result = fit(student, task, train_loader, eval_loader, config,
                 param_groups=task.param_groups(student), hooks=(task,))

The student is whatever model ``fit`` trains: a smaller network, a student built with
:func:`build_student`, or the teacher's own architecture adapted by LoRA, sparse or
layer-wise methods (only its trainable parameters move; distillation does not care).

Each step::

    out      = task.step(student, batch)                  # task loss + student outputs
    teacher  = task.step(teacher, batch)[output_key]      # no grad, eval mode (or the cache)
    kd_loss  = objective(out[output_key], teacher, batch) # see objectives.py
    loss     = (1 - alpha) * task_loss + alpha * kd_loss + sum_h w_h * hint_loss_h

and returns ``{"loss", "task_loss", "kd_loss", "hint_loss"?, **the wrapped task's outputs}``.
``evaluate`` delegates to the wrapped task: the student is judged on the task alone.

The teacher never trains: it is put in eval mode with ``requires_grad=False``, runs
under ``torch.no_grad()``, is moved to the student's device on the first step, and is
not a registered submodule, so ``task.parameters()`` holds only the hint projections.
Those *are* trained: pass ``param_groups=task.param_groups(student)`` to ``fit`` so
the optimizer sees them, and ``hooks=(task,)`` so checkpoints save and resume them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from scalpel.core.config import raise_if_problems
from scalpel.core.distill import vocab
from scalpel.core.distill.cache import TeacherCache, batch_indices, fit_to, stack_padded, unflatten
from scalpel.core.distill.features import FeatureHint, HintProjection, capture_features, hint_distance, hint_key, pair_features, unwrap
from scalpel.core.distill.objectives import OBJECTIVES, Objective, build_objective
from scalpel.core.errors import ScalpelError

#: ``teacher_forward(teacher, batch) -> outputs`` (a tensor, or a dict for detection heads).
TeacherForward = Callable[[nn.Module, Any], Any]


@dataclass(frozen=True)
class DistillConfig:
    """The distillation settings a pipeline exposes (``scalpel run ... --distill-loss jsd``).

    Not a :class:`~scalpel.core.methods.Method` config (distillation changes the loss, not
    the model), so it has no ``method`` and ``scalpel.core.apply`` does not take it.
    """

    loss: str = field(default="kd", metadata={"help": "kd, forward_kl, reverse_kl, jsd, pixel_kl, cwd or detection"})
    alpha: float = field(default=0.5, metadata={"help": "weight of the distillation loss; the task loss gets 1 - alpha"})
    """``loss = (1 - alpha) * task_loss + alpha * kd_loss``; 1 = pure distillation."""
    temperature: float | None = field(default=None, metadata={"help": "softmax temperature (default: 4 for kd/cwd, 1 otherwise)"})
    beta: float = field(default=0.5, metadata={"help": "JSD interpolation: 0 = forward KL, 1 = reverse KL"})
    shift_labels: bool = field(default=True, metadata={"help": "causal LM: logits at i predict labels at i + 1"})

    def __post_init__(self) -> None:
        problems = []
        if self.loss not in OBJECTIVES:
            problems.append(f"loss must be one of {', '.join(OBJECTIVES.names())}, got {self.loss!r}")
        if not 0.0 <= self.alpha <= 1.0:
            problems.append(f"alpha must be in [0, 1], got {self.alpha}")
        if self.temperature is not None and not self.temperature > 0:
            problems.append(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.beta <= 1.0:
            problems.append(f"beta must be in [0, 1], got {self.beta}")
        raise_if_problems("distillation config", problems)

    def objective(self) -> Objective:
        options: dict[str, Any] = {"beta": self.beta, "shift_labels": self.shift_labels}
        if self.temperature is not None:
            options["temperature"] = self.temperature
        return build_objective(self.loss, **options)


class DistillationTask(nn.Module):
    """A task that adds a teacher's soft targets (and optional feature hints) to another task.

    Args:
        task: the wrapped task; its ``step(model, batch)`` must return ``"loss"`` and the
            model's outputs under ``output_key``.
        teacher: the frozen teacher model.
        loss: an objective name (see :data:`OBJECTIVES`) or a callable
            ``objective(student_out, teacher_out, batch) -> scalar``.
        alpha: weight of the distillation loss, in [0, 1].
        temperature: softmax temperature (None: the objective's default).
        beta: generalized-JSD interpolation (``loss="jsd"``).
        shift_labels: causal LMs (token losses).
        hints: feature hints; projections are created for those whose widths differ.
        output_key: where the task returns the outputs to distil (``"logits"``).
        teacher_forward: how to get the teacher's outputs; default
            ``task.step(teacher, batch)[output_key]``.
        cache: a :class:`TeacherCache` (or its folder) of precomputed teacher outputs;
            batches must then carry ``batch[index_key]``.
        tokenizers: optional ``(teacher_tokenizer, student_tokenizer)``, checked to be equal.
    """

    def __init__(
        self,
        task: Any,
        teacher: nn.Module,
        loss: str | Objective = "kd",
        *,
        alpha: float = 0.5,
        temperature: float | None = None,
        beta: float = 0.5,
        shift_labels: bool = True,
        hints: Sequence[FeatureHint] = (),
        output_key: str = "logits",
        teacher_forward: TeacherForward | None = None,
        cache: TeacherCache | str | os.PathLike | None = None,
        index_key: str = "index",
        tokenizers: tuple[Any, Any] | None = None,
    ):
        super().__init__()
        if isinstance(loss, str):
            loss = DistillConfig(loss=loss, alpha=alpha, temperature=temperature, beta=beta, shift_labels=shift_labels).objective()
        else:
            raise_if_problems("distillation task", [] if 0.0 <= alpha <= 1.0 else [f"alpha must be in [0, 1], got {alpha}"])
        if tokenizers is not None:
            vocab.check_tokenizers(*tokenizers)
        # Plain attributes, not submodules: the teacher must stay out of parameters(),
        # state_dict() and train()/eval() calls on the task.
        object.__setattr__(self, "task", task)
        object.__setattr__(self, "teacher", teacher.eval().requires_grad_(False))
        self.objective = loss
        self.alpha = float(alpha)
        self.hints = tuple(hints)
        self.projections = nn.ModuleDict({hint_key(h.student): HintProjection(h) for h in self.hints})
        self.output_key = output_key
        self.teacher_forward = teacher_forward or self._task_forward
        self.cache = TeacherCache(cache) if isinstance(cache, (str, os.PathLike)) else cache
        if self.cache is not None:
            self.cache.check_teacher(teacher)
        self.index_key = index_key
        self._prepared_for: int | None = None

    @classmethod
    def from_config(cls, task: Any, teacher: nn.Module, config: DistillConfig, **options: Any) -> DistillationTask:
        """Build from a pipeline's :class:`DistillConfig`; ``options`` as in the constructor (hints, cache, ...)."""
        return cls(task, teacher, config.objective(), alpha=config.alpha, **options)

    # ------------------------------------------------------------------ optimizer hooks

    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters the task itself trains (hint projections); empty without projections."""
        return [p for p in self.projections.parameters() if p.requires_grad]

    def param_groups(
        self,
        model: nn.Module | None = None,
        *,
        groups: Sequence[dict[str, Any]] | None = None,
        lr_scale: float = 1.0,
    ) -> list[dict[str, Any]]:
        """``fit(..., param_groups=...)``: the student's groups plus one for the projections.

        ``fit`` trains exactly the parameters in its groups, so the student's must be
        there too: give the student (one group of its trainable parameters) or the
        groups a method built (layer-wise LR decay, LoRA+). The projections' group,
        with ``lr_scale``, is appended when there are projections.

        Example:
            >>> fit(student, task, data, config=cfg, param_groups=task.param_groups(student), hooks=(task,))
        """
        if (model is None) == (groups is None):
            raise ScalpelError("param_groups needs the student model or the student's param groups (exactly one)")
        base = list(groups) if groups is not None else [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]
        extra = self.extra_parameters()
        return base + ([{"params": extra, "lr_scale": lr_scale}] if extra else [])

    def after_step(self, step: int, model: nn.Module, optimizer: Any) -> None:
        """Nothing per step: the task is a ``fit`` hook only so that checkpoints save and
        resume its projections (through :meth:`state_dict` / :meth:`load_state_dict`)."""

    # ------------------------------------------------------------------ Task protocol

    def step(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        self._prepare(model)
        with capture_features(model, [h.student for h in self.hints]) as student_features:
            out = self.task.step(model, batch)
        if not isinstance(out, Mapping) or "loss" not in out or self.output_key not in out:
            raise ScalpelError(
                f"the wrapped task's step must return a dict with 'loss' and the model outputs under "
                f"{self.output_key!r} (got {sorted(out) if isinstance(out, Mapping) else type(out).__name__}); "
                "return them, or pass output_key= naming the key that holds the logits"
            )
        student_out = out[self.output_key]
        teacher_out, teacher_features = self._teacher_outputs(batch, student_out, student_features)
        _check_outputs(self.objective, student_out, teacher_out)
        kd_loss = self.objective(student_out, teacher_out, batch)
        task_loss = out["loss"]
        loss = (1.0 - self.alpha) * task_loss + self.alpha * kd_loss
        result = {**out, "task_loss": task_loss.detach(), "kd_loss": kd_loss.detach()}
        if self.hints:
            hint = self._hint_loss(batch, student_features, teacher_features)
            loss = loss + hint
            result["hint_loss"] = hint.detach()
        result["loss"] = loss
        return result

    def evaluate(self, model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
        return self.task.evaluate(model, batches)

    # ------------------------------------------------------------------ teacher side

    def build_cache(self, directory: str | os.PathLike, batches: Iterable[Any], **options: Any) -> TeacherCache:
        """Run the teacher once over ``batches`` and use the stored outputs from now on.

        ``options`` go to :meth:`TeacherCache.build` (``dtype``, ``shard_size``, ``overwrite``).
        """
        def forward(teacher: nn.Module, batch: Any) -> dict[str, Any]:
            with capture_features(teacher, [h.teacher for h in self.hints]) as features:
                outputs = {"logits": self.teacher_forward(teacher, batch)}
            outputs.update({f"hint:{hint_key(name)}": value for name, value in features.items()})
            return outputs

        self.cache = TeacherCache.build(directory, self.teacher, batches, forward, index_key=self.index_key, **options)
        return self.cache

    def _task_forward(self, teacher: nn.Module, batch: Any) -> Any:
        return self.task.step(teacher, batch)[self.output_key]

    def _prepare(self, model: nn.Module) -> None:
        """Move the teacher and the projections to the student's device (once per device)."""
        device = next(unwrap(model).parameters()).device
        if self._prepared_for != hash(device):
            self.teacher.to(device)
            self.projections.to(device)
            self._prepared_for = hash(device)
        self.teacher.eval()

    def _teacher_outputs(self, batch: Any, student_out: Any, student_features: Mapping[str, Any]) -> tuple[Any, dict]:
        if self.cache is None:
            with torch.no_grad(), capture_features(self.teacher, [h.teacher for h in self.hints]) as features:
                outputs = self.teacher_forward(self.teacher, batch)
            return outputs, dict(features)
        device = next(self.teacher.parameters()).device
        stored = self.cache.get(batch_indices(batch, self.index_key), device=device)
        grouped = unflatten(stored)
        outputs = _restack(grouped["logits"], student_out)
        features = {}
        for hint in self.hints:
            like = student_features.get(hint.student) if hint.layout == "last" else None
            features[hint.teacher] = _restack(_descend(grouped, f"hint:{hint_key(hint.teacher)}"), like)
        return outputs, features

    def _hint_loss(self, batch: Any, student_features: Mapping[str, Any], teacher_features: Mapping[str, Any]) -> Tensor:
        attention = batch.get("attention_mask") if isinstance(batch, Mapping) else None
        total = torch.zeros(())
        for hint in self.hints:
            projection = self.projections[hint_key(hint.student)]
            pairs = pair_features(student_features[hint.student], teacher_features[hint.teacher])
            for s, t in pairs:
                total = total.to(s.device) + hint.weight * hint_distance(hint, projection(s), t.detach(), attention) / len(pairs)
        return total


def _descend(tree: Mapping[str, Any], key: str) -> Any:
    """``tree[key]`` where ``key`` may contain ``/`` (a module name as flattened by the cache)."""
    node: Any = tree
    for part in key.split("/"):
        node = node[part]
    return node


def _restack(values: Any, like: Any) -> Any:
    """Per-sample cached values -> a batch shaped like the student's output (or padded)."""
    if isinstance(values, Mapping):
        return {k: _restack(v, like.get(k) if isinstance(like, Mapping) else None) for k, v in values.items()}
    if isinstance(like, Tensor):
        shape = (like.shape[0], *like.shape[1:-1], values[0].shape[-1])
        return fit_to(values, like.new_zeros(shape))
    return stack_padded(values)


def _check_outputs(objective: Objective, student: Any, teacher: Any) -> None:
    """Refuse a teacher whose class/vocabulary axis differs from the student's."""
    if isinstance(student, Mapping) and isinstance(teacher, Mapping):
        student, teacher = student.get("cls_logits"), teacher.get("cls_logits")
    if not isinstance(student, Tensor) or not isinstance(teacher, Tensor):
        return
    axis = getattr(objective, "class_axis", -1)
    if student.dim() > abs(axis) and teacher.dim() > abs(axis):
        vocab.check_output_sizes(student.shape[axis], teacher.shape[axis])
