"""A mistyped pipeline name is answered with the closest installed one, not with an argparse
complaint about the flags that follow it."""

from __future__ import annotations

import pytest

from scalpel.core.cli import main
from scalpel.core.pipeline import available_pipelines


@pytest.mark.parametrize("command", [["run", "nlp.sentimnet", "--train-file", "x"],
                                     ["predict", "nlp.sentimnet", "--adapter", "a", "a text"]], ids=["run", "predict"])
def test_an_unknown_pipeline_name_suggests_the_closest(command, capsys):
    if "nlp.sentiment" not in available_pipelines():
        pytest.skip("the nlp pipelines are not installed")
    assert main(command) == 2
    err = capsys.readouterr().err
    assert "unknown pipeline 'nlp.sentimnet'; did you mean 'nlp.sentiment'?" in err
    assert "unrecognized arguments" not in err and "installed:" in err
