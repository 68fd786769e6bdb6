"""The vision sections of a run's ``report.md``: what the loaders fixed or skipped, the
confusion matrix (classification) and example predictions drawn on validation images
(boxes for detection, mask overlays for segmentation, labels for classification)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from scalpel.core.files import atomic_write
from scalpel.vision.data.transforms import IMAGENET_MEAN, IMAGENET_STD

#: Colours of classes 1.. in drawings (class 0, the background, is not drawn).
COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe", "#008080"]


def to_uint8(image: torch.Tensor, normalised: bool) -> torch.Tensor:
    """``[3, H, W]`` float (``[0, 1]`` or ImageNet-normalised) -> uint8 for drawing."""
    image = image.detach().cpu().float()
    if normalised:
        image = image * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def draw_detections(image: torch.Tensor, prediction: dict[str, torch.Tensor], class_names: list[str], threshold: float = 0.3) -> torch.Tensor:
    """Boxes with score >= ``threshold`` drawn in their class colour, labelled ``name score``."""
    keep = prediction["scores"] >= threshold
    boxes, labels, scores = prediction["boxes"][keep].cpu(), prediction["labels"][keep].cpu(), prediction["scores"][keep].cpu()
    texts = [f"{class_names[int(k) - 1] if 0 < int(k) <= len(class_names) else int(k)} {float(s):.2f}" for k, s in zip(labels, scores)]
    colours = [COLOURS[(int(k) - 1) % len(COLOURS)] for k in labels]
    return draw_bounding_boxes(to_uint8(image, False), boxes, labels=texts, colors=colours, width=2) if len(boxes) else to_uint8(image, False)


def draw_mask(image: torch.Tensor, mask: torch.Tensor, num_classes: int, normalised: bool = True) -> torch.Tensor:
    """Overlay the classes ``1..K-1`` of a ``[H, W]`` mask at 50% opacity."""
    masks = torch.stack([mask.cpu() == k for k in range(1, num_classes)]) if num_classes > 1 else torch.zeros(0, *mask.shape, dtype=torch.bool)
    colours = [COLOURS[k % len(COLOURS)] for k in range(num_classes - 1)]
    return draw_segmentation_masks(to_uint8(image, normalised), masks, alpha=0.5, colors=colours)


def draw_label(image: torch.Tensor, text: str, ok: bool) -> torch.Tensor:
    """A normalised classification input with ``text`` written on it, framed green (right) or red (wrong)."""
    h, w = image.shape[-2:]
    frame = torch.tensor([[0.0, 0.0, w - 1.0, h - 1.0]])
    return draw_bounding_boxes(to_uint8(image, True), frame, labels=[text], colors=["#3cb44b" if ok else "#e6194b"], width=2)


def confusion_lines(model: nn.Module, dataset, class_names: list[str], batch_size: int = 32) -> list[str]:
    """The validation confusion matrix as a markdown table (rows: true class, columns: predicted)."""
    from scalpel.vision.metrics import ClassificationMeter

    meter = ClassificationMeter(class_names)
    model.eval()
    device = _device(model)
    with torch.no_grad():
        for images, labels in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            meter.update(model(images.to(device)).cpu(), torch.as_tensor(labels))
    lines = ["| true \\ predicted | " + " | ".join(class_names) + " |", "|---|" + "---:|" * len(class_names)]
    lines += [f"| {name} | " + " | ".join(str(v) for v in row) + " |" for name, row in zip(class_names, meter.confusion_matrix())]
    return lines


def example_grid(model: nn.Module, task: Any, dataset, class_names: list[str], count: int = 6) -> torch.Tensor:
    """Predictions on the first ``count`` validation images; segmentation rows pair truth and prediction."""
    model.eval()
    device = _device(model)  # after training on a GPU the model is still there; the drawings are made on the CPU
    tiles = []
    with torch.no_grad():
        for index in range(min(count, len(dataset))):
            image, target = dataset[index]
            if task.name == "detection":
                tiles.append(draw_detections(image, model([image.to(device)])[0], class_names))
            elif task.name == "segmentation":
                predicted = model(image[None].to(device))["out"].argmax(1)[0]
                tiles += [draw_mask(image, target, len(class_names)), draw_mask(image, predicted, len(class_names))]
            else:
                predicted = int(model(image[None].to(device)).argmax(-1)[0])
                tiles.append(draw_label(image, f"{class_names[predicted]} (true: {class_names[int(target)]})",
                                        ok=predicted == int(target)))
    return make_grid(tiles, nrow=4 if task.name == "segmentation" else 3, padding=2, pad_value=255)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def save_png(path: Path, grid: torch.Tensor) -> None:
    with atomic_write(path) as f:
        Image.fromarray(grid.permute(1, 2, 0).numpy()).save(f, format="PNG")


def report_lines(task: str, extras: dict[str, Any], *, metric: str, confusion: list[str], merged: bool) -> list[str]:
    """The vision sections of ``report.md`` (the run's common section already gives what was trained and the metrics).

    Args:
        task: ``"detection"``, ``"segmentation"`` or ``"classification"``.
        extras: the run's extras (``data`` load reports, ``base_on_source``, ``examples``).
        metric: the headline metric, quoted for the base on its source domain.
        confusion: the classification confusion-matrix table; empty for the other tasks.
        merged: whether ``merged/model.safetensors`` was written.
    """
    on_source = extras.get("base_on_source")
    lines = ["## Data", "",
             *[f"- {r['source']}: " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "source" and v) for r in extras["data"]]]
    if on_source:
        lines.append(f"- the source-trained base on source validation images: {metric} {on_source.get(metric, float('nan')):.4f} "
                     "(before: the same base on the target)")
    if confusion:
        lines += ["", "## Confusion matrix (validation, adapted model)", "", *confusion]
    lines += ["", "## Example predictions", "", CAPTIONS[task], "", f"![examples]({Path(extras['examples']).name})", "",
              "Adapter: `adapter/`; merged plain torchvision model: "
              + ("`merged/model.safetensors`." if merged else "not written (--no-export-merged).")]
    return lines


#: What ``examples.png`` shows, per task.
CAPTIONS = {
    "segmentation": "Segmentation: ground truth then prediction, side by side.",
    "detection": "Detection: boxes with score >= 0.3, labelled class and score.",
    "classification": "Classification: predicted class (true class) on the first validation images; green frame: right, red: wrong.",
}
