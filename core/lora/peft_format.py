"""Hugging Face PEFT compatibility: saved key names, ``adapter_config.json``, and a
reader for LoRA adapters that PEFT wrote.

PEFT saves adapter ``X``'s parameter ``<module>.lora_A.X.weight`` as
``base_model.model.<module>.lora_A.weight`` (the adapter name dropped), embeddings as
``...lora_embedding_A``, DoRA magnitudes as ``...lora_magnitude_vector`` and a full copy
``<module>.modules_to_save.X.<p>`` as ``base_model.model.<module>.<p>`` (checked against
peft 0.21's ``get_peft_model_state_dict``). Our parameter names follow PEFT's, so
the mapping is the same one-segment rewrite both ways.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalpel.core.artifacts import FOLDER_CHECKS
from scalpel.core.delta import adapter_of, base_name, delete_adapter, state_of
from scalpel.core.errors import AdapterError, BaseModelMismatchError
from scalpel.core.files import read_safetensors
from scalpel.core.lora.config import LoraConfig, _first_match
from scalpel.core.lora.model import _trained_biases, apply_lora, lora_layers, saved_modules

PREFIX = "base_model.model."
LORA_MARKERS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector", "modules_to_save")
#: Features of PEFT's LoraConfig this reader cannot reproduce: key -> value meaning "off".
_UNSUPPORTED = {
    "lora_bias": False,
    "use_qalora": False,
    "target_parameters": None,
    "trainable_token_indices": None,
    "alora_invocation_tokens": None,
    "layer_replication": None,
    "use_bdlora": None,
}


def peft_key(param_name: str, adapter_name: str) -> str | None:
    """PEFT's saved key for one of our LoRA parameters of ``adapter_name``, else None."""
    parts = param_name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part in LORA_MARKERS and parts[i + 1] == adapter_name:
            if part == "modules_to_save":  # PEFT saves the full copy under the module's own name
                del parts[i : i + 2]
            else:
                del parts[i + 1]
            return PREFIX + ".".join(parts)
    return None


def lora_config_of(model: nn.Module, adapter_name: str) -> LoraConfig:
    configs = [c for c in state_of(model).adapters[adapter_name].configs if isinstance(c, LoraConfig)]
    return configs[0]


def lora_state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT's key names (factors, magnitudes, saved modules, trained biases)."""
    tensors = {
        key: p.detach()
        for name, p in model.named_parameters()
        if (key := peft_key(name, adapter_name)) is not None
    }
    # Biases are also base parameters the adapter trains in full, which artifacts.py saves as
    # `scalpel.full.<name>`; a copy here keeps the PEFT key without sharing storage.
    biases = _bias_parameters(model, lora_config_of(model, adapter_name), adapter_name)
    tensors.update({PREFIX + n: p.detach().clone() for n, p in biases.items()})
    return tensors


def load_lora(model: nn.Module, config: LoraConfig, tensors: dict[str, torch.Tensor], adapter_name: str) -> nn.Module:
    """Rebuild adapter ``adapter_name`` from saved tensors (the Method's ``load``)."""
    apply_lora(model, config, adapter_name=adapter_name)
    copy_into(model, config, adapter_name, tensors, strict=False)
    return model


def copy_into(
    model: nn.Module,
    config: LoraConfig,
    adapter_name: str,
    tensors: dict[str, torch.Tensor],
    *,
    strict: bool,
    source: str = "the adapter",
) -> None:
    """Copy saved tensors into the adapter's parameters; with ``strict``, every tensor must be used."""
    wanted: dict[str, nn.Parameter] = {}
    for name, p in model.named_parameters():
        key = peft_key(name, adapter_name)
        if key is not None:
            wanted[key] = p
    biases = {PREFIX + n: p for n, p in _bias_parameters(model, config, adapter_name).items()}
    missing = sorted(k for k in wanted if k not in tensors)
    if missing:
        raise AdapterError(
            f"{source} lacks tensor {missing[0]!r} ({len(missing)} missing); it is incomplete or for another model"
        )
    with torch.no_grad():
        for key, p in {**wanted, **{k: v for k, v in biases.items() if k in tensors}}.items():
            value = tensors[key]
            if value.shape != p.shape:
                raise BaseModelMismatchError(
                    f"{source} holds {key!r} with shape {list(value.shape)} but this model needs {list(p.shape)}; "
                    "it was trained on a different base model"
                )
            p.copy_(value)
    if strict:
        extra = sorted(k for k in tensors if k not in wanted and k not in biases)
        if extra:
            raise BaseModelMismatchError(
                f"{source} holds {extra[0]!r} ({len(extra)} unused tensors), which no module of this model takes; "
                "it was trained on a different base model"
            )


