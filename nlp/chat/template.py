"""Chat templates and the assistant-token mask.

The tokenizer's own chat template is used when it has one; otherwise :data:`DEFAULT_TEMPLATE`
(ChatML, as used by Qwen2 and others). The mask that says which tokens the loss sees is
taken from the template's ``{% generation %}`` markers when it has them
(``apply_chat_template(..., return_assistant_tokens_mask=True)``); otherwise it is derived
by rendering the conversation up to each assistant turn and taking the difference:

    prefix_i = render(messages[:i], add_generation_prompt=True)
    upto_i   = render(messages[:i + 1])
    assistant characters of turn i = upto_i[len(prefix_i):]       (prefix_i must be a prefix of upto_i)

and a token belongs to the assistant when its character span (tokenizer offsets) lies in one.
The end-of-turn token closing each assistant message is in the span, so the model learns to stop.
"""

from __future__ import annotations

from typing import Any

from scalpel.core.errors import DataError

#: ChatML with generation markers around what the assistant says (and its end-of-turn token).
DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
#: The same template without markers (tests the difference-based mask; some models ship such templates).
DEFAULT_TEMPLATE_NO_MARKERS = DEFAULT_TEMPLATE.replace("{% generation %}", "").replace("{% endgeneration %}", "")
#: End-of-turn tokens of common templates, looked up in the template text.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>")
ROLES = ("system", "user", "assistant")


def ensure_chat_template(tokenizer: Any, template: str = "") -> str:
    """Set and return the template: ``template`` if given, else the tokenizer's, else the default.
    Adds ChatML's special tokens to the tokenizer when the default is used and they are missing."""
    chosen = template or getattr(tokenizer, "chat_template", None) or DEFAULT_TEMPLATE
    if chosen in (DEFAULT_TEMPLATE, DEFAULT_TEMPLATE_NO_MARKERS):
        missing = [t for t in ("<|im_start|>", "<|im_end|>") if tokenizer.convert_tokens_to_ids(t) in (None, tokenizer.unk_token_id)]
        if missing:
            tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer.chat_template = chosen
    return chosen


def has_generation_markers(template: str) -> bool:
    return "{% generation %}" in template or "{%- generation %}" in template


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids generation stops at: the template's end-of-turn token(s) and EOS."""
    template = getattr(tokenizer, "chat_template", "") or ""
    ids = []
    for token in END_OF_TURN_TOKENS:
        if token in template:
            i = tokenizer.convert_tokens_to_ids(token)
            if i is not None and i != tokenizer.unk_token_id:
                ids.append(int(i))
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return sorted(set(ids))


def check_messages(messages: Any, where: str) -> list[dict[str, str]]:
    """Validate one conversation: a list of ``{"role", "content"}`` with at least one assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: a conversation must be a non-empty list of {{'role', 'content'}} messages")
    clean = []
    for j, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}, message {j}: needs 'role' and 'content' keys, got {m!r:.80}")
        if m["role"] not in ROLES:
            raise DataError(f"{where}, message {j}: role {m['role']!r} is not one of {ROLES}")
        clean.append({"role": m["role"], "content": str(m["content"])})
    if not any(m["role"] == "assistant" for m in clean):
        raise DataError(f"{where}: the conversation has no assistant turn, so there is nothing to learn from it; "
                        "add the assistant's reply or remove the conversation")
    return clean


def render(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of every assistant turn (difference method)."""
    text = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix = render(tokenizer, messages[:i], add_generation_prompt=True) if i else _generation_prompt_only(tokenizer)
        upto = render(tokenizer, messages[: i + 1])
        if not upto.startswith(prefix) or not text.startswith(upto):
            raise DataError("the chat template renders a conversation differently when it is cut after a turn, so the "
                            "assistant tokens cannot be found by difference; use a template with {% generation %} markers")
        # the newline after the end-of-turn token is layout, not something the assistant says
        spans.append((len(prefix), len(upto.rstrip())))
    return text, spans


def _generation_prompt_only(tokenizer: Any) -> str:
    # A conversation may open with the assistant; render an empty history with the generation prompt.
    try:
        return render(tokenizer, [], add_generation_prompt=True)
    except Exception:  # noqa: BLE001  some templates refuse an empty list
        return ""


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[list[int], list[int]]:
    """``(input_ids, assistant_mask)`` of one conversation, 1 where the loss applies."""
    template = tokenizer.chat_template or ""
    if has_generation_markers(template):
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        return list(out["input_ids"]), list(out["assistant_masks"])
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(s <= a and b <= e and b > a for s, e in spans)) for a, b in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask
