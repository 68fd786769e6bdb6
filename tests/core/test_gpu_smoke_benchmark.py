"""benchmarks/gpu_smoke.py runs (tiny decoder on CPU) and writes its table."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_smoke.py"


@pytest.mark.integration
def test_quick_mode_writes_the_table(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_smoke", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu_smoke.md"
    assert module.main(["--quick", "--steps", "4", "--out", str(out)]) == 0
    text = out.read_text()
    assert "9.89e+14 FLOP/s" in text  # the MFU assumption is printed
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| bare") or line.startswith("| scalpel")}
    assert set(rows) == {"bare PyTorch", "scalpel fit"}
    tokens_per_s = [float(rows[k].split("|")[2].replace(",", "")) for k in rows]
    assert all(t > 0 for t in tokens_per_s)
