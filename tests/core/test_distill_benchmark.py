"""The distillation benchmark runs in its quick mode and writes its table."""

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("chatterbot_corpus")
pytest.importorskip("sklearn")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "distill.py"


@pytest.mark.integration
def test_quick_mode_writes_the_table(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("distill_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    out = tmp_path / "distill.md"
    assert module.main(["--quick", "--out", str(out)]) == 0
    text = out.read_text()
    assert "python benchmarks/distill.py --quick" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    for name in ("teacher", "student + KD", "student, JSD(0.5)", "student, reverse KL", "LoRA r=8, JSD(0.5)", "sparse 1%, JSD(0.5)"):
        assert name in rows, name
    perplexity = float(rows["student, forward KL"].split("|")[5])
    assert 1.0 < perplexity < 200.0  # a real perplexity over a ~100-character vocabulary
