"""``fit`` reads as a short loop, and its progress bar says which run it is drawing."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

from fit_toy import RegressionTask, loader, toy_model

import scalpel.core.fit.loop as loop
from scalpel.core.fit import FitConfig, fit


def test_the_fit_function_is_under_80_lines():
    tree = ast.parse(Path(loop.__file__).read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "fit"]
    lines = node.end_lineno - node.lineno + 1  # from `def fit(` to its last line, docstring included
    assert lines < 80, f"fit spans {lines} lines; move set-up, step or finish work into the helpers around it"


def _bar_text(tmp_path, capsys, monkeypatch, output_dir: str, **kw) -> str:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # capsys's stderr is no terminal: pretend it is
    fit(toy_model(), RegressionTask(), loader(),
        config=FitConfig(output_dir=str(tmp_path / output_dir), max_steps=3, save_every=0, progress=True, **kw))
    return capsys.readouterr().err


def test_the_progress_bar_is_titled_with_the_output_dir_name(tmp_path, capsys, monkeypatch):
    err = _bar_text(tmp_path, capsys, monkeypatch, "lora-sst2")
    assert re.search(r"lora-sst2: +\d+%\|", err), err[-500:]  # tqdm draws "<desc>: <pct>%|<bar>|"


def test_the_run_name_replaces_the_folder_name_on_the_bar(tmp_path, capsys, monkeypatch):
    err = _bar_text(tmp_path, capsys, monkeypatch, "run", run_name="demo-vision-dora")
    assert re.search(r"demo-vision-dora: +\d+%\|", err), err[-500:]
    assert not re.search(r"\brun: +\d+%\|", err)
