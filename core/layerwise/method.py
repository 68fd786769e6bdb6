"""The ``layerwise`` and ``full`` methods: choose base parameters to train in full.

Neither installs a delta layer. They record the chosen base parameter names in the
adapter's ``train_full`` set, which :func:`scalpel.core.delta.refresh_trainable` turns
into ``requires_grad`` and :func:`scalpel.core.save_adapter` saves as full tensors
(``scalpel.full.<name>``); like every adapter, theirs also carries the running statistics
of the model's normalisation layers (see :func:`scalpel.core.delta.norm_statistics`).
Merging is a no-op on the weights (training already changed the chosen tensors in place).
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import nn

from scalpel.core.delta import AdapterRecord, adapter_of, base_name, load_norm_statistics, state_of
from scalpel.core.errors import ConfigError
from scalpel.core.layerwise.blocks import block_map
from scalpel.core.layerwise.config import FullConfig, LayerwiseConfig
from scalpel.core.layerwise.rgn import relative_gradient_norms, top_blocks
from scalpel.core.methods import Method, register_method

#: Normalisation layers whose affine ``norm=True`` trains (plus any class named *Norm).
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_TYPES) or type(module).__name__.endswith(("Norm", "Norm1d", "Norm2d", "Norm3d"))


def norm_parameter_names(model: nn.Module) -> set[str]:
    """Base names of the affine parameters of every normalisation layer."""
    names = set()
    for mod_name, module in model.named_modules():
        if is_norm(module) and adapter_of(mod_name + ".x") is None:
            for p_name, _ in module.named_parameters(recurse=False):
                names.add(base_name(f"{mod_name}.{p_name}" if mod_name else p_name))
    return names


def select_parameters(model: nn.Module, config: LayerwiseConfig, data: Any = None) -> tuple[set[str], list[str]]:
    """Base parameter names ``config`` trains on ``model``, and the block names chosen.

    Raises:
        ConfigError: a selection names no block, or the selection trains nothing.
    """
    bm = block_map(model, config.block_map)
    chosen = bm.select(config.blocks) if config.blocks else []
    names = [b.name for b in chosen]
    if config.rgn_top_k:
        exclude = {"head"} if config.train_head and bm.head else set()
        rgn = relative_gradient_norms(model, data, block_map=bm, num_batches=config.rgn_batches)
        names += [n for n in top_blocks(rgn, config.rgn_top_k, exclude=exclude | set(names)) if n not in names]
    groups = {b: [base_name(n) for n, _ in members if adapter_of(n) is None] for b, members in bm.assign(model).items()}
    everything = {n for members in groups.values() for n in members}
    scope = {n for b in names for n in groups[b]} if names else (everything if config.bitfit or config.norm else set())
    selected = scope
    if config.bitfit or config.norm:  # only biases / norm affines inside the scope
        norms = norm_parameter_names(model) if config.norm else set()
        selected = {n for n in scope if (config.bitfit and n.rsplit(".", 1)[-1] == "bias") or n in norms}
    if config.train_head and bm.head:
        selected |= set(groups[bm.head.name])
    if not selected:
        raise ConfigError("LayerwiseConfig", [f"the selection trains no parameter of this model; its block map:\n{bm}"])
    return selected, names


def apply_layerwise(model: nn.Module, config: LayerwiseConfig, *, adapter_name: str, data: Any = None) -> nn.Module:
    """Mark the selected base parameters as trained in full by adapter ``adapter_name``."""
    selected, _ = select_parameters(model, config, data)
    state_of(model).adapters.setdefault(adapter_name, AdapterRecord()).train_full.update(selected)
    return model


def apply_full(model: nn.Module, config: FullConfig, *, adapter_name: str, data: Any = None) -> nn.Module:
    """Mark every base parameter (but ``config.exclude`` matches) as trained in full."""
    exclude = re.compile(config.exclude) if config.exclude else None
    names = {base_name(n) for n, _ in model.named_parameters() if adapter_of(n) is None}
    names = {n for n in names if not (exclude and exclude.search(n))}
    if not names:
        raise ConfigError("FullConfig", [f"exclude {config.exclude!r} excludes every parameter"])
    state_of(model).adapters.setdefault(adapter_name, AdapterRecord()).train_full.update(names)
    return model


def _describe(config: Any, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    full = {k: v for k, v in tensors.items() if k.startswith("scalpel.full.")}
    return {"trained_tensors": len(full), "trained_parameters": sum(v.numel() for v in full.values())}


def _layerwise_state(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    return {}  # the chosen tensors (scalpel.full.*) and norm statistics are saved by artifacts for every method


def _layerwise_load(model: nn.Module, config: LayerwiseConfig, tensors: dict, adapter_name: str) -> nn.Module:
    load_norm_statistics(model, tensors, "layerwise.stats.")  # adapters written before statistics moved to artifacts
    return model


def _full_state(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    return {}


def _full_load(model: nn.Module, config: FullConfig, tensors: dict, adapter_name: str) -> nn.Module:
    load_norm_statistics(model, tensors, "full.stats.")  # as above
    return model


LAYERWISE = register_method(Method("layerwise", LayerwiseConfig, apply_layerwise, _layerwise_state, _layerwise_load, describe=_describe))
FULL = register_method(Method("full", FullConfig, apply_full, _full_state, _full_load, describe=_describe))


def selected_blocks(model: nn.Module, config: LayerwiseConfig, data: Any = None) -> list[str]:
    """The block names ``config`` chooses on ``model`` (Auto-RGN included)."""
    return select_parameters(model, config, data)[1]

