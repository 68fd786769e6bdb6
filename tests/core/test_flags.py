"""``scalpel run NAME`` flags (core/flags.py): generated from the three option sets, typed YAML,
old spellings that still work with a warning naming the new flag."""

from __future__ import annotations

import pytest
import yaml

from scalpel.core.errors import ConfigError
from scalpel.core.flags import parse_run_flags
from scalpel.core.options import DEPRECATED_FLAGS
from toy_pipeline import TOY


def test_flags_set_every_kind_of_value():
    s = parse_run_flags(TOY, ["--method", "sparse", "--density", "0.05", "--blocks", "last 2", "first 1", "--epochs", "4",
                              "--no-progress", "--mixed-precision", "no", "--grad-accum", "2", "--samples", "16"])
    assert (s.method.method, s.method.density, s.method.blocks) == ("sparse", 0.05, ("last 2", "first 1"))
    assert (s.train.epochs, s.train.progress, s.train.mixed_precision, s.train.grad_accum) == (4, False, "no", 2)
    assert s.options.samples == 16
    assert parse_run_flags(TOY, []) == TOY.settings()


@pytest.mark.parametrize(("old", "value", "setting"), [("--lora-r", "3", ("method", "r", 3)),
                                                       ("--sparse-density", "0.2", ("method", "density", 0.2)),
                                                       ("--layerwise-blocks", "last 1", ("method", "blocks", ("last 1",))),
                                                       ("--steps", "7", ("train", "max_steps", 7)),
                                                       ("--teacher-model", "resnet50", ("method", "teacher_arch", "resnet50"))])
def test_old_spellings_work_and_name_the_new_flag(old, value, setting):
    with pytest.warns(FutureWarning, match=f"{old} is deprecated; use {DEPRECATED_FLAGS[old]}"):
        s = parse_run_flags(TOY, [old, value])
    group, name, expected = setting
    assert getattr(getattr(s, group), name) == expected


def test_yaml_is_typed_flags_win_and_quick_fills_the_rest(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"r": 5, "epochs": 7, "quick": True}))
    s = parse_run_flags(TOY, ["-c", str(path), "--r", "6"])
    assert (s.method.r, s.train.epochs, s.train.quick, s.options.samples) == (6, 7, True, 32)  # samples: quick's
    path.write_text(yaml.safe_dump({"r": "five", "epochs": 2.5, "blocks": "last 2", "lora_r": 3}))
    with pytest.raises(ConfigError) as caught:
        parse_run_flags(TOY, ["--config", str(path)])
    assert set(caught.value.problems) == {"r must be int, got str 'five'", "epochs must be int, got float 2.5",
                                          "blocks must be a list, got str 'last 2'", "unknown setting 'lora_r'"}


def test_a_runs_config_yaml_reproduces_its_settings(tmp_path):
    settings = TOY.settings(method="lora", r=3, max_steps=2, output_dir=str(tmp_path / "first"))
    TOY.run(settings)
    again = parse_run_flags(TOY, ["-c", str(tmp_path / "first" / "config.yaml")])
    assert again == settings


def test_help_lists_the_flags_of_all_three_sets(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_run_flags(TOY, ["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--samples", "--method", "--r", "--density", "--blocks", "--epochs", "--max-steps", "--grad-accum",
                 "--mixed-precision", "--resume", "--overwrite", "--no-progress"):
        assert flag in out, flag
