"""The LoRA-vs-PEFT benchmark script runs in its quick mode and writes its table."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("peft")
pytest.importorskip("torchvision")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "lora_vs_peft.py"


@pytest.mark.integration
def test_quick_mode_writes_the_table(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("lora_vs_peft", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "lora_vs_peft", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    out = tmp_path / "lora_vs_peft.md"
    assert module.main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "python benchmarks/lora_vs_peft.py --quick" in text
    rows = [line for line in text.splitlines() if line.startswith("| BERT") or line.startswith("| ResNet")]
    assert len(rows) == 3
    for row in rows:
        ratios = [float(cell.split()[0]) for cell in row.strip("|").split("|")[2:]]
        assert all(r > 0 for r in ratios)
