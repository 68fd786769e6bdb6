"""Several sentiment adapters on the same texts in one mixed-adapter pass:
``scalpel predict nlp.sentiment --adapter runs/a/adapter --adapter runs/b/adapter "text" ...``.

The adapters must share a base (the same encoder, labels and pooling); the base is built
once, every adapter is loaded onto it (:func:`scalpel.core.lora.mixed.load_adapters`) and
each batch runs through the model once with every sample naming its adapter
(:func:`scalpel.core.lora.mixed.compare_adapters`). Adapters that cannot share a batch
(sparse, layer-wise or full runs) are compared one after another with :func:`predict`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from scalpel.core.artifacts import read_adapter_meta
from scalpel.core.errors import AdapterError, DataError, ScalpelError
from scalpel.core.lora.mixed import compare_adapters, load_adapters
from scalpel.nlp.sentiment.data import encode_texts, make_collate
from scalpel.nlp.sentiment.model import default_model_path, load_classifier, load_tokenizer
from scalpel.nlp.sentiment.predict import predict


def shared_base(adapter_dirs: Sequence[Path]) -> tuple[str, tuple[str, ...], str, dict[str, Any]]:
    """(base path, label names, pooling, first adapter's extra) common to all adapters.

    Raises:
        AdapterError: an adapter is not a sentiment adapter, or two differ in base, labels or pooling.
    """
    seen = None
    for path in adapter_dirs:
        meta = read_adapter_meta(path)
        extra, base = meta.get("extra", {}), meta.get("base_model", {})
        if extra.get("task") != "nlp.sentiment" or "label_names" not in extra:
            raise AdapterError(f"{path} was not written by the nlp.sentiment pipeline (no label_names in scalpel.json)")
        where = base.get("name_or_path", "")
        if base.get("embedded") and not os.path.isdir(where):
            where = default_model_path()
        key = (where, tuple(extra["label_names"]), extra.get("pooling") or base.get("pooling") or "cls")
        if seen is not None and key != seen[0]:
            raise AdapterError(f"{path} and {adapter_dirs[0]} do not share a base (base, labels, pooling: {key} vs "
                               f"{seen[0]}); compare adapters of one base model")
        seen = seen or (key, extra)
    return (*seen[0], seen[1])


def compare(adapter_dirs: Sequence[Path], inputs: list[str], options: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """One list of :func:`predict` rows per adapter, in ``adapter_dirs`` order, the texts of
    all adapters classified in one mixed-adapter pass per batch (``file=PATH`` as in
    :func:`predict`). Falls back to one pass per adapter when the adapters cannot be mixed.
    """
    adapter_dirs = [Path(p) for p in adapter_dirs]
    path, names, pooling, extra = shared_base(adapter_dirs)
    model = load_classifier(path, names, pooling=pooling).eval()
    try:
        slots = load_adapters(model, adapter_dirs)
    except ScalpelError:  # e.g. full fine-tuning or a sparse delta: exact only one adapter at a time
        return [predict(p, inputs, options) for p in adapter_dirs]
    tokenizer = load_tokenizer(extra.get("tokenizer") or path)
    rows = predict_texts_rows(adapter_dirs[0], inputs, options)
    texts = [r["text"] for r in rows]
    if not texts:
        raise DataError("nothing to predict: give texts or file=PATH")
    encoded = encode_texts(tokenizer, texts, int(extra.get("max_length", 128)))
    collate = make_collate(tokenizer)
    size = max(1, int(options.get("batch_size", 64)) // len(slots))
    probs: dict[str, list[torch.Tensor]] = {s: [] for s in slots}
    with torch.no_grad():
        for start in range(0, len(texts), size):
            batch = collate([{k: v[i] for k, v in encoded.items()} for i in range(start, min(start + size, len(texts)))])
            batch.pop("labels", None)
            for slot, out in compare_adapters(model, slots, batch).items():
                probs[slot].append(out["logits"].float().softmax(-1))
    results = []
    for slot in slots:
        table = torch.cat(probs[slot])
        results.append([_row(base, p, names) for base, p in zip(rows, table)])
    return results


def predict_texts_rows(adapter_dir: Path, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    """The texts (and true labels) :func:`predict` would classify, as rows without predictions."""
    from scalpel.nlp.sentiment.data import LabelMap
    from scalpel.nlp.tables import read_table

    extra = read_adapter_meta(adapter_dir)["extra"]
    rows = [{"text": t} for t in inputs]
    if options.get("file"):
        table = read_table(options["file"], options.get("text_column", extra.get("text_column", "text")),
                           options.get("label_column", extra.get("label_column", "label")), require_labels=False,
                           on_bad_rows=options.get("on_bad_rows", "error"))
        if table.labels is not None:
            LabelMap(tuple(extra["label_names"])).encode(table.labels, options["file"])
        labels = table.labels if table.labels is not None else [None] * len(table.texts)
        rows += [{"text": t, **({"true_label": str(y)} if y is not None else {})} for t, y in zip(table.texts, labels)]
    return rows


def _row(base: dict[str, Any], p: torch.Tensor, names: tuple[str, ...]) -> dict[str, Any]:
    k = int(torch.argmax(p))
    row = {"text": base["text"], "label": names[k], "score": round(float(p[k]), 6),
           "probabilities": {n: round(float(v), 6) for n, v in zip(names, p)}}
    if "true_label" in base:
        row["true_label"] = base["true_label"]
        row["correct"] = row["true_label"] == row["label"]
    return row
