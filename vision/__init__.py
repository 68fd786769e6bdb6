"""Vision pipelines on torchvision models: detection, segmentation and classification.

    scalpel run vision.detection --data train.json --images train/ --method lora
    scalpel predict vision.detection --adapter runs/vision-detection/adapter img.png

Modules: :mod:`~scalpel.vision.data` (COCO, VOC, masks, ImageFolder/CSV, transforms),
:mod:`~scalpel.vision.models` (torchvision builders, weights, heads),
:mod:`~scalpel.vision.tasks` and :mod:`~scalpel.vision.metrics`, :mod:`~scalpel.vision.distill`,
:mod:`~scalpel.vision.synthetic` (the embedded source/target domains),
:mod:`~scalpel.vision.splits` (a run's data and loaders), :mod:`~scalpel.vision.base`
(the embedded default's cached source-trained base), :mod:`~scalpel.vision.config` (the
domain options), :mod:`~scalpel.vision.run` (the kit of a run),
:mod:`~scalpel.vision.pipelines` (the published pipelines), :mod:`~scalpel.vision.predict`,
:mod:`~scalpel.vision.demo` (all methods side by side). See docs/vision.md.
"""
