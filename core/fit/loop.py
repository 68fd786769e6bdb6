"""``fit``: the one training loop every Scalpel pipeline uses, on Hugging Face Accelerate.

    result = fit(model, task, train_loader, eval_loader,
                 FitConfig(output_dir="runs/x", epochs=3, lr=2e-4, eval_every=100),
                 param_groups=llrd_groups, hooks=(lisa,))

The loop knows nothing of domains: a :class:`Task` turns a batch into ``{"loss": ...}``
and computes evaluation metrics. Per optimizer step it does, top to bottom:

1. forward/backward over ``grad_accum_steps`` micro-batches (gradient sync only on the last);
2. refuse a non-finite loss (before the weights change, so the last checkpoint stays good);
3. set each group's learning rate to ``lr_at(step) * group["lr_scale"]``, clip, AdamW step;
4. call every hook's ``after_step(step, model, optimizer)``;
5. log; evaluate every ``eval_every`` steps and at epoch end, keep the best adapter, stop early;
6. checkpoint every ``save_every`` steps (see core/checkpoint.py), keeping the last few.

Device placement, bf16 autocast, DDP/FSDP and data sharding come from Accelerate; run it
under ``accelerate launch`` or ``torchrun`` and the same code trains on many processes.
See docs/training.md.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from scalpel.core.config import config_to_dict
from scalpel.core.errors import DataError, ScalpelError, TrainingError
from scalpel.core.fit.config import FitConfig
from scalpel.core.fit.setup import (
    build_optimizer,
    enable_gradient_checkpointing,
    make_accelerator,
    on_device,
    open_epoch,
    same_on_all_ranks,
    samples_in,
)
from scalpel.core.fit.state import Progress, TrainedState, run_fingerprint
from scalpel.core.run_files import RunDirectory
from scalpel.core.schedules import lr_at, warmup_steps_for

__all__ = ["FitConfig", "FitResult", "Task", "fit"]


@runtime_checkable
class Task(Protocol):
    """What a domain supplies to :func:`fit`."""

    def step(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """One training forward pass; the dict must hold a scalar ``"loss"`` and may hold more
        (``"logits"``, ``"kd_loss"``, ...). ``model`` may be a DDP/FSDP wrapper: call it, and
        reach attributes through ``accelerate.utils.extract_model_from_parallel(model)``."""
        ...

    def evaluate(self, model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
        """Metrics over ``batches``; called in eval mode under ``torch.no_grad()``."""
        ...


@dataclass
class FitResult:
    run_dir: Path
    metrics: dict[str, float]
    """Evaluation metrics of the weights the model holds on return (the best when
    ``load_best_at_end`` restored them); empty without evaluation data."""
    best_metric: float | None
    best_step: int | None
    steps: int
    train_seconds: float
    adapter_dir: Path | None
    final_metrics: dict[str, float] = field(default_factory=dict)
    """Metrics of the last evaluation."""
    stopped_early: bool = False
    train_loss: float | None = None
    """Mean training loss over the last logging window."""


def fit(
    model: nn.Module,
    task: Task,
    train_data: Iterable[Any],
    eval_data: Iterable[Any] | None = None,
    config: FitConfig | None = None,
    *,
    param_groups: Sequence[dict[str, Any]] | None = None,
    hooks: Sequence[Any] = (),
    run_config: dict[str, Any] | None = None,
    adapter_metadata: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` on ``task`` and return where the results are.

    Args:
        model: the model, adapted by any Scalpel method (only parameters with
            ``requires_grad`` or listed in ``param_groups`` are trained and checkpointed).
        task: turns batches into losses and metrics (:class:`Task`).
        train_data: a ``torch.utils.data.DataLoader`` (sharded across processes by
            Accelerate) or any re-iterable with ``len()``, yielding batches.
        eval_data: batches for ``task.evaluate``; every process evaluates all of them.
        config: the :class:`FitConfig`.
        param_groups: ``[{"params": [...], "lr_scale": float, ...}, ...]`` from a method
            (layer-wise LR decay, LoRA+, LISA); default one group of the trainable parameters.
        hooks: objects with ``after_step(step, model, optimizer)`` and optionally
            ``state_dict()`` / ``load_state_dict(state)``, saved in checkpoints.
        run_config: the caller's own config, written to ``config.yaml`` under ``run:``.
        adapter_metadata: keyword arguments for :func:`scalpel.core.save_adapter`
            (``extra``, ``data_fingerprint``, ``base_model``).

    Raises:
        ScalpelError: empty data, a batch the task cannot read, an unwritable
            ``output_dir``, a checkpoint of another run; :class:`TrainingError` for a NaN/inf loss.
    """
    if not isinstance(config, FitConfig):
        raise ScalpelError("fit needs config=FitConfig(output_dir=..., ...)")
    if not callable(getattr(task, "step", None)):
        raise ScalpelError(f"task {type(task).__name__} has no step(model, batch) method; see scalpel.core.fit.Task")
    if eval_data is not None and not callable(getattr(task, "evaluate", None)):
        raise ScalpelError(f"task {type(task).__name__} has no evaluate(model, batches) method but eval data was given")
    accelerator = make_accelerator(config)
    main = accelerator.is_main_process
    run = RunDirectory(config.output_dir)
    same_on_all_ranks(accelerator, lambda: _prepare_run_dir(run, config, run_config))

    from accelerate.utils import set_seed

    set_seed(config.seed)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = build_optimizer(model, param_groups, config)
    trained = TrainedState(model, optimizer)
    fingerprint = run_fingerprint(model, trained.names, config)
    n_batches = _batches_per_epoch(train_data)
    if isinstance(train_data, torch.utils.data.DataLoader):
        model, optimizer, train_data = accelerator.prepare(model, optimizer, train_data)
        n_batches = len(train_data)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
        if accelerator.num_processes > 1 and main:
            warnings.warn(
                f"fit got a {type(train_data).__name__}, not a DataLoader, so every one of the "
                f"{accelerator.num_processes} processes trains on all of its batches; pass a DataLoader to shard them",
                stacklevel=2,
            )
    if n_batches == 0:
        raise DataError("the training data has fewer batches than processes; give it more samples or use fewer processes")
    trained.bind(accelerator, model, optimizer)
    unwrapped, raw_optimizer = trained.model, trained.optimizer
    accum = config.grad_accum_steps
    steps_per_epoch = math.ceil(n_batches / accum)
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    warmup = warmup_steps_for(total_steps, config.warmup_steps, config.warmup_ratio)
    schedule = dict(lr=config.lr, total_steps=total_steps, warmup_steps=warmup, schedule=config.schedule, min_lr_ratio=config.min_lr_ratio)

    progress = Progress()
    if config.resume:
        progress = trained.resume(run, hooks, fingerprint) or progress
    if main:
        run.truncate_metrics(progress.step)
        if progress.step == 0:
            run.metrics_file.unlink(missing_ok=True)
    if config.trackers:
        accelerator.init_trackers(config.run_name or run.root.name, config=_flat(config_to_dict(config)))

    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=progress.step, unit="step", dynamic_ncols=True,
               disable=not (main and config.progress and sys.stderr.isatty()))
    model.train()
    started = time.perf_counter() - progress.train_seconds
    window = _LogWindow()
    eval_model = model if trained.fsdp else unwrapped
    stop = progress.stopped_early  # a resumed run that had already stopped early stays stopped
    try:
        while progress.step < total_steps and not stop:
            batches = open_epoch(train_data, progress.epoch, progress.step_in_epoch * accum, config.seed)
            while progress.step_in_epoch < steps_per_epoch and progress.step < total_steps:
                first = progress.step_in_epoch * accum
                micro = min(accum, n_batches - first)
                loss, samples = _accumulate(accelerator, model, task, batches, micro, first, progress.epoch)
                if not math.isfinite(loss):
                    last = trained.last_checkpoint(run)
                    raise TrainingError(
                        f"the loss is {loss} at step {progress.step + 1} (epoch {progress.epoch}); training stopped before "
                        f"the weights changed. Last good checkpoint: {last or 'none'}. Lower the learning rate, "
                        "enable clipping (max_grad_norm) or check the data and the task's loss"
                    )
                lr = lr_at(progress.step, **schedule)
                for group in raw_optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                grad_norm = None
                if config.max_grad_norm > 0:
                    grad_norm = float(accelerator.clip_grad_norm_(trained.parameters, config.max_grad_norm))
                    if not math.isfinite(grad_norm) and accelerator.scaler is None:  # fp16's scaler skips such steps itself
                        raise TrainingError(
                            f"the gradient norm is {grad_norm} at step {progress.step + 1} with a finite loss; training "
                            f"stopped before the weights changed. Last good checkpoint: {trained.last_checkpoint(run) or 'none'}. "
                            "Lower the learning rate or check the model for overflowing activations"
                        )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                progress.step += 1
                progress.step_in_epoch += 1
                for hook in hooks:
                    hook.after_step(progress.step, unwrapped, raw_optimizer)

                window.add(loss, samples * accelerator.num_processes)
                progress.samples += samples * accelerator.num_processes
                progress.train_seconds = time.perf_counter() - started
                bar.update(1)
                if progress.step % config.log_every == 0 or progress.step == total_steps:
                    record = window.record(progress.step, progress.epoch, lr, grad_norm)
                    progress.train_loss = record["loss"]
                    bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{lr:.3g}", samples_s=f"{record['samples_per_second']:.1f}")
                    _log(run, accelerator, record, main)

                epoch_end = progress.step_in_epoch == steps_per_epoch
                due = config.eval_every and progress.step % config.eval_every == 0
                if eval_data is not None and (due or (epoch_end and config.eval_at_epoch_end) or progress.step == total_steps):
                    metrics = _evaluate(accelerator, task, eval_model, eval_data)
                    _log(run, accelerator, {"step": progress.step, "epoch": progress.epoch, **{f"eval/{k}": v for k, v in metrics.items()}}, main)
                    stop = progress.record_eval(metrics, config)
                    if progress.best_step == progress.step:
                        trained.save_best(run, metrics, adapter_metadata)
                if epoch_end:
                    progress.epoch += 1
                    progress.step_in_epoch = 0
                if config.save_every and (progress.step % config.save_every == 0 or progress.step == total_steps or stop):
                    trained.save_checkpoint(run, hooks, progress, fingerprint, lr, config.keep_checkpoints)
                if stop or epoch_end:
                    break
    finally:
        bar.close()

    if progress.best_step is None:  # no evaluation (or none gave a finite metric): keep the final weights
        trained.save_best(run, dict(progress.last_metrics), adapter_metadata)
    metrics = dict(progress.last_metrics)
    if config.load_best_at_end and progress.best_step is not None and progress.best_step != progress.step:
        trained.load_best(run)
        metrics = dict(progress.best_metrics)
    result = FitResult(
        run_dir=run.root, metrics=metrics, best_metric=progress.best_metric, best_step=progress.best_step,
        steps=progress.step, train_seconds=progress.train_seconds, adapter_dir=run.adapter,
        final_metrics=dict(progress.last_metrics), stopped_early=progress.stopped_early, train_loss=progress.train_loss,
    )
    if main:
        run.write_report(_report(result, unwrapped, config, progress))
    if config.trackers:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return result


