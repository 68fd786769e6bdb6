"""Teacher outputs cached on disk once, read back every epoch.

When the student trains for several epochs over the same data, the teacher's forward
pass is the same every time; running it once and storing its outputs removes it from
the training cost (Hinton-style offline distillation). The cache is a folder::

    cache/
      index.json                 {"format": 1, "teacher": fingerprint, "names": [...],
                                  "samples": {"<index>": <shard number>}}
      teacher-00000.safetensors  tensors named "<output name>@<sample index>"
      teacher-00001.safetensors  ...

**The batch must carry each sample's index** under ``batch["index"]`` (an int tensor
``(B,)``, or a list of ints): the dataset position of every row, stable across epochs
and shuffles. :class:`IndexedDataset` adds it to any dataset of dicts. Outputs are
stored per sample, so a later batch may group samples differently; sequences are
stored at the length of the batch they were computed in and are zero-padded or
trimmed to the student's length when read (right padding assumed, and the padded
positions are masked by the losses anyway).

Files are safetensors (no pickle), written atomically; shards are memory-mapped when
read. The index records a fingerprint of the teacher's weights, and reading a cache
with another teacher raises :class:`DataError`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn
from torch.utils.data import Dataset

from scalpel.core.errors import DataError
from scalpel.core.files import read_json, write_json, write_safetensors

FORMAT = 1
INDEX_FILE = "index.json"

#: ``forward(teacher, batch) -> {name: (B, ...) tensor}``: what to cache for each batch.
TeacherForward = Callable[[nn.Module, Any], Mapping[str, Tensor]]


class IndexedDataset(Dataset):
    """Wrap a dataset of dicts so every item also holds ``"index"``: its position."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.dataset[i]
        if not isinstance(item, Mapping):
            raise DataError(f"IndexedDataset needs items that are dicts, got {type(item).__name__}; return a dict per sample")
        return {**item, "index": i}


def batch_indices(batch: Any, index_key: str = "index") -> list[int]:
    """The sample indices a batch carries, or a :class:`DataError` saying how to add them."""
    if not isinstance(batch, Mapping) or index_key not in batch:
        raise DataError(
            f"a cached teacher needs every batch to carry the samples' dataset indices under {index_key!r}; "
            "wrap the dataset in scalpel.core.distill.IndexedDataset (or add the key yourself)"
        )
    value = batch[index_key]
    return [int(i) for i in (value.tolist() if isinstance(value, Tensor) else value)]


def teacher_fingerprint(teacher: nn.Module) -> str:
    """A hash of the teacher's parameter names, shapes and per-tensor sums (float64)."""
    digest = hashlib.sha256()
    for name, p in teacher.state_dict().items():
        digest.update(f"{name}:{tuple(p.shape)}:{p.detach().double().sum().item():.10e};".encode())
    return "sha256:" + digest.hexdigest()[:32]


