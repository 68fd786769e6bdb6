"""Conversations in, token batches out: messages JSONL or prompt/response tables, padded or packed.

Packing puts several short conversations into one row of ``max_length`` tokens. So that no
token attends across conversations, each row carries ``position_ids`` that restart at 0 for
every conversation and a 4-D boolean attention mask ``(B, 1, T, T)`` that is block-diagonal
and causal (``allowed[i, j] = segment[i] == segment[j] and j <= i``). Transformers decoders
(Llama, Qwen2, Mistral, ...) accept such a mask with the sdpa and eager kernels;
:func:`check_packing_support` verifies it on the actual model (packed logits == separate logits)
and refuses packing where they differ, rather than training on leaked attention.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scalpel.core.batching import LengthGroupedBatches, padding_summary
from scalpel.core.errors import ConfigError, DataError
from scalpel.nlp.chat.template import check_messages, tokenize_conversation
from scalpel.nlp.tables import read_table, read_text_file

IGNORE = -100


def read_conversations(path: str | Path, messages_column: str = "messages", prompt_column: str = "prompt",
                       response_column: str = "response", system_prompt: str = "", encoding: str = "utf-8") -> list[list[dict[str, str]]]:
    """Conversations from a JSONL file of ``{"messages": [...]}`` lines, or from any table
    (CSV/JSONL/Parquet/datasets folder) with prompt and response columns."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"conversation file {path} does not exist; check the path")
    conversations = []
    if path.suffix.lower() in (".jsonl", ".json") and path.is_file():
        lines = [(i, line) for i, line in enumerate(read_text_file(path, encoding).splitlines(), 1) if line.strip()]
        records = []
        for i, line in lines:
            try:
                records.append((i, json.loads(line)))
            except json.JSONDecodeError as err:
                raise DataError(f"{path}, line {i}: not JSON ({err.msg}); fix the line") from err
        if records and all(isinstance(r, dict) and messages_column in r for _, r in records):
            for i, r in records:
                conversations.append(_with_system(check_messages(r[messages_column], f"{path}, line {i}"), system_prompt))
            return conversations
        if not records or not all(isinstance(r, dict) and prompt_column in r for _, r in records):
            found = sorted({k for _, r in records if isinstance(r, dict) for k in r})
            raise DataError(f"{path}: each line needs a {messages_column!r} list or {prompt_column!r}/{response_column!r} "
                            f"fields; columns found: {found}. Set messages_column or prompt_column/response_column")
    table = read_table(path, prompt_column, response_column, on_bad_rows="error", encoding=encoding)
    for prompt, response in zip(table.texts, table.labels or []):
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": str(response)}]
        conversations.append(_with_system(messages, system_prompt))
    return conversations


def _with_system(messages: list[dict[str, str]], system_prompt: str) -> list[dict[str, str]]:
    if system_prompt and messages[0]["role"] != "system":
        return [{"role": "system", "content": system_prompt}, *messages]
    return messages


def encode_conversations(tokenizer: Any, conversations: list[list[dict[str, str]]], max_length: int) -> list[dict[str, list[int]]]:
    """``{"input_ids", "labels"}`` per conversation; labels are -100 outside assistant tokens.
    Conversations longer than ``max_length`` are cut; one left with no assistant token is dropped."""
    examples = []
    for messages in conversations:
        ids, mask = tokenize_conversation(tokenizer, messages)
        ids, mask = ids[:max_length], mask[:max_length]
        if any(mask):
            examples.append({"input_ids": ids, "labels": [t if m else IGNORE for t, m in zip(ids, mask)]})
    if not examples:
        raise DataError("no conversation keeps an assistant token within max_length; raise max_length or check the data")
    return examples


def pad_batch(examples: list[dict[str, list[int]]], pad_id: int) -> dict[str, Tensor]:
    """Right-padded ``input_ids``/``labels``/``attention_mask`` of shape (B, T_max)."""
    longest = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), longest), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), longest), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(examples), longest), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        attention[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}


