"""Vision loaders: COCO, VOC, mask folders, ImageFolder/CSV; box validation and bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from scalpel.core.errors import DataError
from scalpel.vision.data import (
    AspectRatioBatchSampler,
    DataReport,
    DetectionDataset,
    SegmentationDataset,
    load_coco,
    load_coco_masks,
    load_csv,
    load_image_folder,
    load_mask_folders,
    load_voc,
    sanitize_boxes,
    segmentation_transforms,
)
from scalpel.vision.data.masks import read_mask
from scalpel.vision.data.transforms import detection_transforms
from scalpel.vision.synthetic import SOURCE, TARGET, write_classification_set, write_scenes


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_scenes(tmp_path_factory.mktemp("scenes"), 12, SOURCE, seed=3, size=64)


def _coco(tmp_path, images, annotations, categories=({"id": 7, "name": "cat"},)):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": list(categories)}))
    return path


def _png(path, size=(32, 24), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128 if mode != "RGB" else (10, 20, 30)).save(path)
    return path


def test_coco_round_trip_keeps_empty_images_and_exact_boxes(scenes):
    data = load_coco(scenes / "annotations.json")
    raw = json.loads((scenes / "annotations.json").read_text())
    assert data.class_names == ["circle", "square", "triangle"] and data.num_classes == 4
    assert len(data.records) == 12 and data.report.objects == len(raw["annotations"])
    assert data.report.empty_images == sum(len(r.labels) == 0 for r in data.records)
    first = raw["annotations"][0]
    record = next(r for r in data.records if r.path.name == raw["images"][first["image_id"] - 1]["file_name"])
    x, y, w, h = first["bbox"]
    assert record.boxes[0].tolist() == pytest.approx([x, y, x + w, y + h])


def test_sanitize_boxes_clips_and_drops_and_counts():
    report = DataReport("t")
    boxes = np.array([[-5, 2, 10, 8], [3, 3, 3, 9], [1, 1, 5, 5], [np.nan, 0, 1, 1], [50, 50, 60, 60]], np.float32)
    keep = sanitize_boxes(boxes, 20, 20, report)
    assert keep.tolist() == [True, False, True, False, False]
    assert boxes[0].tolist() == [0, 2, 10, 8]
    assert (report.boxes_clipped, report.boxes_dropped) == (1, 3)


def test_coco_missing_images_are_listed_or_skipped(tmp_path):
    _png(tmp_path / "images" / "a.png")
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "gone1.png"}, {"id": 3, "file_name": "gone2.png"}]
    path = _coco(tmp_path, images, [])
    with pytest.raises(DataError, match=r"2 of 3 images .* missing: .*gone1.png.*gone2.png"):
        load_coco(path)
    data = load_coco(path, strict=False)
    assert len(data.records) == 1 and len(data.report.skipped["missing image"]) == 2


def test_coco_unknown_category_ids_are_named(tmp_path):
    _png(tmp_path / "images" / "a.png")
    anns = [{"id": 1, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]}, {"id": 2, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]}]
    path = _coco(tmp_path, [{"id": 1, "file_name": "a.png"}], anns)
    with pytest.raises(DataError, match=r"category ids 99.*not in the 'categories' list \(7=cat\)"):
        load_coco(path)
    data = load_coco(path, strict=False)
    assert data.report.objects == 1 and len(data.report.skipped["unknown category id"]) == 1


def test_corrupt_and_non_rgb_images(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "bad.png").write_bytes(b"not a png at all")
    _png(tmp_path / "images" / "grey.png", mode="L")
    path = _coco(tmp_path, [{"id": 1, "file_name": "bad.png"}, {"id": 2, "file_name": "grey.png"}], [])
    with pytest.raises(DataError, match="corrupt or not images: .*bad.png"):
        load_coco(path)
    data = load_coco(path, strict=False)
    assert data.report.converted_to_rgb == 1 and data.report.skipped["corrupt image"]
    image, target = DetectionDataset(data.records, detection_transforms(False))[0]
    assert image.shape == (3, 24, 32) and target["boxes"].shape == (0, 4)


def test_coco_not_a_coco_file(tmp_path):
    (tmp_path / "x.json").write_text('{"images": []}')
    with pytest.raises(DataError, match="lacks the list"):
        load_coco(tmp_path / "x.json")


def test_voc_converts_one_based_boxes_and_skips_difficult(tmp_path):
    _png(tmp_path / "JPEGImages" / "a.jpg", size=(40, 30))
    (tmp_path / "Annotations").mkdir()
    (tmp_path / "Annotations" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename>"
        "<object><name>dog</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>10</xmax><ymax>12</ymax></bndbox></object>"
        "<object><name>cat</name><difficult>1</difficult><bndbox><xmin>5</xmin><ymin>5</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object>"
        "<object><name>cat</name><bndbox><xmin>30</xmin><ymin>20</ymin><xmax>60</xmax><ymax>29</ymax></bndbox></object>"
        "</annotation>"
    )
    data = load_voc(tmp_path)
    assert data.class_names == ["cat", "dog"]
    record = data.records[0]
    assert record.boxes.tolist() == [[0, 1, 10, 12], [29, 19, 40, 29]] and record.labels.tolist() == [2, 1]
    assert data.report.boxes_clipped == 1 and len(data.report.skipped["difficult object"]) == 1
    with pytest.raises(DataError, match="dog"):
        load_voc(tmp_path, class_names=["cat"])


def test_mask_folders_read_palette_indices_and_match_coco_polygons(scenes):
    folders = load_mask_folders(scenes / "images", scenes / "masks", class_names=["bg", "circle", "square", "triangle"])
    polygons = load_coco_masks(scenes / "annotations.json")
    for a, b in zip(folders.items, polygons.items):
        truth = read_mask(a)
        assert truth.max() <= 3
        assert (read_mask(b) == truth).mean() > 0.97  # polygon outlines vs the drawn masks differ only on edge pixels
    image, mask = SegmentationDataset(folders, segmentation_transforms(False, 48))[0]
    assert image.shape == (3, 48, 48) and mask.shape == (48, 48) and mask.dtype == torch.long


def test_mask_problems_listed_or_counted(tmp_path):
    for name in ("a", "b", "c", "d"):
        _png(tmp_path / "img" / f"{name}.png")
    _png(tmp_path / "msk" / "a.png", mode="L")
    _png(tmp_path / "msk" / "b.png", size=(10, 10), mode="L")
    _png(tmp_path / "msk" / "c.png", mode="RGB")
    with pytest.raises(DataError) as err:
        load_mask_folders(tmp_path / "img", tmp_path / "msk", num_classes=200)
    text = str(err.value)
    assert "mask size differs" in text and "b.png" in text and "colour mask" in text and "image without mask" in text
    data = load_mask_folders(tmp_path / "img", tmp_path / "msk", num_classes=200, strict=False)
    assert [i.image.name for i in data.items] == ["a.png"] and sum(len(v) for v in data.report.skipped.values()) == 3


def test_mask_values_beyond_classes_are_refused(tmp_path):
    _png(tmp_path / "img" / "a.png")
    _png(tmp_path / "msk" / "a.png", mode="L")  # every pixel 128
    data = load_mask_folders(tmp_path / "img", tmp_path / "msk", num_classes=3)
    with pytest.raises(DataError, match="class indices \\[128\\]"):
        SegmentationDataset(data)[0]


def test_image_folder_and_csv(tmp_path):
    root = write_classification_set(tmp_path / "tree", 9, TARGET, seed=1, size=32)
    data = load_image_folder(root)
    assert data.class_names == sorted(p.name for p in root.iterdir()) and len(data.items) == 9
    rows = ["path,label"] + [f"{p.relative_to(root)},{data.class_names[k]}" for p, k in data.items]
    (root / "labels.csv").write_text("\n".join(rows) + "\nmissing.png,circle\n")
    with pytest.raises(DataError, match="missing.png"):
        load_csv(root / "labels.csv")
    from_csv = load_csv(root / "labels.csv", strict=False)
    assert sorted(from_csv.items) == sorted(data.items)
    (root / "bad.csv").write_text("file,class\nx.png,a\n")
    with pytest.raises(DataError, match="'path' and 'label'"):
        load_csv(root / "bad.csv")


def test_aspect_ratio_batches_cover_every_index_once():
    ratios = [1.0, 1.0, 2.0, 0.5, 1.1, 2.1, 0.9, 0.5, 1.0]
    sampler = AspectRatioBatchSampler(ratios, 2, seed=1)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(len(ratios)))
    assert len(batches) == len(sampler)
    full = [b for b in batches if len(b) == 2][: len(batches) - 2]
    bins = sampler.bins
    assert any(bins[b[0]] == bins[b[1]] for b in full)


def test_detection_flip_moves_boxes_with_the_image():
    from torchvision.transforms import v2

    image = tv_tensors.Image(torch.zeros(3, 10, 20, dtype=torch.uint8))
    target = {"boxes": tv_tensors.BoundingBoxes(torch.tensor([[2.0, 1, 6, 5]]), format="XYXY", canvas_size=(10, 20)),
              "labels": torch.tensor([1])}
    _, out = v2.RandomHorizontalFlip(1.0)(image, target)
    assert out["boxes"].tolist() == [[14.0, 1.0, 18.0, 5.0]]


def test_coco_box_with_a_negative_width_stops_a_strict_load_and_is_counted_otherwise(scenes, tmp_path):
    raw = json.loads((scenes / "annotations.json").read_text())
    raw["annotations"][0]["bbox"][2] = -4.0
    raw["annotations"][1]["bbox"] = [1, 2, 3]
    bad = tmp_path / "annotations.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(DataError, match=r"2 box\(es\).*annotation .*\[x, y, width, height\]") as err:
        load_coco(bad, scenes / "images")
    assert f"annotation {raw['annotations'][0]['id']}" in str(err.value)
    data = load_coco(bad, scenes / "images", strict=False)
    assert len(data.report.skipped["malformed bbox"]) == 2
    assert data.report.objects == len(raw["annotations"]) - 2
    assert "2 skipped (malformed bbox)" in data.report.summary()
