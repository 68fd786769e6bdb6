"""The ``scalpel`` command: plugin commands load only when named, and every one is listed."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

from scalpel.core.cli import build_parser, main
from scalpel.core.pipeline import COMMAND_GROUP

PLUGINS = sorted(ep.name for ep in entry_points(group=COMMAND_GROUP))


def _commands(argv: list[str]) -> set[str]:
    parser = build_parser(argv)
    return set(next(a for a in parser._actions if a.dest == "command").choices)


def test_every_plugin_registers_the_command_it_is_named_after():
    assert {"adapter", "dicom", "doctor", "medical"} <= set(PLUGINS)
    assert _commands(["--help"]) == {"run", "predict", *PLUGINS}  # the overview lists them all
    for name in PLUGINS:
        assert _commands([name, "--help"]) == {"run", "predict", name}
    assert _commands(["run", "nlp.sentiment"]) == {"run", "predict"}


def test_a_plugin_command_does_not_import_the_other_domains():
    code = ("import sys; from scalpel.core.cli import build_parser; build_parser(['adapter', 'info', 'x']); "
            "print(sorted(m for m in ('monai', 'transformers', 'torchvision', 'streamlit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_an_unknown_command_lists_the_plugins(capsys):
    with pytest.raises(SystemExit):
        main(["medicl", "adapt"])
    err = capsys.readouterr().err
    assert "invalid choice: 'medicl'" in err and "medical" in err
