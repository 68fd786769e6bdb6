"""The method registry and the one entry point every method shares: :func:`apply`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from scalpel.core.delta import AdapterRecord, set_active_adapter, state_of
from scalpel.core.errors import ScalpelError
from scalpel.core.registry import Registry

#: (model, config, tensors, adapter_name) -> model, with the adapter rebuilt from saved tensors
LoadFn = Callable[[nn.Module, Any, dict[str, torch.Tensor], str], nn.Module]


@dataclass(frozen=True)
class Method:
    """How one method plugs into the core.

    Attributes:
        name: registry name, also written to ``scalpel.json`` (``"lora"``, ``"sparse"``, ...).
        config_cls: its frozen dataclass config; ``config_cls.method`` must equal ``name``.
        apply: ``(model, config, *, adapter_name, data) -> model``; installs the method's
            delta layers (and/or records base parameters trained in full) in place.
        state_dict: ``(model, adapter_name) -> tensors`` to save for that adapter; keys are
            the method's own and must not collide with another method's.
        load: rebuilds the adapter on a base model from the saved tensors (no data needed).
        peft_config: optional ``(config, model, adapter_name) -> dict`` written as a Hugging
            Face PEFT ``adapter_config.json``, for methods PEFT can open (the model is passed so
            the config can name the exact modules the adapter changed).
        describe: optional ``(config, tensors) -> dict`` of extra facts for ``adapter info``.
    """

    name: str
    config_cls: type
    apply: Callable[..., nn.Module]
    state_dict: Callable[[nn.Module, str], dict[str, torch.Tensor]]
    load: LoadFn
    peft_config: Callable[[Any, nn.Module, str], dict[str, Any]] | None = None
    describe: Callable[[Any, dict[str, torch.Tensor]], dict[str, Any]] | None = None


METHODS: Registry[Method] = Registry("method")


def register_method(method: Method) -> Method:
    if getattr(method.config_cls, "method", None) != method.name:
        raise ValueError(f"{method.config_cls.__name__}.method must be {method.name!r}")
    METHODS.add(method.name, method)
    return method


def method_for(config: Any) -> Method:
    name = getattr(config, "method", None)
    if name is None:
        raise ScalpelError(f"{type(config).__name__} is not a method config; pass e.g. LoraConfig(...) or SparseConfig(...)")
    _import_builtin_methods()
    return METHODS.get(name)


def apply(model: nn.Module, config: Any, *, data: Iterable[Any] | None = None, adapter_name: str = "default") -> nn.Module:
    """Adapt ``model`` with one method, in place, and return it.

    Calls compose: several methods may be applied under one adapter name (LoRA on
    attention plus a sparse delta on the MLP), and several adapter names may live on one
    model; the last one applied becomes active and is the only one trainable.

    Args:
        model: any ``nn.Module``; its base parameters are frozen unless a method trains them.
        config: a method config, e.g. ``LoraConfig(r=8, targets=r"query|value")``.
        data: batches for methods that score parameters on data (sparse Fisher, Auto-RGN).
        adapter_name: the name to save, activate and delete the adapter by.
    """
    method = method_for(config)
    state = state_of(model)  # records the base parameters before the first method changes them
    model = method.apply(model, config, adapter_name=adapter_name, data=data)
    state.adapters.setdefault(adapter_name, AdapterRecord()).configs.append(config)
    set_active_adapter(model, adapter_name)
    return model


def _import_builtin_methods() -> None:
    """Register the methods shipped with the core (import for their registration side effect)."""
    import importlib

    for module in ("scalpel.core.lora", "scalpel.core.sparse", "scalpel.core.layerwise"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # a method still being written is simply absent
            if err.name != module:
                raise
