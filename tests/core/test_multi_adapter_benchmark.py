"""benchmarks/multi_adapter.py: the mixed pass agrees with the separate passes and the table is written."""

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "multi_adapter.py"


def _module(monkeypatch):
    spec = importlib.util.spec_from_file_location("multi_adapter", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "multi_adapter", module)
    spec.loader.exec_module(module)
    return module


def test_one_case_agrees_and_the_table_names_the_goal(monkeypatch):
    bench = _module(monkeypatch)
    row = bench.run_case(hidden=64, layers=1, adapters=2, samples=2, rounds=1)
    assert row["diff"] < 1e-4 and row["ratio"] > 0 and row["mixed_per_s"] > 0
    text = bench.table([("tiny", 2, 2, row)])
    assert text.splitlines()[2].startswith("| tiny | 2 | 2 |") and text.count("\n") == 2
