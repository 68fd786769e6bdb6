"""Many LoRA adapters in one batch: each sample names its adapter (PEFT's "mixed-adapter
batches"), so N adapters are compared on the same inputs in one forward pass.

    with mixed_adapters(model, ["a", "a", "b", None]):   # one name per sample (None: the base)
        out = model(x)                                     # rows 0-1 use "a", 2 "b", 3 the base

    outputs = compare_adapters(model, ["a", "b"], batch)  # {"a": out_a, "b": out_b}

How: inside the context every :class:`LoraLayer` runs its frozen base once for the whole
batch and then, for each run of consecutive samples that share an adapter, that adapter's
own variant (plain LoRA or DoRA) on those rows only, exactly the arithmetic of a forward
with that adapter active. Every :class:`ModulesToSave` (per-adapter heads) runs each
adapter's copy on its rows. The base weights are read once per batch instead of once per
adapter, which is what makes one mixed pass faster than N passes on small batches
(benchmarks/multi_adapter.py).

What cannot differ per sample is refused, with the reason: an adapter that also carries
another method (sparse, layer-wise) or trains base tensors in full (``train_full``), a
merged adapter, and, in :func:`load_adapters`, adapters whose fully trained tensors differ
(they live in the shared base). Every adapted layer must see the samples along dimension 0
(true of transformers and CNNs; not of detection heads that flatten region proposals, which
run one adapter at a time).

Normalisation statistics may differ: site adapters of a BatchNorm network each carry the
running statistics of their own site. :func:`load_adapters` keeps each adapter's (and the
base's) and, in eval mode, every BatchNorm layer normalises each sample with its adapter's
statistics, exactly as that adapter alone would. Any other layer with differing statistics is
refused, as is a training-mode pass (a batch's statistics would mix the sites).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from scalpel.core.delta import base_name, norm_statistics, state_of
from scalpel.core.errors import ScalpelError
from scalpel.core.lora.config import LoraConfig
from scalpel.core.lora.layers import LoraLayer, ModulesToSave

#: (adapter name or None, first row, end row) for each run of samples sharing an adapter.
Runs = list[tuple[str | None, int, int]]
#: Model attribute set by :func:`load_adapters` when statistics differ:
#: ``{adapter name or None (the base): {buffer base name: tensor}}``.
STATISTICS_ATTR = "_scalpel_adapter_statistics"


def sample_runs(names: Sequence[str | None]) -> Runs:
    """Consecutive samples with the same adapter, as (name, start, end): ``["a", "a", "b"]``
    -> ``[("a", 0, 2), ("b", 2, 3)]``. Grouping samples by adapter gives the fewest runs."""
    runs: Runs = []
    for i, name in enumerate(names):
        if runs and runs[-1][0] == name:
            runs[-1] = (name, runs[-1][1], i + 1)
        else:
            runs.append((name, i, i + 1))
    return runs


def check_mixable(model: nn.Module, names: Sequence[str | None]) -> None:
    """Raise :class:`ScalpelError` unless every named adapter can run per sample."""
    if not names:
        raise ScalpelError("a mixed-adapter batch needs one adapter name (or None for the base) per sample; got none")
    state = state_of(model)
    for name in dict.fromkeys(n for n in names if n is not None):
        record = state.adapters.get(name)
        if record is None:
            raise ScalpelError(f"no adapter named {name!r} on this model; adapters: {sorted(state.adapters) or 'none'}")
        others = sorted({type(c).__name__ for c in record.configs if not isinstance(c, LoraConfig)})
        if others:
            raise ScalpelError(f"adapter {name!r} also uses {', '.join(others)}; mixed-adapter batches support the "
                               "LoRA family only (LoRA, rsLoRA, DoRA): run such adapters one at a time")
        if record.train_full:
            some = ", ".join(sorted(record.train_full)[:3])
            raise ScalpelError(f"adapter {name!r} trains base tensors in full ({some}...), which all samples share; "
                               "give it per-adapter copies with LoraConfig(modules_to_save=...) or run it alone")
    for layer_name, layer in model.named_modules():
        if isinstance(layer, (LoraLayer, ModulesToSave)) and layer.merged:
            raise ScalpelError(f"{layer_name} has a merged adapter; call scalpel.core.unmerge(model) before a mixed batch")


@contextmanager
def mixed_adapters(model: nn.Module, names: Sequence[str | None]) -> Iterator[nn.Module]:
    """Within the block, sample ``i`` of every forward pass runs with adapter ``names[i]``
    (None: the base alone). The active adapter is restored on exit.

    Raises:
        ScalpelError: an unknown or unmixable adapter (see the module doc), or, during the
            forward pass, an adapted layer whose input does not have ``len(names)`` rows.
    """
    names = list(names)
    check_mixable(model, names)
    runs, layers = sample_runs(names), [m for m in model.modules() if isinstance(m, (LoraLayer, ModulesToSave))]
    saved = [layer.active_adapter for layer in layers]
    handles = []
    try:
        for layer in layers:
            layer.active_adapter = None  # the layer's own forward is now its base; the hook adds the rest
            hook = _lora_hook(runs) if isinstance(layer, LoraLayer) else _saved_hook(runs)
            handles.append(layer.register_forward_hook(hook, with_kwargs=True))
        statistics = getattr(model, STATISTICS_ATTR, None) or {}
        for module_name, norm in _norms_with_statistics(model, statistics):
            handles.append(norm.register_forward_hook(_norm_hook(runs, module_name, statistics)))
        yield model
    finally:
        for handle in handles:
            handle.remove()
        for layer, active in zip(layers, saved):
            layer.active_adapter = active


def _check_rows(layer: nn.Module, x: Tensor, runs: Runs) -> None:
    rows = runs[-1][2]
    if x.dim() == 0 or x.shape[0] != rows:
        raise ScalpelError(
            f"a mixed-adapter batch names {rows} samples but a {type(layer).__name__} received an input of shape "
            f"{tuple(x.shape)}; every adapted layer must see the samples along dimension 0 (detection heads that "
            "flatten region proposals do not): run such models one adapter at a time")


def _lora_hook(runs: Runs):
    def hook(layer: LoraLayer, args: tuple, kwargs: dict, result: Tensor) -> Tensor:
        x = args[0]
        _check_rows(layer, x, runs)
        parts = []
        for name, start, end in runs:
            if name is None or name not in layer.specs:  # the base alone, or an adapter that skips this layer
                parts.append(result[start:end])
                continue
            rows = x[start:end]
            A = layer.factors(name)[0]
            if rows.is_floating_point() and rows.dtype != A.dtype:
                rows = rows.to(A.dtype)
            parts.append(layer.specs[name].variant.forward(layer, name, rows, result[start:end]))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    return hook


def _saved_hook(runs: Runs):
    def hook(module: ModulesToSave, args: tuple, kwargs: dict, result: Any) -> Any:
        if not isinstance(result, Tensor):
            raise ScalpelError(f"a per-adapter module ({type(module.base_layer).__name__}) returned "
                               f"{type(result).__name__}, not a tensor; mixed batches need tensor outputs")
        if not args or not isinstance(args[0], Tensor):
            raise ScalpelError("a per-adapter module was called without a tensor input; mixed batches need one")
        _check_rows(module, args[0], runs)
        rows = runs[-1][2]

        def cut(value, start, end):
            return value[start:end] if isinstance(value, Tensor) and value.dim() and value.shape[0] == rows else value

        parts = []
        for name, start, end in runs:
            if name is None or name not in module.modules_to_save:
                parts.append(result[start:end])
            else:
                part_args = [cut(a, start, end) for a in args]
                part_kwargs = {k: cut(v, start, end) for k, v in kwargs.items()}
                parts.append(module.modules_to_save[name](*part_args, **part_kwargs))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    return hook


def _norms_with_statistics(model: nn.Module, statistics: dict) -> list[tuple[str, _BatchNorm]]:
    """The BatchNorm layers whose running statistics differ between the loaded adapters."""
    named = set().union(*(s.keys() for s in statistics.values())) if statistics else set()
    return [(base_name(n), m) for n, m in model.named_modules()
            if isinstance(m, _BatchNorm) and f"{base_name(n)}.running_mean" in named]


def _norm_hook(runs: Runs, module_name: str, statistics: dict):
    mean_key, var_key = f"{module_name}.running_mean", f"{module_name}.running_var"

    def hook(norm: _BatchNorm, args: tuple, result: Tensor) -> Tensor:
        if norm.training:
            raise ScalpelError("the loaded adapters carry different normalisation statistics, so a mixed-adapter "
                               "batch normalises each sample with its own adapter's: call model.eval() first "
                               "(a training-mode batch would mix the statistics of every adapter)")
        x = args[0]
        _check_rows(norm, x, runs)
        parts = []
        for name, start, end in runs:
            own = statistics.get(name) or {}
            mean, var = own.get(mean_key, statistics[None][mean_key]), own.get(var_key, statistics[None][var_key])
            parts.append(F.batch_norm(x[start:end], mean.to(x.device), var.to(x.device), norm.weight, norm.bias,
                                      False, 0.0, norm.eps))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    return hook


# ----------------------------------------------------------------- comparing adapters


def repeat_batch(batch: Any, times: int) -> Any:
    """``batch`` (a tensor, or a mapping of tensors) repeated ``times`` along dimension 0."""
    if isinstance(batch, Tensor):
        return batch.repeat(times, *([1] * (batch.dim() - 1)))
    if isinstance(batch, Mapping):
        return {k: repeat_batch(v, times) if isinstance(v, Tensor) else v for k, v in batch.items()}
    raise ScalpelError(f"cannot repeat a batch of type {type(batch).__name__}; pass a tensor or a dict of tensors")


def split_output(output: Any, parts: int) -> list[Any]:
    """A model output (tensor, mapping or tuple of tensors, e.g. transformers' ``ModelOutput``)
    cut into ``parts`` equal chunks along dimension 0."""
    if isinstance(output, Tensor):
        return list(output.chunk(parts))
    if isinstance(output, Mapping):
        cut = {k: split_output(v, parts) if isinstance(v, Tensor) else [v] * parts for k, v in output.items()}
        return [{k: v[i] for k, v in cut.items()} for i in range(parts)]
    if isinstance(output, tuple):
        cut = [split_output(v, parts) if isinstance(v, Tensor) else [v] * parts for v in output]
        return [tuple(c[i] for c in cut) for i in range(parts)]
    raise ScalpelError(f"cannot split a model output of type {type(output).__name__} by adapter")


def compare_adapters(model: nn.Module, adapters: Sequence[str | None], batch: Any) -> dict[str | None, Any]:
    """The outputs of every adapter in ``adapters`` (None: the base) on the same ``batch``,
    computed in one mixed forward pass: ``{adapter: output}``, each as the model would
    return it for ``batch`` with that adapter active.

    ``batch`` is a tensor (the model's one input) or a mapping of keyword tensors.
    """
    adapters = list(adapters)
    if len(set(adapters)) != len(adapters):
        raise ScalpelError(f"adapters to compare are named more than once: {adapters}")
    rows = batch.shape[0] if isinstance(batch, Tensor) else next(
        (v.shape[0] for v in batch.values() if isinstance(v, Tensor)), 0) if isinstance(batch, Mapping) else 0
    if not rows:
        raise ScalpelError("the batch to compare adapters on is empty or holds no tensor")
    names = [a for a in adapters for _ in range(rows)]
    big = repeat_batch(batch, len(adapters))
    with mixed_adapters(model, names):
        output = model(**big) if isinstance(big, Mapping) else model(big)
    return dict(zip(adapters, split_output(output, len(adapters))))


def load_adapters(model: nn.Module, adapter_dirs: Sequence[str | os.PathLike]) -> list[str]:
    """Load several adapters onto one base for mixed batches; returns their adapter names
    (``adapter0``, ``adapter1``, ...), in order. Each adapter's normalisation statistics are
    kept for mixed batches (see the module doc).

    Raises:
        ScalpelError: two adapters carry different fully trained base tensors (the base holds
            one copy), statistics that differ outside a BatchNorm layer, or one is not mixable.
    """
    from scalpel.core.artifacts import STATS_PREFIX, WEIGHTS_FILE, load_adapter
    from scalpel.core.files import read_safetensors

    statistics: dict[str | None, dict[str, Tensor]] = {None: norm_statistics(model, "")}  # the base's, before any load
    shared: dict[str, tuple[Path, Tensor]] = {}
    names = []
    for i, path in enumerate(adapter_dirs):
        name = f"adapter{i}"
        load_adapter(model, path, adapter_name=name)
        tensors = read_safetensors(Path(path) / WEIGHTS_FILE)
        statistics[name] = {k[len(STATS_PREFIX):]: v for k, v in tensors.items() if k.startswith(STATS_PREFIX)}
        for key, value in tensors.items():
            if not key.startswith("scalpel.full."):
                continue
            first = shared.setdefault(key, (Path(path), value))
            if first[1].shape != value.shape or not torch.equal(first[1], value):
                raise ScalpelError(f"{path} and {first[0]} carry different fully trained tensors ({key.split('.', 2)[-1]}), "
                                   "which all samples of a mixed batch share; compare these adapters one at a time")
        names.append(name)
    check_mixable(model, names)
    _keep_differing_statistics(model, statistics, [Path(p) for p in adapter_dirs])
    return names


def _keep_differing_statistics(model: nn.Module, statistics: dict[str | None, dict[str, Tensor]], paths: list[Path]) -> None:
    """Record the statistics for :func:`mixed_adapters` where they differ; refuse them outside BatchNorm."""
    base = statistics[None]
    differing = {key for own in list(statistics.values())[1:] for key, value in own.items()
                 if key not in base or base[key].shape != value.shape or not torch.equal(base[key], value)}
    if not differing:
        object.__setattr__(model, STATISTICS_ATTR, None)
        return
    batch_norms = {base_name(n) for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    outside = sorted(k for k in differing if k.rsplit(".", 1)[0] not in batch_norms)
    if outside:
        raise ScalpelError(f"the adapters {', '.join(map(str, paths))} carry different normalisation statistics in a "
                           f"layer that is not BatchNorm ({outside[0]}); a mixed batch can only give each sample "
                           "its own BatchNorm statistics: compare these adapters one at a time")
    object.__setattr__(model, STATISTICS_ATTR, statistics)


class AdaptersSideBySide(nn.Module):
    """``model`` with ``adapters`` loaded, seen as one network whose output puts every
    adapter's output side by side along dimension 1 (adapter 0's channels, then adapter 1's,
    ...), computed by one mixed pass per call. Sliding-window or slice-by-slice inference
    then stitches all adapters' predictions at once; ``output.chunk(len(adapters), 1)``
    separates them. The model must return one tensor (logits)."""

    def __init__(self, model: nn.Module, adapters: Sequence[str | None]):
        super().__init__()
        self.model, self.adapters = model, list(adapters)

    def forward(self, x: Tensor) -> Tensor:
        outputs = compare_adapters(self.model, self.adapters, x)
        if not all(isinstance(o, Tensor) for o in outputs.values()):
            raise ScalpelError("AdaptersSideBySide needs a model that returns one tensor; use compare_adapters instead")
        return torch.cat(list(outputs.values()), dim=1)
