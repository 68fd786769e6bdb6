"""``ChatOptions``: the data and model options of ``scalpel run nlp.chat``, validated once.

What is trained and how (``--method``, ``--r``, ``--max-steps``, ``--lr``, ...) are the shared
:class:`~scalpel.core.options.MethodOptions` and :class:`~scalpel.core.options.TrainOptions`;
this pipeline's defaults for them are in :data:`scalpel.nlp.chat.pipeline.PIPELINE`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scalpel.core.config import raise_if_problems
from scalpel.nlp.chat.corpus import CORPORA


@dataclass(frozen=True)
class ChatOptions:
    """Instruction tuning of a causal LM on conversations, loss on assistant tokens only."""

    model: str = field(default="", metadata={"help": "causal LM folder or hub name; empty: pre-train the small embedded base first (into the run folder's base/)"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer folder or hub name; empty: the model's own"})
    chat_template: str = field(default="", metadata={"help": "Jinja chat template (text or .jinja file); empty: the tokenizer's, else ChatML"})
    train_file: str = field(default="", metadata={"help": "messages JSONL or a prompt/response table; empty: the built-in corpus"})
    corpus: str = field(default="reviews", metadata={"help": "built-in data when no train_file: reviews (is a review snippet positive or negative, one word) or chatterbot (dialogues)"})
    validation_file: str = field(default="", metadata={"help": "held-out conversations; empty: split from train_file"})
    messages_column: str = field(default="messages", metadata={"help": "JSONL key holding the message list"})
    prompt_column: str = field(default="prompt", metadata={"help": "prompt column (prompt/response data)"})
    response_column: str = field(default="response", metadata={"help": "response column (prompt/response data)"})
    system_prompt: str = field(default="", metadata={"help": "system message put before every conversation that has none"})
    encoding: str = field(default="utf-8", metadata={"help": "text encoding of JSONL/CSV files (e.g. cp1252, latin-1); bytes that do not decode are an error naming the line"})
    validation_fraction: float = field(default=0.1, metadata={"help": "share of conversations held out when no validation_file"})
    max_train_samples: int = field(default=0, metadata={"help": "train on at most this many conversations; 0: all"})
    max_length: int = field(default=256, metadata={"help": "tokens per conversation (and per packed row)"})
    packing: bool = field(default=False, metadata={"help": "pack short conversations into rows of max_length (no cross attention)"})
    base_steps: int = field(default=300, metadata={"help": "pre-training steps of the embedded base (no model given)"})
    samples: int = field(default=3, metadata={"help": "held-out answers shown before/after in report.md"})
    eval_prompts: int = field(default=64, metadata={"help": "held-out prompts answered greedily before and after tuning (exact match, token F1, ROUGE-L); 0: none"})
    answer_tokens: int = field(default=32, metadata={"help": "most tokens per greedy answer (fewer when every reference is shorter)"})

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.validation_fraction < 1:
            problems.append(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.max_length < 1:
            problems.append(f"max_length must be >= 1, got {self.max_length}")
        if self.answer_tokens < 1:
            problems.append(f"answer_tokens must be >= 1, got {self.answer_tokens}")
        if self.corpus not in CORPORA:
            problems.append(f"corpus must be one of {', '.join(CORPORA)}, got {self.corpus!r}")
        for name in ("max_train_samples", "base_steps", "samples", "eval_prompts"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.validation_file and not self.train_file:
            problems.append("validation_file needs a train_file too")
        raise_if_problems("nlp.chat options", problems)
