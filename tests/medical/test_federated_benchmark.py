"""The federated benchmark's bookkeeping, without training: the pooled arm's data reseeds its
augmentation every epoch like the sites' own loaders, and the table states each arm's budget and
its difference to local-only training paired by seed."""

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

pytest.importorskip("monai")

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "federated.py"


@pytest.fixture()
def bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("federated_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class Part(list):
    epoch = None

    def set_epoch(self, epoch):
        self.epoch = epoch


def test_the_pooled_cases_pass_the_epoch_on_to_every_site(bench):
    parts = [Part([1, 2]), Part([3])]
    pooled = bench.PooledCases(parts)
    pooled.set_epoch(4)
    assert [p.epoch for p in parts] == [4, 4] and len(pooled) == 3 and pooled[2] == 3


def test_the_table_gives_budgets_and_paired_differences(bench):
    def seed(shift):
        dice = {arm: {s: 0.1 * k + shift for s in bench.TARGETS} for k, arm in enumerate(bench.ARMS)}
        traffic = {a: {"up": 90, "down": 90, "seconds": 1.0, "truncation": 0.1, "adapter": 100} for a in ("naive", "exact", "fedsa")}
        budget = {arm: (0, 0, 0) if arm == "base" else (18, 54, 2) for arm in bench.ARMS}
        return {"dice": dice, "traffic": traffic, "budget": budget}

    results = [seed(0.0), seed(0.02)]
    lines = bench.table(results, bench.FULL, [], 1.0)
    text = "\n".join(lines)
    assert "2 seed(s) (of 5 asked; the run was cut short)" in text
    assert "| local only | 18 | 54 | 2 | 108 |" in text
    exact = next(line for line in lines if line.startswith("| exact"))
    gap = statistics.mean(results[0]["dice"]["exact (stack + SVD)"].values()) - statistics.mean(results[0]["dice"]["local only"].values())
    assert exact.rstrip(" |").endswith(f"{gap:+.3f} ± 0.000")  # the same gap in both seeds: no spread
