"""The published pipelines ``vision.detection``, ``vision.segmentation`` and
``vision.classification`` (entry-point group ``scalpel.pipelines``), with the vision
defaults of the shared method and training options and what ``--quick`` stands for.

    scalpel run vision.segmentation --quick --method sparse --density 0.05
"""

from __future__ import annotations

import dataclasses

from scalpel.core.options import MethodOptions, TrainOptions
from scalpel.core.pipeline import Pipeline
from scalpel.vision.config import ClassificationOptions, DetectionOptions, SegmentationOptions
from scalpel.vision.predict import compare, load_adapted, predict
from scalpel.vision.run import build_kit

__all__ = ["classification", "detection", "load_adapted", "predict", "segmentation"]

#: Small torchvision models from a short source-domain base: a denser sparse delta than the
#: core default (2% of the targeted weights) keeps sparse close to LoRA's capacity.
METHOD = MethodOptions(density=0.02)
#: A short warm-up and a light weight decay; 2e-3 suits the deltas and the fresh heads
#: (the demo gives full and layer-wise fine-tuning their own rates).
TRAIN = TrainOptions(epochs=3, batch_size=8, lr=2e-3, weight_decay=1e-4, warmup_ratio=0.05, log_every=5)
#: ``--quick``: tiny synthetic domains, a short base, a few steps (under a minute on a CPU).
#: The magnitude scorer reads no data, so a sparse check does not wait for Fisher scores.
QUICK = {"train_images": 24, "base_steps": 30, "epochs": 1, "max_steps": 4, "scorer": "magnitude"}

#: Channels-last (``channels_last=auto``: on for 2-D conv nets on CPU) measured slower for the
#: SSDlite320 detector's backbone (a LoRA step 1.73x the default format's; the classifier's
#: MobileNetV3 0.86x, the segmenter's LR-ASPP 0.66x; docs/benchmarks/channels_last.md), so
#: detection keeps the default format unless asked.
DETECTION_TRAIN = dataclasses.replace(TRAIN, channels_last="off")

detection = Pipeline(name="vision.detection", options_cls=DetectionOptions, build_kit=build_kit, method=METHOD,
                     train=DETECTION_TRAIN, quick=QUICK, predict=predict, compare=compare, summary="object detection on torchvision detectors (COCO JSON / VOC XML)")
segmentation = Pipeline(name="vision.segmentation", options_cls=SegmentationOptions, build_kit=build_kit, method=METHOD,
                        train=TRAIN, quick=QUICK, predict=predict, compare=compare,
                        summary="semantic segmentation on torchvision DeepLabV3 / FCN / LR-ASPP (mask folders / COCO polygons)")
classification = Pipeline(name="vision.classification", options_cls=ClassificationOptions, build_kit=build_kit, method=METHOD,
                          train=dataclasses.replace(TRAIN, batch_size=16),
                          quick=QUICK, predict=predict, compare=compare,
                          summary="image classification on torchvision ResNet / ConvNeXt / ViT / Swin (ImageFolder / CSV)")
