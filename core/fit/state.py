"""What ``fit`` remembers between steps and across processes' lives: the loop position and
best metric (:class:`Progress`), and the trained tensors with their checkpoints, the best
weights and the adapter (:class:`TrainedState`)."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalpel.core.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from scalpel.core.config import config_to_dict
from scalpel.core.delta import base_parameters, fingerprint, has_state, state_of
from scalpel.core.errors import CheckpointError, ScalpelError
from scalpel.core.files import read_safetensors, write_json, write_safetensors
from scalpel.core.fit.config import FitConfig
from scalpel.core.run_files import RunDirectory

CHECKPOINT_FORMAT = 1
#: FitConfig fields that change the numbers a run produces: a checkpoint resumes only a
#: run with the same values. (max_steps/epochs may grow, to extend a finished run.)
IDENTITY_FIELDS = (
    "lr", "weight_decay", "adam_betas", "adam_eps", "schedule", "warmup_steps", "warmup_ratio",
    "min_lr_ratio", "grad_accum_steps", "max_grad_norm", "mixed_precision", "seed",
)


@dataclass
class Progress:
    """Where the loop is, and the evaluation history that decides the best adapter."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    train_loss: float | None = None
    best_metric: float | None = None
    best_step: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    last_metrics: dict[str, float] = field(default_factory=dict)
    evals_without_improvement: int = 0
    stopped_early: bool = False

    def record_eval(self, metrics: dict[str, float], config: FitConfig) -> bool:
        """Note an evaluation; return True when early stopping says to stop."""
        if config.metric not in metrics:
            raise ScalpelError(
                f"FitConfig.metric is {config.metric!r} but the task's evaluate returned {sorted(metrics)}; "
                "set metric to one of those"
            )
        self.last_metrics = dict(metrics)
        value = metrics[config.metric]
        if self.best_metric is None:
            improved = math.isfinite(value)
        elif config.greater_is_better:
            improved = value > self.best_metric + config.early_stopping_min_delta
        else:
            improved = value < self.best_metric - config.early_stopping_min_delta
        if improved:
            self.best_metric, self.best_step, self.best_metrics = value, self.step, dict(metrics)
            self.evals_without_improvement = 0
            return False
        self.evals_without_improvement += 1
        self.stopped_early = 0 < config.early_stopping_patience <= self.evals_without_improvement
        return self.stopped_early


def run_fingerprint(model: nn.Module, trained_names: Sequence[str], config: FitConfig) -> dict[str, Any]:
    """What makes a run this run: the base model (names and shapes of its parameters), the
    trained parameters, and the numeric config. Stored in checkpoints; resume compares it."""
    shapes = dict((n, tuple(p.shape)) for n, p in model.named_parameters())
    trained = hashlib.sha256("\n".join(f"{n}:{list(shapes[n])}" for n in trained_names).encode()).hexdigest()[:32]
    settings = config_to_dict(config)
    return {
        "model": fingerprint(base_parameters(model)),
        "trained": "sha256:" + trained,
        "config": {k: settings[k] for k in IDENTITY_FIELDS},
    }


