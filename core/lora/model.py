"""``apply_lora``: find the target modules of a model and wrap them in LoRA delta layers."""

from __future__ import annotations

import re

from torch import nn

from scalpel.core.delta import DELTA_MARKERS, AdapterRecord, state_of
from scalpel.core.errors import ConfigError, ScalpelError, TargetNotFoundError
from scalpel.core.lora.config import ALL_LINEAR, LoraConfig, name_matches
from scalpel.core.lora.layers import LoraLayer, ModulesToSave
from scalpel.core.lora.ops import ops_for

#: Output heads ``all-linear`` leaves alone when the model does not name its output
#: embeddings (PEFT's rule for sequence classifiers, plus common vision/LM names).
HEAD_NAMES = ("classifier", "score", "lm_head", "cls", "head", "fc")


def apply_lora(model: nn.Module, config: LoraConfig, *, adapter_name: str = "default", data=None) -> nn.Module:
    """Wrap every module ``config`` targets in a :class:`LoraLayer` (or add the adapter to an
    existing one) and every ``modules_to_save`` module in a :class:`ModulesToSave`, in place.

    Raises:
        TargetNotFoundError: nothing matched; the message lists modules that exist.
        ConfigError: a matched module cannot be adapted (grouped conv, unsupported type).
    """
    record = state_of(model).adapters.get(adapter_name)
    if record is not None and any(isinstance(c, LoraConfig) for c in record.configs):
        raise ScalpelError(
            f"adapter {adapter_name!r} already has LoRA; pass one LoraConfig with all its targets, "
            "or use another adapter_name"
        )
    saved = resolve_modules_to_save(model, config)
    targets = find_targets(model, config, skip=saved)
    record = state_of(model).adapters.setdefault(adapter_name, AdapterRecord())
    for name in saved:
        module = model.get_submodule(name)
        if not isinstance(module, ModulesToSave):
            module = ModulesToSave(module)
            _set_submodule(model, name, module)
        module.add_adapter(adapter_name)
    for name, module in targets:
        layer = module if isinstance(module, LoraLayer) else LoraLayer(module, ops_for(module))
        r, alpha = config.rank_for(name), config.alpha_for(name)
        layer.add_adapter(
            adapter_name, r=r, alpha=alpha, scaling=config.scaling(r, alpha), dropout=config.dropout,
            dora=config.use_dora, init=config.init,
        )
        if layer is not module:
            _set_submodule(model, name, layer)
    record.train_full.update(_trained_biases(model, config, [n for n, _ in targets]))
    return model


def candidate_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules of the base model by their base names: nothing inside a delta layer's own
    tensors or ``base_layer``, and no child of ``nn.MultiheadAttention`` (it reads its
    ``out_proj.weight`` directly, so a wrapper there would be bypassed)."""
    found, skip_prefixes = [], []
    for name, module in model.named_modules():
        if not name or any(p in DELTA_MARKERS or p == "base_layer" for p in name.split(".")):
            continue
        if any(name.startswith(prefix) for prefix in skip_prefixes):
            continue
        if isinstance(module, nn.MultiheadAttention):
            skip_prefixes.append(name + ".")
        found.append((name, module))
    return found


def base_module(module: nn.Module) -> nn.Module:
    return module.base_layer if isinstance(module, (LoraLayer, ModulesToSave)) else module


def find_targets(model: nn.Module, config: LoraConfig, skip: list[str] = ()) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module ``config`` adapts, in model order."""
    heads = _output_heads(model) if config.targets == ALL_LINEAR else set()
    problems, targets = [], []
    for name, module in candidate_modules(model):
        if any(name == s or name.startswith(s + ".") for s in skip):
            continue
        if config.exclude is not None and name_matches(config.exclude, name):
            continue
        base = base_module(module)
        ops = ops_for(base)
        if config.target_types and (ops is None or ops.type_name not in config.target_types):
            continue
        if config.targets == ALL_LINEAR:
            if ops is None or ops.type_name not in ("Linear", "Conv1D") or name in heads:
                continue
        elif config.targets is not None and not name_matches(config.targets, name):
            continue
        if ops is None:
            if not list(base.children()):  # a leaf the user named that LoRA cannot adapt
                kind = type(base).__name__
                problems.append(f"{name} is a {kind}, which LoRA cannot adapt; adjust targets or exclude")
            continue
        if getattr(base, "groups", 1) > 1:
            problems.append(
                f"{name} is a grouped convolution (groups={base.groups}); a low-rank update across groups "
                f"cannot be merged into it; exclude it, e.g. exclude={re.escape(name)!r}"
            )
            continue
        targets.append((name, module))
    if problems:
        raise ConfigError("LoraConfig targets", problems)
    if not targets:
        raise TargetNotFoundError(_nothing_matched(model, config))
    return targets


