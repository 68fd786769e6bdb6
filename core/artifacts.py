"""Adapter artifacts: ``adapter_config.json`` + ``adapter_model.safetensors`` (the
Hugging Face PEFT layout) + ``scalpel.json`` (what PEFT has no field for).

``scalpel.json`` records the methods and their configs, the base-model fingerprint (a
hash of parameter names and shapes, with the list itself so a mismatch can be named),
the data fingerprint, metrics, free-form extras (label maps, site metadata) and the
library version. Nothing here is pickled; every write is atomic.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from pathlib import Path
from typing import Any

from torch import nn

from scalpel.core.config import config_from_dict, config_to_dict
from scalpel.core.delta import (
    AdapterRecord,
    base_parameters,
    count_parameters,
    fingerprint,
    load_norm_statistics,
    norm_statistics,
    set_active_adapter,
    state_of,
)
from scalpel.core.errors import AdapterError, BaseModelMismatchError, ScalpelError
from scalpel.core.files import read_json, read_safetensors, write_json, write_safetensors
from scalpel.core.methods import METHODS, _import_builtin_methods, method_for

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SCALPEL_FILE = "scalpel.json"
FORMAT_VERSION = 1
#: Key prefix of the normalisation layers' running statistics in the weights file.
STATS_PREFIX = "scalpel.stats."

#: Readers of adapters written by other libraries: ``(adapter_config dict) -> method config or None``.
FOREIGN_READERS: list[Any] = []


def save_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    adapter_name: str | None = None,
    metrics: dict[str, Any] | None = None,
    data_fingerprint: str | None = None,
    extra: dict[str, Any] | None = None,
    base_model: dict[str, Any] | None = None,
) -> Path:
    """Write one adapter of ``model`` to directory ``path`` and return the path.

    Args:
        adapter_name: which adapter (default: the active one).
        metrics: final metrics to record (shown by ``scalpel adapter info``).
        data_fingerprint: a hash of the training data (see :func:`fingerprint_files`).
        extra: JSON-safe facts the domain needs at prediction time (label maps, site, ...).
        base_model: how to rebuild the base, e.g. ``{"name_or_path": ..., "class": ...}``.
    """
    state = state_of(model)
    name = adapter_name or state.active
    if name is None or name not in state.adapters:
        raise ScalpelError(f"no adapter {name!r} to save; adapters on this model: {sorted(state.adapters) or 'none'}")
    record = state.adapters[name]
    path = Path(path)

    tensors: dict = {}
    entries = []
    for config in record.configs:
        method = method_for(config)
        own = method.state_dict(model, name)
        clash = set(own) & set(tensors)
        if clash:
            raise ScalpelError(f"two methods of adapter {name!r} save the same tensor {sorted(clash)[0]!r}")
        tensors.update(own)
        entries.append({"method": method.name, "config": config_to_dict(config)})
    if record.train_full:
        params = dict(model.named_parameters())
        from scalpel.core.delta import base_name

        for full_name, p in params.items():
            if base_name(full_name) in record.train_full:
                tensors[f"scalpel.full.{base_name(full_name)}"] = p.detach()
    # BatchNorm-style layers update their running statistics in training mode whatever the
    # method trains, and a model adapted to a shifted domain depends on them (AdaBN, Li et
    # al. 2016): without them a reloaded adapter would not reproduce the fine-tuned model.
    tensors.update(norm_statistics(model, STATS_PREFIX))

    base_model = base_model if base_model is not None else describe_base_model(model)
    trainable, total = count_parameters(model)
    peft = next((method_for(c).peft_config for c in record.configs if method_for(c).peft_config), None)
    adapter_config = peft(record.configs[0], model, name) if peft and len(record.configs) == 1 else {
        "peft_type": "SCALPEL",
        "methods": [e["method"] for e in entries],
    }
    if base_model and "name_or_path" in base_model:
        adapter_config.setdefault("base_model_name_or_path", base_model["name_or_path"])
    meta = {
        "format_version": FORMAT_VERSION,
        "library_version": _library_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "adapter_name": name,
        "methods": entries,
        "train_full": sorted(record.train_full),
        "base_model": {
            **(base_model or {}),
            "fingerprint": fingerprint(state.base_parameters),
            "parameters": [[n, list(s)] for n, s in state.base_parameters],
        },
        "trainable_parameters": trainable,
        "total_parameters": total,
        "data_fingerprint": data_fingerprint,
        "metrics": metrics or {},
        "extra": extra or {},
    }
    path.mkdir(parents=True, exist_ok=True)
    write_safetensors(path / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
    write_json(path / CONFIG_FILE, adapter_config)
    write_json(path / SCALPEL_FILE, meta)  # written last: its presence marks a complete adapter
    return path


def load_adapter(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    adapter_name: str | None = None,
    check_base: bool = True,
) -> nn.Module:
    """Load an adapter written by :func:`save_adapter` (or by Hugging Face PEFT) onto
    ``model``, activate it and return the model.

    Raises:
        AdapterError: the directory or a file in it is missing or damaged.
        BaseModelMismatchError: ``model`` is not the base the adapter was trained on.
    """
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"adapter directory {path} does not exist; pass the folder holding {CONFIG_FILE}")
    if not (path / SCALPEL_FILE).is_file():
        return _load_foreign(model, path, adapter_name or "default")
    meta = read_json(path / SCALPEL_FILE)
    name = adapter_name or meta.get("adapter_name", "default")
    state = state_of(model)
    if name in state.adapters:
        raise ScalpelError(f"the model already has an adapter named {name!r}; pass another adapter_name")
    if check_base:
        check_base_matches(state.base_parameters, meta.get("base_model", {}), path)
    tensors = read_safetensors(path / WEIGHTS_FILE)
    _import_builtin_methods()
    record = AdapterRecord()
    state.adapters[name] = record  # before method.load, so methods may add to train_full
    try:
        for entry in meta["methods"]:
            method = METHODS.get(entry["method"])
            config = config_from_dict(method.config_cls, entry["config"], what=f"{entry['method']} config in {path}")
            model = method.load(model, config, tensors, name)
            record.configs.append(config)
        record.train_full.update(meta.get("train_full", []))
        _load_full_tensors(model, tensors, record.train_full, path)
        load_norm_statistics(model, tensors, STATS_PREFIX)
    except BaseException:
        del state.adapters[name]
        raise
    set_active_adapter(model, name)
    return model


def describe_base_model(model: nn.Module) -> dict[str, Any]:
    """How to rebuild a Hugging Face transformers base (``scalpel adapter merge`` uses it):
    ``{"name_or_path": <dir or hub id>, "class": "transformers.<ModelClass>"}``; ``{}`` otherwise."""
    name_or_path = getattr(getattr(model, "config", None), "_name_or_path", "")
    if not name_or_path or not type(model).__module__.startswith("transformers."):
        return {}
    return {"name_or_path": str(name_or_path), "class": f"transformers.{type(model).__name__}"}


def check_base_matches(current: list[tuple[str, tuple[int, ...]]], recorded: dict[str, Any], path: Path) -> None:
    """Refuse a base whose parameter names/shapes differ from the recorded ones, naming the first difference."""
    if fingerprint(current) == recorded.get("fingerprint"):
        return
    expected = [(n, tuple(s)) for n, s in recorded.get("parameters", [])]
    for (n_have, s_have), (n_want, s_want) in zip(current, expected):
        if (n_have, s_have) != (n_want, s_want):
            detail = (
                f"parameter {n_want!r} has shape {list(s_want)} in the adapter's base but {list(s_have)} here"
                if n_have == n_want
                else f"the adapter's base has parameter {n_want!r} where this model has {n_have!r}"
            )
            break
    else:
        detail = f"the adapter's base has {len(expected)} parameters, this model has {len(current)}"
    base = recorded.get("name_or_path")
    hint = f" (it was trained on {base})" if base else ""
    raise BaseModelMismatchError(f"adapter {path} was trained on a different base model{hint}: {detail}")


def adapter_info(path: str | os.PathLike) -> dict[str, Any]:
    """What ``scalpel adapter info`` shows: method, targets, size, fingerprint, metrics."""
    path = Path(path)
    if not (path / SCALPEL_FILE).is_file():
        config = read_json(path / CONFIG_FILE)
        return {"path": str(path), "written_by": "peft", "peft_type": config.get("peft_type"), "config": config}
    meta = read_json(path / SCALPEL_FILE)
    size = adapter_bytes(path)
    info = {
        "path": str(path),
        "methods": meta["methods"],
        "base_model": {k: v for k, v in meta["base_model"].items() if k != "parameters"},
        "trainable_parameters": meta.get("trainable_parameters"),
        "total_parameters": meta.get("total_parameters"),
        "size_bytes": size,
        "data_fingerprint": meta.get("data_fingerprint"),
        "metrics": meta.get("metrics", {}),
        "extra": meta.get("extra", {}),
        "library_version": meta.get("library_version"),
        "created": meta.get("created"),
    }
    _import_builtin_methods()
    tensors = None
    for entry in meta["methods"]:
        method = METHODS.get(entry["method"])
        if method.describe:
            tensors = tensors if tensors is not None else read_safetensors(path / WEIGHTS_FILE)
            config = config_from_dict(method.config_cls, entry["config"])
            entry.setdefault("details", method.describe(config, tensors))
    return info


def adapter_bytes(path: str | os.PathLike) -> int:
    """Size on disk of an adapter directory: the bytes of the files directly in it."""
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def fingerprint_files(paths: list[str | os.PathLike]) -> str:
    """A hash of files' contents, for the data fingerprint in ``scalpel.json``."""
    digest = hashlib.sha256()
    for p in sorted(Path(p) for p in paths):
        digest.update(p.name.encode())
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()[:32]


