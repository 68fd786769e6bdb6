"""Methods by name, for pipelines and the CLI: ``adapt(model, "lora", targets=..., head=[...])``.

Domain pipelines offer the same menu (``lora``, ``dora``, ``rslora``, ``sparse``,
``layerwise``, ``bitfit``, ``full``); this module turns a name plus a few options into
method configs and applies them, with the task head trained in full for every method.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import nn

from scalpel.core.delta import base_name, refresh_trainable, state_of
from scalpel.core.errors import ConfigError, TargetNotFoundError
from scalpel.core.layerwise import FullConfig, LayerwiseConfig
from scalpel.core.lora import LoraConfig
from scalpel.core.methods import apply
from scalpel.core.registry import Registry
from scalpel.core.sparse import SparseConfig

#: name -> (targets, head, options) -> the configs to apply, in order
Recipe = Callable[[str | None, Sequence[str], dict[str, Any]], list[Any]]
RECIPES: Registry[Recipe] = Registry("method recipe")


def adapt(
    model: nn.Module,
    method: str,
    *,
    targets: str | None = None,
    head: Sequence[str] = (),
    data: Iterable[Any] | None = None,
    adapter_name: str = "default",
    **options: Any,
) -> nn.Module:
    """Apply the method called ``method`` to ``model`` and train ``head`` in full.

    Args:
        method: one of :func:`method_names`.
        targets: module-name regex for LoRA and sparse (e.g. ``"query|value"``); None: the
            recipe's default (every linear layer for LoRA, every weight for sparse).
        head: names of modules always trained in full (classifier, box predictor, ...).
        data: batches for data-driven selection (sparse Fisher/gradient scorers, Auto-RGN).
        options: method options: ``r``, ``alpha``, ``dropout`` (LoRA family); ``density``,
            ``scorer``, ``regrow_every`` (sparse); ``blocks`` (layer-wise).
    """
    recipe = RECIPES.get(method)
    configs = recipe(targets, head, dict(options))
    for config in configs:
        model = apply(model, config, data=data, adapter_name=adapter_name)
    if head and not any(isinstance(c, (LoraConfig, FullConfig)) for c in configs):
        train_in_full(model, head, adapter_name)  # LoRA keeps per-adapter head copies itself
    return model


def method_names() -> list[str]:
    return RECIPES.names()


def train_in_full(model: nn.Module, module_names: Sequence[str], adapter_name: str = "default") -> None:
    """Add every parameter of the named modules to what ``adapter_name`` trains in full."""
    found = {
        base_name(f"{name}.{p}" if name else p)
        for name, module in model.named_modules()
        if any(name == m or name.endswith("." + m) for m in module_names)
        for p, _ in module.named_parameters()
    }
    if not found:
        some = [n for n, _ in model.named_modules() if n][-5:]
        raise TargetNotFoundError(f"head modules {list(module_names)} matched nothing; modules include {some}")
    state_of(model).adapters[adapter_name].train_full.update(found)
    refresh_trainable(model)


def _pop(options: dict[str, Any], **defaults: Any) -> dict[str, Any]:
    picked = {k: options.pop(k, v) for k, v in defaults.items()}
    if options:
        raise ConfigError("method options", [f"unknown option {k!r} for this method" for k in sorted(options)])
    return picked


def _lora(use_dora: bool = False, use_rslora: bool = False) -> Recipe:
    def recipe(targets: str | None, head: Sequence[str], options: dict[str, Any]) -> list[Any]:
        o = _pop(options, r=8, alpha=16.0, dropout=0.0, target_types=())
        return [
            LoraConfig(
                r=o["r"],
                alpha=float(o["alpha"]),
                dropout=o["dropout"],
                targets=targets if targets or o["target_types"] else "all-linear",
                target_types=tuple(o["target_types"]),
                use_dora=use_dora,
                use_rslora=use_rslora,
                modules_to_save=tuple(head),
            )
        ]

    return recipe


def _sparse(targets: str | None, head: Sequence[str], options: dict[str, Any]) -> list[Any]:
    o = _pop(options, density=0.01, scorer="fisher", regrow_every=0, allocation="global", num_batches=8)
    exclude = "|".join(rf"(^|\.){re.escape(h)}(\.|$)" for h in head) or None
    return [SparseConfig(targets=targets, exclude=exclude, **o)]


def _layerwise(targets: str | None, head: Sequence[str], options: dict[str, Any]) -> list[Any]:
    o = _pop(options, blocks=("last 2",))
    blocks = (o["blocks"],) if isinstance(o["blocks"], str) else tuple(o["blocks"])
    return [LayerwiseConfig(blocks=blocks, train_head=False)]


def _bitfit(targets: str | None, head: Sequence[str], options: dict[str, Any]) -> list[Any]:
    _pop(options)
    return [LayerwiseConfig(bitfit=True, train_head=False)]


def _full(targets: str | None, head: Sequence[str], options: dict[str, Any]) -> list[Any]:
    _pop(options)
    return [FullConfig()]


RECIPES.add("lora", _lora())
RECIPES.add("dora", _lora(use_dora=True))
RECIPES.add("rslora", _lora(use_rslora=True))
RECIPES.add("sparse", _sparse)
RECIPES.add("layerwise", _layerwise)
RECIPES.add("bitfit", _bitfit)
RECIPES.add("full", _full)
