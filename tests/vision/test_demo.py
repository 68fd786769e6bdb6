"""The vision demo honours the demo contract (issue 12): one row per task x method, adapters on disk."""

import json
from pathlib import Path

import pytest
from PIL import Image

from scalpel.vision.demo import QUICK, demo_runs, run_demo, table

CONTRACT = {"domain": str, "task": str, "model": str, "method": str, "metric": str, "after": float, "trainable": int,
            "total": int, "train_seconds": float, "adapter_bytes": int, "run_dir": str, "examples": list}


@pytest.mark.integration
def test_quick_demo_rows_follow_the_contract(tmp_path):
    rows = run_demo(tmp_path, quick=True, methods=("lora", "layerwise"))
    assert [(r["task"], r["method"]) for r in rows] == [("detection", "lora"), ("detection", "layerwise"),
                                                         ("segmentation", "lora"), ("segmentation", "layerwise")]
    for row in rows:
        for key, kind in CONTRACT.items():
            assert isinstance(row[key], kind), (key, row[key])
        assert row["domain"] == "vision" and row["metric"] == {"detection": "mAP50", "segmentation": "mIoU"}[row["task"]]
        assert isinstance(row["before"], float) and 0 <= row["before"] <= 1 and 0 <= row["after"] <= 1
        assert 0 < row["trainable"] < row["total"]
        adapter = Path(row["run_dir"]) / "adapter"
        assert row["adapter_bytes"] == sum(f.stat().st_size for f in adapter.iterdir() if f.is_file())
        meta = json.loads((adapter / "scalpel.json").read_text())
        assert meta["extra"]["task"] == row["task"]
        assert row["curve"] and Path(row["curve"]).is_file()
        assert row["examples"] and all(Image.open(e["image"]).size[0] > 0 and e["caption"] for e in row["examples"])
    # the base's own predictions are shown once per task, beside each method's
    assert sum(len(r["examples"]) for r in rows) == len(rows) + 2
    # both methods of a task start from the same cached base and report the same "before"
    assert rows[0]["before"] == rows[1]["before"] and rows[2]["before"] == rows[3]["before"]
    assert len(list((tmp_path / "detection" / "base").glob("*.safetensors"))) == 1
    assert (tmp_path / "results.json").is_file() and "| detection |" in (tmp_path / "report.md").read_text()
    # a rerun into the same folder replaces the runs and reuses the cached bases
    again = run_demo(tmp_path, quick=True, methods=("lora",))
    assert [r["before"] for r in again] == [rows[0]["before"], rows[2]["before"]]
    assert len(list((tmp_path / "detection" / "base").glob("*.safetensors"))) == 1


def test_demo_runs_share_one_base_per_task(tmp_path):
    runs = demo_runs(tmp_path, quick=True)
    assert len(runs) == 8
    for run in runs:
        options, train = run.settings.options, run.settings.train
        assert options.base_dir == str(tmp_path / run.task) and options.train_images == QUICK.images
        assert train.output_dir == str(tmp_path / run.task / run.settings.method.method) and train.overwrite
        assert run.pipeline.name == f"vision.{run.task}"
    segmentation = [r.settings.options for r in runs if r.task == "segmentation"]
    assert all(len(o.class_weights) == 4 for o in segmentation)


def test_table_gives_time_as_a_ratio_to_full_fine_tuning():
    rows = [{"task": "t", "model": "m", "method": m, "metric": "mIoU", "before": 0.2, "after": 0.5, "trainable": n, "total": 100,
             "train_seconds": s, "adapter_bytes": 2048} for m, n, s in (("lora", 5, 3.0), ("full", 100, 6.0))]
    lines = table(rows)
    assert "0.50x" in lines[2] and "1.00x" in lines[3] and "5.0%" in lines[2]