class TeacherCache:
    """Read access to a cache folder written by :meth:`build`."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        if not (self.directory / INDEX_FILE).is_file():
            raise DataError(f"{self.directory} holds no teacher cache ({INDEX_FILE} missing); build it with TeacherCache.build")
        index = read_json(self.directory / INDEX_FILE)
        if index.get("format") != FORMAT:
            raise DataError(f"{self.directory}: teacher cache format {index.get('format')} is not {FORMAT}; rebuild it")
        self.teacher = index["teacher"]
        self.names: list[str] = index["names"]
        self._shard_of: dict[int, int] = {int(k): v for k, v in index["samples"].items()}
        self._handles: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self._shard_of)

    def __contains__(self, index: int) -> bool:
        return int(index) in self._shard_of

    def check_teacher(self, teacher: nn.Module) -> None:
        if teacher_fingerprint(teacher) != self.teacher:
            raise DataError(
                f"the teacher cache at {self.directory} was computed by another teacher (weights differ); "
                "rebuild it with TeacherCache.build(..., overwrite=True)"
            )

    def get(self, indices: Sequence[int], device: torch.device | str = "cpu") -> dict[str, list[Tensor]]:
        """Per-sample outputs: ``name -> [tensor of sample i for i in indices]`` on ``device``."""
        out: dict[str, list[Tensor]] = {name: [] for name in self.names}
        for i in indices:
            shard = self._shard_of.get(int(i))
            if shard is None:
                raise DataError(
                    f"sample {i} is not in the teacher cache at {self.directory} ({len(self)} samples); "
                    "build the cache over the same dataset the student trains on"
                )
            handle = self._open(shard)
            for name in self.names:
                out[name].append(handle.get_tensor(f"{name}@{int(i)}").to(device))
        return out

    def _open(self, shard: int):
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.directory / _shard_name(shard)), framework="pt")
        return self._handles[shard]

    @classmethod
    def build(
        cls,
        directory: str | os.PathLike,
        teacher: nn.Module,
        batches: Iterable[Any],
        forward: TeacherForward,
        *,
        index_key: str = "index",
        dtype: torch.dtype | None = torch.float16,
        shard_size: int = 1024,
        overwrite: bool = False,
    ) -> TeacherCache:
        """Run the teacher once over ``batches`` (eval mode, no grad) and store its outputs.

        Args:
            directory: cache folder (created).
            teacher: the frozen teacher.
            batches: iterable of batches that carry ``batch[index_key]``.
            forward: ``forward(teacher, batch) -> {name: (B, ...) tensor}``.
            dtype: storage dtype of floating outputs (float16 halves the size; None keeps it).
            shard_size: samples per safetensors file.
            overwrite: replace an existing cache.
        """
        directory = Path(directory)
        if (directory / INDEX_FILE).exists() and not overwrite:
            raise DataError(f"{directory} already holds a teacher cache; pass overwrite=True or open it with TeacherCache(...)")
        teacher.eval()
        names: list[str] | None = None
        samples: dict[str, int] = {}
        pending: dict[str, Tensor] = {}
        shard = 0
        with torch.no_grad():
            for batch in batches:
                outputs = _flatten(forward(teacher, batch))
                names = names or sorted(outputs)
                for row, i in enumerate(batch_indices(batch, index_key)):
                    for name in names:
                        value = outputs[name][row]
                        if dtype is not None and value.is_floating_point():
                            value = value.to(dtype)
                        pending[f"{name}@{i}"] = value
                    samples[str(i)] = shard
                    if len(pending) >= shard_size * len(names):
                        write_safetensors(directory / _shard_name(shard), pending)
                        pending, shard = {}, shard + 1
        if names is None:
            raise DataError("no batch to cache the teacher's outputs for: the data is empty")
        if pending:
            write_safetensors(directory / _shard_name(shard), pending)
        write_json(directory / INDEX_FILE, {"format": FORMAT, "teacher": teacher_fingerprint(teacher), "names": names, "samples": samples})
        return cls(directory)


def _shard_name(shard: int) -> str:
    return f"teacher-{shard:05d}.safetensors"


def _flatten(outputs: Mapping[str, Any], prefix: str = "") -> dict[str, Tensor]:
    flat: dict[str, Tensor] = {}
    for key, value in outputs.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, Tensor):
            flat[f"{prefix}{key}"] = value.detach()
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of the cache's key flattening: ``{"a/b": x} -> {"a": {"b": x}}``."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def fit_to(values: Sequence[Tensor], like: Tensor) -> Tensor:
    """Stack per-sample tensors ``(...)`` into ``like``'s shape ``(B, ...)``, zero-padding or
    trimming each dimension (sequences cached at another batch's padded length)."""
    out = like.new_zeros(like.shape)
    for row, v in enumerate(values):
        region = tuple(slice(0, min(a, b)) for a, b in zip(v.shape, like.shape[1:]))
        out[(row, *region)] = v[region].to(out.dtype)
    return out


def stack_padded(values: Sequence[Tensor]) -> Tensor:
    """Stack per-sample tensors, zero-padding every dimension to the largest."""
    shape = [max(s) for s in zip(*(v.shape for v in values))]
    out = values[0].new_zeros((len(values), *shape))
    for row, v in enumerate(values):
        out[(row, *(slice(0, n) for n in v.shape))] = v
    return out
