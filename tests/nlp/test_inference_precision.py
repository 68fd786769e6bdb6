"""Inference uses the precision ``fit`` trains with: ``scalpel predict``, the run's before/after
evaluations and the app's sentiment table and chat stream all enter bf16 autocast on hardware
that runs bf16 natively (simulated here: this CPU has no AMX/AVX512-BF16) and stay fp32 where
it does not or where fp32 is asked for; texts come back in input order from length-sorted batches."""

from __future__ import annotations

import pytest
import torch

from scalpel.apps.nlp_page import classify
from scalpel.core.fit import precision
from scalpel.nlp.chat.answers import greedy_answers
from scalpel.nlp.chat.generate import reply
from scalpel.nlp.chat.pipeline import load_causal_lm, load_chat_tokenizer
from scalpel.nlp.sentiment.model import load_classifier, load_tokenizer
from scalpel.nlp.sentiment.predict import class_probabilities

TEXTS = ["a wonderful and moving film with a great cast", "dull", "I loved it", "an awful, boring mess of a plot"]


@pytest.fixture
def bf16_cpu(monkeypatch):
    """This machine as a CPU with AMX-BF16, as ``auto`` sees it."""
    monkeypatch.setattr(precision, "this_hardware", lambda cpu: precision.Hardware(kind="cpu", cpu_flags=frozenset({"amx_bf16"})))


def _autocast_seen(model: torch.nn.Module) -> list[bool]:
    """Whether bf16 autocast was on (in the calling thread) at each call of the model's first Linear."""
    seen: list[bool] = []
    linear = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    linear.register_forward_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")
                                                        and torch.get_autocast_dtype("cpu") == torch.bfloat16))
    return seen


@pytest.fixture(scope="module")
def classifier(tiny_bert_dir):
    model = load_classifier(str(tiny_bert_dir), ("negative", "positive"), pooling="cls").eval()
    return model, load_tokenizer(str(tiny_bert_dir))


def test_sentiment_predict_and_the_app_use_bf16_where_native_and_keep_input_order(classifier, bf16_cpu):
    model, tokenizer = classifier
    seen = _autocast_seen(model)
    probs = class_probabilities(model, tokenizer, TEXTS, 32, batch_size=2)
    assert seen and all(seen)
    rows = classify(model, tokenizer, TEXTS, {"label_names": ["negative", "positive"], "max_length": 32}, batch_size=2)
    assert [r["text"] for r in rows] == TEXTS and all(seen)
    assert [r["p(positive)"] for r in rows] == [round(float(p[1]), 4) for p in probs]
    assert probs.dtype == torch.float32
    # each text's probabilities do not depend on which texts share its batch (input order restored)
    alone = torch.cat([class_probabilities(model, tokenizer, [t], 32, precision="no") for t in TEXTS])
    fp32 = class_probabilities(model, tokenizer, TEXTS, 32, batch_size=2, precision="no")
    torch.testing.assert_close(fp32, alone, atol=1e-5, rtol=1e-5)
    assert not seen[-1]  # precision="no": fp32 even here
    assert not torch.equal(probs, fp32)  # bf16 really ran


def test_sentiment_stays_fp32_on_a_cpu_without_native_bf16(classifier, monkeypatch):
    monkeypatch.setattr(precision, "this_hardware", lambda cpu: precision.Hardware(kind="cpu", cpu_flags=frozenset({"avx2"})))
    model, tokenizer = classifier
    seen = _autocast_seen(model)
    class_probabilities(model, tokenizer, TEXTS, 32)
    assert seen and not any(seen)


def test_chat_replies_and_answers_use_bf16_where_native(tiny_llama_dir, bf16_cpu):
    tokenizer = load_chat_tokenizer(str(tiny_llama_dir))
    model = load_causal_lm(str(tiny_llama_dir), tokenizer).eval()
    seen = _autocast_seen(model)
    reply(model, tokenizer, [{"role": "user", "content": "hello"}], max_new_tokens=3, temperature=0.0)
    assert seen and all(seen)  # in the generating thread, not only in the caller's
    prompts = [[{"role": "user", "content": p}] for p in ("hello how are you today my friend", "hi", "what is your name")]
    seen.clear()
    with precision.inference_autocast("auto", "cpu"):
        answers = greedy_answers(model, tokenizer, prompts, max_new_tokens=3, batch_size=2)
    assert seen and all(seen)
    seen.clear()
    assert len(answers) == 3
    alone = [greedy_answers(model, tokenizer, [p], max_new_tokens=3)[0] for p in prompts]
    assert greedy_answers(model, tokenizer, prompts, max_new_tokens=3, batch_size=2) == alone  # input order kept
    assert not any(seen)
