"""Domain pipelines as data: a kit builder, the domain's options, and its defaults.

Every pipeline is :func:`scalpel.core.run.run_adaptation` with a different kit. A pipeline
publishes three option sets, flat on the command line and in YAML: its own
(``options_cls``: data, model, ...), :class:`~scalpel.core.options.MethodOptions` and
:class:`~scalpel.core.options.TrainOptions`, each with this pipeline's defaults. Names
never collide, so ``r: 8`` or ``--epochs 3`` means one thing everywhere.

Domain packages publish pipelines through the ``scalpel.pipelines`` entry-point group
(``"nlp.sentiment" = "scalpel.nlp.sentiment.pipeline:PIPELINE"``), so the core finds them
without importing any domain package by name.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from scalpel.core.config import config_to_dict, type_problems
from scalpel.core.errors import ConfigError, UnknownNameError
from scalpel.core.options import MethodOptions, TrainOptions

if TYPE_CHECKING:  # the run (torch) is imported when a pipeline runs, not to list or parse
    from scalpel.core.run import Kit, RunResult

PIPELINE_GROUP = "scalpel.pipelines"
COMMAND_GROUP = "scalpel.cli"


@dataclass(frozen=True)
class Settings:
    """The three option sets of one run."""

    options: Any
    method: MethodOptions
    train: TrainOptions

    def flat(self) -> dict[str, Any]:
        """All settings under their flag names (``config.yaml``'s ``run:`` section; ``-c`` reads it back)."""
        return {**config_to_dict(self.options), **config_to_dict(self.method), **config_to_dict(self.train)}


@dataclass(frozen=True)
class Pipeline:
    """A ready training pipeline.

    Attributes:
        name: ``"<domain>.<task>"``, as typed after ``scalpel run``.
        options_cls: the domain's options dataclass (data, model, ...): its flags.
        build_kit: ``(options, method, train, run_dir) -> Kit``.
        method: this pipeline's defaults of the method options.
        train: this pipeline's defaults of the training options.
        quick: settings ``--quick`` stands for (any of the three sets), where not given explicitly.
        predict: ``(adapter_dir, inputs, options) -> one result dict per input``.
        compare: ``(adapter_dirs, inputs, options) -> predict's rows per adapter``, several
            adapters on the same inputs (e.g. in one mixed-adapter pass); None: ``predict`` per adapter.
        summary: one line for ``scalpel run --help``.
    """

    name: str
    options_cls: type
    build_kit: Callable[[Any, MethodOptions, TrainOptions, Path], Kit]
    method: MethodOptions = field(default_factory=MethodOptions)
    train: TrainOptions = field(default_factory=TrainOptions)
    quick: Mapping[str, Any] = field(default_factory=dict)
    predict: Callable[[Path, Sequence[str], dict[str, Any]], list[dict[str, Any]]] | None = None
    compare: Callable[[Sequence[Path], Sequence[str], dict[str, Any]], list[list[dict[str, Any]]]] | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        clash = _field_names(self.options_cls) & (_field_names(MethodOptions) | _field_names(TrainOptions))
        if clash:
            raise ValueError(f"{self.options_cls.__name__} reuses shared option names {sorted(clash)}; "
                             "a domain changes defaults (Pipeline.method/train), never names")

    def settings(self, values: Mapping[str, Any] | None = None, **more: Any) -> Settings:
        """Flat settings (flag/YAML names) -> the three option sets, from this pipeline's defaults.

        ``quick`` fills in :attr:`quick` for settings not given. Unknown names and values of
        the wrong type are reported together, with every problem the option sets find.
        """
        given = {**(values or {}), **more}
        owners = {cls: _field_names(cls) for cls in (self.options_cls, MethodOptions, TrainOptions)}
        known = set().union(*owners.values())
        problems = [_unknown(k, known) for k in given if k not in known]
        problems += [p for cls in owners for p in type_problems(cls, {k: v for k, v in given.items() if k in owners[cls]})]
        if problems:
            raise ConfigError(f"{self.name} settings", problems)
        if given.get("quick", self.train.quick):
            given = {**self.quick, "quick": True, **given}
        pick = lambda cls: {k: v for k, v in given.items() if k in owners[cls]}  # noqa: E731
        built, problems = [], []
        for make in (lambda: self.options_cls(**pick(self.options_cls)), lambda: dataclasses.replace(self.method, **pick(MethodOptions)),
                     lambda: dataclasses.replace(self.train, **pick(TrainOptions))):
            try:
                built.append(make())
            except ConfigError as err:
                problems += err.problems
        if problems:
            raise ConfigError(f"{self.name} settings", problems)
        return Settings(*built)

    def run(self, settings: Settings | None = None, **values: Any) -> RunResult:
        """Run this pipeline: ``PIPELINE.run(quick=True, method="sparse", output_dir="runs/x")``."""
        settings = settings or self.settings(values)
        from scalpel.core.run import run_adaptation

        return run_adaptation(lambda run_dir: self.build_kit(settings.options, settings.method, settings.train, run_dir),
                              settings.method, settings.train, run_config=settings.flat(),
                              default_dir=f"runs/{self.name.replace('.', '-')}")


def read_settings_file(path: str | Path) -> dict[str, Any]:
    """Flat settings from a YAML file: a hand-written one, or a run's ``config.yaml`` (its ``run:`` section)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("settings file", [f"{path} does not exist"])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError("settings file", [f"{path} is not valid YAML: {err}"]) from err
    if isinstance(data, dict) and set(data) == {"fit", "run"}:
        data = data["run"]
    if not isinstance(data, dict):
        raise ConfigError("settings file", [f"{path} must hold a mapping of setting names to values"])
    return data


def available_pipelines() -> dict[str, Any]:
    """Entry points of every installed pipeline, by name (not yet imported)."""
    return {ep.name: ep for ep in entry_points(group=PIPELINE_GROUP)}


def get_pipeline(name: str) -> Pipeline:
    """The installed pipeline ``name``; an unknown name is refused with the closest installed one.

    Raises:
        UnknownNameError: no pipeline of that name (a typo is answered with "did you mean ...?").
    """
    found = available_pipelines()
    if name not in found:
        close = difflib.get_close_matches(name, found, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"unknown pipeline {name!r}{hint} (installed: {', '.join(sorted(found)) or 'none'})")
    return found[name].load()


def _field_names(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def _unknown(name: str, known: set[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown setting {name!r}" + (f"; did you mean {close[0]!r}?" if close else "")
