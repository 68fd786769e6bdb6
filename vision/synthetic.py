"""Procedural scenes with exact boxes and masks: the embedded source and target domains.

No pre-trained detector can be had offline, so the vision demo builds its own domain
shift. A *scene* is a square canvas with 0-3 non-overlapping shapes (circle, square,
triangle); because every shape is drawn into its own mask first, the box
(``[x0, y0, x1, y1]``, pixel edges, exclusive right/bottom) and the mask are exact.

- **source**: saturated red/green/blue shapes, medium sized, on plain light backgrounds.
- **target**: other colours (yellow/magenta/cyan/orange), smaller and larger sizes,
  shapes filled with real-photo texture over real-photo backgrounds (random crops of the
  scikit-image and scikit-learn sample photos, shipped in their wheels).

The writers store scenes in the formats users have - COCO JSON (boxes and polygons),
image + palette-PNG mask folders, and an ImageFolder tree - so the demo runs through the
same loaders as user data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from scalpel.core.files import atomic_write, write_json

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")


@dataclass(frozen=True)
class DomainStyle:
    """How one domain looks.

    Attributes:
        name: ``"source"`` or ``"target"`` (or your own).
        palette: RGB colours shapes are drawn in (jittered by +-20 per channel); the colour
            is drawn independently of the class, so shape, not colour, is the cue.
        size: (min, max) shape size as a fraction of the canvas side.
        photo_background: crop backgrounds from real photos instead of a plain colour.
        textured_shapes: blend the shape colour with a photo texture.
    """

    name: str
    palette: tuple[tuple[int, int, int], ...]
    size: tuple[float, float]
    photo_background: bool = False
    textured_shapes: bool = False


SOURCE = DomainStyle("source", palette=((210, 40, 40), (40, 150, 50), (40, 60, 210)), size=(0.22, 0.4))
TARGET = DomainStyle(
    "target",
    palette=((230, 210, 40), (200, 50, 200), (40, 200, 210), (240, 140, 30)),
    size=(0.18, 0.45),
    photo_background=True,
    textured_shapes=True,
)
STYLES = {s.name: s for s in (SOURCE, TARGET)}


@dataclass
class Scene:
    """One generated image and its exact annotations.

    Attributes:
        image: ``[H, W, 3]`` uint8.
        boxes: ``[N, 4]`` float32, ``x0, y0, x1, y1`` in pixels (exclusive right/bottom).
        labels: ``[N]`` int64 in ``1..len(SHAPES)`` (0 is the background).
        mask: ``[H, W]`` uint8 class index per pixel, 0 = background.
        polygons: one ``[x0, y0, x1, y1, ...]`` outline per object (COCO polygon order).
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    mask: np.ndarray
    polygons: list[list[float]]


@lru_cache(maxsize=1)
def sample_photos() -> tuple[np.ndarray, ...]:
    """Real photos shipped inside the scikit-image and scikit-learn wheels, ``[H, W, 3]`` uint8."""
    photos: list[np.ndarray] = []
    try:
        import skimage.data as data

        for name in ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"):
            photos.append(np.asarray(getattr(data, name)())[..., :3])
    except Exception:  # pragma: no cover - a missing optional photo only narrows the texture pool
        pass
    try:
        from sklearn.datasets import load_sample_images

        photos.extend(np.asarray(img) for img in load_sample_images().images)
    except Exception:  # pragma: no cover
        pass
    if not photos:  # still a shift: a procedural texture instead of photos
        rng = np.random.default_rng(0)
        photos.append((rng.random((256, 256, 3)) * 255).astype(np.uint8))
    return tuple(photos)


def _photo_crop(rng: np.random.Generator, size: int) -> np.ndarray:
    photos = sample_photos()
    photo = photos[rng.integers(len(photos))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 4, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.BILINEAR)
    return np.asarray(crop)


