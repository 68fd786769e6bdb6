"""``fit``: the one training loop every Scalpel pipeline uses, on Hugging Face Accelerate.

    result = fit(model, task, train_loader, eval_loader,
                 FitConfig(output_dir="runs/x", epochs=3, lr=2e-4, eval_every=100),
                 param_groups=llrd_groups, hooks=(lisa,))

The loop knows nothing of domains: a :class:`Task` turns a batch into ``{"loss": ...}``
and computes evaluation metrics. :func:`fit` sets up (:func:`_set_up` returns a :class:`_Run`),
then per optimizer step does, top to bottom:

1. forward/backward over ``grad_accum_steps`` micro-batches (gradient sync only on the last);
2. refuse a non-finite loss (before the weights change, so the last checkpoint stays good);
3. set each group's learning rate to ``lr_at(step) * group["lr_scale"]``, clip, AdamW step;
4. call every hook's ``after_step(step, model, optimizer)``;
5. log; evaluate every ``eval_every`` steps and at epoch end, keep the best adapter, stop early;
6. checkpoint every ``save_every`` steps (see core/checkpoint.py), keeping the last few.

Steps 1-4 are :func:`_train_step`, 5-6 :func:`_after_step`; :func:`_finish` restores the best
weights and writes the report. On a terminal the main process draws a progress bar titled
with the run's name (``run_name``, else the output_dir's folder name).

Device placement, bf16 autocast, DDP/FSDP and data sharding come from Accelerate; run it
under ``accelerate launch`` or ``torchrun`` and the same code trains on many processes.
See docs/training.md.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from scalpel.core.config import config_to_dict
from scalpel.core.errors import DataError, ScalpelError, TrainingError
from scalpel.core.fit.config import FitConfig
from scalpel.core.fit.memory_format import to_channels_last, to_contiguous
from scalpel.core.fit.setup import (
    build_optimizer,
    compile_model,
    enable_gradient_checkpointing,
    make_accelerator,
    on_device,
    open_epoch,
    run_memory_format,
    run_precision,
    same_on_all_ranks,
    samples_in,
)
from scalpel.core.fit.state import Progress, TrainedState, run_fingerprint
from scalpel.core.run_files import RunDirectory
from scalpel.core.schedules import lr_at, warmup_steps_for

if TYPE_CHECKING:
    from accelerate import Accelerator
    from tqdm import tqdm

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
            ``output_dir``, a checkpoint of another run; :class:`TrainingError` for a NaN/inf
            loss or gradient norm (the weights are left as the last good step made them).
    """
    run = _set_up(model, task, train_data, eval_data, config, param_groups, hooks, run_config, adapter_metadata)
    with run.bar:  # closed however the loop ends, an error included
        while run.steps_left():
            batches = run.open_epoch()
            while run.steps_left_in_epoch():
                step = _train_step(run, batches)
                if _after_step(run, step):  # the epoch is over, or early stopping ended the run
                    break
    return _finish(run)


# ----------------------------------------------------------------------------- set-up


@dataclass(frozen=True)
class _Schedule:
    """The run's length in optimizer steps and its learning rate at each step."""

    config: FitConfig
    batches_per_epoch: int
    """On this process, after Accelerate sharded the data."""

    @property
    def accum(self) -> int:
        return self.config.grad_accum_steps

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.batches_per_epoch / self.accum)

    @property
    def total_steps(self) -> int:
        return self.config.max_steps or self.config.epochs * self.steps_per_epoch

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based), before each group's ``lr_scale``."""
        c = self.config
        warmup = warmup_steps_for(self.total_steps, c.warmup_steps, c.warmup_ratio)
        return lr_at(step, lr=c.lr, total_steps=self.total_steps, warmup_steps=warmup, schedule=c.schedule,
                     min_lr_ratio=c.min_lr_ratio)


@dataclass
class _Run:
    """One call of :func:`fit`: what the caller gave, what :func:`_set_up` made of it, and what
    the loop changes from step to step (``progress``, the log window, the bar)."""

    config: FitConfig
    task: Task
    eval_data: Iterable[Any] | None
    hooks: Sequence[Any]
    adapter_metadata: dict[str, Any] | None
    accelerator: Accelerator
    directory: RunDirectory
    model: nn.Module
    """As ``accelerator.prepare`` returned it: a DDP/FSDP wrapper on several processes."""
    optimizer: Any
    """Accelerate's wrapper; ``trained.optimizer`` is the torch optimizer inside it."""
    train_data: Iterable[Any]
    trained: TrainedState
    fingerprint: dict[str, Any]
    schedule: _Schedule
    progress: Progress
    bar: tqdm
    window: _LogWindow
    started: float
    """``time.perf_counter()`` at step 0: earlier than the start of this process for a resumed run."""

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def eval_model(self) -> nn.Module:
        # FSDP shards the weights: only the wrapper can run a forward pass.
        return self.model if self.trained.fsdp else self.trained.model

    def steps_left(self) -> bool:
        """Steps remain and early stopping has not ended the run (a resumed run that had
        already stopped early stays stopped)."""
        return self.progress.step < self.schedule.total_steps and not self.progress.stopped_early

    def steps_left_in_epoch(self) -> bool:
        return self.steps_left() and self.progress.step_in_epoch < self.schedule.steps_per_epoch

    def open_epoch(self) -> Iterator[Any]:
        """The current epoch's batches from where the loop stands in it (mid-epoch after a resume)."""
        skip = self.progress.step_in_epoch * self.schedule.accum
        return open_epoch(self.train_data, self.progress.epoch, skip, self.config.seed)


