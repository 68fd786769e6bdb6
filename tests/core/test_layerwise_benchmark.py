"""The layer-wise benchmark runs in its quick mode and writes its table and plot."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "layerwise.py"


@pytest.mark.integration
def test_quick_mode_writes_table_and_plot(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("layerwise_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    out = tmp_path / "layerwise.md"
    assert module.main(["--quick", "--out", str(out), "--device", "cpu"]) == 0
    text = out.read_text()
    assert "python benchmarks/layerwise.py --quick" in text
    assert (tmp_path / "layerwise.png").stat().st_size > 1000
    rows = [line for line in text.splitlines() if line.startswith("| only ")]
    assert [r.split("|")[1].strip() for r in rows] == [f"only {b}" for b in module.SINGLE]
    memory = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith(("| full fine", "| LISA", "| LoRA"))}
    assert len(memory) == 5
    state = {name: float(line.split("|")[3]) for name, line in memory.items()}
    full = state["full fine-tuning"]
    freed = next(v for k, v in state.items() if "freed" in k)
    kept = next(v for k, v in state.items() if "kept" in k)
    assert freed < kept < full  # freeing the re-frozen blocks' state is what makes LISA lean
