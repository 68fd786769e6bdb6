"""Methods by name: a :class:`~scalpel.core.options.MethodOptions` becomes method configs.

Every pipeline offers the same menu (``lora``, ``dora``, ``rslora``, ``sparse``,
``layerwise``, ``bitfit``, ``full``). A recipe turns the options plus what the pipeline
knows of its model family (:class:`ModelDefaults`: head, default targets and blocks) into
the configs :func:`scalpel.core.apply` takes. A new method is one recipe registered here
(``RECIPES.add("mine", recipe)``); every pipeline, flag and YAML file then accepts
``method: mine``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from scalpel.core.delta import base_name, refresh_trainable, state_of
from scalpel.core.errors import ConfigError, TargetNotFoundError
from scalpel.core.layerwise import FullConfig, LayerwiseConfig
from scalpel.core.lora import LoraConfig
from scalpel.core.methods import apply
from scalpel.core.options import MethodOptions
from scalpel.core.registry import Registry
from scalpel.core.sparse import SparseConfig


@dataclass(frozen=True)
class ModelDefaults:
    """What a pipeline knows about its model family, used where the options leave a choice open.

    Attributes:
        head: modules trained in full whatever the method (classifier, box predictor, ...).
        targets: module-name regex LoRA and sparse adapt when ``options.targets`` is empty;
            None: every linear layer (LoRA) or every weight (sparse), unless ``target_types``.
        target_types: layer class names LoRA adapts when no regex is given (``Conv3d``, ...).
        blocks: blocks ``layerwise`` trains when ``options.blocks`` is empty.
        block_map: ``(name, regex)`` pairs in depth order for a model whose blocks are not
            found from its structure (layer-wise selection and LR decay); None: found.
    """

    head: tuple[str, ...] = ()
    targets: str | None = None
    target_types: tuple[str, ...] = ()
    blocks: tuple[str, ...] = ("last 2",)
    block_map: tuple[tuple[str, str], ...] | None = None


#: name -> (options, defaults) -> the configs to apply, in order
Recipe = Callable[[MethodOptions, ModelDefaults], list[Any]]
RECIPES: Registry[Recipe] = Registry("method recipe")


def method_configs(options: MethodOptions, defaults: ModelDefaults = ModelDefaults()) -> list[Any]:
    """The method configs ``options`` stands for (refuses an unknown method with the known ones)."""
    return RECIPES.get(options.method)(options, defaults)


def adapt_model(model: nn.Module, options: MethodOptions, defaults: ModelDefaults = ModelDefaults(), *,
                data: Iterable[Any] | None = None, adapter_name: str = "default") -> nn.Module:
    """Apply ``options`` to ``model`` and train ``defaults.head`` in full.

    Args:
        data: batches for data-driven selection (sparse Fisher/gradient scorers, Auto-RGN),
            e.g. ``ScoringData(batches, loss_fn)``.
    """
    configs = method_configs(options, defaults)
    for config in configs:
        model = apply(model, config, data=data, adapter_name=adapter_name)
    if defaults.head and not any(isinstance(c, (LoraConfig, FullConfig)) for c in configs):
        train_in_full(model, defaults.head, adapter_name)  # LoRA keeps per-adapter head copies itself
    return model


def adapt(model: nn.Module, method: str, *, targets: str | None = None, head: Sequence[str] = (),
          target_types: Sequence[str] = (), data: Iterable[Any] | None = None, adapter_name: str = "default",
          **options: Any) -> nn.Module:
    """Keyword shorthand of :func:`adapt_model`: ``adapt(model, "lora", targets="query|value", r=4)``.

    ``options`` are :class:`MethodOptions` fields; an unknown one is a :class:`ConfigError`.
    """
    known = {f.name for f in dataclasses.fields(MethodOptions)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError("method options", [f"unknown option {k!r}; known: {', '.join(sorted(known))}" for k in unknown])
    defaults = ModelDefaults(head=tuple(head), targets=targets, target_types=tuple(target_types))
    return adapt_model(model, MethodOptions(method=method, **options), defaults, data=data, adapter_name=adapter_name)


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


def _targets(options: MethodOptions, defaults: ModelDefaults) -> str | None:
    return options.targets or defaults.targets


def _lora(use_dora: bool = False, use_rslora: bool = False) -> Recipe:
    def recipe(options: MethodOptions, defaults: ModelDefaults) -> list[Any]:
        targets = _targets(options, defaults)
        return [
            LoraConfig(
                r=options.r,
                alpha=float(options.alpha),
                dropout=options.dropout,
                targets=targets if targets or defaults.target_types else "all-linear",
                target_types=tuple(defaults.target_types),
                exclude=options.exclude or None,
                use_dora=use_dora,
                use_rslora=use_rslora,
                modules_to_save=tuple(defaults.head),
            )
        ]

    return recipe


def _sparse(options: MethodOptions, defaults: ModelDefaults) -> list[Any]:
    never = [rf"(^|\.){re.escape(h)}(\.|$)" for h in defaults.head] + ([options.exclude] if options.exclude else [])
    return [SparseConfig(targets=_targets(options, defaults), exclude="|".join(never) or None, density=options.density,
                         scorer=options.scorer, regrow_every=options.regrow_every, num_batches=options.scoring_batches,
                         seed=0)]


def _layerwise(options: MethodOptions, defaults: ModelDefaults) -> list[Any]:
    return [LayerwiseConfig(blocks=options.blocks or defaults.blocks, train_head=False, block_map=defaults.block_map)]


def _bitfit(options: MethodOptions, defaults: ModelDefaults) -> list[Any]:
    return [LayerwiseConfig(bitfit=True, train_head=False, block_map=defaults.block_map)]


def _full(options: MethodOptions, defaults: ModelDefaults) -> list[Any]:
    return [FullConfig(exclude=options.exclude or None)]


RECIPES.add("lora", _lora())
RECIPES.add("dora", _lora(use_dora=True))
RECIPES.add("rslora", _lora(use_rslora=True))
RECIPES.add("sparse", _sparse)
RECIPES.add("layerwise", _layerwise)
RECIPES.add("bitfit", _bitfit)
RECIPES.add("full", _full)
