"""Generation metrics of a chat model on held-out prompts: greedy answers, scored against the references.

For each held-out conversation the prompt is everything before its first assistant turn and
the reference is that turn. Answers are decoded greedily in left-padded batches, stopping at
the template's end-of-turn token. Scores, averaged over prompts (all in [0, 1]):

- ``exact_match``: ``normalize(answer) == normalize(reference)``, where :func:`normalize`
  lowercases, drops punctuation and the articles a/an/the, and collapses whitespace (as SQuAD does);
- ``token_f1``: F1 of the normalized answer's tokens against the reference's (bags of words);
- ``rouge_l``: ROUGE-L F-measure (longest common subsequence of tokens), from torchmetrics'
  ``ROUGEScore`` (no stemming, so it needs no nltk and works offline);
- ``answer_format`` (closed-answer data only): the share of answers that are one of the answers
  the data allows, when the references take at most :data:`MAX_CLOSED_ANSWERS` distinct values
  (e.g. ``positive``/``negative``). It shows whether a model has learned the format at all.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from scalpel.core.batching import length_sorted_batches
from scalpel.nlp.chat.template import end_of_turn_ids, render

MAX_CLOSED_ANSWERS = 20
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(answer: str, reference: str) -> float:
    a, r = normalize(answer).split(), normalize(reference).split()
    if not a or not r:
        return float(a == r)
    common = sum((Counter(a) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def rouge_l(answers: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F-measure of each answer against its reference (torchmetrics)."""
    from torchmetrics.functional.text.rouge import rouge_score

    return [float(rouge_score(a, r, rouge_keys="rougeL")["rougeL_fmeasure"]) for a, r in zip(answers, references)]


def prompt_and_reference(messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """The messages before the first assistant turn, and that turn's content."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return messages[:first], messages[first]["content"]


def closed_answers(references: Sequence[str]) -> set[str] | None:
    """The normalized answers the data allows, when it has few (a classification-style task); else None."""
    distinct = {normalize(r) for r in references}
    return distinct if len(distinct) <= min(MAX_CLOSED_ANSWERS, len(references) // 2) else None


@torch.no_grad()
def greedy_answers(model: nn.Module, tokenizer: Any, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int,
                   batch_size: int = 32) -> list[str]:
    """The greedy reply to each prompt, in prompt order (left-padded batches of prompts of
    similar length, :func:`~scalpel.core.batching.length_sorted_batches`; stops at the
    end-of-turn token)."""
    device = next(model.parameters()).device
    stop = end_of_turn_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    was_training, side = model.training, tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"
    texts = [render(tokenizer, p, add_generation_prompt=True) for p in prompts]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    answers: list[str] = [""] * len(texts)
    try:
        for batch in length_sorted_batches(lengths, batch_size):
            inputs = tokenizer([texts[i] for i in batch], add_special_tokens=False, return_tensors="pt", padding=True).to(device)
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stop, pad_token_id=pad)
            new = out[:, inputs["input_ids"].shape[1]:]
            for i, text in zip(batch, tokenizer.batch_decode(new, skip_special_tokens=True)):
                answers[i] = text.strip()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def score_answers(answers: Sequence[str], references: Sequence[str], allowed: set[str] | None) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Mean scores and one scored row per answer."""
    rouge = rouge_l(answers, references)
    rows = [{"answer": a, "exact_match": float(normalize(a) == normalize(r)), "token_f1": token_f1(a, r), "rouge_l": g}
            for a, r, g in zip(answers, references, rouge)]
    if allowed is not None:
        for row in rows:
            row["answer_format"] = float(normalize(row["answer"]) in allowed)
    keys = [k for k in rows[0] if k != "answer"] if rows else []
    return {k: sum(row[k] for row in rows) / len(rows) for k in keys}, rows


class AnswerEvaluation:
    """Answers ``prompts`` greedily each time it is called (before and after tuning) and keeps them.

    Args:
        tokenizer: with the run's chat template.
        conversations: held-out conversations (each gives one prompt and reference).
        all_references: the first assistant turns of all the data (decide whether answers are a closed set).
        answer_tokens: the most tokens an answer may have (the longest reference plus two, if shorter).
    """

    def __init__(self, tokenizer: Any, conversations: Sequence[list[dict[str, str]]], all_references: Sequence[str],
                 answer_tokens: int = 32):
        pairs = [prompt_and_reference(m) for m in conversations]
        self.tokenizer = tokenizer
        self.prompts = [p for p, _ in pairs]
        self.references = [r for _, r in pairs]
        self.allowed = closed_answers(all_references)
        longest = max((len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in self.references), default=1)
        self.max_new_tokens = max(1, min(answer_tokens, longest + 2))
        self.calls: list[list[dict[str, Any]]] = []

    def __call__(self, model: nn.Module) -> dict[str, float]:
        if not self.prompts:
            return {}
        answers = greedy_answers(model, self.tokenizer, self.prompts, self.max_new_tokens)
        means, rows = score_answers(answers, self.references, self.allowed)
        self.calls.append(rows)
        return means

    def majority_share(self) -> float | None:
        """The exact match of always giving the most common reference (closed answers only)."""
        if self.allowed is None or not self.references:
            return None
        top = Counter(normalize(r) for r in self.references).most_common(1)[0][1]
        return top / len(self.references)

    def table(self) -> list[dict[str, Any]]:
        """One row per prompt: prompt, reference, and the answer and scores of each call (``before``, ``after``)."""
        rows = []
        for i, (prompt, reference) in enumerate(zip(self.prompts, self.references)):
            row: dict[str, Any] = {"prompt": prompt[-1]["content"], "reference": reference}
            named = {"before": self.calls[0], "after": self.calls[-1]} if len(self.calls) >= 2 else {"after": c for c in self.calls}
            for name, call in named.items():
                row[name] = call[i]["answer"]
                row[f"{name}_scores"] = {k: v for k, v in call[i].items() if k != "answer"}
            rows.append(row)
        return rows
