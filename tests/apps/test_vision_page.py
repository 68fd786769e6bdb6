"""The vision page on tiny detection and segmentation runs: drawn detections with a
threshold, COCO JSON, segmentation overlay and PNG masks, a bad image upload."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

import scalpel.core as sc
from scalpel.apps import vision_infer as vi
from scalpel.core.errors import DataError
from scalpel.core.recipes import adapt
from scalpel.vision.models import adaptable_layers, build_model, head_modules, names_regex, spec_for

PAGE = str(Path(__file__).resolve().parents[2] / "apps" / "vision_page.py")
NAMES = ["circle", "square"]


def _run(root: Path, name: str, model_name: str, task: str, size: int, seed: int | None = None) -> Path:
    num = len(NAMES) + 1
    torch.manual_seed(0)
    model = build_model(model_name, num, image_size=size, task=task)
    spec = spec_for(model_name, task)
    model = adapt(model, "lora", targets=names_regex(adaptable_layers(model, spec)), head=head_modules(model, spec), r=2, alpha=4)
    if seed is not None:  # a second adapter of the same base that predicts differently
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in sc.trainable_parameters(model).values():
                p.add_(torch.randn_like(p) * 0.5)
    extra = {"task": task, "model": model_name, "num_classes": num, "class_names": NAMES, "image_size": size, "base_weights": ""}
    return sc.save_adapter(model, root / name / "adapter", metrics={"score": 0.1}, extra=extra,
                           base_model={"name_or_path": model_name})


@pytest.fixture(scope="module")
def vision_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision_runs")
    _run(root, "det", "ssdlite320_mobilenet_v3_large", "detection", 64)
    _run(root, "seg", "lraspp_mobilenet_v3_large", "segmentation", 64)
    _run(root, "seg2", "lraspp_mobilenet_v3_large", "segmentation", 64, seed=1)
    return root


def _png(h=48, w=64) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_coco_and_masks_formats():
    prediction = {"boxes": torch.tensor([[1.0, 2.0, 11.0, 7.0], [0.0, 0.0, 5.0, 5.0]]), "labels": torch.tensor([2, 1]),
                  "scores": torch.tensor([0.9, 0.2])}
    coco = vi.to_coco([("a.png", np.zeros((20, 30, 3), np.uint8), prediction)], NAMES, threshold=0.5)
    assert coco["images"] == [{"id": 1, "file_name": "a.png", "height": 20, "width": 30}]
    [ann] = coco["annotations"]
    assert ann["bbox"] == [1.0, 2.0, 10.0, 5.0] and ann["category_id"] == 2 and ann["area"] == 50.0
    assert coco["categories"][1] == {"id": 2, "name": "square"}
    mask = np.array([[0, 1], [2, 1]], np.uint8)
    with zipfile.ZipFile(io.BytesIO(vi.masks_zip([("a.png", mask)]))) as archive:
        np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(archive.read("a_mask.png")))), mask)
    with pytest.raises(DataError, match="not a readable image"):
        vi.decode_image("x.png", b"\x89PNG\r\n\x1a\nbroken")


def _app(root, run):
    at = AppTest.from_file(PAGE, default_timeout=90)
    at.session_state["runs_dir"] = str(root)
    at.run()
    at.sidebar.selectbox(key="run_vision").select(run).run()
    return at


def test_detection_page_threshold_and_coco_download(vision_runs):
    at = _app(vision_runs, "det/adapter")
    assert not at.exception
    at.file_uploader(key="vision_images").set_value([("a.png", _png(), "image/png"), ("bad.png", b"not an image", "image/png")]).run()
    assert not at.exception
    assert len(at.error) == 1 and "bad.png is not a readable image" in at.error[0].value
    assert len(at.get("image")) == 1
    at.slider(key="vision_threshold").set_value(0.0).run()
    assert not at.exception and len(at.get("download_button")) == 1


def test_segmentation_page_overlay_and_masks(vision_runs):
    at = _app(vision_runs, "seg/adapter")
    at.file_uploader(key="vision_images").set_value(("a.png", _png(), "image/png")).run()
    assert not at.exception and not at.error
    assert len(at.get("image")) == 1 and len(at.get("download_button")) == 1
    total = at.dataframe[-1].value["pixels"].sum()
    assert total == 48 * 64  # mask at the image's own size
    at.slider(key="vision_opacity").set_value(0.9).run()
    assert not at.exception


def test_no_vision_runs_says_how_to_make_one(tmp_path):
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["runs_dir"] = str(tmp_path)
    at.run()
    assert not at.exception and any("make demo" in i.value for i in at.info)


def test_segmentation_page_compares_adapters_of_one_base(vision_runs):
    at = _app(vision_runs, "seg/adapter")
    assert at.multiselect(key="vision_compare").options == ["seg2/adapter"]  # the detector is another base
    at.multiselect(key="vision_compare").set_value(["seg2/adapter"])
    at.file_uploader(key="vision_images").set_value(("a.png", _png(), "image/png")).run()
    assert not at.exception and not at.error
    [row] = at.dataframe[-1].value.to_dict("records")
    assert set(row) == {"image", "seg/adapter: pixels", "seg2/adapter: pixels"}


def test_compare_images_matches_each_adapter_alone(vision_runs):
    from scalpel.vision.data.transforms import to_image
    from scalpel.vision.predict import _rows, compare_images, load_adapted

    image = to_image(np.array(Image.open(io.BytesIO(_png()))))
    adapters = [vision_runs / "seg" / "adapter", vision_runs / "seg2" / "adapter"]
    torch.manual_seed(0)  # these bases have no weights file: each build draws them, as the fixture did
    together = compare_images(adapters, [("a.png", image)], {})
    alone = []
    for adapter in adapters:
        torch.manual_seed(0)
        alone.append(_rows(*load_adapted(adapter), [("a.png", image)], {}, None)[0])
    assert together == alone and alone[0] != alone[1]
