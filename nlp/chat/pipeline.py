"""``scalpel run nlp.chat``: conversations in, a chat adapter (with its template) out.

    base (given, or pre-trained on registry text) -> chat template -> assistant-masked
    examples (padded or packed)                                            (build_kit, here)
    -> held-out assistant loss and greedy answers BEFORE -> adapt (LoRA by default) -> fit
    -> held-out assistant loss and greedy answers AFTER -> adapter        (run_adaptation)
    -> the tokenizer beside the adapter, answers.jsonl, report section    (finish/report, here)

The answers are scored by exact match, token F1 and ROUGE-L (:mod:`scalpel.nlp.chat.answers`);
the held-out loss still picks the best adapter during training.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from torch import nn

from scalpel.core.artifacts import load_adapter, read_adapter_meta
from scalpel.core.errors import AdapterError, DataError
from scalpel.core.files import atomic_write, refuse_pickle_weights
from scalpel.core.fit.precision import inference_autocast
from scalpel.core.options import MethodOptions, TrainOptions
from scalpel.core.pipeline import Pipeline
from scalpel.core.recipes import ModelDefaults
from scalpel.core.run import Kit, RunResult
from scalpel.nlp.chat.answers import AnswerEvaluation, prompt_and_reference
from scalpel.nlp.chat.base import embedded_base
from scalpel.nlp.chat.config import ChatOptions
from scalpel.nlp.chat.corpus import builtin_conversations
from scalpel.nlp.chat.data import ConversationBatches, check_packing_support, encode_conversations, read_conversations
from scalpel.nlp.chat.generate import reply
from scalpel.nlp.chat.task import ChatTask
from scalpel.nlp.chat.template import end_of_turn_ids, ensure_chat_template, has_generation_markers
from scalpel.nlp.sentiment.model import load_tokenizer

NAME = "nlp.chat"
EMBEDDED_BASE = "embedded chat base"
ANSWERS_FILE = "answers.jsonl"
ANSWER_METRICS = ("exact_match", "token_f1", "rouge_l", "answer_format")


def load_chat_tokenizer(name_or_path: str, template: str = "") -> Any:
    """The tokenizer of a model (or adapter) folder or hub name with its chat template set
    (``template``: Jinja text or a file; else the tokenizer's own, else ChatML) and a pad token."""
    tokenizer = load_tokenizer(name_or_path)
    if template and "{" not in template and len(template) < 4096 and Path(template).is_file():
        template = Path(template).read_text(encoding="utf-8")
    ensure_chat_template(tokenizer, template)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, tokenizer: Any) -> nn.Module:
    """A causal LM whose embeddings cover ``tokenizer`` (special tokens a template added)."""
    from transformers import AutoModelForCausalLM

    refuse_pickle_weights(name_or_path)  # never unpickle: a folder with only pytorch_model.bin is refused
    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot load a causal LM from {name_or_path!r} ({str(err).splitlines()[0][:200]}); "
                        "pass a local model folder or a hub name while online") from err
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))  # the template's special tokens were added
    return model


def conversations_for(options: ChatOptions, seed: int = 0) -> tuple[list, list, str]:
    """Train and held-out conversations, and where they came from; ``seed`` picks the held-out ones."""
    if options.train_file:
        kw = dict(messages_column=options.messages_column, prompt_column=options.prompt_column,
                  response_column=options.response_column, system_prompt=options.system_prompt, encoding=options.encoding)
        train = read_conversations(options.train_file, **kw)
        held = read_conversations(options.validation_file, **kw) if options.validation_file else None
        source = options.train_file
    else:
        train, source = builtin_conversations(options.corpus, seed)
        held = None
    if held is None:
        order = list(range(len(train)))
        random.Random(seed).shuffle(order)
        n_held = max(1, round(len(train) * options.validation_fraction))
        if len(train) - n_held < 1:
            raise DataError(f"{source} has {len(train)} conversation(s), too few to hold some out; give a validation_file")
        held, train = [train[i] for i in order[:n_held]], [train[i] for i in order[n_held:]]
    if options.max_train_samples:
        train = train[:options.max_train_samples]
    return train, held, source


