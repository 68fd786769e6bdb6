"""benchmarks/collect.py (docs/benchmarks.md from the tables) and benchmarks/run_all.py's command lines."""

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name, monkeypatch):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def collect(monkeypatch):
    return _load("collect", monkeypatch)


def _tables(src):
    src.mkdir()
    (src / "zeta_new.md").write_text("# A new benchmark\n\n| a |\n|---|\n| 1 |\n")
    (src / "layerwise.md").write_text(
        "# Layer-wise\n\n![plot](layerwise.png)\n\nSee [the method](../methods/layerwise.md) and [web](https://x.org/a).\n\n"
        "## 1. Part\n\n```\n# not a heading\n```\n"
    )
    (src / "lora_vs_peft.md").write_text("## LoRA table\n\n| x |\n|---|\n| 2 |\n")


def test_sections_in_fixed_order_with_rerun_command_links_and_headings(collect, tmp_path):
    _tables(tmp_path / "benchmarks")
    out = tmp_path / "benchmarks.md"
    text = collect.collect(tmp_path / "benchmarks", out)
    sections = [line for line in text.splitlines() if line.startswith("## ") and line != "## Contents"]
    assert sections[0].startswith("## LoRA vs Hugging Face PEFT")
    assert sections[1].startswith("## Layer-wise adaptation")
    assert sections[2] == "## zeta new"  # unknown tables come last, not dropped
    assert "Rerun: `python benchmarks/lora_vs_peft.py`" in text
    assert "![plot](benchmarks/layerwise.png)" in text
    assert "[the method](methods/layerwise.md)" in text and "[web](https://x.org/a)" in text
    assert "### Layer-wise" in text and "#### 1. Part" in text and "### LoRA table" in text
    assert "\n# not a heading\n" in text  # code blocks untouched


def test_collect_is_idempotent(collect, tmp_path):
    _tables(tmp_path / "benchmarks")
    out = tmp_path / "benchmarks.md"
    first = collect.collect(tmp_path / "benchmarks", out)
    stamp = out.stat().st_mtime_ns
    assert collect.collect(tmp_path / "benchmarks", out) == first == out.read_text()
    assert out.stat().st_mtime_ns == stamp  # unchanged content is not rewritten


def test_committed_page_is_up_to_date(collect):
    docs = BENCH.parent / "docs"
    expected = collect.render(docs / "benchmarks", docs / "benchmarks.md")
    assert (docs / "benchmarks.md").read_text() == expected, "docs/benchmarks.md is stale: run python benchmarks/collect.py"


def test_every_benchmark_script_is_registered(collect):
    scripts = {p.name for p in BENCH.glob("*.py")} - {"collect.py", "run_all.py"}
    assert scripts == {b.script for b in collect.BENCHMARKS}


def test_run_all_quick_mode_keeps_tables_out_of_docs(monkeypatch, tmp_path):
    run_all = _load("run_all", monkeypatch)
    for b in run_all.selected(None):
        argv = run_all.command(b, quick=True, scratch=tmp_path)
        assert "--quick" in argv
        assert not any("docs" in a for a in argv[2:]), argv
        assert str(tmp_path / f"{b.name}.md") in argv or "--no-write" in argv
    assert [b.name for b in run_all.selected(["sparse"])] == ["sparse"]
    with pytest.raises(SystemExit):
        run_all.selected(["no_such_benchmark"])
