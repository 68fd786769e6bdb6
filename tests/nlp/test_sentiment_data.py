"""Label maps, stratified splits, truncation counting."""

from __future__ import annotations

import logging
from collections import Counter

import pytest

from scalpel.core.errors import DataError
from scalpel.nlp.sentiment.config import SentimentOptions
from scalpel.nlp.sentiment.data import LabelMap, TruncationCounter, encode_texts, load_splits, stratified_split
from scalpel.nlp.tables import TextTable


def test_label_map_orders_integers_numerically_and_refuses_unknown():
    labels = LabelMap.from_labels([10, 2, "2", 1.0])
    assert labels.names == ("1", "2", "10")
    assert labels.encode(["10", 1], "x") == [2, 0]
    with pytest.raises(DataError, match=r"label\(s\) \['7'\].*known labels: \['1', '2', '10'\]"):
        labels.encode([7], "the test data")


def test_one_class_is_refused():
    with pytest.raises(DataError, match="at least two classes"):
        LabelMap.from_labels(["pos", "pos"])


def test_stratified_split_keeps_proportions():
    texts = [f"t{i}" for i in range(100)]
    labels = ["a"] * 80 + ["b"] * 20
    rest, held = stratified_split(TextTable(texts, labels, "s"), 0.2, seed=0, what="test")
    assert len(held.texts) == 20 and len(rest.texts) == 80
    assert Counter(held.labels) == {"a": 16, "b": 4}
    assert not set(held.texts) & set(rest.texts)


def test_split_of_too_small_file_says_so():
    with pytest.raises(DataError, match="too few to split"):
        stratified_split(TextTable(["a", "b", "c"], ["x", "y", "y"], "s"), 0.5, 0, "test")


def test_load_splits_from_one_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n" + "".join(f"text {i},{i % 3}\n" for i in range(90)) + "broken,1,2\n")
    splits = load_splits(SentimentOptions(train_file=str(path), validation_fraction=0.2, test_fraction=0.2), seed=0)
    assert splits.labels.names == ("0", "1", "2")
    assert (len(splits.train.texts), len(splits.validation.texts), len(splits.test.texts)) == (54, 18, 18)
    assert splits.skipped == 1
    assert Counter(splits.test.labels) == {"0": 6, "1": 6, "2": 6}


def test_truncation_is_counted_and_warned_once(caplog, tiny_bert_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    counter = TruncationCounter(8)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            out = encode_texts(tokenizer, ["short", "a much longer text that goes on and on for many words"], 8, counter)
    assert max(len(ids) for ids in out["input_ids"]) == 8
    assert counter.truncated == 3 and counter.seen == 6
    assert sum("truncated" in r.getMessage() for r in caplog.records) == 1


def test_empty_text_is_refused(tiny_bert_dir):
    from transformers import AutoTokenizer

    with pytest.raises(DataError, match="text 1 .* is empty"):
        encode_texts(AutoTokenizer.from_pretrained(tiny_bert_dir), ["fine", "  "], 8)
