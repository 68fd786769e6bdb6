"""The two option sets every pipeline shares: :class:`MethodOptions` (what is trained) and
:class:`TrainOptions` (how). Each setting has one name in every pipeline, on the command
line (``--r``, ``--density``, ``--epochs``, ``--grad-accum``) and in YAML (``r: 8``).

A domain changes defaults, never names: a pipeline publishes its own instances
(``MethodOptions(r=4, alpha=8)``, ``TrainOptions(lr=5e-3)``) and the command line starts
from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from scalpel.core.config import raise_if_problems
from scalpel.core.fit.config import PRECISIONS, TRACKERS, FitConfig
from scalpel.core.schedules import SCHEDULES

#: Flags of earlier releases -> today's name. They still work, with a warning naming the new flag.
DEPRECATED_FLAGS: dict[str, str] = {
    "--lora-r": "--r",
    "--lora-alpha": "--alpha",
    "--sparse-density": "--density",
    "--sparse-scorer": "--scorer",
    "--layerwise-blocks": "--blocks",
    "--teacher-model": "--teacher-arch",
    "--steps": "--max-steps",
}


@dataclass(frozen=True)
class MethodOptions:
    """What is trained: the method and its settings, one name each for every pipeline.

    Options a method does not use are ignored by it (``density`` under LoRA), so one
    YAML file can switch methods by its ``method:`` line alone.
    """

    method: str = field(default="lora", metadata={"help": "how the model is adapted: lora, dora, rslora, sparse, layerwise, bitfit, full (or a registered recipe)"})
    r: int = field(default=8, metadata={"help": "LoRA rank"})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (the update is scaled by alpha/r, or alpha/sqrt(r) for rslora)"})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout on the adapter input, in [0, 1)"})
    targets: str = field(default="", metadata={"help": "regex of module names LoRA/sparse adapt; empty: the pipeline's default for its model family"})
    exclude: str = field(default="", metadata={"help": "regex of module names never adapted"})
    density: float = field(default=0.01, metadata={"help": "sparse: share of the targeted weights' entries trained, in (0, 1]"})
    scorer: str = field(default="fisher", metadata={"help": "sparse: importance score (random, magnitude, gradient, fisher, movement, lottery_ticket)"})
    scoring_batches: int = field(default=2, metadata={"help": "sparse: training batches the data scorers read"})
    regrow_every: int = field(default=0, metadata={"help": "sparse: re-select the trained entries every N steps (0: a static mask)"})
    blocks: tuple[str, ...] = field(default=(), metadata={"help": "layerwise: blocks trained in full ('last 2', 'first 1', 'blocks 3-5', names); empty: the pipeline's default"})
    lr_decay: float = field(default=1.0, metadata={"help": "layer-wise learning-rate decay in (0, 1]: block i from the top trains at lr * decay^i; 1: off"})
    teacher: str = field(default="", metadata={"help": "distil from this teacher too (what the pipeline accepts: a checkpoint, an adapter or a model folder); empty: none"})
    teacher_arch: str = field(default="", metadata={"help": "distillation: the teacher's architecture when it differs from the student's (vision)"})
    distill_alpha: float = field(default=0.5, metadata={"help": "distillation: weight of the KD loss; 1 - alpha weighs the task loss"})
    distill_temperature: float = field(default=2.0, metadata={"help": "distillation: softmax temperature (Hinton et al. 2015; the loss is T^2-scaled)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "blocks", (self.blocks,) if isinstance(self.blocks, str) else tuple(str(b) for b in self.blocks))
        problems = []
        if self.r < 1:
            problems.append(f"r must be >= 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.density <= 1:
            problems.append(f"density must be in (0, 1], got {self.density}")
        if self.scoring_batches < 1 or self.regrow_every < 0:
            problems.append(f"scoring_batches must be >= 1 and regrow_every >= 0, got {self.scoring_batches} and {self.regrow_every}")
        if not 0 < self.lr_decay <= 1:
            problems.append(f"lr_decay must be in (0, 1], got {self.lr_decay}; typical values are 0.65-0.95")
        if not 0 <= self.distill_alpha <= 1:
            problems.append(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if not self.distill_temperature > 0:
            problems.append(f"distill_temperature must be > 0, got {self.distill_temperature}")
        raise_if_problems("method options", problems)


@dataclass(frozen=True)
class TrainOptions:
    """How it is trained: the options of :class:`~scalpel.core.fit.FitConfig` a run exposes,
    with the same names and meanings (``grad_accum`` is ``grad_accum_steps``)."""

    output_dir: str = field(default="", metadata={"help": "run directory; empty: runs/<pipeline>"})
    epochs: int = field(default=1, metadata={"help": "passes over the training data (when max_steps is 0)"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps to take; 0: epochs x steps per epoch"})
    batch_size: int = field(default=8, metadata={"help": "samples per micro-batch"})
    lr: float = field(default=1e-4, metadata={"help": "peak learning rate"})
    schedule: str = field(default="linear", metadata={"help": f"learning-rate decay: {', '.join(SCHEDULES)}"})
    warmup_ratio: float = field(default=0.0, metadata={"help": "linear warm-up as a share of all steps"})
    warmup_steps: int = field(default=0, metadata={"help": "linear warm-up steps (the larger of the two wins)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this; 0: no clipping"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    mixed_precision: str = field(default="auto", metadata={"help": f"{', '.join(PRECISIONS)} (auto: bf16 where the GPU or CPU runs it natively (AMX/AVX512-BF16), else fp32)"})
    channels_last: str = field(default="auto", metadata={"help": "conv nets: channels-last weights in training: auto (on for 2-D conv nets on CPU, off for 3-D), on or off"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model (one process; slower start, often faster steps)"})
    group_by_length: bool = field(default=True, metadata={"help": "text pipelines: batch texts of similar length (less padding; the order stays shuffled)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute activations in backward: less memory, more compute"})
    eval_every: int = field(default=0, metadata={"help": "evaluate every N optimizer steps; 0: at each epoch end"})
    save_every: int | None = field(default=None, metadata={"help": "checkpoint every N optimizer steps; default: ten times a run (a kill loses at most a tenth of the work); 0: never"})
    keep_checkpoints: int = field(default=2, metadata={"help": "keep the newest N step checkpoints; 0: all"})
    resume: bool = field(default=False, metadata={"help": "continue the interrupted run in output_dir from its last step checkpoint"})
    overwrite: bool = field(default=False, metadata={"help": "replace an earlier run in output_dir (it is deleted whole)"})
    trackers: tuple[str, ...] = field(default=(), metadata={"help": f"also log to: {', '.join(TRACKERS)}"})
    log_every: int = field(default=10, metadata={"help": "write a metrics.jsonl line every N steps"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar on a terminal"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present) or cpu"})
    seed: int = field(default=0, metadata={"help": "seed of the data split, the data order and the initialisation"})
    quick: bool = field(default=False, metadata={"help": "a tiny run to check the set-up (the pipeline's small data and a few steps)"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "trackers", (self.trackers,) if isinstance(self.trackers, str) else tuple(self.trackers))
        problems = [] if self.batch_size >= 1 else [f"batch_size must be >= 1, got {self.batch_size}"]
        if self.save_every is not None and self.save_every < 0:
            problems.append(f"save_every must be >= 0, got {self.save_every}")
        raise_if_problems("training options", problems)
        self.fit_config("runs/check")  # every FitConfig rule, reported once with the others

    def checkpoint_interval(self, total_steps: int) -> int:
        """Steps between checkpoints: ``save_every``, or a tenth of the run when it is not set."""
        if self.save_every is not None:
            return self.save_every
        return max(1, -(-total_steps // 10)) if total_steps else 500

    def fit_config(self, output_dir: str, *, metric: str = "loss", greater_is_better: bool = False,
                   total_steps: int = 0) -> FitConfig:
        """The :class:`FitConfig` of one run into ``output_dir``, its best adapter picked by ``metric``.

        The run directory's contract (refuse, overwrite, resume) is applied by
        :func:`scalpel.core.run.run_adaptation` before ``fit`` starts, so ``fit`` is told to
        resume only when there is a checkpoint to resume from.
        """
        shared = {f.name for f in fields(FitConfig)} & {f.name for f in fields(self)} - {"output_dir", "save_every", "overwrite"}
        values: dict[str, Any] = {name: getattr(self, name) for name in shared}
        return FitConfig(output_dir=output_dir, grad_accum_steps=self.grad_accum, metric=metric,
                         greater_is_better=greater_is_better, save_every=self.checkpoint_interval(total_steps),
                         overwrite=False, **values)
