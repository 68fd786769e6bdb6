"""What every method shares: the adapter state kept on a model, trainability by
parameter name, named adapters (activate, disable, delete), and merge / unmerge.

A method adapts a layer by wrapping it in a *delta layer*: a module that keeps the
original layer, frozen, as ``base_layer`` and its own trainable tensors for each named
adapter under a *delta marker* path segment followed by the adapter name, e.g.
``query.lora_A.default.weight`` or ``dense.sparse_values.site_a``. That naming rule is
what lets one function (:func:`refresh_trainable`) decide trainability for every method,
and lets :func:`base_parameters` see the base model through any number of wrappers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from scalpel.core.errors import BaseModelMismatchError, ScalpelError

STATE_ATTR = "scalpel_state"

#: Path segments under which delta layers keep per-adapter parameters. The segment
#: after a marker is the adapter name.
DELTA_MARKERS: set[str] = set()


def register_delta_marker(*markers: str) -> None:
    """Declare the attribute names under which a method keeps its per-adapter tensors."""
    DELTA_MARKERS.update(markers)


@runtime_checkable
class DeltaLayer(Protocol):
    """A module carrying trainable deltas, one per named adapter, over a frozen layer."""

    base_layer: nn.Module
    active_adapter: str | None  # None: the delta is off and the layer acts as its base
    merged: bool

    def adapter_names(self) -> list[str]: ...

    def delete_adapter(self, name: str) -> None: ...

    def merge(self) -> None:
        """Fold the active adapter into ``base_layer`` so that :meth:`unmerge` restores it bit for bit."""
        ...

    def unmerge(self) -> None: ...


@dataclass
class AdapterRecord:
    """The method configs applied under one adapter name, in order, and the base
    parameters that adapter trains in full (by base name: heads, selected blocks, biases)."""

    configs: list[Any] = field(default_factory=list)
    train_full: set[str] = field(default_factory=set)


@dataclass
class ScalpelState:
    adapters: dict[str, AdapterRecord] = field(default_factory=dict)
    active: str | None = None
    base_parameters: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)


def state_of(model: nn.Module) -> ScalpelState:
    """The adapter state of ``model``, created (recording the base's parameters) on first use."""
    state = getattr(model, STATE_ATTR, None)
    if state is None:
        state = ScalpelState(base_parameters=base_parameters(model))
        object.__setattr__(model, STATE_ATTR, state)  # a plain attribute, not a submodule
    return state


def has_state(model: nn.Module) -> bool:
    return getattr(model, STATE_ATTR, None) is not None


# ----------------------------------------------------------------------------- names


def adapter_of(param_name: str) -> str | None:
    """The adapter a parameter belongs to, or None for a base parameter."""
    parts = param_name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in DELTA_MARKERS:
            return parts[i + 1]
    return None


def base_name(param_name: str) -> str:
    """The name a base parameter had before any delta layer wrapped its module."""
    return ".".join(p for p in param_name.split(".") if p != "base_layer")


def base_parameters(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every base parameter, as in the unadapted model."""
    return [
        (base_name(name), tuple(p.shape))
        for name, p in model.named_parameters(remove_duplicate=False)
        if adapter_of(name) is None
    ]


def fingerprint(parameters: list[tuple[str, tuple[int, ...]]]) -> str:
    """A short hash of parameter names and shapes: equal bases give equal fingerprints."""
    text = "\n".join(f"{n}:{'x'.join(map(str, s))}" for n, s in parameters)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


# ----------------------------------------------------------------------- trainability


def refresh_trainable(model: nn.Module) -> None:
    """Set ``requires_grad`` on every parameter from the adapter state: the one place
    trainability is decided. Trainable = a delta of the active adapter, or a base
    parameter the active adapter trains in full."""
    state = state_of(model)
    record = state.adapters.get(state.active) if state.active else None
    full = record.train_full if record else set()
    for name, param in model.named_parameters():
        owner = adapter_of(name)
        trainable = owner == state.active if owner is not None else base_name(name) in full
        param.requires_grad_(trainable and state.active is not None)


def trainable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """What the optimizer sees, by name."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; totals count base parameters and deltas once each."""
    trainable = total = 0
    for _, p in model.named_parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def parameter_report(model: nn.Module) -> str:
    """E.g. ``trainable 74,498 of 22,788,098 parameters (0.33%)``."""
    trainable, total = count_parameters(model)
    share = 100.0 * trainable / max(total, 1)
    return f"trainable {trainable:,} of {total:,} parameters ({share:.2f}%)"


# --------------------------------------------------------------------- named adapters


def delta_layers(model: nn.Module) -> list[tuple[str, DeltaLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DeltaLayer)]


def set_active_adapter(model: nn.Module, name: str | None) -> None:
    """Make adapter ``name`` the one used in forward and trained (None: base only)."""
    state = state_of(model)
    if name is not None and name not in state.adapters:
        raise ScalpelError(f"no adapter named {name!r} on this model; adapters: {sorted(state.adapters) or 'none'}")
    for _, layer in delta_layers(model):
        layer.active_adapter = name if name in layer.adapter_names() else None
    state.active = name
    refresh_trainable(model)


def adapter_names(model: nn.Module) -> list[str]:
    return list(state_of(model).adapters)


@contextmanager
def disable_adapters(model: nn.Module) -> Iterator[nn.Module]:
    """Run a block of code on the base model alone, e.g. a reference forward pass."""
    layers = delta_layers(model)
    saved = [layer.active_adapter for _, layer in layers]
    if any(layer.merged for _, layer in layers):
        raise ScalpelError("cannot disable adapters while they are merged; call scalpel.core.unmerge(model) first")
    for _, layer in layers:
        layer.active_adapter = None
    try:
        yield model
    finally:
        for (_, layer), active in zip(layers, saved):
            layer.active_adapter = active


def delete_adapter(model: nn.Module, name: str) -> None:
    state = state_of(model)
    if name not in state.adapters:
        raise ScalpelError(f"no adapter named {name!r} to delete; adapters: {sorted(state.adapters) or 'none'}")
    for layer_name, layer in delta_layers(model):
        if name in layer.adapter_names():
            layer.delete_adapter(name)
        if not layer.adapter_names():
            _replace(model, layer_name, layer.base_layer)
    del state.adapters[name]
    set_active_adapter(model, next(iter(state.adapters), None) if state.active == name else state.active)


# ------------------------------------------------------------------------------ merge


def merge(model: nn.Module, *, unload: bool = True) -> nn.Module:
    """Fold the active adapter's deltas into the base weights.

    With ``unload=True`` (default) the delta layers are replaced by their base layers and
    a plain ``nn.Module`` without wrappers or adapter state is returned. With
    ``unload=False`` the wrappers stay and :func:`unmerge` restores the exact base weights.
    """
    layers = delta_layers(model)
    for _, layer in reversed(layers):  # innermost first
        if layer.active_adapter is not None and not layer.merged:
            layer.merge()
    if not unload:
        return model
    for name, layer in reversed(layers):
        model = _replace(model, name, layer.base_layer)
    if has_state(model):
        object.__delattr__(model, STATE_ATTR)
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def unmerge(model: nn.Module) -> nn.Module:
    """Undo :func:`merge` with ``unload=False``: restore the exact base weights."""
    for _, layer in delta_layers(model):
        if layer.merged:
            layer.unmerge()
    return model


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:
        return new
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
    return model


#: Buffers that normalisation layers update in training mode whatever is trainable.
STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def norm_statistics(model: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """Running statistics of every normalisation layer, keyed ``prefix + base buffer name``."""
    return {
        prefix + base_name(name): buf.detach().clone()
        for name, buf in model.named_buffers()
        if name.rsplit(".", 1)[-1] in STAT_BUFFERS and adapter_of(name) is None
    }


def load_norm_statistics(model: nn.Module, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    """Copy the ``prefix``-keyed statistics of :func:`norm_statistics` into ``model``'s buffers.

    Raises:
        BaseModelMismatchError: a statistic names a buffer the model lacks or has another shape.
    """
    buffers = {base_name(n): b for n, b in model.named_buffers() if adapter_of(n) is None}
    missing = []
    with torch.no_grad():
        for key, value in tensors.items():
            if key.startswith(prefix):
                name = key[len(prefix):]
                if name in buffers and buffers[name].shape == value.shape:
                    buffers[name].copy_(value)
                else:
                    missing.append(name)
    if missing:
        raise BaseModelMismatchError(f"the adapter carries statistics of buffers this model lacks: {missing[:3]}")
