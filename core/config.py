"""Typed dataclass configs: validation that reports every problem at once, and
conversion to and from plain dicts (JSON/YAML) and command-line flags."""

from __future__ import annotations

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
        [f"unknown key {k!r}; known keys: {', '.join(sorted(known))}" for k in unknown] + type_problems(cls, data),
    )
    hints = typing.get_type_hints(cls)
    values = {k: _coerce(hints.get(k), v) for k, v in data.items()}
    return cls(**values)


def type_problems(cls: type, data: dict[str, Any], where: str = "") -> list[str]:
    """Every value of ``data`` whose type does not fit its field of ``cls`` (YAML is typed too:
    ``epochs: three`` is refused, not passed on). Unknown keys are not checked here."""
    hints = typing.get_type_hints(cls)
    return [problem for name, value in data.items() if name in hints
            for problem in [_value_problem(f"{where}{name}", hints[name], value)] if problem]


def _value_problem(name: str, hint: Any, value: Any) -> str | None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        problems = [_value_problem(name, a, value) for a in args if a is not type(None)]
        return None if any(p is None for p in problems) else problems[0]
    if origin is typing.Literal:
        return None if value in args else f"{name} must be one of {', '.join(map(repr, args))}, got {value!r}"
    if origin in (tuple, list) or hint in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return f"{name} must be a list, got {type(value).__name__} {value!r}"
        item = args[0] if args else Any
        if item is Any:
            return None
        return next((p for v in value for p in [_value_problem(f"{name} item", item, v)] if p), None)
    if origin is dict or hint is dict:
        return None if isinstance(value, dict) else f"{name} must be a mapping, got {type(value).__name__} {value!r}"
    kind = {float: (int, float), int: (int,), bool: (bool,), str: (str,), Path: (str, Path)}.get(hint)
    if kind is None:
        return None
    if isinstance(value, bool) and hint is not bool:
        return f"{name} must be {hint.__name__}, got a boolean {value!r}"
    return None if isinstance(value, kind) else f"{name} must be {hint.__name__}, got {type(value).__name__} {value!r}"


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
