"""Model builders by name, for ``scalpel adapter merge`` on a base saved as a bare state dict.

A ``.safetensors`` base holds tensors, not the model's code, so merge needs a function that
builds the empty model. Such a function is code, and Scalpel never runs code that a file (or a
flag) names by import path: a ``scalpel.json`` could otherwise name ``"os:system"``. Builders
are looked up by name in :data:`BUILDERS`, which only installed packages fill:

- through the ``scalpel.builders`` entry-point group, e.g. in a domain's ``pyproject.toml``::

      [project.entry-points."scalpel.builders"]
      "vision.torchvision" = "scalpel.vision.models:build_for_adapter"

  (only the entry point named is imported, like pipelines and commands), or
- by calling ``BUILDERS.add(name, builder)`` in code that is already running.

A builder takes the adapter's ``scalpel.json`` (``base_model`` says how to rebuild the
base; ``extra`` holds facts such as class counts) and the adapter's folder (files saved beside
the adapter, such as a tokenizer), and returns the base model. Every pipeline registers one
under its own name and records that name in ``base_model.builder``, so ``scalpel adapter merge
--adapter RUN/adapter`` rebuilds the base (with the weights it was trained on) from the adapter
alone; ``--base FILE.safetensors`` then replaces those weights.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from torch import nn

from scalpel.core.errors import ScalpelError, UnknownNameError
from scalpel.core.registry import Registry

BUILDER_GROUP = "scalpel.builders"

#: ``(adapter meta: the parsed scalpel.json, or {} for a PEFT adapter, adapter folder) -> nn.Module``.
Builder = Callable[[Mapping[str, Any], Path], nn.Module]

BUILDERS: Registry[Builder] = Registry("model builder")


class ImportPathError(ScalpelError):
    """A builder was named by an import path (``module:callable``) rather than a registered name."""


def get_builder(name: str, *, source: str = "--builder") -> Builder:
    """The builder registered as ``name`` (in :data:`BUILDERS` or the ``scalpel.builders`` entry points).

    Args:
        name: a registered name, e.g. ``"vision.torchvision"``.
        source: where the name came from, for the messages (``"--builder"``, ``"scalpel.json of ..."``).

    Raises:
        ImportPathError: ``name`` looks like an import path; such paths are never imported.
        UnknownNameError: nothing is registered under ``name``; the message lists what is.
    """
    if not isinstance(name, str) or ":" in name or "/" in name:
        raise ImportPathError(
            f"{source} names the builder {name!r}, an import path; Scalpel never imports code that a file or flag "
            f"names. Pass a registered builder name instead ({_known()}); a package registers one in the "
            f"{BUILDER_GROUP!r} entry-point group"
        )
    if name not in BUILDERS:
        found = [ep for ep in entry_points(group=BUILDER_GROUP) if ep.name == name]
        if found:  # the installed package's own metadata names the callable, not the file
            BUILDERS.add(name, found[0].load())
    if name not in BUILDERS:
        close = difflib.get_close_matches(name, _names(), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UnknownNameError(f"{source} names the builder {name!r}, which is not registered ({_known()}){hint}")
    return BUILDERS.get(name)


def _names() -> list[str]:
    return sorted(set(BUILDERS.names()) | {ep.name for ep in entry_points(group=BUILDER_GROUP)})


def _known() -> str:
    names = _names()
    return "registered: " + ", ".join(names) if names else f"none is installed: no package registers {BUILDER_GROUP!r}"
