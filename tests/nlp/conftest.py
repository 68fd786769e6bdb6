"""Tiny models for the NLP tests: a 2-layer BERT with the embedded MiniLM tokenizer and a
2-layer Llama with a small byte-level BPE tokenizer, built from configs in tmp folders."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory):
    from scalpel.nlp.chat.base import build_decoder, train_tokenizer

    path = tmp_path_factory.mktemp("tiny_llama")
    texts = ["hello how are you", "I am fine thank you", "what is your name", "my name is bot", "good morning",
             "the weather is nice today", "do you like music", "yes I like music a lot"] * 20
    tokenizer = train_tokenizer(texts, vocab_size=300)
    model = build_decoder(len(tokenizer), hidden=32, layers=2, heads=2)
    # Untrained (std 0.02) tied embeddings cap the logits near zero, so no adapter could make the
    # model confident; a pre-trained model's embeddings are far larger. Scale them as training would.
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(25.0)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
