"""Learning-rate schedules as pure functions of the optimizer step.

``fit`` sets every parameter group's learning rate before each optimizer step to
``lr_at(step, ...) * group["lr_scale"]``; there is no scheduler object to keep in sync, so
the whole schedule state of a checkpoint is the step count (as in nanoGPT's ``get_lr``).

With ``W`` warm-up steps, ``T`` total steps, peak ``lr`` and floor ``m = min_lr_ratio * lr``:

- warm-up (``s < W``): ``lr * (s + 1) / (W + 1)`` -- linear from ``lr / (W + 1)`` up, never 0,
  so the first step already moves the weights;
- ``constant``: ``lr``;
- ``linear``: ``m + (lr - m) * (1 - p)`` with ``p = (s - W) / (T - W)``;
- ``cosine``: ``m + (lr - m) * (1 + cos(pi p)) / 2`` (Loshchilov & Hutter, SGDR, arXiv:1608.03983,
  without restarts).

``s`` is the 0-based index of the step about to be taken, so the last step (``s = T - 1``)
still trains with a positive learning rate unless ``min_lr_ratio`` is 0 and ``T - W = 1``.
"""

from __future__ import annotations

import math

SCHEDULES = ("constant", "linear", "cosine")


def lr_at(
    step: int,
    *,
    lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "linear",
    min_lr_ratio: float = 0.0,
) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of ``total_steps``.

    Args:
        step: index of the step about to be taken, ``0 <= step``; steps past
            ``total_steps`` keep the final rate.
        lr: peak learning rate, reached at the end of warm-up.
        total_steps: number of optimizer steps of the run (>= 1).
        warmup_steps: linear warm-up length; clipped to ``total_steps``.
        schedule: ``"constant"``, ``"linear"`` or ``"cosine"`` decay after warm-up.
        min_lr_ratio: floor of the decay as a fraction of ``lr``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    warmup_steps = min(max(warmup_steps, 0), total_steps)
    if step < warmup_steps:
        return lr * (step + 1) / (warmup_steps + 1)
    if schedule == "constant":
        return lr
    floor = min_lr_ratio * lr
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    if schedule == "linear":
        return floor + (lr - floor) * (1.0 - progress)
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_for(total_steps: int, warmup_steps: int, warmup_ratio: float) -> int:
    """Warm-up length from an absolute count or a fraction of the run (the larger wins)."""
    return max(warmup_steps, math.ceil(warmup_ratio * total_steps))