def _bias_parameters(model: nn.Module, config: LoraConfig, adapter_name: str) -> dict[str, nn.Parameter]:
    """Base biases the LoRA config of ``adapter_name`` trains, by current parameter name."""
    if config.bias == "none":
        return {}
    names = _trained_biases(model, config, [n for n, _ in lora_layers(model, adapter_name)])
    return {n: p for n, p in model.named_parameters() if adapter_of(n) is None and base_name(n) in names}


def peft_adapter_config(config: LoraConfig, model: nn.Module, adapter_name: str) -> dict[str, Any]:
    """A Hugging Face PEFT ``adapter_config.json`` for this adapter: the exact module
    names it adapts, so PEFT finds the same modules whatever our patterns were."""
    layers = lora_layers(model, adapter_name)
    return {
        "peft_type": "LORA",
        "task_type": None,
        "revision": None,
        "inference_mode": True,
        "r": config.r,
        "lora_alpha": _json_number(config.alpha),
        "lora_dropout": config.dropout,
        "target_modules": [n for n, _ in layers],
        "exclude_modules": None,
        "fan_in_fan_out": any(layer.ops.type_name == "Conv1D" for _, layer in layers),
        "bias": config.bias,
        "use_rslora": config.use_rslora,
        "use_dora": config.use_dora,
        "init_lora_weights": True if config.init == "kaiming" else "gaussian",
        "rank_pattern": dict(config.rank_pattern),
        "alpha_pattern": {k: _json_number(v) for k, v in config.alpha_pattern.items()},
        "modules_to_save": [n for n, _ in saved_modules(model, adapter_name)] or None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "lora_bias": False,
    }