def _set_up(
    model: nn.Module,
    task: Task,
    train_data: Iterable[Any],
    eval_data: Iterable[Any] | None,
    config: FitConfig | None,
    param_groups: Sequence[dict[str, Any]] | None,
    hooks: Sequence[Any],
    run_config: dict[str, Any] | None,
    adapter_metadata: dict[str, Any] | None,
) -> _Run:
    """Everything before the first step: check the arguments, make the Accelerator and the run
    directory, seed, build and prepare the optimizer, size the schedule, resume, open the bar."""
    config = _checked_arguments(task, eval_data, config)
    accelerator = make_accelerator(config)
    directory = RunDirectory(config.output_dir)
    same_on_all_ranks(accelerator, lambda: _prepare_run_dir(directory, config, run_config))

    from accelerate.utils import set_seed

    set_seed(config.seed)
    if run_memory_format(config, model).channels_last:  # after the method, so LoRA's conv factors are converted too
        to_channels_last(model)
    if config.compile:  # refuses gradient checkpointing, so it never meets an enabled one
        compile_model(model, config, accelerator.num_processes)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    optimizer = build_optimizer(model, param_groups, config)
    trained = TrainedState(model, optimizer)
    fingerprint = run_fingerprint(model, trained.names, config)  # before prepare: names as the caller sees them
    model, optimizer, train_data, batches_per_epoch = _prepare(accelerator, model, optimizer, train_data)
    trained.bind(accelerator, model, optimizer)
    schedule = _Schedule(config, batches_per_epoch)
    progress = _resume_or_start(trained, directory, hooks, fingerprint, config)
    name = _run_name(config, directory)
    if config.trackers:
        accelerator.init_trackers(name, config=_flat(config_to_dict(config)))
    bar = _progress_bar(name, schedule.total_steps, progress.step, show=trained.main and config.progress)
    model.train()
    return _Run(
        config=config, task=task, eval_data=eval_data, hooks=hooks, adapter_metadata=adapter_metadata,
        accelerator=accelerator, directory=directory, model=model, optimizer=optimizer, train_data=train_data,
        trained=trained, fingerprint=fingerprint, schedule=schedule, progress=progress, bar=bar,
        window=_LogWindow(), started=time.perf_counter() - progress.train_seconds,
    )


def _checked_arguments(task: Task, eval_data: Iterable[Any] | None, config: FitConfig | None) -> FitConfig:
    if not isinstance(config, FitConfig):
        raise ScalpelError("fit needs config=FitConfig(output_dir=..., ...)")
    if not callable(getattr(task, "step", None)):
        raise ScalpelError(f"task {type(task).__name__} has no step(model, batch) method; see scalpel.core.fit.Task")
    if eval_data is not None and not callable(getattr(task, "evaluate", None)):
        raise ScalpelError(f"task {type(task).__name__} has no evaluate(model, batches) method but eval data was given")
    return config


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


def _prepare(
    accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, train_data: Iterable[Any]
) -> tuple[nn.Module, Any, Iterable[Any], int]:
    """``accelerator.prepare`` the model, the optimizer and (a DataLoader's) data; returns them
    with the number of batches per epoch on this process."""
    n_batches = _batches_per_epoch(train_data)
    if isinstance(train_data, torch.utils.data.DataLoader):
        model, optimizer, train_data = accelerator.prepare(model, optimizer, train_data)
        n_batches = len(train_data)
    else:
        model, optimizer = accelerator.prepare(model, optimizer)
        if accelerator.num_processes > 1 and accelerator.is_main_process:
            warnings.warn(
                f"fit got a {type(train_data).__name__}, not a DataLoader, so every one of the "
                f"{accelerator.num_processes} processes trains on all of its batches; pass a DataLoader to shard them",
                stacklevel=4,  # the caller of fit (through _set_up)
            )
    if n_batches == 0:
        raise DataError("the training data has fewer batches than processes; give it more samples or use fewer processes")
    return model, optimizer, train_data, n_batches


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


