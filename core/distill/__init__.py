"""Knowledge distillation: a loss, not a trainer (docs/architecture.md).

    from scalpel.core.distill import DistillationTask, build_student
    student = build_student(teacher, every=2)                  # or any model, adapted by any method
    task = DistillationTask(lm_task, teacher, loss="jsd", alpha=0.5, beta=0.5)
    fit(student, task, train_loader, config=..., param_groups=task.param_groups(student), hooks=(task,))

Modules: :mod:`losses` (logit/token divergences, hints), :mod:`dense` (segmentation and
detection), :mod:`objectives` (losses by name), :mod:`features` (hint capture and
projections), :mod:`task` (:class:`DistillationTask`), :mod:`cache` (teacher outputs on
disk), :mod:`vocab` (tokenizer checks), :mod:`student` (DistilBERT-style students).
"""

from scalpel.core.distill.cache import IndexedDataset, TeacherCache
from scalpel.core.distill.dense import channel_wise_loss, detection_kd_loss, feature_imitation_loss, pixel_kl_loss
from scalpel.core.distill.features import FeatureHint
from scalpel.core.distill.losses import (
    forward_kl_loss,
    generalized_jsd_loss,
    hint_loss,
    logit_kd_loss,
    reverse_kl_loss,
    token_mask,
)
from scalpel.core.distill.objectives import OBJECTIVES, build_objective
from scalpel.core.distill.student import build_student, layer_stack
from scalpel.core.distill.task import DistillConfig, DistillationTask
from scalpel.core.distill.vocab import VocabularyMismatchError, check_models, check_tokenizers

__all__ = [
    "OBJECTIVES",
    "DistillConfig",
    "DistillationTask",
    "FeatureHint",
    "IndexedDataset",
    "TeacherCache",
    "VocabularyMismatchError",
    "build_objective",
    "build_student",
    "channel_wise_loss",
    "check_models",
    "check_tokenizers",
    "detection_kd_loss",
    "feature_imitation_loss",
    "forward_kl_loss",
    "generalized_jsd_loss",
    "hint_loss",
    "layer_stack",
    "logit_kd_loss",
    "pixel_kl_loss",
    "reverse_kl_loss",
    "token_mask",
]
