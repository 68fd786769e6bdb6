"""Sparse fine-tuning as a Scalpel method: find the targets, score, select, wrap; save,
load and describe the index/value deltas."""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor, nn

from scalpel.core.delta import DeltaLayer, _replace, adapter_of, base_name, state_of
from scalpel.core.errors import AdapterError, BaseModelMismatchError, ScalpelError, TargetNotFoundError
from scalpel.core.methods import Method, register_method
from scalpel.core.sparse.budget import budget_size, select_indices
from scalpel.core.sparse.config import SparseConfig
from scalpel.core.sparse.layers import SparseDeltaLayer, check_indices
from scalpel.core.sparse.scorers import score_weights

PREFIX = "sparse."
#: nn.MultiheadAttention reads ``out_proj.weight`` directly instead of calling the module,
#: so a wrapper there would be silently ignored.
_NEVER = ("NonDynamicallyQuantizableLinear",)


def weight_modules(model: nn.Module) -> dict[str, tuple[str, nn.Module, nn.Module]]:
    """Every module a sparse delta can adapt, by base name (``.base_layer`` removed):
    ``(current path, module or its SparseDeltaLayer, the plain module)``.

    A weight shared by several modules (tied input and output embeddings) is left out:
    a delta on one of them would change the weight for that module only until merged,
    and for every one of them after, so merged and unmerged models would disagree.
    """
    found: dict[str, tuple[str, nn.Module, nn.Module]] = {}
    uses: dict[int, int] = {}
    inner_of_sparse: set[int] = set()
    for path, module in model.named_modules(remove_duplicate=False):
        if id(module) in inner_of_sparse or adapter_of(f"{path}.weight") is not None:
            continue  # the inside of a sparse wrapper, or another method's per-adapter copy
        if isinstance(module, SparseDeltaLayer):
            inner_of_sparse.add(id(module.base_layer))
            plain = module.base_layer
        elif isinstance(module, DeltaLayer):
            continue  # another method's wrapper: its base_layer comes next
        else:
            plain = module
        weight = getattr(plain, "_parameters", {}).get("weight")
        if weight is None or type(plain).__name__ in _NEVER:
            continue
        uses[id(weight)] = uses.get(id(weight), 0) + 1
        found[base_name(path)] = (path, module, plain)
    return {n: e for n, e in found.items() if uses[id(e[2].weight)] == 1}


def find_targets(model: nn.Module, config: SparseConfig) -> dict[str, tuple[str, nn.Module, nn.Module]]:
    """The modules ``config`` selects, by base name; raises if none match."""
    types = set(config.target_types)
    targets = re.compile(config.targets) if config.targets else None
    exclude = re.compile(config.exclude) if config.exclude else None
    blocks = block_patterns(model, config.blocks) if config.blocks else []
    chosen = {}
    candidates = weight_modules(model)
    for name, entry in candidates.items():
        classes = {c.__name__ for c in type(entry[2]).__mro__}
        if not classes & types:
            continue
        if targets and not targets.search(name):
            continue
        if exclude and exclude.search(name):
            continue
        if blocks and not any(b.search(f"{name}.weight") for b in blocks):
            continue
        chosen[name] = entry
    if not chosen:
        sample = ", ".join(f"{n} ({type(e[2]).__name__})" for n, e in list(candidates.items())[:8])
        raise TargetNotFoundError(
            f"no module matches targets={config.targets!r}, target_types={list(config.target_types)}, "
            f"blocks={list(config.blocks)}, exclude={config.exclude!r} (tied weights are never adapted); "
            f"modules with weights include: {sample}"
        )
    return chosen


def block_patterns(model: nn.Module, selection: tuple[str, ...]) -> list[re.Pattern]:
    """Regexes (searched in parameter names) of the blocks ``selection`` names: resolved by
    the layer-wise block map (``"last 2"``, ``"blocks 3-5"``, ``"encoder.layer.0"``, ``"head"``)
    when the architecture has one, else taken as module-name prefixes."""
    from scalpel.core.layerwise import block_map

    try:
        found = block_map(model)
    except ScalpelError:  # an architecture without a known block map
        return [re.compile(rf"^{re.escape(b)}(\.|$)") for b in selection]
    return [re.compile(b.pattern) for b in found.select(selection)]