def _resume_or_start(
    trained: TrainedState, directory: RunDirectory, hooks: Sequence[Any], fingerprint: dict[str, Any], config: FitConfig
) -> Progress:
    """The newest checkpoint's progress under ``config.resume`` (step 0 when there is none);
    metrics lines of steps after it are dropped, since those steps will be logged again."""
    progress = (trained.resume(directory, hooks, fingerprint) if config.resume else None) or Progress()
    if trained.main:
        directory.truncate_metrics(progress.step)
        if progress.step == 0:
            directory.metrics_file.unlink(missing_ok=True)
    return progress


def _run_name(config: FitConfig, directory: RunDirectory) -> str:
    return config.run_name or directory.root.name


def _progress_bar(name: str, total: int, initial: int, *, show: bool) -> tqdm:
    """A bar titled with the run's name, so that runs one after another (``make demo``) say which
    is drawing; only drawn on a terminal, where its carriage returns do not flood a log file."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="step", dynamic_ncols=True,
                disable=not (show and sys.stderr.isatty()))


# ------------------------------------------------------------------------------ steps


@dataclass(frozen=True)
class _Step:
    """What one optimizer step measured, for the log."""

    loss: float
    """Mean over its micro-batches and all processes."""
    samples: int
    """On all processes."""
    lr: float
    grad_norm: float | None
    """Before clipping; None without clipping."""


def _train_step(run: _Run, batches: Iterator[Any]) -> _Step:
    """One optimizer step (items 1-4 of the module docstring): accumulate gradients, refuse a
    non-finite loss or gradient norm before the weights change, set the learning rates, clip,
    step AdamW, call the hooks."""
    progress, schedule = run.progress, run.schedule
    first = progress.step_in_epoch * schedule.accum
    micro = min(schedule.accum, schedule.batches_per_epoch - first)  # the epoch's last step may be short
    loss, samples = _accumulate(run.accelerator, run.model, run.task, batches, micro, first, progress.epoch)
    if not math.isfinite(loss):
        raise _stopped_before_the_update(
            run, f"the loss is {loss} at step {progress.step + 1} (epoch {progress.epoch})",
            "Lower the learning rate, enable clipping (max_grad_norm) or check the data and the task's loss",
        )
    lr = schedule.lr(progress.step)
    for group in run.trained.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    grad_norm = _clip_gradients(run)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    progress.step += 1
    progress.step_in_epoch += 1
    for hook in run.hooks:
        hook.after_step(progress.step, run.trained.model, run.trained.optimizer)
    return _Step(loss=loss, samples=samples * run.accelerator.num_processes, lr=lr, grad_norm=grad_norm)


def _accumulate(accelerator: Accelerator, model: nn.Module, task: Task, batches: Iterator[Any], micro: int, first: int,
                epoch: int) -> tuple[float, int]:
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
            loss = out["loss"].float()  # fp32 under bf16 autocast too
            accelerator.backward(loss / micro)
        total += loss.detach().float() / micro
        samples += samples_in(batch)
    return float(accelerator.reduce(total, reduction="mean")), samples


def _task_step(task: Task, model: nn.Module, batch: Any, index: int, epoch: int) -> dict[str, Tensor]:
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


def _clip_gradients(run: _Run) -> float | None:
    """Clip the gradients to ``max_grad_norm``; returns their norm before clipping (None when
    clipping is off) and refuses a non-finite one."""
    config, accelerator = run.config, run.accelerator
    grad_norm = None
    if config.max_grad_norm > 0:
        grad_norm = float(accelerator.clip_grad_norm_(run.trained.parameters, config.max_grad_norm))
        if not math.isfinite(grad_norm) and accelerator.scaler is None:  # fp16's scaler skips such steps itself
            raise _stopped_before_the_update(
                run, f"the gradient norm is {grad_norm} at step {run.progress.step + 1} with a finite loss",
                "Lower the learning rate or check the model for overflowing activations",
            )
    return grad_norm


def _stopped_before_the_update(run: _Run, problem: str, advice: str) -> TrainingError:
    """The error for a non-finite step: nothing was applied, so the newest checkpoint is good."""
    last = run.trained.last_checkpoint(run.directory)
    return TrainingError(
        f"{problem}; training stopped before the weights changed. Last good checkpoint: {last or 'none'}. {advice}"
    )


# ------------------------------------------------------------------------- after a step


def _after_step(run: _Run, step: _Step) -> bool:
    """The bookkeeping after an optimizer step (items 5-6 of the module docstring): log, evaluate
    when due, move to the next epoch at the end of one, checkpoint when due. Returns True when
    the epoch is over or early stopping ended the run."""
    progress, config = run.progress, run.config
    _log_step(run, step)
    epoch_end = progress.step_in_epoch == run.schedule.steps_per_epoch
    due = config.eval_every and progress.step % config.eval_every == 0
    last = progress.step == run.schedule.total_steps
    if run.eval_data is not None and (due or (epoch_end and config.eval_at_epoch_end) or last):
        _evaluate_and_keep_best(run)
    if epoch_end:  # before the checkpoint, so that resuming from it starts the next epoch
        progress.epoch += 1
        progress.step_in_epoch = 0
    if config.save_every and (progress.step % config.save_every == 0 or last or progress.stopped_early):
        run.trained.save_checkpoint(run.directory, run.hooks, progress, run.fingerprint, step.lr,
                                    config.keep_checkpoints)
    return epoch_end or progress.stopped_early


def _log_step(run: _Run, step: _Step) -> None:
    """Count the step's samples and time, move the bar, and every ``log_every`` steps (and at
    the last) write the window's mean loss to metrics.jsonl and the trackers."""
    progress = run.progress
    run.window.add(step.loss, step.samples)
    progress.samples += step.samples
    progress.train_seconds = time.perf_counter() - run.started
    run.bar.update(1)
    if progress.step % run.config.log_every == 0 or progress.step == run.schedule.total_steps:
        record = run.window.record(progress.step, progress.epoch, step.lr, step.grad_norm)
        progress.train_loss = record["loss"]
        run.bar.set_postfix(loss=f"{record['loss']:.4g}", lr=f"{step.lr:.3g}",
                            samples_s=f"{record['samples_per_second']:.1f}")
        _log(run.directory, run.accelerator, record, run.main)


