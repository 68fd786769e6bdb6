"""Length grouping pads less in a real epoch of each text pipeline: the batches the training
loader hands to ``fit`` are counted, not the report's estimate.

An epoch under 16 batches is not grouped (core/batching.py: there it costs SGD its
randomness for little), and the report says so rather than "used": the speed table's 192
texts in batches of 32 (6 batches) were plain shuffled, so grouped and shuffled shares were
the same 39.8%.
"""

from __future__ import annotations

import pytest

from scalpel.core.options import MethodOptions, TrainOptions
from scalpel.nlp.chat.base import embedded_base
from scalpel.nlp.chat.config import ChatOptions
from scalpel.nlp.chat.corpus import builtin_conversations
from scalpel.nlp.chat.data import ConversationBatches, encode_conversations
from scalpel.nlp.chat.pipeline import load_chat_tokenizer
from scalpel.nlp.sentiment.config import SentimentOptions
from scalpel.nlp.sentiment.pipeline import build_kit


def _padding(batches) -> float:
    """Share of padding positions in the batches as the model sees them."""
    pad = real = 0
    for batch in batches:
        mask = batch["attention_mask"]
        real += int(mask.sum())
        pad += int((mask == 0).sum())
    return pad / (pad + real)


@pytest.mark.parametrize("n", [600, 1000])
def test_a_sentiment_epoch_on_the_embedded_corpus_pads_less_when_grouped(tmp_path, tiny_bert_dir, n):
    shares = {}
    for grouped in (True, False):
        options = SentimentOptions(model=str(tiny_bert_dir), max_train_samples=n, max_eval_samples=50, max_length=64)
        kit = build_kit(options, MethodOptions(), TrainOptions(batch_size=32, group_by_length=grouped), tmp_path / f"{grouped}")
        batches = list(kit.train_data)
        assert sum(len(b["labels"]) for b in batches) == n  # every text once
        shares[grouped] = _padding(batches)
        if grouped:  # the share the report states is the one of the batches trained on
            reported = kit.finish.__self__.padding  # the kit's SentimentOutputs
            assert shares[grouped] == pytest.approx(reported["padding_share_grouped"], abs=1e-9)
    assert shares[True] < 0.6 * shares[False], shares


def test_a_short_epoch_is_not_grouped_and_the_report_says_why(tmp_path, tiny_bert_dir):
    options = SentimentOptions(model=str(tiny_bert_dir), max_train_samples=192, max_eval_samples=50, max_length=64)
    kit = build_kit(options, MethodOptions(), TrainOptions(batch_size=32), tmp_path)
    outputs = kit.finish.__self__
    assert outputs.grouping == "not used: 6 batches an epoch, fewer than the 16 worth grouping"
    assert outputs.padding["padding_share_grouped"] == outputs.padding["padding_share_shuffled"]


def test_a_chat_epoch_on_the_builtin_conversations_pads_less_when_grouped():
    # the embedded base's tokenizer (the --quick base, built once into the venv's share folder)
    tokenizer = load_chat_tokenizer(str(embedded_base(80)), ChatOptions().chat_template)
    conversations, _ = builtin_conversations(ChatOptions().corpus, 0)
    examples = encode_conversations(tokenizer, conversations[:400], 128)  # nlp.chat --quick: 25 batches of 16
    pad = tokenizer.pad_token_id
    grouped = ConversationBatches(examples, 16, pad, seed=0)
    plain = ConversationBatches(examples, 16, pad, seed=0, group_by_length=False)
    grouped.set_epoch(0)
    plain.set_epoch(0)
    share = _padding(grouped)
    assert share == pytest.approx(grouped.padding["padding_share_grouped"], abs=1e-9)
    assert share < 0.6 * _padding(plain)
