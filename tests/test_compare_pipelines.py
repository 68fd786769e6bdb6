"""``scalpel predict <pipeline> --adapter A --adapter B`` compares adapters of one base in one
mixed-adapter pass (``Pipeline.compare``) for the vision and medical pipelines, and gives the
rows that ``predict`` gives for each adapter alone; detectors run one adapter at a time."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from scalpel.core.cli import main
from scalpel.core.errors import AdapterError
from scalpel.core.pipeline import get_pipeline

COMPARED = ["vision.classification", "vision.segmentation", "vision.detection", "medical.segmentation",
            "medical.classification"]


def _two_adapters(name: str, root) -> list:
    """Two LoRA adapters of the pipeline's quick base (one seed and rate, so one base), of different ranks."""
    dirs = []
    for i, r in enumerate((2, 4)):
        run = root / f"compare-{i}"
        get_pipeline(name).run(quick=True, method="lora", max_steps=2, r=r, output_dir=str(run), device="cpu",
                               progress=False, overwrite=True)
        dirs.append(run / "adapter")
    return dirs


def _inputs(name: str, tmp_path) -> list[str]:
    if name.startswith("vision."):
        rng = np.random.default_rng(0)
        paths = []
        for i in range(2):
            path = tmp_path / f"image{i}.png"
            Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
            paths.append(str(path))
        return paths
    from scalpel.medical.synthetic import write_site

    case = write_site(tmp_path / "site", "B", cases=1, shape=(24,) * 3, seed=5)[0]
    return [str(case.series_dir)]


def _close(a, b) -> None:
    """Rows equal, numbers within float noise (one mixed pass vs one pass per adapter)."""
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _close(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _close(x, y)
    elif isinstance(a, float):
        assert a == pytest.approx(b, abs=2e-3)
    else:
        assert a == b


@pytest.mark.integration
@pytest.mark.parametrize("name", COMPARED)
def test_compare_gives_each_adapters_own_predictions(name, pipeline_root, tmp_path, capsys):
    pipeline = get_pipeline(name)
    assert pipeline.compare is not None
    adapters = _two_adapters(name, pipeline_root(name))
    inputs = _inputs(name, tmp_path)
    alone = [pipeline.predict(a, inputs, {}) for a in adapters]
    together = pipeline.compare(adapters, inputs, {})
    _close(together, alone)

    capsys.readouterr()
    args = ["predict", name, *[x for a in adapters for x in ("--adapter", str(a))], *inputs]
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert len(rows) == len(inputs)
    assert all(set(r["adapters"]) == {str(a) for a in adapters} for r in rows)


def test_compare_refuses_adapters_of_different_bases(pipeline_root, tmp_path):
    classification = _two_adapters("vision.classification", pipeline_root("vision.classification"))
    segmentation = _two_adapters("vision.segmentation", pipeline_root("vision.segmentation"))
    with pytest.raises(AdapterError, match="same base"):
        get_pipeline("vision.classification").compare([classification[0], segmentation[0]], _inputs("vision.x", tmp_path), {})