# ----------------------------------------------------------------------------- steps


def _accumulate(accelerator, model, task, batches, micro: int, first: int, epoch: int) -> tuple[float, int]:
    """Forward/backward ``micro`` micro-batches, averaging their gradients; returns the
    mean loss over all processes (one all-reduce per optimizer step) and this process's samples."""
    total = torch.zeros((), device=accelerator.device)
    samples = 0
    for i in range(micro):
        batch = next(batches, None)
        if batch is None:
            raise DataError(
                f"the training data ended after {first + i} batches in epoch {epoch} but len() promised more; "
                "make the data loader's len() match what it yields"
            )
        sync = accelerator.no_sync(model) if i < micro - 1 else nullcontext()
        with sync:
            out = _task_step(task, model, batch, first + i, epoch)
            loss = out["loss"]
            accelerator.backward(loss / micro)
        total += loss.detach().float() / micro
        samples += samples_in(batch)
    return float(accelerator.reduce(total, reduction="mean")), samples


def _task_step(task, model, batch, index: int, epoch: int) -> dict[str, Tensor]:
    try:
        out = task.step(model, batch)
    except (ScalpelError, torch.cuda.OutOfMemoryError):
        raise
    except Exception as err:
        raise DataError(
            f"task {type(task).__name__}.step failed on training batch {index} of epoch {epoch}: "
            f"{type(err).__name__}: {err}. Check that the data loader yields batches this task reads"
        ) from err
    loss = out.get("loss") if isinstance(out, Mapping) else None
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        raise TrainingError(
            f"task {type(task).__name__}.step returned {type(out).__name__} without a scalar 'loss' tensor "
            f"(batch {index} of epoch {epoch}); return {{'loss': tensor, ...}}"
        )
    return out