class ChatOutputs:
    """What a chat run adds to the common outputs: ``finish`` and ``report`` of its kit.

    Args:
        options: the run's data and model options.
        tokenizer: the tokenizer with the chat template the run used.
        answers: the greedy answers to held-out prompts, before and after (None: ``eval_prompts`` is 0).
        description: the data and base lines of the report.
    """

    def __init__(self, options: ChatOptions, tokenizer: Any, answers: AnswerEvaluation | None, description: list[str]):
        self.options, self.tokenizer, self.answers, self.description = options, tokenizer, answers, description

    def finish(self, model: nn.Module, result: RunResult) -> dict[str, Any]:
        """Save the tokenizer (and so the template) beside the adapter; write every held-out answer
        before and after tuning to ``answers.jsonl``."""
        self.tokenizer.save_pretrained(result.adapter_dir)  # the adapter folder is all that is shipped
        if self.answers is None:
            return {"samples": [], "tokenizer_dir": result.adapter_dir}
        rows = self.answers.table()
        path = Path(result.run_dir) / ANSWERS_FILE
        with atomic_write(path, "w") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        samples = [{"prompt": r["prompt"], "reference": r["reference"], "before": r.get("before", ""), "reply": r["after"]}
                   for r in rows[: self.options.samples]]
        return {"samples": samples, "answers": str(path), "majority_exact_match": self.answers.majority_share(),
                "tokenizer_dir": result.adapter_dir}

    def report(self, model: nn.Module, result: RunResult) -> list[str]:
        before, after = result.before, result.after
        lines = ["## Chat tuning", "", *self.description,
                 f"- held-out assistant-token loss: before {before['loss']:.4f}, after {after['loss']:.4f} "
                 f"({after['assistant_tokens']:.0f} tokens)"]
        if self.answers is None:
            return lines
        n = len(self.answers.prompts)
        lines.append(f"- greedy answers to {n} held-out prompts (at most {self.answers.max_new_tokens} tokens each; all in "
                     f"{ANSWERS_FILE}):")
        for key in ANSWER_METRICS:
            if key in after:
                lines.append(f"  - {key}: before {before.get(key, float('nan')):.3f}, after {after[key]:.3f}")
        majority = result.extras.get("majority_exact_match")
        if majority is not None:
            lines.append(f"  - always giving the most common answer would score exact_match {majority:.3f}")
        lines += ["", "## Held-out answers before and after tuning (greedy)", ""]
        for s in result.extras["samples"]:
            lines += [f"- **user:** {_clip(s['prompt'])}", f"  - reference: {_clip(s['reference'])}",
                      f"  - before: {_clip(s['before'])}", f"  - after: {_clip(s['reply'])}"]
        return lines


