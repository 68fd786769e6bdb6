"""What ``fit`` sets up before its loop: the Accelerator, the AdamW parameter groups,
gradient checkpointing, and the per-epoch batch iterator (seeded order, exact skipping)."""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import torch
from torch import nn

from scalpel.core.errors import MissingDependencyError, ScalpelError
from scalpel.core.fit.config import FitConfig
from scalpel.core.fit.memory_format import MemoryFormat, choose_memory_format, conv_dims
from scalpel.core.fit.precision import Precision, choose_precision, this_hardware

#: tracker -> packages that provide it (Accelerate falls back to tensorboardX), extra that installs it
_TRACKER_PACKAGES = {"tensorboard": (("tensorboardX", "tensorboard"), "tracking"), "mlflow": (("mlflow",), None)}


def make_accelerator(config: FitConfig):
    """An Accelerator for ``config``: CUDA when present (unless ``device="cpu"``), bf16 autocast
    where the hardware runs it natively by default (see core/fit/precision.py), and a data
    order that is a function of (seed, epoch)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DataLoaderConfiguration

    for tracker in config.trackers:
        packages, extra = _TRACKER_PACKAGES[tracker]
        if not any(importlib.util.find_spec(p) for p in packages):
            raise MissingDependencyError(packages[0], f"FitConfig(trackers=[{tracker!r}])", extra)
    cpu = trains_on_cpu(config)
    precision = run_precision(config).mode
    if cpu and precision == "fp16":
        raise ScalpelError("mixed_precision='fp16' needs a GPU; use 'no' or 'bf16' on CPU")
    state = AcceleratorState._shared_state
    if state and (state.get("_mixed_precision") != precision or state.get("_cpu", cpu) != cpu):
        # A second fit in one process with other precision/device: Accelerate keeps one global
        # state and refuses to change it, so reset the per-run part (not the process group).
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        log_with=list(config.trackers) or None,
        project_dir=config.output_dir,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed),
        step_scheduler_with_optimizer=False,
    )


def trains_on_cpu(config: FitConfig) -> bool:
    return config.device == "cpu" or not torch.cuda.is_available()


def run_precision(config: FitConfig) -> Precision:
    """The precision ``config.mixed_precision`` means on this machine, and why (for the report)."""
    return choose_precision(config.mixed_precision, this_hardware(trains_on_cpu(config)))


def run_memory_format(config: FitConfig, model: nn.Module) -> MemoryFormat:
    """Whether ``config.channels_last`` means channels-last for ``model`` on this machine, and why."""
    return choose_memory_format(config.channels_last, conv_dims(model), trains_on_cpu(config))


def compile_model(model: nn.Module, config: FitConfig, processes: int) -> None:
    """``torch.compile`` the model's forward in place (``nn.Module.compile``), so parameter names,
    checkpoints and saved adapters are the same as without it; refuse where it does not work."""
    problems = []
    if processes > 1:
        problems.append(f"compile runs on one process only (this run has {processes}); leave out --compile under DDP/FSDP")
    if trains_on_cpu(config) and not any(shutil.which(c) for c in ("cc", "gcc", "clang", "g++", "c++")):
        problems.append("compile on CPU needs a C++ compiler (inductor writes C++ kernels) and none is on PATH; "
                        "install gcc or clang, or leave out --compile")
    if config.gradient_checkpointing:
        problems.append("compile with gradient_checkpointing is not supported by fit; choose one of them")
    if problems:
        raise ScalpelError("cannot compile the model: " + "; ".join(problems))
    model.compile()


def build_optimizer(model: nn.Module, param_groups: Sequence[dict[str, Any]] | None, config: FitConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups`` (each ``{"params": [...], "lr_scale": s, ...}``; extra keys
    such as ``"block"`` are kept for hooks), or over all trainable parameters in one group."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    if param_groups is None:
        if not trainable:
            raise ScalpelError(
                "the model has no trainable parameters; apply a method first "
                "(scalpel.core.apply(model, LoraConfig(...))) or pass param_groups"
            )
        param_groups = [{"params": trainable, "lr_scale": 1.0}]
    groups, seen = [], set()
    for i, group in enumerate(param_groups):
        params = list(group.get("params", []))
        if not params:
            raise ScalpelError(f"param_groups[{i}] has no 'params'; every group needs a non-empty list of parameters")
        if any(id(p) in seen for p in params):
            raise ScalpelError(f"param_groups[{i}] repeats a parameter of an earlier group; each parameter may be in one group only")
        seen.update(id(p) for p in params)
        scale = float(group.get("lr_scale", 1.0))
        groups.append({**group, "params": params, "lr_scale": scale, "lr": config.lr * scale})
    left_out = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if left_out:
        raise ScalpelError(
            f"{len(left_out)} trainable parameters are in no param group (e.g. {left_out[0]!r}) and would never "
            "change; add them to a group or set requires_grad=False"
        )
    fused = torch.cuda.is_available() and config.device != "cpu" and all(p.is_floating_point() for g in groups for p in g["params"])
    return torch.optim.AdamW(
        groups, lr=config.lr, betas=tuple(float(b) for b in config.adam_betas), eps=config.adam_eps,
        weight_decay=config.weight_decay, **({"fused": True} if fused else {}),
    )


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on activation recomputation (non-reentrant, so frozen inputs need no grad hack)."""
    # transformers >= 5 renamed it activation_checkpointing_enable (the old name warns)
    kwargs = {"use_reentrant": False}
    if callable(getattr(model, "activation_checkpointing_enable", None)):
        enable, call = model.activation_checkpointing_enable, {"activation_checkpointing_kwargs": kwargs}
    elif callable(getattr(model, "gradient_checkpointing_enable", None)):
        enable, call = model.gradient_checkpointing_enable, {"gradient_checkpointing_kwargs": kwargs}
    else:
        raise ScalpelError(
            f"{type(model).__name__} does not support gradient checkpointing (no gradient_checkpointing_enable "
            "or activation_checkpointing_enable method); set gradient_checkpointing=False or wrap its blocks in "
            "torch.utils.checkpoint yourself"
        )
    try:
        enable(**call)
    except TypeError:
        enable()
    except ValueError as err:  # transformers: "does not support gradient checkpointing"
        raise ScalpelError(f"{err}; set gradient_checkpointing=False") from err
    if getattr(getattr(model, "config", None), "use_cache", False):
        model.config.use_cache = False  # a KV cache is useless in training and clashes with recomputation


