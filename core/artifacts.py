"""Adapter artifacts: ``adapter_config.json`` + ``adapter_model.safetensors`` (the
Hugging Face PEFT layout) + ``scalpel.json`` (what PEFT has no field for).

``scalpel.json`` records the methods and their configs, the base-model fingerprint (a
hash of parameter names and shapes, with the list itself so a mismatch can be named),
the SHA-256 of the weights file, the data fingerprint, metrics, free-form extras (label
maps, site metadata) and the library version. Nothing here is pickled.

A save writes the whole folder beside the target and swaps it in, so the folder is always
the old adapter or the new one, never a mix; the recorded SHA-256 lets a load refuse weights
that are not the ones ``scalpel.json`` describes (a file replaced by hand or by another program).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
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
from scalpel.core.files import (
    atomic_folder,
    link_or_copy,
    read_bytes,
    read_json,
    recover_folder,
    sha256_digest,
    tensors_from_bytes,
    write_json,
    write_safetensors,
)
from scalpel.core.methods import METHODS, _import_builtin_methods, method_for

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SCALPEL_FILE = "scalpel.json"
#: The pickle weights file PEFT wrote before safetensors (Scalpel never reads it).
PICKLE_WEIGHTS_FILE = "adapter_model.bin"
#: 2: ``weights_sha256`` is recorded (and required); 1: written before it was.
FORMAT_VERSION = 2
#: Key in ``scalpel.json`` of the weights file's ``"sha256:<hex>"``.
WEIGHTS_DIGEST = "weights_sha256"
#: Key prefix of the normalisation layers' running statistics in the weights file.
STATS_PREFIX = "scalpel.stats."

#: Readers of adapters written by other libraries: ``(model, adapter_config, path, name) -> model or None``.
FOREIGN_READERS: list[Any] = []
#: Checks of the weights against ``adapter_config.json``: ``(adapter_config, tensors) -> problems``
#: (e.g. a LoRA rank in the config that the tensors do not have). Methods append theirs.
FOLDER_CHECKS: list[Callable[[dict[str, Any], dict[str, torch.Tensor]], list[str]]] = []


class InconsistentAdapterError(AdapterError):
    """An adapter folder's files are damaged or do not belong together; lists every problem."""

    def __init__(self, path: Path, problems: list[str]):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        count = len(self.problems)
        super().__init__(f"adapter folder {path} is inconsistent or unreadable ({count} problem(s)):\n{lines}")


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
    # The folder is written whole beside `path` and swapped in: a process killed at any point
    # leaves the previous adapter or this one, never new weights under an old scalpel.json.
    with atomic_folder(path) as stage:
        _carry_over(path, stage)
        meta[WEIGHTS_DIGEST] = write_safetensors(stage / WEIGHTS_FILE, tensors, metadata={"format": "pt"})
        write_json(stage / CONFIG_FILE, adapter_config)
        write_json(stage / SCALPEL_FILE, meta)
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
        InconsistentAdapterError: its files do not belong together (the weights are not the
            ones ``scalpel.json`` records, ``adapter_config.json`` is not JSON or disagrees with them).
        BaseModelMismatchError: ``model`` is not the base the adapter was trained on.
    """
    path = Path(path)
    _recover(path)
    if not path.is_dir():
        raise AdapterError(f"adapter directory {path} does not exist; pass the folder holding {CONFIG_FILE}")
    folder = read_adapter_folder(path)
    if folder.meta is None:
        return _load_foreign(model, path, adapter_name or "default")
    meta, tensors = folder.meta, folder.tensors
    name = adapter_name or meta.get("adapter_name", "default")
    state = state_of(model)
    if name in state.adapters:
        raise ScalpelError(f"the model already has an adapter named {name!r}; pass another adapter_name")
    if check_base:
        check_base_matches(state.base_parameters, meta.get("base_model", {}), path)
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
    """What ``scalpel adapter info`` shows: method, targets, size, fingerprint, metrics.

    Raises:
        AdapterError: ``path`` is not an adapter folder.
        InconsistentAdapterError: its files are damaged or disagree (the same checks as a load).
    """
    path = Path(path)
    _recover(path)
    if not path.is_dir():
        raise AdapterError(f"adapter directory {path} does not exist; pass the folder holding {CONFIG_FILE}")
    folder = read_adapter_folder(path)
    if folder.meta is None:
        config = folder.config
        return {"path": str(path), "written_by": "peft", "peft_type": config.get("peft_type"), "config": config}
    meta, tensors = folder.meta, folder.tensors
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
    for entry in meta["methods"]:
        method = METHODS.get(entry["method"])
        if method.describe:
            config = config_from_dict(method.config_cls, entry["config"])
            entry.setdefault("details", method.describe(config, tensors))
    return info


@dataclass(frozen=True)
class AdapterFolder:
    """The checked contents of an adapter folder.

    Attributes:
        meta: ``scalpel.json``; None for a folder another library (PEFT) wrote.
        config: ``adapter_config.json``.
        tensors: the weights (``adapter_model.safetensors``).
    """

    meta: dict[str, Any] | None
    config: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def read_adapter_folder(path: str | os.PathLike) -> AdapterFolder:
    """Read an adapter folder and check its files against each other, reporting every problem.

    Checked: ``scalpel.json`` and ``adapter_config.json`` are JSON objects; the weights file
    exists, is safetensors (not a pickle) and, for a Scalpel adapter, has the SHA-256 that
    ``scalpel.json`` records; and every :data:`FOLDER_CHECKS` entry (LoRA ranks) agrees.

    Raises:
        AdapterError: ``path`` holds neither ``scalpel.json`` nor ``adapter_config.json``.
        InconsistentAdapterError: anything else above.
    """
    path = Path(path)
    if not (path / SCALPEL_FILE).is_file() and not (path / CONFIG_FILE).is_file():
        raise AdapterError(f"{path} holds neither {SCALPEL_FILE} nor {CONFIG_FILE}; it is not an adapter directory")
    problems: list[str] = []
    meta = _json_object(path / SCALPEL_FILE, problems) if (path / SCALPEL_FILE).is_file() else None
    config = _json_object(path / CONFIG_FILE, problems)
    tensors = _weights(path, meta, problems)
    if config is not None and tensors is not None:
        _import_builtin_methods()  # the methods add their FOLDER_CHECKS
        for check in FOLDER_CHECKS:
            problems += check(config, tensors)
    if problems:
        raise InconsistentAdapterError(path, problems)
    return AdapterFolder(meta, config or {}, tensors or {})


def _json_object(file: Path, problems: list[str]) -> dict[str, Any] | None:
    if not file.is_file():
        problems.append(f"{file.name} is missing; the folder is incomplete: save the adapter again")
        return None
    try:
        data = read_json(file)
    except AdapterError as err:
        problems.append(f"{file.name} is not valid JSON ({err.__cause__}); it is damaged: save the adapter again")
        return None
    if not isinstance(data, dict):
        problems.append(f"{file.name} holds a {type(data).__name__}, not a JSON object; it is damaged: "
                        "save the adapter again")
        return None
    return data


def _weights(path: Path, meta: dict[str, Any] | None, problems: list[str]) -> dict[str, torch.Tensor] | None:
    """The weights, read once and checked against the digest in ``scalpel.json``."""
    file = path / WEIGHTS_FILE
    if not file.is_file():
        if (path / PICKLE_WEIGHTS_FILE).is_file():
            problems.append(
                f"the weights are only in {PICKLE_WEIGHTS_FILE}, a pickle, which Scalpel never unpickles, "
                f"so they cannot be read; convert them to {WEIGHTS_FILE} where you trust the file: "
                "open the adapter with PEFT and re-save it with `save_pretrained(DIR, safe_serialization=True)`"
            )
        else:
            problems.append(f"{WEIGHTS_FILE} is missing; the folder is incomplete: save the adapter again")
        return None
    if meta is None:  # a foreign folder: its reader reads the weights
        return _tensors(read_bytes(file), file, problems)
    blob = read_bytes(file)
    recorded = meta.get(WEIGHTS_DIGEST)
    if recorded is None and meta.get("format_version", 1) >= 2:
        problems.append(f"{SCALPEL_FILE} records no {WEIGHTS_DIGEST}; it is damaged: save the adapter again")
    elif recorded is not None and sha256_digest(blob) != recorded:
        problems.append(
            f"{WEIGHTS_FILE} is not the file {SCALPEL_FILE} describes (its SHA-256 is {sha256_digest(blob)[:19]}..., "
            f"{SCALPEL_FILE} records {str(recorded)[:19]}...): the adapter folder is inconsistent, its weights were "
            "changed, truncated or replaced after the save; save the adapter again or re-run the training that wrote it"
        )
        return None
    return _tensors(blob, file, problems)


def _tensors(blob: bytes, file: Path, problems: list[str]) -> dict[str, torch.Tensor] | None:
    try:
        return tensors_from_bytes(blob, file)
    except AdapterError as err:
        problems.append(f"{WEIGHTS_FILE} is not a readable safetensors file ({err.__cause__}); it may be truncated: "
                        "save the adapter again")
        return None


def _carry_over(old: Path, new: Path) -> None:
    """Files beside the adapter's own (a tokenizer saved with it, notes) move into the new folder."""
    if not old.is_dir():
        return
    for entry in old.iterdir():
        if entry.name not in (WEIGHTS_FILE, CONFIG_FILE, SCALPEL_FILE):
            link_or_copy(entry, new / entry.name)


def _recover(path: Path) -> None:
    """Put back the previous adapter if a save was killed mid-swap (best effort: the folder may be read-only)."""
    try:
        recover_folder(path)
    except OSError:
        pass


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