def describe_lora(config: LoraConfig, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Facts for ``scalpel adapter info``: how many modules, which ranks, how many numbers."""
    ranks: dict[str, int] = {}
    for key, value in tensors.items():
        match = re.match(rf"{re.escape(PREFIX)}(.*)\.(lora_A\.weight|lora_embedding_A)$", key)
        if match:
            ranks[match.group(1)] = int(value.shape[0])
    numel = sum(v.numel() for k, v in tensors.items() if k.startswith(PREFIX))
    return {
        "adapted_modules": len(ranks),
        "ranks": sorted(set(ranks.values())),
        "first_modules": list(ranks)[:5],
        "variant": "dora" if config.use_dora else ("rslora" if config.use_rslora else "lora"),
        "lora_tensor_numel": numel,
    }


def lora_rank_problems(adapter_config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> list[str]:
    """A ``FOLDER_CHECKS`` entry: the ranks a LoRA ``adapter_config.json`` states (``r``,
    ``rank_pattern``) against the ranks of the saved ``lora_A`` tensors. PEFT builds layers of
    the stated rank and then fails on the tensors' shapes, far from the cause."""
    if str(adapter_config.get("peft_type", "")).upper() != "LORA":
        return []
    r, pattern = adapter_config.get("r"), adapter_config.get("rank_pattern") or {}
    if not isinstance(r, int) or isinstance(r, bool) or r <= 0:
        return [f"adapter_config.json has r: {r!r}, not a positive integer; it is damaged: save the adapter again"]
    if not isinstance(pattern, dict):
        return [f"adapter_config.json has rank_pattern {pattern!r}, not a mapping; it is damaged: "
                "save the adapter again"]
    wrong = [(module, rank, _first_match(pattern, module, r)) for module, rank in _saved_ranks(tensors).items()]
    wrong = [w for w in wrong if w[1] != w[2]]
    if not wrong:
        return []
    module, rank, stated = wrong[0]
    said = f"r: {stated}" if stated == r else f"rank {stated} (rank_pattern)"
    return [
        f"adapter_config.json says {said} for module {module!r}, but adapter_model.safetensors holds rank-{rank} "
        f"tensors for it ({len(wrong)} module(s) disagree); the config and the weights come from different saves: "
        "save the adapter again (or fix r / rank_pattern in adapter_config.json)"
    ]


def _saved_ranks(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """Module name -> rank of its saved ``lora_A`` (the rows of A: ``[r, in, ...]``)."""
    ranks = {}
    for key, value in tensors.items():
        match = re.match(rf"(?:{re.escape(PREFIX)})?(.*)\.(lora_A\.weight|lora_embedding_A)$", key)
        if match and value.dim() > 0:
            ranks[match.group(1)] = int(value.shape[0])
    return ranks


FOLDER_CHECKS.append(lora_rank_problems)


def read_peft_lora(model: nn.Module, adapter_config: dict[str, Any], path: Path, adapter_name: str) -> nn.Module | None:
    """A ``FOREIGN_READERS`` entry: load a LoRA/rsLoRA/DoRA adapter written by Hugging Face
    PEFT (no ``scalpel.json``), or return None for other PEFT types."""
    if str(adapter_config.get("peft_type", "")).upper() != "LORA":
        return None
    on = [k for k, off in _UNSUPPORTED.items() if adapter_config.get(k, off) not in (off, [], {}, None, False)]
    if on:
        raise AdapterError(f"{path} uses PEFT LoRA features Scalpel does not support: {', '.join(on)}")
    weights = path / "adapter_model.safetensors"
    if not weights.is_file() and (path / "adapter_model.bin").is_file():
        raise AdapterError(
            f"{path} holds adapter_model.bin (pickle), which Scalpel never unpickles; "
            "re-save it with PEFT's save_pretrained(..., safe_serialization=True)"
        )
    tensors = read_safetensors(weights)
    tensors = {(k if k.startswith(PREFIX) else PREFIX + k): v for k, v in tensors.items()}
    modules = [
        m.group(1)
        for k in tensors
        if (m := re.match(rf"{re.escape(PREFIX)}(.*)\.(lora_A\.weight|lora_embedding_A)$", k))
    ]
    if not modules:
        raise AdapterError(f"{weights} holds no LoRA tensors (keys like '{PREFIX}<module>.lora_A.weight')")
    present = {n for n, _ in model.named_modules()}
    absent = [m for m in modules if m not in present]
    if absent:
        raise BaseModelMismatchError(
            f"adapter {path} adapts module {absent[0]!r}, which this model does not have "
            f"({len(absent)} of {len(modules)} modules missing); it was trained on a different base model"
        )
    config = LoraConfig(
        r=int(adapter_config["r"]),
        alpha=float(adapter_config.get("lora_alpha", 8)),
        dropout=float(adapter_config.get("lora_dropout") or 0.0),
        use_rslora=bool(adapter_config.get("use_rslora", False)),
        use_dora=bool(adapter_config.get("use_dora", False)),
        init="gaussian" if adapter_config.get("init_lora_weights") == "gaussian" else "kaiming",
        bias=adapter_config.get("bias") or "none",
        rank_pattern={k: int(v) for k, v in (adapter_config.get("rank_pattern") or {}).items()},
        alpha_pattern={k: float(v) for k, v in (adapter_config.get("alpha_pattern") or {}).items()},
        targets="|".join(re.escape(m) for m in modules),
        modules_to_save=tuple(e for e in adapter_config.get("modules_to_save") or () if _names_module(e, present)),
    )
    from scalpel.core.methods import apply

    model = apply(model, config, adapter_name=adapter_name)
    # PEFT also saves the whole embedding matrix when it targeted e.g. `embed_tokens` (it may
    # have been resized); it belongs to the base layer.
    base_rows = {k: v for k, v in tensors.items() if k.endswith(".base_layer.weight")}
    try:
        _copy_base_weights(model, base_rows, path)
        lora_tensors = {k: v for k, v in tensors.items() if k not in base_rows}
        copy_into(model, config, adapter_name, lora_tensors, strict=True, source=str(path))
    except BaseException:
        delete_adapter(model, adapter_name)
        raise
    return model


def _names_module(entry: str, names: set[str]) -> bool:
    # PEFT lists head names it merely tries (a SEQ_CLS task adds both "classifier" and "score").
    return any(n == entry or n.endswith("." + entry) for n in names)


def _copy_base_weights(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in tensors.items():
            p = params.get(key[len(PREFIX) :])
            if p is None or p.shape != value.shape:
                raise BaseModelMismatchError(f"adapter {path} holds base tensor {key!r} that does not fit this model")
            p.copy_(value)


def _json_number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)