def apply_sparse(model: nn.Module, config: SparseConfig, *, adapter_name: str = "default", data: Any = None) -> nn.Module:
    """Score the targeted weights, keep the budget's ``k`` best entries and wrap each
    targeted module in a :class:`SparseDeltaLayer` holding zero-initialised values there."""
    record = state_of(model).adapters.get(adapter_name)
    if record and any(isinstance(c, SparseConfig) for c in record.configs):
        raise ScalpelError(
            f"adapter {adapter_name!r} already has a sparse delta; give one SparseConfig whose targets "
            "cover all the modules, or use another adapter_name"
        )
    targets = find_targets(model, config)
    taken = [n for n, (_, m, _) in targets.items() if isinstance(m, SparseDeltaLayer) and adapter_name in m.adapter_names()]
    if taken:
        raise ScalpelError(f"modules {taken[:3]} already carry a sparse delta of adapter {adapter_name!r}; use another adapter_name")
    weights = {n: plain.weight for n, (_, _, plain) in targets.items()}
    k = budget_size(config.density, config.count, sum(w.numel() for w in weights.values()))
    scores = score_weights(config.scorer, model, weights, data, config)
    chosen = select_indices(scores, k, config.allocation)
    del scores
    for name, (path, module, _) in targets.items():
        layer = module if isinstance(module, SparseDeltaLayer) else SparseDeltaLayer(module)
        layer.add_adapter(adapter_name, chosen[name])
        if layer is not module:
            model = _replace(model, path, layer)
    return model


def sparse_layers(model: nn.Module, adapter_name: str) -> dict[str, SparseDeltaLayer]:
    """The sparse delta layers of one adapter, by base name."""
    return {
        base_name(path): m
        for path, m in model.named_modules()
        if isinstance(m, SparseDeltaLayer) and adapter_name in m.adapter_names()
    }


def sparse_state_dict(model: nn.Module, adapter_name: str) -> dict[str, Tensor]:
    """``sparse.<module>.indices`` (int32 when they fit), ``.values`` and ``.shape`` per layer."""
    tensors = {}
    for name, layer in sparse_layers(model, adapter_name).items():
        indices = layer.indices(adapter_name)
        small = layer.weight.numel() < 2**31
        tensors[f"{PREFIX}{name}.indices"] = indices.to(torch.int32 if small else torch.int64)
        tensors[f"{PREFIX}{name}.values"] = layer.values(adapter_name).detach()
        tensors[f"{PREFIX}{name}.shape"] = torch.tensor(list(layer.weight.shape), dtype=torch.int64)
    return tensors


def load_sparse(model: nn.Module, config: SparseConfig, tensors: dict[str, Tensor], adapter_name: str) -> nn.Module:
    """Rebuild the deltas from saved indices and values; no scoring, no data."""
    names = sorted(k[len(PREFIX) : -len(".indices")] for k in tensors if k.startswith(PREFIX) and k.endswith(".indices"))
    if not names:
        raise AdapterError("the adapter's tensors hold no sparse delta (no 'sparse.*.indices'); save it again")
    modules = weight_modules(model)
    for name in names:
        if name not in modules:
            raise BaseModelMismatchError(f"the sparse adapter adapts module {name!r}, which this model does not have")
        path, module, plain = modules[name]
        shape = tensors.get(f"{PREFIX}{name}.shape")
        if shape is not None and tuple(shape.tolist()) != tuple(plain.weight.shape):
            raise BaseModelMismatchError(
                f"module {name!r} has a weight of shape {tuple(plain.weight.shape)} here but {tuple(shape.tolist())} in the adapter"
            )
        values = tensors.get(f"{PREFIX}{name}.values")
        if values is None:
            raise AdapterError(f"the adapter lacks tensor '{PREFIX}{name}.values'; it is incomplete, save it again")
        indices = tensors[f"{PREFIX}{name}.indices"].to(torch.int64)
        check_indices(indices, plain.weight.numel(), where=f"module {name!r}")
        layer = module if isinstance(module, SparseDeltaLayer) else SparseDeltaLayer(module)
        layer.add_adapter(adapter_name, indices, values)
        if layer is not module:
            model = _replace(model, path, layer)
    return model


def describe_sparse(config: SparseConfig, tensors: dict[str, Tensor]) -> dict[str, Any]:
    """Selected entries and density, overall and per layer, for ``scalpel adapter info``."""
    per_layer, selected, targeted = {}, 0, 0
    for key in sorted(tensors):
        if not (key.startswith(PREFIX) and key.endswith(".indices")):
            continue
        name = key[len(PREFIX) : -len(".indices")]
        k = tensors[key].numel()
        shape = tensors.get(f"{PREFIX}{name}.shape")
        n = int(torch.prod(shape).item()) if shape is not None else 0
        selected, targeted = selected + k, targeted + n
        per_layer[name] = f"{100 * k / max(n, 1):.2f}% ({k:,} of {n:,})"
    return {
        "selected_entries": selected,
        "targeted_entries": targeted,
        "density": f"{100 * selected / max(targeted, 1):.3f}%",
        "density_per_layer": per_layer,
    }


SPARSE = register_method(
    Method(
        name="sparse",
        config_cls=SparseConfig,
        apply=apply_sparse,
        state_dict=sparse_state_dict,
        load=load_sparse,
        describe=describe_sparse,
    )
)
