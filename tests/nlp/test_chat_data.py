"""Chat data: assistant masks (markers vs difference), bad conversations, packing without cross attention."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from scalpel.core.errors import ConfigError, DataError, TrainingError
from scalpel.nlp.chat.data import (
    IGNORE,
    ConversationBatches,
    check_packing_support,
    encode_conversations,
    pack_examples,
    packed_batch,
    read_conversations,
)
from scalpel.nlp.chat.task import ChatTask, assistant_token_loss
from scalpel.nlp.chat.template import (
    DEFAULT_TEMPLATE,
    DEFAULT_TEMPLATE_NO_MARKERS,
    end_of_turn_ids,
    ensure_chat_template,
    tokenize_conversation,
)

CONVERSATION = [
    {"role": "system", "content": "be kind"},
    {"role": "user", "content": "hello how are you"},
    {"role": "assistant", "content": "I am fine"},
    {"role": "user", "content": "what is your name"},
    {"role": "assistant", "content": "my name is bot"},
]


@pytest.fixture()
def tokenizer(tiny_llama_dir):
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    ensure_chat_template(tok)
    return tok


def test_difference_mask_equals_generation_marker_mask(tokenizer):
    ids_markers, mask_markers = tokenize_conversation(tokenizer, CONVERSATION)
    tokenizer.chat_template = DEFAULT_TEMPLATE_NO_MARKERS
    ids_diff, mask_diff = tokenize_conversation(tokenizer, CONVERSATION)
    assert ids_markers == ids_diff
    assert mask_markers == mask_diff
    said = tokenizer.decode([i for i, m in zip(ids_diff, mask_diff) if m])
    assert said == "I am fine<|im_end|>my name is bot<|im_end|>"


def test_end_of_turn_is_the_template_token(tokenizer):
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in end_of_turn_ids(tokenizer)


def test_conversation_without_assistant_turn_is_refused(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [{"messages": CONVERSATION}, {"messages": [{"role": "user", "content": "anyone there?"}]}]
    path.write_text("\n".join(json.dumps(line) for line in lines))
    with pytest.raises(DataError, match=r"line 2: the conversation has no assistant turn"):
        read_conversations(path)


def test_prompt_response_pairs_and_missing_columns(tmp_path):
    (tmp_path / "p.csv").write_text("prompt,response\nhi,hello\nbye,see you\n")
    conversations = read_conversations(tmp_path / "p.csv", system_prompt="be brief")
    assert conversations[1] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "bye"},
                                {"role": "assistant", "content": "see you"}]
    (tmp_path / "q.jsonl").write_text(json.dumps({"question": "hi", "answer": "hello"}) + "\n")
    with pytest.raises(DataError, match=r"columns found: \['answer', 'question'\]"):
        read_conversations(tmp_path / "q.jsonl")


def test_all_zero_mask_batch_is_refused(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    batch = {"input_ids": torch.ones(2, 5, dtype=torch.long), "labels": torch.full((2, 5), IGNORE)}
    with pytest.raises(TrainingError, match="no assistant tokens"):
        ChatTask().step(model, batch)


def test_loss_counts_only_assistant_tokens():
    logits = torch.randn(1, 4, 7)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 5]])
    expected = (torch.nn.functional.cross_entropy(logits[0, 1:3], torch.tensor([3, 5])))
    assert torch.allclose(assistant_token_loss(logits, labels), expected)


def test_packed_logits_equal_separate_logits(tiny_llama_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    examples = encode_conversations(tokenizer, [CONVERSATION, CONVERSATION[1:3], CONVERSATION[3:]], 64)
    rows = pack_examples(examples, sum(len(e["input_ids"]) for e in examples))
    assert len(rows) == 1 and len(rows[0]) == 3
    batch = packed_batch(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits[0]
        start = 0
        for e in rows[0]:
            n = len(e["input_ids"])
            alone = model(input_ids=torch.tensor([e["input_ids"]])).logits[0]
            assert torch.allclose(packed[start:start + n], alone, atol=1e-5)
            start += n
    check_packing_support(model, len(tokenizer))  # does not raise


def test_packing_refused_for_a_model_that_ignores_the_mask(tiny_llama_dir):
    class IgnoresMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)

        def forward(self, input_ids, attention_mask=None, position_ids=None):
            return self.inner(input_ids=input_ids)

    with pytest.raises(ConfigError, match="set packing=false"):
        check_packing_support(IgnoresMask(), 50)


def test_padded_batches_mask_padding(tokenizer):
    examples = encode_conversations(tokenizer, [CONVERSATION, CONVERSATION[1:3]], 64)
    (batch,) = list(ConversationBatches(examples, 2, tokenizer.pad_token_id))
    short = int(batch["attention_mask"].sum(1).min())
    row = int(batch["attention_mask"].sum(1).argmin())
    assert (batch["labels"][row, short:] == IGNORE).all()
    assert DEFAULT_TEMPLATE != DEFAULT_TEMPLATE_NO_MARKERS


def test_streaming_stops_at_end_of_turn(tiny_llama_dir, tokenizer):
    """A scripted decoder emits a reply, the end-of-turn token, then more words: the stream
    arrives in several pieces and ends at the end-of-turn token, long before max_new_tokens."""
    from scalpel.nlp.chat.generate import stream_reply

    words = tokenizer("hello how are you", add_special_tokens=False)["input_ids"]
    after = tokenizer(" my name is bot", add_special_tokens=False)["input_ids"]
    script = words + [end_of_turn_ids(tokenizer)[0]] + after
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    calls = []

    def scripted(module, args, kwargs, output):
        step = len(calls)
        calls.append(step)
        logits = torch.full_like(output.logits, -1e4)
        logits[:, -1, script[min(step, len(script) - 1)]] = 1e4
        output.logits = logits
        return output

    model.register_forward_hook(scripted, with_kwargs=True)
    pieces = list(stream_reply(model, tokenizer, CONVERSATION[1:2], max_new_tokens=40, temperature=0.0))
    assert "".join(pieces).strip() == "hello how are you"
    assert len([p for p in pieces if p]) >= 2  # streamed, not returned at the end in one piece
    assert len(calls) == len(words) + 1  # stopped right after the end-of-turn token


def test_padded_batches_are_length_grouped_and_reshuffled_per_epoch():
    # token ids stand in for tokenised conversations: 400 of lengths 2..41 (100 batches of 4)
    examples = [{"input_ids": [5] * (2 + i % 40), "labels": [5] * (2 + i % 40)} for i in range(400)]
    batches = ConversationBatches(examples, 4, pad_id=0, seed=3)
    plain = ConversationBatches(examples, 4, pad_id=0, seed=3, group_by_length=False)
    seen = []
    for epoch in (0, 1):
        batches.set_epoch(epoch)
        seen.append([tuple(b["attention_mask"].sum(1).tolist()) for b in batches])
        assert sorted(n for b in seen[-1] for n in b) == sorted(2 + i % 40 for i in range(400))
        assert len(seen[-1]) == len(batches) == 100
    assert seen[0] != seen[1]  # a new order every epoch, fixed by (seed, epoch)
    assert batches.padding["padding_share_grouped"] < batches.padding["padding_share_shuffled"]
    pads = lambda bs: sum(int((b["attention_mask"] == 0).sum()) for b in bs)  # noqa: E731
    plain.set_epoch(0)
    batches.set_epoch(0)
    assert pads(batches) < pads(plain) / 2
