"""``ChatConfig``: every option of ``scalpel run nlp.chat``, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from scalpel.core.config import raise_if_problems

METHODS = ("lora", "dora", "rslora", "sparse", "layerwise", "bitfit", "full")


@dataclass(frozen=True)
class ChatConfig:
    """Instruction tuning of a causal LM on conversations, loss on assistant tokens only."""

    output_dir: str = field(default="runs/nlp-chat", metadata={"help": "run directory (adapter/, report.md, metrics.jsonl)"})
    model: str = field(default="", metadata={"help": "causal LM folder or hub name; empty: pre-train the small embedded base first"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer folder or hub name; empty: the model's own"})
    chat_template: str = field(default="", metadata={"help": "Jinja chat template (text or .jinja file); empty: the tokenizer's, else ChatML"})
    train_file: str = field(default="", metadata={"help": "messages JSONL or a prompt/response table; empty: chatterbot-corpus dialogues"})
    validation_file: str = field(default="", metadata={"help": "held-out conversations; empty: split from train_file"})
    messages_column: str = field(default="messages", metadata={"help": "JSONL key holding the message list"})
    prompt_column: str = field(default="prompt", metadata={"help": "prompt column (prompt/response data)"})
    response_column: str = field(default="response", metadata={"help": "response column (prompt/response data)"})
    system_prompt: str = field(default="", metadata={"help": "system message put before every conversation that has none"})
    validation_fraction: float = field(default=0.1, metadata={"help": "share of conversations held out when no validation_file"})
    max_length: int = field(default=256, metadata={"help": "tokens per conversation (and per packed row)"})
    packing: bool = field(default=False, metadata={"help": "pack short conversations into rows of max_length (no cross attention)"})
    method: str = field(default="lora", metadata={"help": f"how the model is adapted: {', '.join(METHODS)}"})
    targets: str = field(default="", metadata={"help": "module-name regex for lora/sparse; empty: every linear layer"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=32.0, metadata={"help": "LoRA alpha"})
    epochs: int = field(default=3, metadata={"help": "passes over the conversations"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps; 0: epochs x batches"})
    batch_size: int = field(default=16, metadata={"help": "conversations (or packed rows) per batch"})
    lr: float = field(default=0.0, metadata={"help": "peak learning rate; 0: 2e-3 for the embedded base, 2e-4 otherwise"})
    base_steps: int = field(default=300, metadata={"help": "pre-training steps of the embedded base (no model given)"})
    seed: int = field(default=0, metadata={"help": "seed of the split and of training"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present) or cpu"})
    mixed_precision: str = field(default="auto", metadata={"help": "auto (bf16 on a capable GPU), no, bf16 or fp16"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "trade compute for memory (large models)"})
    samples: int = field(default=3, metadata={"help": "held-out prompts answered in report.md"})
    overwrite: bool = field(default=False, metadata={"help": "reuse an output_dir that holds an earlier run"})
    quick: bool = field(default=False, metadata={"help": "a fast CPU run: 80 base steps, 1 epoch, 400 conversations"})

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not 0 <= self.validation_fraction < 1:
            problems.append(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")
        for name in ("max_length", "epochs", "batch_size", "lora_r"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "base_steps", "samples"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr < 0:
            problems.append(f"lr must be >= 0, got {self.lr}")
        if self.validation_file and not self.train_file:
            problems.append("validation_file needs a train_file too")
        raise_if_problems("nlp.chat config", problems)

    def effective(self) -> ChatConfig:
        if not self.quick:
            return self
        return replace(self, quick=False, base_steps=min(self.base_steps, 80), epochs=1, max_length=min(self.max_length, 128))

    def learning_rate(self) -> float:
        return self.lr or (2e-3 if not self.model else 2e-4)
