"""Generation with streaming, sampling parameters and a stop at the template's end-of-turn token.

Streaming never shows a broken character. A byte-level tokenizer may split one character over
several tokens (``é`` is two UTF-8 bytes, an emoji four), and a model may emit bytes that never
form a character. :class:`WholeCharacterStreamer` decodes all tokens so far and holds back a
trailing U+FFFD (the replacement character: an incomplete byte sequence, which the next token
may complete); a U+FFFD that is followed by more text can never be completed, so it is dropped.
(A model that means to write U+FFFD itself is not shown it either.)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import torch
from transformers import TextIteratorStreamer
from torch import nn

from scalpel.core.errors import ConfigError
from scalpel.core.fit.precision import inference_autocast
from scalpel.nlp.chat.template import end_of_turn_ids, render


REPLACEMENT = "\ufffd"


class WholeCharacterStreamer(TextIteratorStreamer):
    """A ``TextIteratorStreamer`` that yields only whole characters (see the module's docstring)."""

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1 and value.shape[0] > 1:
            raise ValueError("WholeCharacterStreamer streams one sequence at a time")
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        ready = len(text.rstrip(REPLACEMENT))
        if ready > self.print_len:
            self.on_finalized_text(text[self.print_len:ready].replace(REPLACEMENT, ""))
            self.print_len = ready

    def end(self) -> None:
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs) if self.token_cache else ""
        rest = text[self.print_len:].replace(REPLACEMENT, "")  # what never completed is dropped
        self.token_cache, self.print_len, self.next_tokens_are_prompt = [], 0, True
        self.on_finalized_text(rest, stream_end=True)


def stream_reply(model: nn.Module, tokenizer: Any, messages: list[dict[str, str]], *, max_new_tokens: int = 64,
                 temperature: float = 0.7, top_p: float = 0.9, top_k: int = 50, repetition_penalty: float = 1.0,
                 seed: int | None = None, precision: str = "auto") -> Iterator[str]:
    """Yield the assistant's reply to ``messages`` piece by piece as it is generated.

    ``temperature == 0`` decodes greedily; otherwise it samples with temperature/top-p/top-k.
    Generation stops at the end-of-turn token (``<|im_end|>`` for ChatML) or EOS. ``precision``
    is ``fit``'s choice (``auto``: bf16 where the device runs it natively; ``no``: fp32).
    """
    problems = []
    if temperature < 0:
        problems.append(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        problems.append(f"top_p must be in (0, 1], got {top_p}")
    if max_new_tokens < 1:
        problems.append(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if problems:
        raise ConfigError("generation options", problems)
    prompt = render(tokenizer, messages, add_generation_prompt=True)
    device = next(model.parameters()).device
    inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt").to(device)
    streamer = WholeCharacterStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, clean_up_tokenization_spaces=False,
                                      timeout=300)
    stop = end_of_turn_ids(tokenizer)
    kwargs = dict(**inputs, streamer=streamer, max_new_tokens=max_new_tokens, eos_token_id=stop,
                  pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0],
                  repetition_penalty=repetition_penalty)
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
    else:
        kwargs.update(do_sample=False)
    if seed is not None:
        torch.manual_seed(seed)
    errors: list[BaseException] = []

    def work() -> None:
        try:  # autocast is per thread: entered here, in the thread that generates
            with torch.no_grad(), inference_autocast(precision, device):
                model.generate(**kwargs)
        except BaseException as err:  # noqa: BLE001  re-raised in the caller's thread
            errors.append(err)
            streamer.end()

    thread = threading.Thread(target=work, daemon=True)
    was_training = model.training
    model.eval()
    thread.start()
    try:
        yield from streamer
    finally:
        thread.join()
        model.train(was_training)
    if errors:
        raise errors[0]


def reply(model: nn.Module, tokenizer: Any, messages: list[dict[str, str]], **options: Any) -> str:
    """The whole reply as one string (see :func:`stream_reply`)."""
    return "".join(stream_reply(model, tokenizer, messages, **options)).strip()
