"""``ChatOptions``: the data and model options of ``scalpel run nlp.chat``, validated once.

What is trained and how (``--method``, ``--r``, ``--max-steps``, ``--lr``, ...) are the shared
:class:`~scalpel.core.options.MethodOptions` and :class:`~scalpel.core.options.TrainOptions`;
this pipeline's defaults for them are in :data:`scalpel.nlp.chat.pipeline.PIPELINE`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from scalpel.core.config import raise_if_problems


@dataclass(frozen=True)
class ChatOptions:
    """Instruction tuning of a causal LM on conversations, loss on assistant tokens only."""

    model: str = field(default="", metadata={"help": "causal LM folder or hub name; empty: pre-train the small embedded base first (into the run folder's base/)"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer folder or hub name; empty: the model's own"})
    chat_template: str = field(default="", metadata={"help": "Jinja chat template (text or .jinja file); empty: the tokenizer's, else ChatML"})
    train_file: str = field(default="", metadata={"help": "messages JSONL or a prompt/response table; empty: chatterbot-corpus dialogues"})
    validation_file: str = field(default="", metadata={"help": "held-out conversations; empty: split from train_file"})
    messages_column: str = field(default="messages", metadata={"help": "JSONL key holding the message list"})
    prompt_column: str = field(default="prompt", metadata={"help": "prompt column (prompt/response data)"})
    response_column: str = field(default="response", metadata={"help": "response column (prompt/response data)"})
    system_prompt: str = field(default="", metadata={"help": "system message put before every conversation that has none"})
    validation_fraction: float = field(default=0.1, metadata={"help": "share of conversations held out when no validation_file"})
    max_train_samples: int = field(default=0, metadata={"help": "train on at most this many conversations; 0: all"})
    max_length: int = field(default=256, metadata={"help": "tokens per conversation (and per packed row)"})
    packing: bool = field(default=False, metadata={"help": "pack short conversations into rows of max_length (no cross attention)"})
    base_steps: int = field(default=300, metadata={"help": "pre-training steps of the embedded base (no model given)"})
    samples: int = field(default=3, metadata={"help": "held-out prompts answered in report.md"})

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.validation_fraction < 1:
            problems.append(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        if self.max_length < 1:
            problems.append(f"max_length must be >= 1, got {self.max_length}")
        for name in ("max_train_samples", "base_steps", "samples"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.validation_file and not self.train_file:
            problems.append("validation_file needs a train_file too")
        raise_if_problems("nlp.chat options", problems)
