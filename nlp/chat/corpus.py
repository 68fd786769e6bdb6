"""Built-in instruction data of ``scalpel run nlp.chat`` (used when no ``train_file`` is given).

- ``reviews`` (default): "Is this review positive or negative?" about the VADER Amazon
  product-review snippets (mean human rating in [-4, 4], see :mod:`scalpel.nlp.corpora`),
  answered with one word, ``positive`` or ``negative``. Snippets rated within
  :data:`REVIEW_MARGIN` of neutral are left out, and the classes are balanced (so always
  giving one answer scores 50 %). A person can judge every answer, and a small base can
  learn it: the answer format, then the sentiment.
- ``chatterbot``: the chatterbot-corpus English dialogues (open-ended small talk; a tiny base
  learns their format, not good replies).

The embedded base is never pre-trained on the ``reviews`` snippets (:data:`TUNING_CORPUS` is
left out of :func:`scalpel.nlp.chat.base.pretraining_text`), so held-out answers are not
memorised text.
"""

from __future__ import annotations

import random

from scalpel.core.errors import DataError
from scalpel.nlp import corpora

CORPORA = ("reviews", "chatterbot")
#: The VADER corpus the review questions are built from (and that pre-training leaves out).
TUNING_CORPUS = "amazon"
#: Snippets with ``|mean rating| <= REVIEW_MARGIN`` are ambiguous to raters; they are dropped.
REVIEW_MARGIN = 1.0
REVIEW_QUESTION = "Is this review positive or negative? Answer with one word.\n\n"
REVIEW_ANSWERS = ("positive", "negative")


def review_conversations(seed: int = 0) -> list[list[dict[str, str]]]:
    """One user question and a one-word assistant answer per snippet, classes balanced, shuffled."""
    texts, labels = corpora.vader_binary(TUNING_CORPUS, margin=REVIEW_MARGIN)
    by_label = {answer: [t for t, y in zip(texts, labels) if y == answer] for answer in REVIEW_ANSWERS}
    rng = random.Random(seed)
    n = min(len(v) for v in by_label.values())
    pairs = [(t, answer) for answer, group in by_label.items() for t in rng.sample(group, n)]
    rng.shuffle(pairs)
    return [[{"role": "user", "content": REVIEW_QUESTION + text}, {"role": "assistant", "content": answer}]
            for text, answer in pairs]


def builtin_conversations(name: str, seed: int = 0) -> tuple[list[list[dict[str, str]]], str]:
    """The conversations of a built-in corpus and a line that says what they are."""
    if name == "reviews":
        return review_conversations(seed), (f"review questions: VADER {TUNING_CORPUS} snippets with |rating| > {REVIEW_MARGIN}, "
                                            "balanced, answered 'positive' or 'negative'")
    if name == "chatterbot":
        return [c["messages"] for c in corpora.read_chatterbot()], "chatterbot-corpus (english)"
    raise DataError(f"unknown built-in chat corpus {name!r}; choose one of {', '.join(CORPORA)} or give a train_file")
