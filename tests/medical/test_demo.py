"""The medical demo: scanner A -> B, every method, a reused base and an example picture."""

from __future__ import annotations

import pytest

from scalpel.core import load_adapter
from scalpel.medical import demo
from scalpel.medical.base import load_base


@pytest.mark.integration
def test_quick_demo_rows_and_reuse_of_the_base(tmp_path):
    rows = demo.run_demo(tmp_path, quick=True, methods=("sparse", "full"))
    assert [r["method"] for r in rows] == ["adabn (statistics only)", "sparse", "full"]
    adabn, sparse, full = rows
    assert adabn["before"] == sparse["before"] == full["before"]  # one base, scored on the same held-out cases
    assert adabn["trainable"] == 0 and adabn["after"] != adabn["before"]
    assert full["after"] > full["before"]
    assert sparse["trainable"] < 0.05 * sparse["total"]
    assert sparse["examples"] and sparse["examples"][0]["image"].endswith(".png")
    model, _, _ = load_base(tmp_path / "base")
    load_adapter(model, f"{sparse['run_dir']}/adapter")  # the adapter opens on its base
    base_mtime = (tmp_path / "base" / "model.safetensors").stat().st_mtime_ns
    again = demo.run_demo(tmp_path, quick=True, methods=("sparse",))  # a rerun into the same folder replaces the runs
    assert (tmp_path / "base" / "model.safetensors").stat().st_mtime_ns == base_mtime  # reused, not retrained
    assert again[0]["before"] == sparse["before"] and again[1]["run_dir"] == sparse["run_dir"]
    assert set(again[1]) >= {"domain", "task", "method", "metric", "before", "after", "trainable", "total", "train_seconds",
                             "adapter_bytes", "run_dir"}