def _evaluate(accelerator, task, model, eval_data) -> dict[str, float]:
    """Evaluate in eval mode without gradients, without disturbing the training RNG streams;
    the main process's metrics are broadcast so every rank takes the same decisions."""
    seen = {"index": -1}

    def counted():
        for seen["index"], batch in enumerate(on_device(eval_data, accelerator.device)):
            yield batch

    devices = [accelerator.device.index or 0] if accelerator.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        model.eval()
        try:
            with torch.no_grad(), accelerator.autocast():
                metrics = task.evaluate(model, counted())
        except (ScalpelError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as err:
            raise DataError(
                f"task {type(task).__name__}.evaluate failed at evaluation batch {max(seen['index'], 0)}: "
                f"{type(err).__name__}: {err}. Check that the evaluation data yields batches this task reads"
            ) from err
        finally:
            model.train()
    if not isinstance(metrics, Mapping):
        raise TrainingError(f"task {type(task).__name__}.evaluate returned {type(metrics).__name__}, not a dict of metrics")
    metrics = {str(k): float(v) for k, v in metrics.items()}
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([metrics])[0] if accelerator.num_processes > 1 else metrics


# --------------------------------------------------------------------------- helpers


class _LogWindow:
    """Mean loss and samples/s over the steps since the last metrics line."""

    def __init__(self):
        self.start, self.losses, self.samples = time.perf_counter(), [], 0

    def add(self, loss: float, samples: int) -> None:
        self.losses.append(loss)
        self.samples += samples

    def record(self, step: int, epoch: int, lr: float, grad_norm: float | None) -> dict[str, Any]:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        record = {"step": step, "epoch": epoch, "loss": sum(self.losses) / len(self.losses), "lr": lr,
                  "samples_per_second": self.samples / elapsed}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm
        self.__init__()
        return record


def _prepare_run_dir(run: RunDirectory, config: FitConfig, run_config: dict[str, Any] | None) -> None:
    from scalpel.core.checkpoint import list_checkpoints

    run.create()
    if list_checkpoints(run.checkpoints) and not config.resume:
        if not config.overwrite:
            raise ScalpelError(
                f"{run.root} already holds checkpoints of a run; pass resume=True to continue it, "
                "overwrite=True to start again there, or choose a new output_dir"
            )
        import shutil

        shutil.rmtree(run.checkpoints)
        run.checkpoints.mkdir()
    run.write_config(config_to_dict(config), run_config)


def _batches_per_epoch(data: Iterable[Any]) -> int:
    try:
        n = len(data)  # type: ignore[arg-type]
    except TypeError:
        raise DataError(
            f"the training data ({type(data).__name__}) has no len(); fit needs to know the epoch length: "
            "pass a DataLoader over a map-style dataset, a list of batches, or an iterable with __len__"
        ) from None
    if n == 0:
        raise DataError("the training data is empty (0 batches); check the dataset path/filters and the batch size")
    return n


def _log(run: RunDirectory, accelerator, record: dict[str, Any], main: bool) -> None:
    if main:
        run.log(record)
    if accelerator.trackers:
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    """Tracker configs take scalars only."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in d.items()}


def _report(result: FitResult, model: nn.Module, config: FitConfig, progress: Progress) -> list[str]:
    from scalpel.core.delta import parameter_report

    lines = [f"# Training report: {result.run_dir.name}", "",
             f"- {parameter_report(model)}",
             f"- steps: {result.steps} ({progress.epoch} full epochs), samples: {progress.samples:,}",
             f"- training time: {result.train_seconds:.1f} s"
             + (f" ({progress.samples / result.train_seconds:.1f} samples/s)" if result.train_seconds > 0 else ""),
             f"- final training loss: {result.train_loss:.6g}" if result.train_loss is not None else "- final training loss: n/a"]
    if result.best_step is not None:
        lines.append(f"- best {config.metric}: {result.best_metric:.6g} at step {result.best_step}"
                     + (" (stopped early)" if result.stopped_early else ""))
    if result.metrics:
        lines += ["", "| metric | value |", "|---|---|"] + [f"| {k} | {v:.6g} |" for k, v in result.metrics.items()]
    if result.adapter_dir is not None:
        lines += ["", f"Adapter: `{result.adapter_dir}`"]
    return lines

