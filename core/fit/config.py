"""``FitConfig``: every option of the training loop, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field

from scalpel.core.config import raise_if_problems
from scalpel.core.schedules import SCHEDULES

PRECISIONS = ("auto", "no", "bf16", "fp16")
CHANNELS_LAST = ("auto", "on", "off")
DEVICES = ("auto", "cpu")
TRACKERS = ("tensorboard", "mlflow")


@dataclass(frozen=True)
class FitConfig:
    """Options of :func:`scalpel.core.fit.fit`. One optimizer step = ``grad_accum_steps``
    micro-batches on each process; the global batch is ``batch_size * grad_accum_steps * processes``."""

    output_dir: str = field(metadata={"help": "run directory: config.yaml, metrics.jsonl, checkpoints/, adapter/, report.md"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps to take; 0: epochs x steps per epoch"})
    epochs: int = field(default=1, metadata={"help": "passes over the training data (when max_steps is 0)"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate (each group's lr = lr x its lr_scale)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    adam_betas: tuple[float, float] = field(default=(0.9, 0.999), metadata={"help": "AdamW betas"})
    adam_eps: float = field(default=1e-8, metadata={"help": "AdamW epsilon"})
    schedule: str = field(default="linear", metadata={"help": "learning-rate decay: constant, linear or cosine"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "warm-up as a fraction of all steps (larger of the two wins)"})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "floor of the decay as a fraction of lr"})
    grad_accum_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this; 0: no clipping"})
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 where the GPU or CPU runs it natively, else fp32; see core/fit/precision.py), no, bf16 or fp16"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present) or cpu"})
    channels_last: str = field(default="auto", metadata={"help": "conv nets: train with channels-last weights: auto (on for 2-D conv nets on CPU, off for 3-D; see core/fit/memory_format.py), on or off"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model's forward (in place: parameter names are unchanged)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward (models with gradient_checkpointing_enable)"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every N optimizer steps; 0: only at epoch end"})
    eval_at_epoch_end: bool = field(default=True, metadata={"help": "evaluate at the end of every epoch"})
    metric: str = field(default="loss", metadata={"help": "evaluation metric that picks the best adapter and drives early stopping"})
    greater_is_better: bool = field(default=False, metadata={"help": "a larger metric is better (accuracy, dice); else smaller (loss)"})
    early_stopping_patience: int = field(default=0, metadata={"help": "stop after N evaluations without improvement; 0: never"})
    early_stopping_min_delta: float = field(default=0.0, metadata={"help": "smallest change that counts as an improvement"})
    load_best_at_end: bool = field(default=True, metadata={"help": "return the model with the best evaluated weights"})
    save_every: int = field(default=500, metadata={"help": "checkpoint every N optimizer steps (and at the end); 0: never"})
    keep_checkpoints: int = field(default=2, metadata={"help": "keep the newest N checkpoints; 0: keep all"})
    resume: bool = field(default=False, metadata={"help": "continue from the newest checkpoint in output_dir"})
    overwrite: bool = field(default=False, metadata={"help": "delete an earlier run's checkpoints in output_dir and start again"})
    seed: int = field(default=0, metadata={"help": "seed of Python, NumPy and torch RNGs and of the data order"})
    log_every: int = field(default=10, metadata={"help": "write a metrics.jsonl line every N steps"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar (only on a terminal, main process)"})
    trackers: tuple[str, ...] = field(default=(), metadata={"help": "also log to: tensorboard, mlflow"})
    run_name: str | None = field(default=None, metadata={"help": "the run's name: title of the progress bar and tracker run name (default: the output_dir's name)"})

    def __post_init__(self) -> None:
        problems = []
        if not str(self.output_dir):
            problems.append("output_dir must be a directory path")
        for name in ("max_steps", "warmup_steps", "save_every", "keep_checkpoints", "eval_every", "early_stopping_patience"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("epochs", "grad_accum_steps", "log_every"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0 or self.max_grad_norm < 0 or self.early_stopping_min_delta < 0:
            problems.append("weight_decay, max_grad_norm and early_stopping_min_delta must be >= 0")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            problems.append(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if not 0 <= self.min_lr_ratio <= 1:
            problems.append(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.mixed_precision not in PRECISIONS:
            problems.append(f"mixed_precision must be one of {', '.join(PRECISIONS)}, got {self.mixed_precision!r}")
        if self.channels_last not in CHANNELS_LAST:
            problems.append(f"channels_last must be one of {', '.join(CHANNELS_LAST)}, got {self.channels_last!r}")
        if self.device not in DEVICES:
            problems.append(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        unknown = [t for t in self.trackers if t not in TRACKERS]
        if unknown:
            problems.append(f"unknown trackers {unknown}; choose from {', '.join(TRACKERS)}")
        if self.resume and self.overwrite:
            problems.append("resume and overwrite exclude each other: resume continues the run, overwrite deletes it")
        raise_if_problems("FitConfig", problems)
