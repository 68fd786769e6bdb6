"""The fit task of instruction tuning: next-token cross-entropy on assistant tokens only.

For a batch with ``labels`` (B, T) that are -100 outside assistant tokens, the loss is

    L = sum_{b,t: labels[b,t+1] != -100} -log p(labels[b,t+1] | x[b,<=t]) / #{such (b,t)}

A batch whose mask is all zeros (no assistant token) has no loss at all; it is refused with
an error instead of silently training on nothing (or on NaN).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import math
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from scalpel.core.errors import TrainingError

IGNORE = -100
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def assistant_token_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """Shifted cross-entropy over assistant tokens. logits (B, T, V), labels (B, T)."""
    shift_logits = logits[:, :-1].reshape(-1, logits.size(-1)).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE, reduction=reduction)


class ChatTask:
    """``step``: ``{"loss", "logits", "assistant_tokens"}``; ``evaluate``: assistant-token loss and perplexity."""

    def step(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        labels = batch["labels"]
        n = int((labels[:, 1:] != IGNORE).sum())
        if n == 0:
            raise TrainingError(
                "a training batch has no assistant tokens (its loss mask is all zeros), so there is nothing to learn; "
                "check the chat template and that every conversation has an assistant reply within max_length"
            )
        logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits
        return {"loss": assistant_token_loss(logits, labels), "logits": logits,
                "assistant_tokens": torch.tensor(n, device=labels.device)}

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        total, count = assistant_loss_sum(model, batches)
        loss = total / max(count, 1)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "assistant_tokens": float(count)}


@torch.no_grad()
def assistant_loss_sum(model: nn.Module, batches: Iterable[dict[str, Any]]) -> tuple[float, int]:
    """Summed assistant-token loss and token count (a held-out loss is ``sum / count``)."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**{k: batch[k] for k in MODEL_INPUTS if k in batch}).logits
        total += float(assistant_token_loss(logits, batch["labels"], reduction="sum"))
        count += int((batch["labels"][:, 1:] != IGNORE).sum())
    return total, count