def read_adapter_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The parsed ``scalpel.json`` of an adapter directory."""
    return read_json(Path(path) / SCALPEL_FILE)


def _load_full_tensors(model: nn.Module, tensors: dict, names: set[str], path: Path) -> None:
    from scalpel.core.delta import base_name

    params = {base_name(n): p for n, p in model.named_parameters()}
    for name in names:
        key = f"scalpel.full.{name}"
        if key not in tensors:
            raise AdapterError(f"{path / WEIGHTS_FILE} lacks tensor {key!r}; the adapter is incomplete, save it again")
        if name not in params:
            raise BaseModelMismatchError(f"adapter {path} trains parameter {name!r}, which this model does not have")
        params[name].data.copy_(tensors[key])


def _load_foreign(model: nn.Module, path: Path, adapter_name: str) -> nn.Module:
    """Adapters without ``scalpel.json``: ask each registered reader (e.g. PEFT's LoRA)."""
    if not (path / CONFIG_FILE).is_file():
        raise AdapterError(f"{path} holds neither {SCALPEL_FILE} nor {CONFIG_FILE}; it is not an adapter directory")
    config = read_json(path / CONFIG_FILE)
    _import_builtin_methods()
    for reader in FOREIGN_READERS:
        model_or_none = reader(model, config, path, adapter_name)
        if model_or_none is not None:
            return model_or_none
    raise AdapterError(f"{path / CONFIG_FILE} has peft_type {config.get('peft_type')!r}, which Scalpel cannot read")


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("scalpel-peft")
    except PackageNotFoundError:
        return "unknown"
