"""Vision distillation: the teacher's outputs enter the loss; a teacher equal to the student gives zero KD."""

import copy

import pytest
import torch

from scalpel.core.errors import ConfigError
from scalpel.vision.distill import VisionDistillTask
from scalpel.vision.models import build_model
from scalpel.vision.tasks import ClassificationTask, DetectionTask, SegmentationTask, freeze_batchnorm


def test_segmentation_kd_is_zero_against_itself_and_positive_against_another_teacher():
    student = build_model("lraspp_mobilenet_v3_large", 3)
    freeze_batchnorm(student)
    images, masks = torch.rand(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    task = SegmentationTask(["bg", "a", "b"])
    same = VisionDistillTask(task, copy.deepcopy(student).eval(), alpha=0.5).step(student, (images, masks))
    assert same["kd_loss"].item() == pytest.approx(0.0, abs=1e-5)
    assert same["loss"].item() == pytest.approx(0.5 * same["task_loss"].item(), rel=1e-5)
    other = VisionDistillTask(task, build_model("lraspp_mobilenet_v3_large", 3), alpha=0.5).step(student, (images, masks))
    assert other["kd_loss"].item() > 0
    other["loss"].backward()


def test_classification_and_detection_kd():
    student = build_model("resnet18", 4).eval()
    images, labels = torch.rand(2, 3, 32, 32), torch.tensor([0, 3])
    out = VisionDistillTask(ClassificationTask(list("abcd")), build_model("resnet18", 4), alpha=1.0).step(student, (images, labels))
    assert out["loss"].item() == pytest.approx(out["kd_loss"].item()) and out["kd_loss"].item() > 0
    detector = build_model("ssdlite320_mobilenet_v3_large", 3, image_size=64)
    teacher = build_model("ssdlite320_mobilenet_v3_large", 3, image_size=64)
    targets = [{"boxes": torch.tensor([[4.0, 4, 30, 30]]), "labels": torch.tensor([1])}]
    det = VisionDistillTask(DetectionTask(["a", "b"]), teacher, alpha=0.5).step(detector, ([torch.rand(3, 64, 64)], targets))
    assert det["kd_loss"].item() > 0 and torch.isfinite(det["loss"])
    with pytest.raises(ConfigError, match="dense-head teacher"):
        VisionDistillTask(DetectionTask(["a"]), build_model("fasterrcnn_mobilenet_v3_large_fpn", 2, image_size=64))
