"""Inference with a trained vision adapter: ``scalpel predict vision.detection --adapter DIR img.png``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalpel.core.artifacts import load_adapter, read_adapter_meta
from scalpel.core.errors import AdapterError, ScalpelError
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
    model, extra = load_adapted(adapter_dir)
    return _rows(model, extra, _read(inputs), options, None)[0]


def _read(paths: Sequence[str]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in paths:
        yield path, to_image(load_rgb(Path(path)))


def compare(adapter_dirs: Sequence[Path], inputs: Sequence[str], options: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """:func:`predict`'s rows for each adapter of one base, in ``adapter_dirs`` order, every image
    through all adapters in one mixed-adapter pass (:mod:`scalpel.core.lora.mixed`). Detectors
    (whose heads flatten region proposals) and adapters that cannot share a batch (sparse,
    layer-wise, full) run one adapter at a time.

    Raises:
        AdapterError: the adapters were not trained on the same base (model, weights, classes, size).
    """
    return compare_images(adapter_dirs, list(_read(inputs)), options)


def compare_images(adapter_dirs: Sequence[Path], images: Sequence[tuple[str, torch.Tensor]],
                   options: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """:func:`compare` on images in memory: ``(name, uint8 (3, H, W) tensor)`` pairs; rows name them."""
    from scalpel.core.lora.mixed import load_adapters

    metas = [read_adapter_meta(p) for p in adapter_dirs]
    extra = metas[0].get("extra", {})
    same = ("model", "task", "num_classes", "class_names", "image_size", "base_weights")
    for path, meta in zip(adapter_dirs[1:], metas[1:]):
        differ = [k for k in same if meta.get("extra", {}).get(k) != extra.get(k)]
        if differ:
            raise AdapterError(f"{path} and {adapter_dirs[0]} were not trained on the same base ({', '.join(differ)} differ); "
                               "compare adapters of one base")
    if extra.get("task") != "detection":
        model = base_for_adapter(metas[0], Path(adapter_dirs[0]))
        try:
            slots = load_adapters(model, adapter_dirs)
        except ScalpelError:  # e.g. a sparse delta or full fine-tuning: exact only one adapter at a time
            pass
        else:
            return _rows(model.eval(), extra, images, options, slots)
    return [_rows(load_adapted(p)[0], extra, images, options, None)[0] for p in adapter_dirs]


def _rows(model: nn.Module, extra: dict[str, Any], images: Iterable[tuple[str, torch.Tensor]], options: dict[str, Any],
          slots: list[str] | None) -> list[list[dict[str, Any]]]:
    """Rows per adapter slot (``None``: the model as it is, one list) for ``(name, image)`` pairs."""
    from scalpel.core.fit.precision import inference_autocast
    from scalpel.core.lora.mixed import compare_adapters

    names, task, size = extra["class_names"], extra["task"], extra["image_size"]
    threshold = float(options.get("threshold", 0.3))
    per_slot: list[list[dict[str, Any]]] = [[] for _ in slots or [None]]
    with torch.no_grad(), inference_autocast(str(options.get("precision", "auto")), next(model.parameters()).device):
        for path, image in images:
            if task == "detection":
                out = model([image.float() / 255])[0]
                keep = out["scores"] >= threshold
                per_slot[0].append({"image": path, "objects": [
                    {"label": names[int(k) - 1], "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
                    for b, k, s in zip(out["boxes"][keep], out["labels"][keep], out["scores"][keep])
                ]})
                continue
            x = (segmentation_transforms if task == "segmentation" else classification_transforms)(False, size)(image)[None]
            outputs = [model(x)] if slots is None else list(compare_adapters(model, slots, x).values())
            for rows, out in zip(per_slot, outputs):
                if task == "segmentation":
                    mask = out["out"].argmax(1)[0]
                    counts = torch.bincount(mask.reshape(-1), minlength=len(names))
                    rows.append({"image": path, "size": size, "pixels": {n: int(c) for n, c in zip(names, counts) if c}})
                else:
                    probs = out.float().softmax(-1)[0]
                    top = int(probs.argmax())
                    rows.append({"image": path, "label": names[top], "score": round(float(probs[top]), 4)})
    return per_slot
