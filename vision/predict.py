"""Inference with a trained vision adapter: ``scalpel predict vision.detection --adapter DIR img.png``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalpel.core.artifacts import load_adapter, read_adapter_meta
from scalpel.core.errors import AdapterError
from scalpel.vision.data.images import load_rgb
from scalpel.vision.data.transforms import classification_transforms, segmentation_transforms, to_image
from scalpel.vision.models import build_model


def load_adapted(adapter_dir: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the base recorded in the adapter's ``scalpel.json`` and load the adapter onto it."""
    if not Path(adapter_dir).is_dir():
        raise AdapterError(f"adapter directory {adapter_dir} does not exist; pass the run's adapter folder (runs/<name>/adapter)")
    meta = read_adapter_meta(adapter_dir)
    model = load_adapter(base_for_adapter(meta, Path(adapter_dir)), adapter_dir)
    model.eval()
    return model, meta["extra"]


def base_for_adapter(meta: dict[str, Any], adapter_dir: Path) -> nn.Module:
    """The torchvision base a vision adapter was trained on, with its base weights (the builder of
    ``scalpel adapter merge``, registered for the three vision pipelines).

    Raises:
        AdapterError: not a vision adapter.
    """
    extra = meta.get("extra", {})
    if "model" not in extra or "task" not in extra:
        raise AdapterError(f"{adapter_dir} was not written by a vision pipeline (no model/task in scalpel.json)")
    return build_model(extra["model"], extra["num_classes"], weights=extra.get("base_weights") or None,
                       image_size=extra.get("image_size"), task=extra["task"])


def predict(adapter_dir: Path, inputs: Sequence[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    """One result per image path. Options: ``threshold`` (detection, default 0.3), ``precision``
    (``auto``: bf16 where the device runs it natively, as ``fit`` trains; ``no``: fp32)."""
    from scalpel.core.fit.precision import inference_autocast

    model, extra = load_adapted(adapter_dir)
    names, task, size = extra["class_names"], extra["task"], extra["image_size"]
    threshold = float(options.get("threshold", 0.3))
    rows = []
    with torch.no_grad(), inference_autocast(str(options.get("precision", "auto")), next(model.parameters()).device):
        for path in inputs:
            image = to_image(load_rgb(Path(path)))
            if task == "detection":
                out = model([image.float() / 255])[0]
                keep = out["scores"] >= threshold
                rows.append({"image": path, "objects": [
                    {"label": names[int(k) - 1], "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
                    for b, k, s in zip(out["boxes"][keep], out["labels"][keep], out["scores"][keep])
                ]})
            elif task == "segmentation":
                x = segmentation_transforms(False, size)(image)
                mask = model(x[None])["out"].argmax(1)[0]
                counts = torch.bincount(mask.reshape(-1), minlength=len(names))
                rows.append({"image": path, "size": size, "pixels": {n: int(c) for n, c in zip(names, counts) if c}})
            else:
                x = classification_transforms(False, size)(image)
                probs = model(x[None]).float().softmax(-1)[0]
                top = int(probs.argmax())
                rows.append({"image": path, "label": names[top], "score": round(float(probs[top]), 4)})
    return rows