def _evaluate_and_keep_best(run: _Run) -> None:
    """Evaluate, log the metrics, and save the adapter when they are the best so far; the
    evaluation also decides early stopping (``progress.stopped_early``)."""
    progress = run.progress
    metrics = _evaluate(run.accelerator, run.task, run.eval_model, run.eval_data)
    _log(run.directory, run.accelerator,
         {"step": progress.step, "epoch": progress.epoch, **{f"eval/{k}": v for k, v in metrics.items()}}, run.main)
    progress.record_eval(metrics, run.config)
    if progress.best_step == progress.step:
        run.trained.save_best(run.directory, metrics, run.adapter_metadata)


def _evaluate(accelerator: Accelerator, task: Task, model: nn.Module, eval_data: Iterable[Any]) -> dict[str, float]:
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


def _log(run: RunDirectory, accelerator: Accelerator, record: dict[str, Any], main: bool) -> None:
    if main:
        run.log(record)
    if accelerator.trackers:
        accelerator.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])


# ------------------------------------------------------------------------------ finish


def _finish(run: _Run) -> FitResult:
    """After the last step: keep the final weights as the adapter when no evaluation chose one,
    restore the best weights under ``load_best_at_end``, write report.md, close the trackers."""
    progress, config = run.progress, run.config
    if progress.best_step is None:  # no evaluation (or none gave a finite metric): keep the final weights
        run.trained.save_best(run.directory, dict(progress.last_metrics), run.adapter_metadata)
    metrics = dict(progress.last_metrics)
    if config.load_best_at_end and progress.best_step is not None and progress.best_step != progress.step:
        run.trained.load_best(run.directory)
        metrics = dict(progress.best_metrics)
    to_contiguous(run.trained.model)  # the caller merges, saves and predicts with ordinary weights
    result = FitResult(
        run_dir=run.directory.root, metrics=metrics, best_metric=progress.best_metric, best_step=progress.best_step,
        steps=progress.step, train_seconds=progress.train_seconds, adapter_dir=run.directory.adapter,
        final_metrics=dict(progress.last_metrics), stopped_early=progress.stopped_early, train_loss=progress.train_loss,
    )
    if run.main:
        run.directory.write_report(_report(result, run.trained.model, config, progress))
    if config.trackers:
        run.accelerator.end_training()
    run.accelerator.wait_for_everyone()
    return result


def _report(result: FitResult, model: nn.Module, config: FitConfig, progress: Progress) -> list[str]:
    from scalpel.core.delta import parameter_report

    lines = [f"# Training report: {result.run_dir.name}", "",
             f"- {parameter_report(model)}",
             f"- steps: {result.steps} ({progress.epoch} full epochs), samples: {progress.samples:,}",
             _precision_line(config),
             _memory_format_line(config, model),
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


def _precision_line(config: FitConfig) -> str:
    precision = run_precision(config)
    return (f"- precision: {precision.label} ({precision.reason}); weights, optimizer state and losses fp32"
            + ("; torch.compile" if config.compile else ""))


def _memory_format_line(config: FitConfig, model: nn.Module) -> str:
    memory_format = run_memory_format(config, model)
    return f"- memory format in training: {memory_format.label} ({memory_format.reason})"


def _flat(d: dict[str, Any]) -> dict[str, Any]:
    """Tracker configs take scalars only."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in d.items()}