def open_epoch(data: Iterable[Any], epoch: int, skip: int, seed: int) -> Iterator[Any]:
    """An iterator over epoch ``epoch`` of ``data`` that starts after ``skip`` batches.

    The order depends only on (seed, epoch): Accelerate's seedable sampler reshuffles with
    ``seed + epoch``. Creating a DataLoader iterator draws a worker base seed from torch's
    global generator, so that happens under a forked generator seeded by (seed, epoch):
    otherwise a resumed run, opening its iterator mid-epoch, would draw at another point
    of the global stream than the uninterrupted run and its dropout masks would differ.
    """
    if hasattr(data, "set_epoch"):
        data.set_epoch(epoch)
    # On several processes Accelerate wraps a custom batch sampler (core/batching.py) in a
    # BatchSamplerShard, and its set_epoch does not reach it.
    wrapped = getattr(getattr(data, "batch_sampler", None), "batch_sampler", None)
    if hasattr(wrapped, "set_epoch"):
        wrapped.set_epoch(epoch)
    source: Iterable[Any] = data
    if skip and _is_accelerate_loader(data):
        from accelerate import skip_first_batches

        source, skip = skip_first_batches(data, skip), 0  # skips indices, loads nothing
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed((seed * 1_000_003 + epoch) % (2**63))
        iterator = islice(iter(source), skip, None)
        first = next(iterator, _END)
    if first is _END:
        return iter(())
    return _chain(first, iterator)


def _chain(first: Any, rest: Iterator[Any]) -> Iterator[Any]:
    yield first
    yield from rest


_END = object()


def _is_accelerate_loader(data: Any) -> bool:
    from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard

    return isinstance(data, (DataLoaderShard, DataLoaderDispatcher))


def on_device(batches: Iterable[Any], device: torch.device) -> Iterator[Any]:
    from accelerate.utils import send_to_device

    for batch in batches:
        yield send_to_device(batch, device)


def samples_in(batch: Any) -> int:
    """Leading dimension of the first tensor in ``batch`` (1 if it holds none)."""
    from accelerate.utils import find_batch_size

    try:
        return int(find_batch_size(batch) or 1)
    except (TypeError, ValueError, AttributeError):
        return 1


def same_on_all_ranks(accelerator, action: Callable[[], None]) -> None:
    """Run ``action`` on the main process only; if it raises a ScalpelError, raise it on every
    process (otherwise the other ranks would wait forever in the next collective)."""
    error = None
    if accelerator.is_main_process:
        try:
            action()
        except ScalpelError as err:
            error = err
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        text = broadcast_object_list([str(error) if error else None])[0]
        if text and error is None:
            raise ScalpelError(text)
    if error is not None:
        raise error