class TrainedState:
    """The tensors a run changes: parameters in the optimizer (whether or not they need a
    gradient right now: LISA freezes and thaws blocks) and persistent buffers (BatchNorm
    statistics move even in frozen layers), with the checkpoints, best weights and adapter
    made of them.

    Under FSDP the parameters are sharded: reading and writing them goes through
    ``torch.distributed.checkpoint.state_dict`` (full tensors, gathered on the CPU of the
    main process), which is a collective, so every method here that touches tensors is
    called on every process; only the main process writes files.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer):
        ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
        self.names = [n for n, p in model.named_parameters() if id(p) in ids]

    def bind(self, accelerator, model: nn.Module, optimizer) -> None:
        """Attach what ``accelerator.prepare`` returned (wrapped model, optimizer)."""
        self.accelerator, self.wrapped = accelerator, model
        self.model = accelerator.unwrap_model(model)
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside Accelerate's wrapper
        self.parameters = [p for g in self.optimizer.param_groups for p in g["params"]]  # FSDP replaces them
        self.fsdp = accelerator.distributed_type.name.startswith("FSDP")
        self.main = accelerator.is_main_process

    # ------------------------------------------------------------------ tensors

    def tensors(self) -> dict[str, torch.Tensor]:
        """Trained tensors by name: complete on the main process (may be empty elsewhere)."""
        if self.fsdp:
            from scalpel.core.fit.fsdp import full_model_state

            full = full_model_state(self.wrapped)
            buffers = {n for n, _ in _persistent_buffers(self.model)}
            return {k: v for k, v in full.items() if k in buffers or k in set(self.names)}
        if not self.main:
            return {}
        params = dict(self.model.named_parameters())
        out = {n: params[n].detach() for n in self.names}
        out.update(_persistent_buffers(self.model))
        return out

    def load_tensors(self, tensors: dict[str, torch.Tensor], source: Path) -> None:
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise CheckpointError(f"{source} lacks trained tensor {missing[0]!r} ({len(missing)} missing); it belongs to another model")
        if self.fsdp:
            from scalpel.core.fit.fsdp import load_full_model_state

            load_full_model_state(self.wrapped, tensors)
            return
        targets = {**dict(self.model.named_parameters()), **dict(_persistent_buffers(self.model))}
        with torch.no_grad():
            for name, value in tensors.items():
                target = targets.get(name)
                if target is None or target.shape != value.shape:
                    raise CheckpointError(f"{source} holds {name!r} {list(value.shape)} that this model lacks or shapes otherwise")
                target.copy_(value)

    def optimizer_state(self) -> dict[str, Any]:
        if self.fsdp:
            from scalpel.core.fit.fsdp import full_optimizer_state

            return full_optimizer_state(self.wrapped, self.optimizer)
        return self.optimizer.state_dict() if self.main else {}

    def load_optimizer_state(self, state: dict[str, Any], source: Path) -> None:
        try:
            if self.fsdp:
                from scalpel.core.fit.fsdp import load_full_optimizer_state

                load_full_optimizer_state(self.wrapped, self.optimizer, state)
            else:
                self.optimizer.load_state_dict(state)
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"the optimizer state in {source} does not fit these parameter groups ({err}); it belongs to another run") from err

    # -------------------------------------------------------------- checkpoints

    def save_checkpoint(self, run: RunDirectory, hooks, progress: Progress, fingerprint: dict[str, Any], lr: float, keep: int) -> None:
        from accelerate.utils import gather_object

        accelerator = self.accelerator
        rngs = gather_object([rng_state()]) if accelerator.num_processes > 1 else [rng_state()]
        tensors, optimizer_state = self.tensors(), self.optimizer_state()
        if self.main:
            state = {
                "format": CHECKPOINT_FORMAT,
                "fingerprint": fingerprint,
                "world_size": accelerator.num_processes,
                "progress": dataclasses.asdict(progress),
                "optimizer": optimizer_state,
                "scheduler": {"step": progress.step, "lr": lr},
                "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                "rng": rngs,
                "hooks": [_hook_state(h) for h in hooks],
            }
            save_checkpoint(run.checkpoints, progress.step, tensors, state)
            prune_checkpoints(run.checkpoints, keep)
        accelerator.wait_for_everyone()

    def resume(self, run: RunDirectory, hooks, fingerprint: dict[str, Any]) -> Progress | None:
        """Restore the newest checkpoint, or return None (and start fresh) when there is none."""
        accelerator = self.accelerator
        found = list_checkpoints(run.checkpoints)
        if not found:
            if self.main:
                print(f"scalpel fit: no checkpoint in {run.checkpoints}, starting from step 0")
            return None
        path = found[-1]
        tensors, state = load_checkpoint(path)
        _check_fingerprint(state.get("fingerprint", {}), fingerprint, path)
        self.load_tensors(tensors, path)
        self.load_optimizer_state(state["optimizer"], path)
        if state.get("scaler") and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(state["scaler"])
        saved_hooks = state.get("hooks", [])
        if len(saved_hooks) != len(hooks):
            raise CheckpointError(f"{path} was saved with {len(saved_hooks)} hooks but fit got {len(hooks)}; pass the same hooks to resume")
        progress = Progress(**state["progress"])
        for hook, hook_state in zip(hooks, saved_hooks):
            _load_hook_state(hook, hook_state, progress.step)
        rngs = state["rng"]
        set_rng_state(rngs[accelerator.process_index] if len(rngs) == accelerator.num_processes else rngs[0])
        if self.main:
            print(f"scalpel fit: resumed from {path} (step {progress.step}, epoch {progress.epoch})")
        return progress

    @staticmethod
    def last_checkpoint(run: RunDirectory) -> Path | None:
        found = list_checkpoints(run.checkpoints)
        return found[-1] if found else None

    # -------------------------------------------------------------- best weights

    def save_best(self, run: RunDirectory, metrics: dict[str, float], metadata: dict[str, Any] | None) -> None:
        """Keep the current weights as the best: ``checkpoints/best.safetensors`` (to restore them
        at the end) and ``adapter/``: a Scalpel adapter (:func:`scalpel.core.save_adapter`) when
        the model carries one, else the trained tensors (``trainable.safetensors``; also under
        FSDP, whose sharded modules ``save_adapter`` cannot read)."""
        tensors = self.tensors()
        if self.main:
            write_safetensors(run.best_weights, tensors)
            if not self.fsdp and has_state(self.model) and state_of(self.model).active is not None:
                from scalpel.core.artifacts import save_adapter

                save_adapter(self.model, run.adapter, metrics=metrics, **(metadata or {}))
            else:
                trained = {n: tensors[n] for n in self.names}
                write_safetensors(run.adapter / "trainable.safetensors", trained, metadata={"format": "pt"})
                write_json(run.adapter / "trainable.json", {"metrics": metrics, "parameters": self.names, **(metadata or {})})
        self.accelerator.wait_for_everyone()

    def load_best(self, run: RunDirectory) -> None:
        self.accelerator.wait_for_everyone()
        self.load_tensors(read_safetensors(run.best_weights), run.best_weights)


def _persistent_buffers(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    for module_name, module in model.named_modules():
        for name, buffer in module._buffers.items():
            if buffer is not None and name not in module._non_persistent_buffers_set:
                yield (f"{module_name}.{name}" if module_name else name), buffer


def _hook_state(hook: Any) -> Any:
    return hook.state_dict() if callable(getattr(hook, "state_dict", None)) else None


def _load_hook_state(hook: Any, state: Any, step: int) -> None:
    load = getattr(hook, "load_state_dict", None)
    if state is None or load is None:
        return
    if "step" in inspect.signature(load).parameters:
        load(state, step=step)  # e.g. SparseRegrowth re-arms its gradient window from the step
    else:
        load(state)


def _check_fingerprint(saved: dict[str, Any], current: dict[str, Any], path: Path) -> None:
    problems = []
    if saved.get("model") != current["model"]:
        problems.append("the base model differs (parameter names or shapes)")
    if saved.get("trained") != current["trained"]:
        problems.append("a different set of parameters is trained (another method or targets)")
    old, new = saved.get("config", {}), current["config"]
    changed = [f"{k}: {json.dumps(old.get(k))} -> {json.dumps(new[k])}" for k in new if old.get(k) != new[k]]
    if changed:
        problems.append("the config differs (" + "; ".join(changed) + ")")
    if problems:
        raise CheckpointError(
            f"checkpoint {path} belongs to another run: {', '.join(problems)}. Resume with the same model and "
            "config, or start a new run (another output_dir, or overwrite=True)"
        )