def resolve_modules_to_save(model: nn.Module, config: LoraConfig) -> list[str]:
    """Full names of the ``modules_to_save`` modules (PEFT's rule: the name equals the entry
    or ends with ``"." + entry``)."""
    names, missing = [], []
    modules = candidate_modules(model)
    for entry in config.modules_to_save:
        hits = [n for n, _ in modules if n == entry or n.endswith("." + entry)]
        names.extend(h for h in hits if h not in names)
        if not hits:
            missing.append(entry)
    if missing:
        some = ", ".join(n for n, m in modules if not list(m.children()))
        raise TargetNotFoundError(
            f"modules_to_save {missing} matched no module; modules that exist include: {_shorten(some)}"
        )
    return names


def _trained_biases(model: nn.Module, config: LoraConfig, target_names: list[str]) -> set[str]:
    if config.bias == "none":
        return set()
    from scalpel.core.delta import adapter_of, base_name

    biases = {
        base_name(n) for n, _ in model.named_parameters() if adapter_of(n) is None and n.rsplit(".", 1)[-1] == "bias"
    }
    if config.bias == "all":
        return biases
    return {f"{t}.bias" for t in target_names} & biases


def _output_heads(model: nn.Module) -> set[str]:
    heads = set()
    get_out = getattr(model, "get_output_embeddings", None)
    output = get_out() if callable(get_out) else None
    for name, module in model.named_modules():
        if output is not None and (module is output or getattr(module, "base_layer", None) is output):
            heads.add(name)
        elif name in HEAD_NAMES and ops_for(base_module(module)) is not None:
            heads.add(name)
    return heads


def _nothing_matched(model: nn.Module, config: LoraConfig) -> str:
    leaves = [
        f"{n} ({type(base_module(m)).__name__})"
        for n, m in candidate_modules(model)
        if ops_for(base_module(m)) is not None
    ]
    what = [f"targets={config.targets!r}"] if config.targets else []
    what += [f"target_types={list(config.target_types)}"] if config.target_types else []
    what += [f"exclude={config.exclude!r}"] if config.exclude else []
    return (
        f"LoRA {' '.join(what)} matched no module of {type(model).__name__}; "
        f"adaptable modules include: {_shorten(', '.join(leaves)) or 'none'}. "
        "A pattern must match a whole module name or a dotted suffix of it (e.g. 'query|value')."
    )


def _shorten(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[:limit].rsplit(", ", 1)[0] + ", ..."


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, (nn.ModuleList, nn.Sequential, nn.ModuleDict)):
        parent._modules[child] = module
    else:
        setattr(parent, child, module)


def lora_layers(model: nn.Module, adapter_name: str) -> list[tuple[str, LoraLayer]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter_name in m.specs]


def saved_modules(model: nn.Module, adapter_name: str) -> list[tuple[str, ModulesToSave]]:
    return [
        (n, m) for n, m in model.named_modules() if isinstance(m, ModulesToSave) and adapter_name in m.modules_to_save
    ]