def _clip(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_kit(options: ChatOptions, method: MethodOptions, train: TrainOptions, run_dir: Path) -> Kit:
    """The base (the embedded one when none is given), tokenizer, assistant-masked batches, and held-out answers."""
    model_path = options.model or str(embedded_base(options.base_steps, train.seed, fallback=run_dir))
    tokenizer = load_chat_tokenizer(options.tokenizer or model_path, options.chat_template)
    model = load_causal_lm(model_path, tokenizer)
    conversations, held, source = conversations_for(options, train.seed)
    train_examples = encode_conversations(tokenizer, conversations, options.max_length)
    held_examples = encode_conversations(tokenizer, held, options.max_length)
    if options.packing:
        check_packing_support(model, len(tokenizer))
    pad = tokenizer.pad_token_id
    train_batches = ConversationBatches(train_examples, train.batch_size, pad, packing=options.packing,
                                        max_length=options.max_length, seed=train.seed, group_by_length=train.group_by_length)
    held_batches = ConversationBatches(held_examples, train.batch_size, pad, seed=train.seed)

    base_model = {"name_or_path": str(Path(model_path).resolve()) if Path(model_path).exists() else model_path,
                  "class": "transformers.AutoModelForCausalLM", "vocab_size": len(tokenizer)}
    extra = {"task": NAME, "chat_template": tokenizer.chat_template, "end_of_turn_ids": end_of_turn_ids(tokenizer),
             "max_length": options.max_length, "template_has_generation_markers": has_generation_markers(tokenizer.chat_template)}
    description = [f"- base: {model_path}" + ("" if options.model else " (small, pre-trained here on registry text; not an assistant)"),
                   f"- data: {source}: {len(train_examples)} training, {len(held_examples)} held-out conversations; "
                   f"packing: {options.packing}"]
    answers = None
    if options.eval_prompts:
        references = [prompt_and_reference(m)[1] for m in conversations + held]
        answers = AnswerEvaluation(tokenizer, held[: options.eval_prompts], references, options.answer_tokens)
    task = ChatTask()

    def evaluate(model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:  # under the precision fit trains and evaluates with
            with inference_autocast(train.mixed_precision, next(model.parameters()).device):
                return {**task.evaluate(model, held_batches), **(answers(model) if answers else {})}
        finally:
            model.train(was_training)

    outputs = ChatOutputs(options, tokenizer, answers, description)
    return Kit(pipeline=NAME, model=model, task=task, train_data=train_batches, eval_data=held_batches, evaluate=evaluate,
               metric="loss", greater_is_better=False, defaults=ModelDefaults(),
               model_id=(Path(options.model).name or options.model) if options.model else EMBEDDED_BASE,
               adapter_metadata={"extra": extra, "base_model": base_model}, report=outputs.report, finish=outputs.finish)


def load_chat_adapter(adapter_dir: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """Rebuild the base named in the adapter, load the adapter and its saved tokenizer/template."""
    meta = read_adapter_meta(adapter_dir)
    model = base_for_adapter(meta, Path(adapter_dir))
    tokenizer = load_chat_tokenizer(str(adapter_dir), meta["extra"].get("chat_template", ""))
    return load_adapter(model, adapter_dir).eval(), tokenizer, meta


def base_for_adapter(meta: dict[str, Any], adapter_dir: Path) -> nn.Module:
    """The causal LM a chat adapter was trained on, sized to the tokenizer saved with the adapter
    (the builder of ``scalpel adapter merge`` for ``nlp.chat``).

    Raises:
        AdapterError: not a chat adapter.
    """
    if meta.get("extra", {}).get("task") != NAME:
        raise AdapterError(f"{adapter_dir} was not written by the nlp.chat pipeline")
    tokenizer = load_chat_tokenizer(str(adapter_dir), meta["extra"].get("chat_template", ""))
    return load_causal_lm(meta["base_model"]["name_or_path"], tokenizer)


def predict(adapter_dir: Path, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    """One reply per prompt (``--file``: one prompt per line). Options: ``max_new_tokens``,
    ``temperature``, ``top_p``, ``top_k``, ``seed``, ``system``, ``precision`` (``auto``: bf16
    where the device runs it natively, as ``fit`` trains; ``no``: fp32)."""
    model, tokenizer, _ = load_chat_adapter(Path(adapter_dir))
    prompts = list(inputs)
    if options.get("file"):
        prompts += [line for line in Path(options["file"]).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts or any(not p.strip() for p in prompts):
        raise DataError("give one or more non-empty prompts")
    gen = {k: t(options[k]) for k, t in (("max_new_tokens", int), ("temperature", float), ("top_p", float),
                                         ("top_k", int), ("seed", int), ("precision", str)) if k in options}
    rows = []
    for p in prompts:
        messages = ([{"role": "system", "content": options["system"]}] if options.get("system") else []) + [{"role": "user", "content": p}]
        rows.append({"prompt": p, "reply": reply(model, tokenizer, messages, **gen)})
    return rows


PIPELINE = Pipeline(
    name=NAME, options_cls=ChatOptions, build_kit=build_kit, predict=predict,
    summary="instruction tuning of a causal LM, loss on assistant tokens only",
    method=MethodOptions(r=16, alpha=32.0),
    # 2e-4 is the usual LoRA rate for pre-trained LMs. The embedded base is tiny and has never
    # seen the chat format, so it wants 2e-3: --quick (which is mostly run on it) sets that.
    train=TrainOptions(epochs=3, batch_size=16, lr=2e-4, warmup_ratio=0.05, schedule="cosine"),
    quick={"base_steps": 80, "epochs": 1, "max_length": 128, "max_train_samples": 400, "lr": 2e-3},
)
