"""Typed dataclass configs: validation that reports every problem at once, and
conversion to and from plain dicts (JSON/YAML) and command-line flags."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from scalpel.core.errors import ConfigError

C = TypeVar("C")


def raise_if_problems(what: str, problems: Iterable[str]) -> None:
    """Raise one :class:`ConfigError` naming every problem, or return if there are none."""
    problems = [p for p in problems if p]
    if problems:
        raise ConfigError(what, problems)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON/YAML-safe dict of a dataclass config (tuples become lists, paths strings)."""
    return _plain(dataclasses.asdict(config))


def config_from_dict(cls: type[C], data: dict[str, Any], what: str | None = None) -> C:
    """Build ``cls`` from a dict, refusing unknown keys with the list of known ones."""
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known)
    raise_if_problems(
        what or cls.__name__,
        [f"unknown key {k!r}; known keys: {', '.join(sorted(known))}" for k in unknown],
    )
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(hints.get(k), v) for k, v in data.items()}
    return cls(**values)


def load_yaml_config(cls: type[C], path: str | Path, overrides: dict[str, Any] | None = None) -> C:
    """Read a YAML config file into ``cls``; ``overrides`` win over the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(cls.__name__, [f"config file {path} does not exist"])
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(cls.__name__, [f"{path} is not valid YAML: {err}"]) from err
    if not isinstance(data, dict):
        raise ConfigError(cls.__name__, [f"{path} must hold a mapping of keys to values"])
    data.update(overrides or {})
    return config_from_dict(cls, data, what=f"config {path}")


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--flag`` per dataclass field; help comes from ``field(metadata={"help": ...})``.

    Every flag defaults to ``None`` ("not given"), so :func:`given_arguments` can tell a
    flag the user typed from the dataclass default and a YAML file can fill the rest.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        default = _default_of(f)
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} (default: {default})" if default is not dataclasses.MISSING else help_text
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind in (list, tuple):
            parser.add_argument(flag, dest=f.name, nargs="+", default=None, help=help_text)
        elif kind in (dict,):
            parser.add_argument(flag, dest=f.name, type=yaml.safe_load, default=None, help=help_text + " (YAML)")
        else:
            parser.add_argument(flag, dest=f.name, type=kind if kind in (int, float) else str, default=None, help=help_text)


def given_arguments(namespace: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The config fields the user gave on the command line."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    return {k: v for k, v in vars(namespace).items() if k in names and v is not None}


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def _base_type(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(args[0]) if len(args) == 1 else str
    if origin in (list, tuple, dict):
        return origin
    if origin is typing.Literal:
        return type(typing.get_args(hint)[0])
    if hint is Path:
        return str
    return hint if isinstance(hint, type) else str


def _coerce(hint: Any, value: Any) -> Any:
    if value is None or hint is None:
        return value
    kind = _base_type(hint)
    if kind is tuple and isinstance(value, list):
        return tuple(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value
