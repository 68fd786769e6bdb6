"""Distillation for the vision tasks: a frozen teacher's outputs as soft targets, on top
of the task loss, for any student adapted by any method.

``loss = (1 - alpha) * task_loss + alpha * kd_loss`` with

- segmentation: pixel-wise KL over classes (Liu et al., CVPR 2019), ignore pixels masked;
- classification: Hinton KD, ``T^2 * KL(p_T || p_S)`` (Hinton et al., 2015, arXiv:1503.02531);
- detection (dense heads: SSD, RetinaNet, FCOS): per-anchor class-logit KD plus
  teacher-confidence-weighted box imitation (after Chen et al., NeurIPS 2017), read from
  the ``head`` outputs of both models. Teacher and student must share the anchors (same
  architecture family and image size); a larger teacher differs in backbone width only.
  Two-stage detectors (Faster R-CNN) sample different proposals per model and are refused.

The losses are the core's (:mod:`scalpel.core.distill`); this module only wires the
torchvision outputs to them. The teacher (``--teacher``) is weights for ``--teacher-arch``
(default: the student's ``--model``), e.g. another run's ``merged/model.safetensors``, or a
vision run or adapter folder; its head must already fit the data's classes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from scalpel.core.distill import detection_kd_loss, logit_kd_loss, pixel_kl_loss
from scalpel.core.errors import ConfigError
from scalpel.core.options import MethodOptions
from scalpel.vision.config import VisionOptions
from scalpel.vision.models import build_model, head_modules, load_weights, num_outputs, read_weights, spec_for
from scalpel.vision.predict import load_adapted


def distillation_task(task, method: MethodOptions, options: VisionOptions, class_names: list[str]) -> VisionDistillTask:
    """``task`` plus distillation from ``method.teacher`` (the kit's ``teacher``)."""
    teacher = load_teacher(method.teacher, method.teacher_arch or options.model, options, class_names)
    return VisionDistillTask(task, teacher, alpha=method.distill_alpha, temperature=method.distill_temperature)


def load_teacher(where: str, arch: str, options: VisionOptions, class_names: list[str]) -> nn.Module:
    """A frozen teacher for these classes from a weights file or enum member, or a vision run/adapter folder.

    Raises:
        ConfigError: the teacher was trained for other classes (its head would be random).
    """
    what = f"vision.{options.task} teacher"
    folder = Path(where)
    if folder.is_dir():
        adapter = folder / "adapter" if (folder / "adapter" / "scalpel.json").is_file() else folder
        if not (adapter / "scalpel.json").is_file():
            raise ConfigError(what, [f"{where} is a folder but neither a vision run nor an adapter folder; "
                                     "pass a run folder, its adapter/ or a weights file such as merged/model.safetensors"])
        teacher, extra = load_adapted(adapter)
        if list(extra.get("class_names", [])) != list(class_names):
            raise ConfigError(what, [f"the teacher's classes {extra.get('class_names')} differ from the data's {list(class_names)}"])
        return teacher
    teacher = build_model(arch, num_outputs(options.task, class_names), image_size=options.image_size, task=options.task)
    fresh = load_weights(teacher, read_weights(arch, where), head_modules(teacher, spec_for(arch, options.task)))
    if fresh:
        raise ConfigError(what, [f"the head of {where} does not fit the data's {len(class_names)} classes ({', '.join(fresh[:3])} "
                                 "differ); a teacher must be trained on the same classes, e.g. another run's merged/model.safetensors"])
    return teacher


class VisionDistillTask:
    """Wraps a :mod:`scalpel.vision.tasks` task; ``evaluate`` is the wrapped task's."""

    def __init__(self, task, teacher: nn.Module, *, alpha: float = 0.5, temperature: float = 2.0):
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError("distillation", [f"alpha must be in [0, 1], got {alpha}"])
        self.task, self.teacher, self.alpha, self.temperature = task, teacher.eval(), alpha, temperature
        self.name = task.name
        self.class_names = task.class_names
        for p in teacher.parameters():
            p.requires_grad_(False)
        if task.name == "detection" and not hasattr(teacher, "head"):
            raise ConfigError("distillation", ["detection distillation needs a dense-head teacher (SSD, RetinaNet, FCOS); "
                                               "Faster R-CNN samples different proposals per model"])

    def step(self, model: nn.Module, batch) -> dict[str, Tensor]:
        device = next(model.parameters()).device
        if next(self.teacher.parameters()).device != device:  # fit places the student; the teacher follows it
            self.teacher.to(device)
        if self.task.name == "detection":
            return self._detection_step(model, batch)
        images, target = batch
        out = self.task.step(model, batch)
        with torch.no_grad():
            teacher = self.teacher(images)
        if self.task.name == "segmentation":
            kd = pixel_kl_loss(out["logits"], teacher["out"], self.temperature, mask=target != self.task.ignore_index)
        else:
            kd = logit_kd_loss(out["logits"], teacher, temperature=self.temperature)
        return self._mix(out, kd)

    def _detection_step(self, model: nn.Module, batch) -> dict[str, Tensor]:
        captured: dict[str, dict] = {}
        hooks = [m.head.register_forward_hook(lambda _m, _i, o, key=key: captured.__setitem__(key, o))
                 for key, m in (("student", _unwrap(model)), ("teacher", self.teacher))]
        try:
            out = self.task.step(model, batch)
            with torch.no_grad():
                self.teacher(list(batch[0]))
        finally:
            for hook in hooks:
                hook.remove()
        s, t = captured["student"], captured["teacher"]
        sigmoid = not _is_ssd(self.teacher)
        kd = detection_kd_loss(s["cls_logits"], t["cls_logits"], s["bbox_regression"], t["bbox_regression"],
                               temperature=self.temperature, sigmoid=sigmoid)
        return self._mix(out, kd)

    def _mix(self, out: dict[str, Tensor], kd: Tensor) -> dict[str, Tensor]:
        task_loss = out.pop("loss")
        return {**out, "loss": (1 - self.alpha) * task_loss + self.alpha * kd, "task_loss": task_loss.detach(), "kd_loss": kd.detach()}

    def evaluate(self, model: nn.Module, batches: Iterable) -> dict[str, float]:
        return self.task.evaluate(model, batches)


def _is_ssd(model: nn.Module) -> bool:
    from torchvision.models.detection.ssd import SSD

    return isinstance(model, SSD)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)

