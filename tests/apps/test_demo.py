"""`scalpel demo`: the domains run in turn, one table, a report, and the app hint on the last line."""

from __future__ import annotations

import json
import sys
import types

import pytest

from scalpel.apps import demo
from scalpel.apps.runs import find_runs
from scalpel.core.cli import main
from scalpel.core.errors import DataError


def _row(domain: str, method: str, after: float, tmp_path) -> dict:
    return {"domain": domain, "task": "toy", "model": "m", "method": method, "metric": "accuracy", "before": 0.5, "after": after,
            "trainable": 10 if method != "full" else 1000, "total": 1000, "train_seconds": 1.5, "adapter_bytes": 4096,
            "run_dir": str(tmp_path), "curve": None, "examples": [{"caption": "an example", "text": f"{domain} says hi"}]}


@pytest.fixture
def fake_domains(monkeypatch, tmp_path):
    """nlp returns two rows, vision raises a ScalpelError, medical a bug; no real training."""
    def ok(output_dir, quick=False):
        return [_row("nlp", "lora", 0.8, tmp_path), _row("nlp", "full", 0.82, tmp_path)]

    def user_error(output_dir, quick=False):
        raise DataError("the vision assets are missing; run make assets")

    def bug(output_dir, quick=False):
        raise RuntimeError("boom")

    for domain, fn in (("nlp", ok), ("vision", user_error), ("medical", bug)):
        monkeypatch.setitem(sys.modules, f"scalpel.{domain}.demo", types.SimpleNamespace(run_demo=fn))


def test_failures_are_reported_and_the_rest_still_runs(fake_domains, tmp_path, capsys):
    code = main(["demo", "--quick", "--output-dir", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 1
    assert "vision: failed: the vision assets are missing" in err
    assert "RuntimeError: boom" in err
    lines = out.strip().splitlines()
    assert lines[-1].startswith("open the app on these runs: scalpel app --runs")
    assert any(line.startswith("nlp") and "lora" in line and "0.800" in line for line in lines)
    report = (tmp_path / "out" / "report.html").read_text()
    assert "vision failed" in report and "nlp says hi" in report and "data:image/png;base64," in report
    assert [r["method"] for r in json.loads((tmp_path / "out" / "results.json").read_text())] == ["lora", "full"]


def test_a_row_missing_a_key_is_a_bug_in_that_domain(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "scalpel.nlp.demo", types.SimpleNamespace(run_demo=lambda d, quick=False: [{"domain": "nlp"}]))
    with pytest.raises(Exception, match="without task"):
        demo.run_all(tmp_path, domains=["nlp"], say=lambda s: None)


def test_unknown_domain_is_refused(tmp_path):
    with pytest.raises(Exception, match="unknown domain 'audio'"):
        demo.run_all(tmp_path, domains=["audio"], say=lambda s: None)


def test_table_columns_line_up():
    rows = [_row("nlp", "lora", 0.8, "."), _row("nlp", "full", 0.82, ".")]
    header, rule, *body = demo.table(rows)
    assert header.split()[:4] == ["domain", "task", "method", "metric"]
    assert len(body) == 2 and "1.00%" in body[0] and "100.00%" in body[1] and "4 KiB" in body[0]


@pytest.mark.integration
def test_quick_medical_demo_end_to_end(tmp_path, capsys):
    """The real medical domain through the CLI: runs the app can list, and a report with plots."""
    out = tmp_path / "runs" / "demo"
    assert main(["demo", "--quick", "--domains", "medical", "--output-dir", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == ["adabn (statistics only)", "lora", "sparse", "layerwise", "full"]
    rows = rows[1:]  # the zero-parameter baseline has no adapter
    for row in rows:
        assert row["after"] > row["before"], row  # every method improves on the target scanner
        assert row["trainable"] <= row["total"] and row["adapter_bytes"] > 0
    peft = [r for r in rows if r["method"] != "full"]
    assert all(r["trainable"] < next(f for f in rows if f["method"] == "full")["trainable"] for r in peft)
    runs, problems = find_runs(tmp_path / "runs")
    assert not problems and len(runs) == 4
    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") >= 3  # metric plot, curves, example
