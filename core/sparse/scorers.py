"""Importance scores: which entries of the targeted weights are worth training.

A scorer maps each targeted weight ``W_l`` to a float32 score of the same shape; the
budget (:mod:`scalpel.core.sparse.budget`) then keeps the ``k`` highest. Data scorers
run the model on up to ``config.num_batches`` batches; their gradients reach one weight at
a time through a post-accumulate-grad hook that folds ``dL/dW_l`` into the score and frees
it, so no more than one score-sized float32 copy of the targeted weights is ever held.

=============== ===================================================== ============
name            score of entry ``i``                                   reference
=============== ===================================================== ============
random          ``u_i ~ U(0, 1)`` (seeded)                             PEFT baseline
magnitude       ``|w_i|``                                              PEFT baseline
gradient        ``|sum_b g_{b,i}|`` (gradient over the batches)        SpIEL growth
fisher          ``sum_b g_{b,i}^2`` (empirical Fisher)                 FISH, Sung et al. 2021
movement        ``-sum_b w_i g_{b,i}``                                 Sanh et al. 2020
lottery_ticket  ``|w_i^(T) - w_i^(0)|`` after ``lt_steps`` of AdamW    LT-SFT, Ansell et al. 2022
=============== ===================================================== ============

``g_b = dL_b/dW`` is the mini-batch gradient, as in the FISH reference code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from scalpel.core.errors import DataError, TrainingError
from scalpel.core.registry import Registry

Scores = dict[str, Tensor]
#: (model, batch) -> scalar loss
LossFn = Callable[[nn.Module, Any], Tensor]


@dataclass(frozen=True)
class Scorer:
    """``score(model, weights, data, config) -> {name: float32 score shaped like the weight}``."""

    score: Callable[..., Scores]
    needs_data: bool


SCORERS: Registry[Scorer] = Registry("sparse scorer")


def register_scorer(name: str, *, needs_data: bool) -> Callable:
    def add(fn: Callable[..., Scores]) -> Callable[..., Scores]:
        SCORERS.add(name, Scorer(fn, needs_data))
        return fn

    return add


@dataclass(frozen=True)
class ScoringData:
    """Batches plus the loss to score them with, for ``apply(model, config, data=...)``.

    A bare iterable of batches is scored with :func:`default_loss`; wrap it to use
    another loss, e.g. a training task's: ``ScoringData(batches, lambda m, b: task.step(m, b)["loss"])``.
    """

    batches: Iterable[Any]
    loss_fn: LossFn | None = None


def default_loss(model: nn.Module, batch: Any) -> Tensor:
    """The loss of one batch: ``model(**batch).loss`` for a dict (Hugging Face style), or
    cross-entropy (integer targets) / mean squared error (float targets) of ``model(x)``
    against ``y`` for an ``(x, y)`` pair."""
    if isinstance(batch, Mapping):
        out = model(**batch)
        loss = out.get("loss") if isinstance(out, Mapping) else getattr(out, "loss", None)
        if loss is None:
            raise DataError(
                "a scoring batch gave no loss: include the labels in each batch dict (e.g. 'labels'), "
                "or pass ScoringData(batches, loss_fn=...) as data"
            )
        return loss
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        inputs, target = batch
        out = model(inputs)
        logits = getattr(out, "logits", out)
        if not target.is_floating_point():
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        return F.mse_loss(logits, target)
    raise DataError(
        f"cannot score a batch of type {type(batch).__name__}: give dicts of model inputs with labels, "
        "(inputs, targets) pairs, or ScoringData(batches, loss_fn=...)"
    )


def score_weights(name: str, model: nn.Module, weights: dict[str, nn.Parameter], data: Any, config: Any) -> Scores:
    """Run scorer ``name`` on ``weights`` (base name -> frozen weight); the model is left as it was."""
    scorer = SCORERS.get(name)
    if scorer.needs_data and data is None:
        raise DataError(
            f"the {name!r} scorer ranks weights by their gradients on data, and no data was given: "
            f"call apply(model, config, data=batches) with a few training batches, or use scorer='magnitude' or 'random'"
        )
    return scorer.score(model, weights, data, config)


# ----------------------------------------------------------------- data-free scorers


@register_scorer("random", needs_data=False)
def random_scores(model: nn.Module, weights: dict[str, nn.Parameter], data: Any, config: Any) -> Scores:
    generator = torch.Generator().manual_seed(config.seed)
    return {n: torch.rand(w.shape, generator=generator).to(w.device) for n, w in weights.items()}


@register_scorer("magnitude", needs_data=False)
def magnitude_scores(model: nn.Module, weights: dict[str, nn.Parameter], data: Any, config: Any) -> Scores:
    return {n: w.detach().abs().float() for n, w in weights.items()}


# ---------------------------------------------------------------------- data scorers


@register_scorer("gradient", needs_data=True)
def gradient_scores(model: nn.Module, weights: dict[str, nn.Parameter], data: Any, config: Any) -> Scores:
    total = _accumulate(model, weights, data, config.num_batches, lambda w, g: g.float())
    return {n: s.abs_() for n, s in total.items()}


@register_scorer("fisher", needs_data=True)
def fisher_scores(model: nn.Module, weights: dict[str, nn.Parameter], data: Any, config: Any) -> Scores:
    return _accumulate(model, weights, data, config.num_batches, lambda w, g: g.float().square())


@register_scorer("movement", needs_data=True)
def movement_scores(model: nn.Module, weights: dict[str, nn.Parameter], data: Any, config: Any) -> Scores:
    return _accumulate(model, weights, data, config.num_batches, lambda w, g: -(w.detach().float() * g.float()))


@register_scorer("lottery_ticket", needs_data=True)
def lottery_ticket_scores(model: nn.Module, weights: dict[str, nn.Parameter], data: Any, config: Any) -> Scores:
    """Fine-tune the targeted weights in full for ``lt_steps`` AdamW steps, score the change,
    and restore the weights bit for bit (LT-SFT phase one; needs full fine-tuning's memory once)."""
    loss_fn, batches = _loss_and_batches(data)
    original = {n: w.detach().clone() for n, w in weights.items()}
    with _only_trainable(model, weights.values(), train=True):
        optimizer = torch.optim.AdamW(list(weights.values()), lr=config.lt_lr, weight_decay=0.0)
        steps = 0
        for batch in _cycle(batches, config.lt_steps):
            loss = _finite(loss_fn(model, _to_device(batch, model)), steps)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
        del optimizer
        scores = {n: (w.detach().float() - original[n].float()).abs_() for n, w in weights.items()}
        with torch.no_grad():
            for n, w in weights.items():
                w.copy_(original[n])
    _require_batches(steps)
    return scores


# ------------------------------------------------------------------------ machinery


def _accumulate(model, weights, data, num_batches: int, term: Callable[[Tensor, Tensor], Tensor]) -> Scores:
    """``sum_b term(W, dL_b/dW)`` per weight over ``num_batches`` batches, one weight's gradient at a time."""
    loss_fn, batches = _loss_and_batches(data)
    totals = {n: torch.zeros(w.shape, dtype=torch.float32, device=w.device) for n, w in weights.items()}

    def fold(name: str, weight: Tensor) -> None:
        totals[name].add_(term(weight, weight.grad))
        weight.grad = None

    seen = 0
    with _only_trainable(model, weights.values(), train=False):
        handles = [w.register_post_accumulate_grad_hook(partial(fold, n)) for n, w in weights.items()]
        try:
            for batch in _cycle(batches, num_batches):
                _finite(loss_fn(model, _to_device(batch, model)), seen).backward()
                seen += 1
        finally:
            for handle in handles:
                handle.remove()
    _require_batches(seen)
    return totals


class _only_trainable:
    """Make only ``params`` require grad (eval or train mode) and restore everything after."""

    def __init__(self, model: nn.Module, params: Iterable[nn.Parameter], train: bool):
        self.model, self.params, self.train = model, list(params), train

    def __enter__(self):
        self.saved = [(p, p.requires_grad) for p in self.model.parameters()]
        self.was_training = self.model.training
        for p, _ in self.saved:
            p.requires_grad_(False)
        for p in self.params:
            p.requires_grad_(True)
        self.model.train(self.train)

    def __exit__(self, *exc):
        for p in self.params:
            p.grad = None
        for p, flag in self.saved:
            p.requires_grad_(flag)
        self.model.train(self.was_training)


def _loss_and_batches(data: Any) -> tuple[LossFn, Iterable[Any]]:
    if isinstance(data, ScoringData):
        return data.loss_fn or default_loss, data.batches
    return default_loss, data


def _cycle(batches: Iterable[Any], n: int) -> Iterator[Any]:
    """``n`` batches, starting over when a re-iterable source runs out."""
    given = 0
    while given < n:
        before = given
        for batch in batches:
            yield batch
            given += 1
            if given == n:
                return
        if given == before or iter(batches) is batches:  # empty, or a one-shot iterator
            return


def _require_batches(seen: int) -> None:
    if seen == 0:
        raise DataError("the scoring data yielded no batches; pass a non-empty iterable of training batches")


def _finite(loss: Tensor, step: int) -> Tensor:
    if not torch.isfinite(loss).all():
        raise TrainingError(f"the loss of scoring batch {step} is {loss.item()}; check the data and the model's inputs")
    return loss


def _to_device(batch: Any, model: nn.Module) -> Any:
    device = next(model.parameters()).device
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, model) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, model) for v in batch)
    return batch
