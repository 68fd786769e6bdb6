"""``scalpel predict nlp.sentiment --adapter DIR "text" ...`` and batch prediction over a file.

The adapter's ``scalpel.json`` says how to rebuild the base (``base_model``) and holds the
label names (``extra.label_names``), so nothing else is needed to serve it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scalpel.core.artifacts import load_adapter, read_adapter_meta
from scalpel.core.batching import length_sorted_batches
from scalpel.core.errors import AdapterError, DataError
from scalpel.core.fit.precision import inference_autocast
from scalpel.nlp.sentiment.data import LabelMap, encode_texts, make_collate
from scalpel.nlp.sentiment.model import default_model_path, load_classifier, load_tokenizer
from scalpel.nlp.sentiment.task import probabilities
from scalpel.nlp.tables import read_table


def load_for_prediction(adapter_dir: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Rebuild the base classifier recorded in the adapter, load the adapter; returns (model, tokenizer, meta)."""
    adapter_dir = Path(adapter_dir)
    meta = read_adapter_meta(adapter_dir)
    base = base_for_adapter(meta, adapter_dir)
    tokenizer = load_tokenizer(meta["extra"].get("tokenizer") or _base_path(meta, adapter_dir))
    return load_adapter(base, adapter_dir).eval(), tokenizer, meta


def base_for_adapter(meta: dict[str, Any], adapter_dir: Path) -> nn.Module:
    """The classifier a sentiment adapter was trained on (encoder weights, its pooling, a head of
    its classes), the builder of ``scalpel adapter merge`` for ``nlp.sentiment``.

    Raises:
        AdapterError: not a sentiment adapter, or no base recorded.
    """
    extra = meta.get("extra", {})
    if extra.get("task") != "nlp.sentiment" or "label_names" not in extra:
        raise AdapterError(f"{adapter_dir} was not written by the nlp.sentiment pipeline (no label_names in scalpel.json)")
    pooling = extra.get("pooling") or meta.get("base_model", {}).get("pooling") or "cls"
    return load_classifier(_base_path(meta, adapter_dir), tuple(extra["label_names"]), pooling=pooling)


def _base_path(meta: dict[str, Any], adapter_dir: Path) -> str:
    base = meta.get("base_model", {})
    path = base.get("name_or_path", "")
    if base.get("embedded") and not os.path.isdir(path):
        path = default_model_path()  # the same wheel, installed in another environment
    if not path:
        raise AdapterError(f"{adapter_dir}/scalpel.json does not say which base model it was trained on")
    return path


def predict(adapter_dir: Path, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    """One ``{"text", "label", "score", "probabilities"}`` per input text; with ``file=PATH``
    the texts come from that file (a text column of a table, or one text per line), and
    when that file has the label column, ``"true_label"`` and ``"correct"`` are added.

    Options: ``file``, ``text_column``, ``label_column``, ``batch_size`` (default 64),
    ``precision`` (or ``mixed_precision``; default ``auto``: bf16 where the hardware runs it natively).
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
    precision = options.get("precision", options.get("mixed_precision", "auto"))
    probs = class_probabilities(model, tokenizer, texts, int(extra.get("max_length", 128)),
                                batch_size=int(options.get("batch_size", 64)), precision=str(precision))
    results = []
    for i in range(len(texts)):
        p = probs[i]
        k = int(torch.argmax(p))
        row = {"text": texts[i], "label": labels.names[k], "score": round(float(p[k]), 6),
               "probabilities": {n: round(float(v), 6) for n, v in zip(labels.names, p)}}
        if truth is not None and truth[i] is not None:
            row["true_label"] = str(truth[i])
            row["correct"] = row["true_label"] == row["label"]
        results.append(row)
    return results


def class_probabilities(model: nn.Module, tokenizer: Any, texts: list[str], max_length: int, *, batch_size: int = 64,
                        precision: str = "auto") -> Tensor:
    """Softmax class probabilities of ``texts``, ``(len(texts), K)`` in input order, as ``scalpel
    predict`` and the app compute them: texts of similar length batched together (less
    padding) under the precision ``fit`` trains with (``auto``: bf16 where the hardware runs it
    natively; :func:`~scalpel.core.fit.precision.inference_autocast`), outputs in fp32."""
    encoded = encode_texts(tokenizer, texts, max_length)
    collate = make_collate(tokenizer)
    out: list[Tensor | None] = [None] * len(texts)
    with inference_autocast(precision, next(model.parameters()).device):
        for batch in length_sorted_batches([len(ids) for ids in encoded["input_ids"]], batch_size):
            probs = probabilities(model, collate([{k: v[i] for k, v in encoded.items()} for i in batch]))
            for i, p in zip(batch, probs):
                out[i] = p
    return torch.stack(out)  # type: ignore[arg-type]