def pack_examples(examples: list[dict[str, list[int]]], max_length: int, seed: int = 0) -> list[list[dict[str, list[int]]]]:
    """Group examples (shuffled, first-fit) into bins of at most ``max_length`` tokens."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    bins: list[list[dict[str, list[int]]]] = []
    sizes: list[int] = []
    for i in order:
        n = len(examples[i]["input_ids"])
        for b, size in enumerate(sizes):
            if size + n <= max_length:
                bins[b].append(examples[i])
                sizes[b] += n
                break
        else:
            bins.append([examples[i]])
            sizes.append(n)
    return bins


def packed_batch(rows: list[list[dict[str, list[int]]]], pad_id: int) -> dict[str, Tensor]:
    """Each row concatenates its examples; ``position_ids`` restart per example and
    ``attention_mask`` is (B, 1, T, T) bool, block-diagonal and causal (padding attends to nothing
    but itself, so softmax stays finite, and is ignored by the loss)."""
    longest = max(sum(len(e["input_ids"]) for e in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, longest), pad_id, dtype=torch.long)
    labels = torch.full((B, longest), IGNORE, dtype=torch.long)
    positions = torch.zeros((B, longest), dtype=torch.long)
    segment = torch.full((B, longest), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        start = 0
        for s, e in enumerate(row):
            n = len(e["input_ids"])
            ids[b, start:start + n] = torch.tensor(e["input_ids"])
            labels[b, start:start + n] = torch.tensor(e["labels"])
            positions[b, start:start + n] = torch.arange(n)
            segment[b, start:start + n] = s
            start += n
        positions[b, start:] = torch.arange(longest - start)
    causal = torch.tril(torch.ones(longest, longest, dtype=torch.bool))
    same = segment[:, :, None] == segment[:, None, :]
    pad = segment < 0
    allowed = (same & ~pad[:, :, None]) & causal
    allowed |= torch.diag_embed(pad)  # a padding position sees only itself
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "attention_mask": allowed[:, None]}


class ConversationBatches:
    """A re-iterable of batches with ``len()`` (what ``fit`` needs). Packed rows are fixed; padded
    batches come from :class:`~scalpel.core.batching.LengthGroupedBatches` (shuffled groups of
    similar length, ``group_by_length``; else plain shuffling), reordered per epoch by ``fit``
    through :meth:`set_epoch`, so the order is a function of (seed, epoch)."""

    def __init__(self, examples: list[dict[str, list[int]]], batch_size: int, pad_id: int, *, packing: bool = False,
                 max_length: int = 512, seed: int = 0, group_by_length: bool = True):
        self.examples, self.pad_id, self.sampler = examples, pad_id, None
        if packing:
            rows = pack_examples(examples, max_length, seed)
            self.batches = [packed_batch(rows[i:i + batch_size], pad_id) for i in range(0, len(rows), batch_size)]
        else:
            lengths = [len(e["input_ids"]) for e in examples]
            self.sampler = LengthGroupedBatches(lengths, batch_size, seed, group_batches=None if group_by_length else 1)
            self.padding = padding_summary(lengths, batch_size, seed)

    def set_epoch(self, epoch: int) -> None:
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches) if self.sampler is None else len(self.sampler)

    def __iter__(self):
        if self.sampler is None:
            return iter(self.batches)
        return (pad_batch([self.examples[i] for i in batch], self.pad_id) for batch in self.sampler)


def check_packing_support(model: torch.nn.Module, vocab_size: int, atol: float = 1e-4) -> None:
    """Refuse packing unless two packed sequences give the same logits as run apart."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randint(0, vocab_size, (5,), generator=g), torch.randint(0, vocab_size, (7,), generator=g)
    batch = packed_batch([[{"input_ids": a.tolist(), "labels": a.tolist()}, {"input_ids": b.tolist(), "labels": b.tolist()}]], 0)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            packed = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                           position_ids=batch["position_ids"].to(device)).logits[0].float()
            apart = torch.cat([model(input_ids=x[None].to(device)).logits[0].float() for x in (a, b)])
        ok = torch.allclose(packed, apart, atol=atol, rtol=1e-3)
    except Exception as err:  # noqa: BLE001  a model that rejects 4-D masks
        raise ConfigError("nlp.chat packing", [f"{type(model).__name__} does not take a 4-D attention mask ({err}); "
                                               "set packing=false (plain padding)"]) from err
    finally:
        model.train(was_training)
    if not ok:
        raise ConfigError("nlp.chat packing", [f"{type(model).__name__} lets packed conversations attend to each other "
                                               "(its attention ignores the block-diagonal mask); set packing=false"])