def _outline(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "circle":
        n = 32
        return [(cx + r * math.cos(2 * math.pi * k / n), cy + r * math.sin(2 * math.pi * k / n)) for k in range(n)]
    corners = 4 if shape == "square" else 3
    radius = r * (1.0 if shape == "triangle" else 0.9 * math.sqrt(2) / 1.2)
    return [
        (cx + radius * math.cos(angle + 2 * math.pi * k / corners), cy + radius * math.sin(angle + 2 * math.pi * k / corners))
        for k in range(corners)
    ]


def make_scene(rng: np.random.Generator, style: DomainStyle, size: int = 128, max_objects: int = 3) -> Scene:
    """Draw one scene; about one scene in ten has no object at all (kept on purpose)."""
    if style.photo_background:
        image = _photo_crop(rng, size).astype(np.float32)
    else:
        image = np.empty((size, size, 3), np.float32)
        image[:] = rng.integers(185, 250, size=3)
    mask = np.zeros((size, size), np.uint8)
    taken = np.zeros((size, size), bool)
    boxes, labels, polygons = [], [], []
    count = 0 if rng.random() < 0.1 else int(rng.integers(1, max_objects + 1))
    for _ in range(count * 10):  # rejection sampling: shapes never overlap, so masks are exact
        if len(labels) == count:
            break
        label = int(rng.integers(len(SHAPES))) + 1
        r = 0.5 * size * rng.uniform(*style.size)
        cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
        outline = _outline(SHAPES[label - 1], cx, cy, r, rng.uniform(0, 2 * math.pi))
        canvas = Image.new("L", (size, size), 0)
        ImageDraw.Draw(canvas).polygon(outline, fill=1)
        shape_mask = np.asarray(canvas, bool)
        if shape_mask.sum() < 16 or (shape_mask & taken).any():
            continue
        ys, xs = np.nonzero(shape_mask)
        colour = np.clip(np.array(style.palette[rng.integers(len(style.palette))]) + rng.integers(-20, 21, 3), 0, 255)
        fill = np.broadcast_to(colour.astype(np.float32), image.shape)
        if style.textured_shapes:
            fill = 0.6 * fill + 0.4 * _photo_crop(rng, size)
        image[shape_mask] = fill[shape_mask]
        taken |= shape_mask
        mask[shape_mask] = label
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        labels.append(label)
        polygons.append([round(float(v), 2) for point in outline for v in point])
    return Scene(
        image=np.clip(image, 0, 255).astype(np.uint8),
        boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
        labels=np.asarray(labels, np.int64),
        mask=mask,
        polygons=polygons,
    )


def write_scenes(root: str | Path, count: int, style: DomainStyle, *, seed: int = 0, size: int = 128) -> Path:
    """Write ``count`` scenes to ``root``: ``images/*.png``, ``masks/*.png`` (palette PNG,
    0 = background) and ``annotations.json`` (COCO: boxes as ``[x, y, w, h]`` and polygons).
    Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for i in range(count):
        scene = make_scene(rng, style, size)
        name = f"{style.name}_{i:05d}.png"
        _write_png(root / "images" / name, Image.fromarray(scene.image))
        _write_png(root / "masks" / name, palette_mask(scene.mask))
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for box, label, polygon in zip(scene.boxes.tolist(), scene.labels.tolist(), scene.polygons):
            x0, y0, x1, y1 = box
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": label,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float((scene.mask[int(y0) : int(y1), int(x0) : int(x1)] == label).sum()),
                    "segmentation": [polygon],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(SHAPES)]
    write_json(root / "annotations.json", {"images": images, "annotations": annotations, "categories": categories})
    return root


def write_classification_set(root: str | Path, count: int, style: DomainStyle, *, seed: int = 0, size: int = 64) -> Path:
    """Write an ImageFolder tree ``root/<shape>/<n>.png`` with exactly one shape per image."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    written = 0
    while written < count:
        scene = make_scene(rng, style, size, max_objects=1)
        if len(scene.labels) != 1:
            continue
        name = SHAPES[int(scene.labels[0]) - 1]
        _write_png(root / name / f"{style.name}_{written:05d}.png", Image.fromarray(scene.image))
        written += 1
    return root


def palette_mask(mask: np.ndarray) -> Image.Image:
    """A class-index mask as a palette PNG image (the Pascal VOC convention; 255 = ignore)."""
    image = Image.fromarray(mask.astype(np.uint8))  # mode "L"; putpalette turns it into "P"
    colours = [0, 0, 0, 220, 60, 60, 60, 180, 75, 70, 90, 230] + [128, 128, 128] * 252
    colours[255 * 3 : 256 * 3] = [255, 255, 255]
    image.putpalette(colours[: 256 * 3])
    return image


def _write_png(path: Path, image: Image.Image) -> None:
    with atomic_write(path) as f:
        image.save(f, format="PNG")
