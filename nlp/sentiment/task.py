"""The fit task of sequence classification: cross-entropy on the logits, accuracy/macro-F1 in evaluation."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from scalpel.nlp.sentiment.metrics import classification_metrics


class ClassificationTask:
    """``step``: ``{"loss": CE(logits, labels), "logits": (B, K)}``; ``evaluate``: loss, accuracy, macro-F1.

    Args:
        label_names: class names in id order (K of them).
    """

    def __init__(self, label_names: tuple[str, ...]):
        self.label_names = tuple(label_names)
        self._last: tuple[tuple, dict[str, float]] | None = None  # (weights_state, metrics) of the last evaluate

    def step(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits  # (B, K)
        return {"loss": F.cross_entropy(logits.float(), batch["labels"]), "logits": logits}

    def evaluate(self, model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> dict[str, float]:
        metrics = headline(classification_scores(model, batches, self.label_names))
        self._last = (weights_state(model), metrics)
        return metrics

    def last_metrics_of(self, model: nn.Module) -> dict[str, float] | None:
        """The metrics of the last :meth:`evaluate` if ``model``'s trainable weights have not
        changed since (None otherwise): ``fit`` evaluates the validation split after the last
        epoch, and a run that keeps those weights need not evaluate them a second time."""
        if self._last is None or self._last[0] != weights_state(model):
            return None
        return dict(self._last[1])


def weights_state(model: nn.Module) -> tuple:
    """Identifies the current values of ``model``'s trainable weights: each one's storage and
    version counter, which every in-place change (an optimizer step, loading the best weights)
    advances."""
    return tuple((p.data_ptr(), p._version) for p in model.parameters() if p.requires_grad)


def classification_scores(model: nn.Module, batches: Iterable[dict[str, Tensor]], label_names: tuple[str, ...]) -> dict[str, Any]:
    """Every metric of :func:`classification_metrics` over ``batches`` (per class, confusion
    matrix) and the mean cross-entropy ``loss``."""
    y_true, y_pred, loss, n = predict_batches(model, batches)
    return {"loss": loss / max(n, 1), **classification_metrics(y_true, y_pred, label_names)}


def headline(scores: dict[str, Any]) -> dict[str, float]:
    """The scalar metrics of :func:`classification_scores`: loss, accuracy, macro-F1."""
    return {k: float(scores[k]) for k in ("loss", "accuracy", "macro_f1")}


@torch.no_grad()
def predict_batches(model: nn.Module, batches: Iterable[dict[str, Tensor]]) -> tuple[list[int], list[int], float, int]:
    """True ids, predicted ids, summed loss and count over ``batches`` (with labels)."""
    y_true: list[int] = []
    y_pred: list[int] = []
    loss, n = 0.0, 0
    device = next(model.parameters()).device
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        loss += float(F.cross_entropy(logits, batch["labels"], reduction="sum"))
        n += len(batch["labels"])
        y_true += batch["labels"].tolist()
        y_pred += logits.argmax(-1).tolist()
    return y_true, y_pred, loss, n


def probabilities(model: nn.Module, batch: dict[str, Any]) -> Tensor:
    """Softmax class probabilities, (B, K)."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        return model(**inputs).logits.float().softmax(-1).cpu()
