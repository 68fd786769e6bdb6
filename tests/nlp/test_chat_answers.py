"""Generation metrics of nlp.chat (normalization, token F1, ROUGE-L, closed answers) and a
streamer that never shows a broken character."""

from __future__ import annotations

import json

import pytest
import torch

from scalpel.core.errors import ConfigError
from scalpel.nlp.chat.answers import AnswerEvaluation, closed_answers, normalize, score_answers, token_f1
from scalpel.nlp.chat.base import train_tokenizer
from scalpel.nlp.chat.config import ChatOptions
from scalpel.nlp.chat.corpus import REVIEW_ANSWERS, review_conversations
from scalpel.nlp.chat.generate import WholeCharacterStreamer

MULTIBYTE = "Café naïve — 3 €, 日本語 and 🙂🎉 done"


def test_normalize_and_token_f1():
    assert normalize("  The Positive!  ") == "positive"
    assert normalize("an apple, a pear") == "apple pear"
    assert token_f1("positive", "Positive.") == 1.0
    assert token_f1("I am fine", "I am fine thank you") == pytest.approx(2 * 1.0 * 0.6 / 1.6)
    assert token_f1("negative", "positive") == 0.0 and token_f1("", "") == 1.0 and token_f1("", "x") == 0.0


def test_scores_and_closed_answers():
    means, rows = score_answers(["positive", "Negative.", "it was good"], ["positive", "negative", "positive"], {"positive", "negative"})
    assert means["exact_match"] == pytest.approx(2 / 3) and means["answer_format"] == pytest.approx(2 / 3)
    assert [r["rouge_l"] for r in rows] == pytest.approx([1.0, 1.0, 0.0])
    assert rows[2]["token_f1"] == 0.0
    means, _ = score_answers(["the cat sat"], ["the cat sat down"], None)
    assert "answer_format" not in means and means["rouge_l"] == pytest.approx(2 * 0.75 / 1.75)
    assert closed_answers(["positive", "negative"] * 10) == {"positive", "negative"}
    assert closed_answers([f"free text {i}" for i in range(30)]) is None


def test_review_task_is_balanced_one_word_answers():
    conversations = review_conversations(seed=0)
    answers = [c[1]["content"] for c in conversations]
    assert set(answers) == set(REVIEW_ANSWERS) and answers.count("positive") == answers.count("negative") > 500
    assert all(c[0]["content"].startswith("Is this review positive or negative?") for c in conversations)
    with pytest.raises(ConfigError, match="corpus must be one of"):
        ChatOptions(corpus="poems")


def test_answer_evaluation_keeps_before_and_after(tiny_llama_dir):
    from scalpel.nlp.chat.pipeline import load_causal_lm, load_chat_tokenizer

    tokenizer = load_chat_tokenizer(str(tiny_llama_dir))
    model = load_causal_lm(str(tiny_llama_dir), tokenizer)
    held = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in [("hello", "yes"), ("how are you", "no")]]
    evaluation = AnswerEvaluation(tokenizer, held, ["yes", "no"] * 4, answer_tokens=32)
    assert evaluation.max_new_tokens <= 4  # one-word references: answers stop early
    before, after = evaluation(model), evaluation(model)
    assert before == after and set(before) == {"exact_match", "token_f1", "rouge_l", "answer_format"}
    rows = evaluation.table()
    assert [r["reference"] for r in rows] == ["yes", "no"] and rows[0]["before"] == rows[0]["after"]
    assert json.loads(json.dumps(rows)) == rows and evaluation.majority_share() == 0.5


@pytest.fixture(scope="module")
def byte_tokenizer():
    # Trained on ASCII only, so every multi-byte character is split over byte tokens.
    return train_tokenizer(["hello how are you", "the cat sat on the mat", "fine thank you"] * 10, vocab_size=300)


def _stream(tokenizer, ids):
    streamer = WholeCharacterStreamer(tokenizer, skip_special_tokens=True)
    for i in ids:
        streamer.put(torch.tensor([i]))
    streamer.end()
    return list(streamer)


def test_streaming_multibyte_text_never_shows_a_broken_character(byte_tokenizer):
    ids = byte_tokenizer(MULTIBYTE, add_special_tokens=False)["input_ids"]
    assert len(ids) > len(MULTIBYTE)  # characters really are split over several tokens
    naive = [byte_tokenizer.decode(ids[: k + 1]) for k in range(len(ids))]
    assert any("\ufffd" in t for t in naive)  # what a token-by-token decode would show
    pieces = _stream(byte_tokenizer, ids)
    assert "".join(pieces) == MULTIBYTE
    assert all("\ufffd" not in p for p in pieces)
    assert len([p for p in pieces if p]) > 5  # it streams, not one piece at the end


def test_bytes_that_never_form_a_character_are_dropped(byte_tokenizer):
    byte_token = {b: byte_tokenizer.convert_tokens_to_ids(c) for b, c in _byte_symbols().items()}
    hello = byte_tokenizer("hello ", add_special_tokens=False)["input_ids"]
    # a lone continuation byte, then a lead byte of a 3-byte character that the stream ends before completing
    ids = hello + [byte_token[0x80]] + byte_tokenizer("cat", add_special_tokens=False)["input_ids"] + [byte_token[0xE2], byte_token[0x82]]
    pieces = _stream(byte_tokenizer, ids)
    assert "".join(pieces) == "hello cat" and all("\ufffd" not in p for p in pieces)


def _byte_symbols() -> dict[int, str]:
    """GPT-2's byte-level alphabet: printable bytes stand for themselves, the others for chr(256 + k)."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = [b for b in range(256) if b not in kept]
    return {**{b: chr(b) for b in kept}, **{b: chr(256 + k) for k, b in enumerate(others)}}
