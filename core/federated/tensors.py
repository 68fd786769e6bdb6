"""An adapter as a flat dict of tensors (the keys :func:`scalpel.core.save_adapter` writes), put
back into a live model, and packed into the bytes that travel between a site and the server.

Only these tensors leave a site: no base weight, no data, no optimizer state. The payload is one
safetensors blob (a JSON header of names, dtypes and shapes, then the raw tensor bytes), so a
receiver parses it without unpickling anything.
"""

from __future__ import annotations

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor, nn

from scalpel.core.delta import base_name, load_norm_statistics, norm_statistics, refresh_trainable, state_of
from scalpel.core.errors import BaseModelMismatchError, ScalpelError
from scalpel.core.federated.aggregate import SPARSE_PREFIX, STATS_PREFIX
from scalpel.core.methods import method_for

FULL_PREFIX = "scalpel.full."


def adapter_tensors(model: nn.Module, adapter_name: str | None = None) -> dict[str, Tensor]:
    """The active (or named) adapter's tensors, detached copies on CPU, keyed as in ``adapter_model.safetensors``."""
    state = state_of(model)
    name = adapter_name or state.active
    if name is None or name not in state.adapters:
        raise ScalpelError(f"the model carries no adapter {name!r} to federate; apply a method first (scalpel.core.apply)")
    record = state.adapters[name]
    tensors: dict[str, Tensor] = {}
    for config in record.configs:
        tensors.update(method_for(config).state_dict(model, name))
    params = {base_name(n): p for n, p in model.named_parameters()}
    tensors.update({FULL_PREFIX + n: params[n] for n in sorted(record.train_full) if n in params})
    tensors.update(norm_statistics(model, STATS_PREFIX))
    return {k: v.detach().to("cpu").clone() for k, v in tensors.items()}


def load_tensors(model: nn.Module, tensors: dict[str, Tensor], adapter_name: str | None = None) -> None:
    """Write ``tensors`` (a subset of :func:`adapter_tensors`' keys) into the model's adapter in place.

    A sparse layer whose support changed (the union of the sites' supports) is rebuilt on the
    new indices; everything else is copied into the existing parameters and buffers.

    Raises:
        BaseModelMismatchError: a key the adapter does not have, or a tensor of another shape.
    """
    name = adapter_name or state_of(model).active
    live = _live_tensors(model, name)
    unknown = [k for k in tensors if k not in live and not k.startswith((STATS_PREFIX, SPARSE_PREFIX))]
    if unknown:
        raise BaseModelMismatchError(f"the global adapter holds tensors this site's adapter lacks ({unknown[:3]}); "
                                     "every site must apply the same method to the same base")
    with torch.no_grad():
        for key, value in tensors.items():
            if key in live:
                if live[key].shape != value.shape:
                    raise BaseModelMismatchError(f"tensor {key!r}: global shape {tuple(value.shape)}, this site's "
                                                 f"{tuple(live[key].shape)}; the sites' adapters differ")
                live[key].copy_(value)
        _load_sparse(model, tensors, name)
    load_norm_statistics(model, {k: v for k, v in tensors.items() if k.startswith(STATS_PREFIX)}, STATS_PREFIX)
    refresh_trainable(model)


def _live_tensors(model: nn.Module, name: str) -> dict[str, Tensor]:
    """Keys of :func:`adapter_tensors` -> the model's own parameter (not a copy), where one backs the key."""
    from scalpel.core.lora.peft_format import peft_key

    live: dict[str, Tensor] = {}
    for param_name, param in model.named_parameters():
        key = peft_key(param_name, name)
        if key is not None:
            live[key] = param
    record = state_of(model).adapters[name]
    for param_name, param in model.named_parameters():
        if base_name(param_name) in record.train_full:
            live[FULL_PREFIX + base_name(param_name)] = param
            live.setdefault("base_model.model." + base_name(param_name), param)  # LoRA's copy of a trained bias
    return live


def _load_sparse(model: nn.Module, tensors: dict[str, Tensor], name: str) -> None:
    """Global index/value deltas into the sparse layers. Where the global support differs from the
    site's, the site trains the union of both: the global values on the global entries, its own
    elsewhere (so the entries each site chose reach the server, and the union grows to cover them)."""
    from scalpel.core.sparse.method import sparse_layers

    for module, layer in sparse_layers(model, name).items():
        key = f"{SPARSE_PREFIX}{module}"
        if f"{key}.values" not in tensors:
            continue
        own, values = layer.indices(name).long(), layer.values(name)
        indices = tensors.get(f"{key}.indices", own).long().to(own.device)
        if torch.equal(indices, own):
            values.copy_(tensors[f"{key}.values"])
            continue
        dense = torch.zeros(layer.weight.numel(), dtype=values.dtype, device=values.device)
        dense[own] = values.detach()
        dense[indices] = tensors[f"{key}.values"].to(dense)
        union = torch.unique(torch.cat([own, indices]))
        layer.delete_adapter(name)
        layer.add_adapter(name, union, dense[union])
        layer.active_adapter = name


def freeze_lora_a(model: nn.Module) -> None:
    """FFA-LoRA: stop training every ``lora_A`` factor (call after each ``refresh_trainable``)."""
    for param_name, param in model.named_parameters():
        if ".lora_A." in f".{param_name}." or "lora_embedding_A" in param_name:
            param.requires_grad_(False)


def pack(tensors: dict[str, Tensor]) -> bytes:
    """The bytes a site sends: one safetensors blob."""
    return save_bytes({k: v.detach().to("cpu").contiguous() for k, v in sorted(tensors.items())})


def unpack(blob: bytes) -> dict[str, Tensor]:
    """Parse a blob of :func:`pack`.

    Raises:
        ScalpelError: the bytes are not a safetensors blob (a truncated or foreign message).
    """
    try:
        return dict(load_bytes(bytes(blob)))
    except (SafetensorError, ValueError, OSError) as err:
        raise ScalpelError(f"a federated message is not a safetensors blob ({err}); the peer runs another "
                           "version or the message was cut, restart that site") from err


def tensor_bytes(tensors: dict[str, Tensor]) -> int:
    """Raw bytes of the tensors' data (what an adapter is, without any file header)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())
