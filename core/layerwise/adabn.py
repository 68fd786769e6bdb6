"""Re-estimating normalisation statistics on the target data (AdaBN, Li et al. 2016).

The zero-parameter baseline of any domain adaptation with a BatchNorm network: keep every
weight, forward target batches in training mode with a cumulative average, and let each
``BatchNorm``'s ``running_mean``/``running_var`` describe the new domain. Intensity and
contrast shifts between scanners or cameras are often mostly undone by this alone, so a
PEFT method on such a network should be compared with it, not only with the base.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from scalpel.core.errors import ConfigError


def recalibrate_norm_statistics(model: nn.Module, batches: Iterable[Any],
                                forward: Callable[[nn.Module, Any], Any] | None = None) -> nn.Module:
    """Replace every BatchNorm's running statistics by their average over ``batches``.

    Args:
        model: any network; only ``nn.modules.batchnorm._BatchNorm`` layers that track
            running statistics change (their weights and all other parameters do not).
        batches: target-domain batches, consumed once.
        forward: ``(model, batch) -> anything``; default ``model(batch["image"])`` for dict
            batches, else ``model(batch)``.

    Returns:
        ``model``, in eval mode.

    Raises:
        ConfigError: the model has no BatchNorm layer tracking running statistics, or no batch was given.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        raise ConfigError("recalibrate_norm_statistics", ["the model has no BatchNorm layer with running statistics; nothing to re-estimate"])
    forward = forward or (lambda m, b: m(b["image"] if isinstance(b, dict) else b))
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    was_training = model.training
    model.train()
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                forward(model, batch)
                seen += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.train(was_training)
    if not seen:
        raise ConfigError("recalibrate_norm_statistics", ["no batches given: pass target-domain batches"])
    return model.eval()
