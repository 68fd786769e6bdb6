"""Vision inference for the app on images held in memory, and the downloads (no Streamlit):
detections as COCO JSON (``[x, y, width, height]`` boxes, Lin et al. 2014,
arXiv:1405.0312, "results" format plus images/categories), masks as 8-bit PNG label
images (pixel value = class index) zipped together."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from scalpel.core.errors import DataError  # noqa: F401  (re-exported for the page)

VISION_TASKS = ("detection", "segmentation", "classification")


def decode_image(name: str, data: bytes) -> np.ndarray:
    """``[H, W, 3]`` uint8 RGB from an uploaded file's bytes.

    Raises:
        DataError: not an image, or a damaged one.
    """
    from scalpel.vision.data.images import load_rgb

    try:
        return load_rgb(io.BytesIO(data))  # PIL reads file objects as well as paths
    except DataError as err:
        raise DataError(f"{name} is not a readable image; upload a PNG or JPEG (re-export it if it is damaged)") from err


def build_base(extra: dict[str, Any]) -> nn.Module:
    """The torchvision base a vision adapter was trained on (from its ``scalpel.json`` extra)."""
    from scalpel.vision.models import build_model

    missing = [k for k in ("model", "task", "num_classes", "class_names") if k not in extra]
    if missing:
        raise DataError(f"the adapter's scalpel.json lacks {missing}; it was not written by a vision pipeline")
    return build_model(extra["model"], int(extra["num_classes"]), weights=extra.get("base_weights") or None,
                       image_size=extra.get("image_size"), task=extra["task"]).eval()


def base_key(extra: dict[str, Any]) -> tuple:
    """Adapters with equal keys share one base."""
    return (extra.get("model"), extra.get("task"), int(extra.get("num_classes", 0)), extra.get("base_weights") or "",
            extra.get("image_size"))


def _autocast(model: nn.Module):
    """The precision ``fit`` trains with and ``scalpel predict`` uses (auto: bf16 where the device runs it natively)."""
    from scalpel.core.fit.precision import inference_autocast

    return inference_autocast("auto", next(model.parameters()).device)


@torch.no_grad()
def detect(model: nn.Module, image: np.ndarray) -> dict[str, torch.Tensor]:
    """``{"boxes" [N, 4] xyxy pixels, "labels" [N] (1-based class), "scores" [N]}`` on the original image."""
    from scalpel.vision.data.transforms import to_image

    with _autocast(model):
        out = model([to_image(image).float() / 255])[0]
    return {k: (v.float() if v.is_floating_point() else v).cpu() for k, v in out.items()}


@torch.no_grad()
def segment(model: nn.Module, image: np.ndarray, size: int) -> np.ndarray:
    """``[H, W]`` uint8 class indices at the image's own size (logits resized bilinearly)."""
    from scalpel.vision.data.transforms import segmentation_transforms, to_image

    x = segmentation_transforms(False, size)(to_image(image))[None]
    with _autocast(model):
        logits = model(x)["out"].float()
    logits = torch.nn.functional.interpolate(logits, size=image.shape[:2], mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].to(torch.uint8).numpy()


@torch.no_grad()
def classify(model: nn.Module, image: np.ndarray, size: int, names: list[str]) -> dict[str, float]:
    from scalpel.vision.data.transforms import classification_transforms, to_image

    with _autocast(model):
        probs = model(classification_transforms(False, size)(to_image(image))[None]).float().softmax(-1)[0]
    return {n: float(p) for n, p in zip(names, probs)}


def detections_table(prediction: dict[str, torch.Tensor], names: list[str], threshold: float) -> list[dict[str, Any]]:
    keep = prediction["scores"] >= threshold
    return [{"label": _name(int(k), names), "score": round(float(s), 3), **dict(zip(("x1", "y1", "x2", "y2"), [round(float(v), 1) for v in b]))}
            for b, k, s in zip(prediction["boxes"][keep], prediction["labels"][keep], prediction["scores"][keep])]


def _name(label: int, names: list[str]) -> str:
    return names[label - 1] if 0 < label <= len(names) else str(label)


def to_coco(results: list[tuple[str, np.ndarray, dict[str, torch.Tensor]]], names: list[str], threshold: float) -> dict[str, Any]:
    """COCO ``{"images", "categories", "annotations"}`` for ``(file_name, image, prediction)``s;
    boxes ``[x, y, w, h]``, each annotation with its ``score``."""
    images, annotations = [], []
    for image_id, (file_name, image, prediction) in enumerate(results, start=1):
        images.append({"id": image_id, "file_name": file_name, "height": int(image.shape[0]), "width": int(image.shape[1])})
        keep = prediction["scores"] >= threshold
        for b, k, s in zip(prediction["boxes"][keep].tolist(), prediction["labels"][keep].tolist(), prediction["scores"][keep].tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(k),
                                "bbox": [round(b[0], 2), round(b[1], 2), round(w, 2), round(h, 2)],
                                "area": round(w * h, 2), "score": round(s, 4), "iscrowd": 0})
    categories = [{"id": i, "name": n} for i, n in enumerate(names, start=1)]
    return {"images": images, "categories": categories, "annotations": annotations}


def coco_json(results, names, threshold) -> bytes:
    return json.dumps(to_coco(results, names, threshold), indent=1).encode("utf-8")


def mask_png(mask: np.ndarray) -> bytes:
    """An 8-bit greyscale PNG whose pixel values are the class indices."""
    buffer = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def masks_zip(masks: list[tuple[str, np.ndarray]]) -> bytes:
    """``<image stem>_mask.png`` for each ``(file_name, mask)``, in one zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file_name, mask in masks:
            archive.writestr(f"{file_name.rsplit('.', 1)[0]}_mask.png", mask_png(mask))
    return buffer.getvalue()


def blend(image: np.ndarray, mask: np.ndarray, num_classes: int, opacity: float) -> np.ndarray:
    """Classes ``1..K-1`` of ``mask`` coloured over ``image`` at ``opacity`` (``[H, W, 3]`` uint8)."""
    from scalpel.vision.report import COLOURS

    palette = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in COLOURS], np.float32)
    out = image.astype(np.float32)
    for k in range(1, num_classes):
        where = mask == k
        out[where] = (1 - opacity) * out[where] + opacity * palette[k % len(palette)]
    return out.round().astype(np.uint8)


def draw(image: np.ndarray, prediction: dict[str, torch.Tensor], names: list[str], threshold: float) -> np.ndarray:
    """Boxes with labels and scores drawn (``[H, W, 3]`` uint8)."""
    from scalpel.vision.data.transforms import to_image
    from scalpel.vision.report import draw_detections

    return draw_detections(to_image(image).float() / 255, prediction, names, threshold).permute(1, 2, 0).numpy()
