"""Tiny runs for the app tests, written with the domain pipelines' own functions and
``save_adapter`` (no training: the apps only need a valid, distinct adapter)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import scalpel.core as sc

APPS = Path(__file__).resolve().parents[2] / "apps"


def _perturb(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in sc.trainable_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.2)


def make_sentiment_run(adapter_dir: Path, bert_dir: Path, seed: int) -> Path:
    from scalpel.core.recipes import adapt
    from scalpel.nlp.sentiment.model import head_modules, load_classifier

    names = ("negative", "positive")
    model = load_classifier(str(bert_dir), names)
    model = adapt(model, "lora", targets="query|value", head=head_modules(model), r=2, alpha=4)
    _perturb(model, seed)
    extra = {"task": "nlp.sentiment", "label_names": list(names), "text_column": "text", "label_column": "label",
             "max_length": 32, "tokenizer": None}
    return sc.save_adapter(model, adapter_dir, metrics={"test_accuracy": 0.5 + seed / 100}, extra=extra,
                           base_model={"name_or_path": str(bert_dir), "class": "transformers.BertForSequenceClassification"})


@pytest.fixture(scope="session")
def nlp_runs(tmp_path_factory, tiny_bert_dir):
    """A runs root with two sentiment adapters on one tiny BERT and one chat adapter on a tiny Llama."""
    from scalpel.core.recipes import adapt
    from scalpel.nlp.chat.base import build_decoder, train_tokenizer
    from scalpel.nlp.chat.pipeline import load_causal_lm, load_chat_tokenizer
    from scalpel.nlp.chat.template import end_of_turn_ids

    root = tmp_path_factory.mktemp("runs")
    make_sentiment_run(root / "sent-a" / "adapter", tiny_bert_dir, 1)
    make_sentiment_run(root / "sent-b" / "adapter", tiny_bert_dir, 2)

    llama = tmp_path_factory.mktemp("tiny_llama")
    texts = ["hello how are you", "I am fine thank you", "what is your name", "my name is bot"] * 20
    train_tokenizer(texts, vocab_size=200).save_pretrained(llama)
    tokenizer = load_chat_tokenizer(str(llama))
    build_decoder(len(tokenizer), hidden=32, layers=2, heads=2).save_pretrained(llama)
    model = adapt(load_causal_lm(str(llama), tokenizer), "lora", r=2, alpha=4)
    _perturb(model, 3)
    adapter = sc.save_adapter(model, root / "chat" / "adapter", metrics={"loss_after": 1.0},
                              extra={"task": "nlp.chat", "chat_template": tokenizer.chat_template,
                                     "end_of_turn_ids": end_of_turn_ids(tokenizer)},
                              base_model={"name_or_path": str(llama), "class": "transformers.AutoModelForCausalLM"})
    tokenizer.save_pretrained(adapter)
    return root
