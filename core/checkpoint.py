"""Resumable training checkpoints, safetensors and JSON only.

A checkpoint is a folder ``checkpoints/step-00000010/``::

    trainable.safetensors   trained parameters and persistent buffers, by name
    state.safetensors       every tensor of the nested state below (optimizer moments, RNG states, hook tensors)
    state.json              the nested state with each tensor replaced by {"__tensor__": key}; written last

Nested Python state (an optimizer ``state_dict`` with integer keys and tuples, NumPy's RNG
state with an array, hook states) is split by :func:`flatten` into a JSON structure and a
flat dict of tensors, and put back together by :func:`unflatten`; nothing is pickled.

The folder is written under a temporary name and renamed into place, so a process killed
while saving leaves the previous checkpoint as the newest complete one.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scalpel.core.errors import AdapterError, CheckpointError
from scalpel.core.files import failpoint, fsync_dir, read_json, read_safetensors, write_json, write_safetensors

TRAINABLE_FILE = "trainable.safetensors"
TENSORS_FILE = "state.safetensors"
STATE_FILE = "state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


# ------------------------------------------------------------------ nested state


def flatten(obj: Any, tensors: dict[str, torch.Tensor] | None = None, prefix: str = "t") -> tuple[Any, dict[str, torch.Tensor]]:
    """Split ``obj`` into a JSON-safe structure and the tensors it holds.

    Tensors become ``{"__tensor__": key}``, tuples ``{"__tuple__": [...]}``, NumPy arrays
    ``{"__ndarray__": [...], "dtype": ...}`` and dicts with non-string keys
    ``{"__items__": [[key, value], ...]}`` so :func:`unflatten` restores the exact types.
    """
    tensors = {} if tensors is None else tensors
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = obj.detach().cpu()
        return {"__tensor__": key}, tensors
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype)}, tensors
    if isinstance(obj, np.generic):
        return obj.item(), tensors
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors, prefix)[0] for v in obj]}, tensors
    if isinstance(obj, list):
        return [flatten(v, tensors, prefix)[0] for v in obj], tensors
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: flatten(v, tensors, prefix)[0] for k, v in obj.items()}, tensors
        return {"__items__": [[flatten(k, tensors, prefix)[0], flatten(v, tensors, prefix)[0]] for k, v in obj.items()]}, tensors
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj, tensors
    raise CheckpointError(f"cannot checkpoint a {type(obj).__name__}; state must hold tensors, arrays, numbers, strings, lists and dicts")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten`."""
    if isinstance(obj, list):
        return [unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=obj["dtype"])
    if "__items__" in obj:
        return {_hashable(unflatten(k, tensors)): unflatten(v, tensors) for k, v in obj["__items__"]}
    return {k: unflatten(v, tensors) for k, v in obj.items()}


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


# ---------------------------------------------------------------------- RNG states


def rng_state() -> dict[str, Any]:
    """The state of every random generator training draws from: Python, NumPy, torch CPU and CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in cuda])


# --------------------------------------------------------------------- checkpoints


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def save_checkpoint(root: Path, step: int, trainable: dict[str, torch.Tensor], state: dict[str, Any]) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically and return its folder."""
    final = step_dir(root, step)
    tmp = root / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    structure, tensors = flatten(state)
    write_safetensors(tmp / TRAINABLE_FILE, trainable)
    failpoint("checkpoint")  # half a checkpoint on disk
    write_safetensors(tmp / TENSORS_FILE, tensors)
    write_json(tmp / STATE_FILE, structure)
    if final.exists():  # the same step saved again (e.g. a final save right after a periodic one)
        old = root / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(root)
    return final


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(trainable tensors, nested state) of the checkpoint folder ``path``."""
    try:
        structure = read_json(path / STATE_FILE)
        tensors = read_safetensors(path / TENSORS_FILE)
        trainable = read_safetensors(path / TRAINABLE_FILE)
        return trainable, unflatten(structure, tensors)
    except (AdapterError, KeyError) as err:
        raise CheckpointError(
            f"checkpoint {path} is damaged ({err}); delete that folder to resume from the one before it"
        ) from err


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first (a folder without state.json is skipped)."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [p for _, p in sorted(found)]


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints and any leftover temporary folders."""
    for stale in root.glob(".step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if keep > 0:
        for old in list_checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
