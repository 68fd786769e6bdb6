"""``scalpel run nlp.chat``: conversations in, a chat adapter (with its template) out.

    base (given, or pre-trained on registry text) -> chat template -> assistant-masked
    examples (padded or packed) -> held-out assistant loss BEFORE -> adapt (LoRA by default)
    -> fit -> held-out assistant loss AFTER, sample replies -> report.md, adapter + tokenizer
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import torch

from scalpel.core.artifacts import save_adapter
from scalpel.core.config import config_to_dict
from scalpel.core.delta import count_parameters
from scalpel.core.errors import DataError
from scalpel.core.files import atomic_write
from scalpel.core.fit import FitConfig, fit
from scalpel.core.pipeline import Pipeline
from scalpel.core.recipes import adapt
from scalpel.nlp import corpora
from scalpel.nlp.chat.base import pretrain_base
from scalpel.nlp.chat.config import ChatConfig
from scalpel.nlp.chat.data import ConversationBatches, check_packing_support, encode_conversations, read_conversations
from scalpel.nlp.chat.generate import reply
from scalpel.nlp.chat.task import ChatTask, assistant_loss_sum
from scalpel.nlp.sentiment.model import check_tokenizer
from scalpel.nlp.chat.template import end_of_turn_ids, ensure_chat_template, has_generation_markers

log = logging.getLogger(__name__)


def load_chat_tokenizer(name_or_path: str, template: str = "") -> Any:
    from transformers import AutoTokenizer

    fix = "save one beside the model (tokenizer.save_pretrained) or pass --tokenizer PATH_OR_NAME"
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise DataError(f"{name_or_path!r} has no usable tokenizer ({str(err).splitlines()[0][:200]}); {fix}") from err
    check_tokenizer(tokenizer, repr(name_or_path), fix)
    if template and "{" not in template and len(template) < 4096 and Path(template).is_file():
        template = Path(template).read_text(encoding="utf-8")
    ensure_chat_template(tokenizer, template)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(name_or_path: str, tokenizer: Any) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot load a causal LM from {name_or_path!r} ({str(err).splitlines()[0][:200]}); "
                        "pass a local model folder or a hub name while online") from err
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))  # the template's special tokens were added
    return model


def conversations_for(cfg: ChatConfig) -> tuple[list, list, str]:
    """Train and held-out conversations, and where they came from."""
    if cfg.train_file:
        kw = dict(messages_column=cfg.messages_column, prompt_column=cfg.prompt_column,
                  response_column=cfg.response_column, system_prompt=cfg.system_prompt)
        train = read_conversations(cfg.train_file, **kw)
        held = read_conversations(cfg.validation_file, **kw) if cfg.validation_file else None
        source = cfg.train_file
    else:
        train = [c["messages"] for c in corpora.read_chatterbot()]
        held, source = None, "chatterbot-corpus (english)"
    if held is None:
        order = list(range(len(train)))
        random.Random(cfg.seed).shuffle(order)
        n_held = max(1, round(len(train) * cfg.validation_fraction))
        if len(train) - n_held < 1:
            raise DataError(f"{source} has {len(train)} conversation(s), too few to hold some out; give a validation_file")
        held, train = [train[i] for i in order[:n_held]], [train[i] for i in order[n_held:]]
    return train, held, source


def run(config: ChatConfig) -> dict[str, Any]:
    """Returns ``{"run_dir", "adapter_dir", "metrics": {"loss_before", "loss_after", ...}, "samples"}``."""
    cfg = config.effective()
    out = Path(cfg.output_dir)
    model_path = cfg.model or str(pretrain_base(out / "base", steps=cfg.base_steps, seed=cfg.seed))
    tokenizer = load_chat_tokenizer(cfg.tokenizer or model_path, cfg.chat_template)
    model = load_causal_lm(model_path, tokenizer)
    train, held, source = conversations_for(cfg)
    if cfg.quick:
        train = train[:400]
    train_examples = encode_conversations(tokenizer, train, cfg.max_length)
    held_examples = encode_conversations(tokenizer, held, cfg.max_length)
    if cfg.packing:
        check_packing_support(model, len(tokenizer))
    pad = tokenizer.pad_token_id
    train_batches = ConversationBatches(train_examples, cfg.batch_size, pad, packing=cfg.packing, max_length=cfg.max_length, seed=cfg.seed)
    held_batches = ConversationBatches(held_examples, cfg.batch_size, pad, seed=cfg.seed)

    model.eval()
    total, count = assistant_loss_sum(model, held_batches)
    loss_before = total / count
    model = adapt(model, cfg.method, targets=cfg.targets or None, head=[], data=None,
                  **({"r": cfg.lora_r, "alpha": cfg.lora_alpha} if cfg.method in ("lora", "dora", "rslora") else {}))
    trainable, total_params = count_parameters(model)
    base_model = {"name_or_path": str(Path(model_path).resolve()) if Path(model_path).exists() else model_path,
                  "class": "transformers.AutoModelForCausalLM", "vocab_size": len(tokenizer)}
    extra = {"task": "nlp.chat", "chat_template": tokenizer.chat_template, "end_of_turn_ids": end_of_turn_ids(tokenizer),
             "max_length": cfg.max_length, "template_has_generation_markers": has_generation_markers(tokenizer.chat_template)}
    fit_config = FitConfig(output_dir=str(out), epochs=cfg.epochs, max_steps=cfg.max_steps, lr=cfg.learning_rate(),
                           warmup_ratio=0.05, schedule="cosine", metric="loss", seed=cfg.seed, device=cfg.device,
                           mixed_precision=cfg.mixed_precision, gradient_checkpointing=cfg.gradient_checkpointing,
                           overwrite=cfg.overwrite, save_every=0, log_every=10)
    result = fit(model, ChatTask(), train_batches, held_batches, fit_config, run_config=config_to_dict(config),
                 adapter_metadata={"extra": extra, "base_model": base_model})
    model.eval()
    total, count = assistant_loss_sum(model, held_batches)
    loss_after = total / count
    metrics = {"loss_before": loss_before, "loss_after": loss_after, "held_out_assistant_tokens": count}
    samples = []
    for messages in held[: cfg.samples]:
        prompt = messages[: next(i for i, m in enumerate(messages) if m["role"] == "assistant")]
        samples.append({"prompt": prompt[-1]["content"], "reference": messages[len(prompt)]["content"],
                        "reply": reply(model, tokenizer, prompt, max_new_tokens=40, temperature=0.0)})
    adapter_dir = save_adapter(model, out / "adapter", metrics=metrics, extra=extra, base_model=base_model)
    tokenizer.save_pretrained(adapter_dir)  # the template travels with the adapter
    _append_report(out, cfg, source, len(train_examples), len(held_examples), metrics, trainable, total_params, samples, model_path)
    return {"run_dir": str(out), "adapter_dir": str(adapter_dir), "metrics": metrics, "samples": samples,
            "trainable_parameters": trainable, "total_parameters": total_params, "train_seconds": result.train_seconds}


def _append_report(out: Path, cfg, source, n_train, n_held, metrics, trainable, total, samples, model_path) -> None:
    report = out / "report.md"
    lines = report.read_text().splitlines() if report.is_file() else [f"# Training report: {out.name}"]
    lines += ["", "## Chat tuning", "",
              f"- base: {model_path}" + (" (pre-trained here on registry text; shows the mechanics only)" if not cfg.model else ""),
              f"- data: {source}: {n_train} training, {n_held} held-out conversations; packing: {cfg.packing}",
              f"- {cfg.method}: {trainable:,} trainable of {total:,} parameters",
              f"- held-out assistant-token loss: before {metrics['loss_before']:.4f}, after {metrics['loss_after']:.4f} "
              f"({metrics['held_out_assistant_tokens']} tokens)", "", "## Sample replies (greedy)", ""]
    for s in samples:
        lines += [f"- **user:** {s['prompt']}", f"  - reference: {s['reference']}", f"  - model: {s['reply']}"]
    with atomic_write(report, "w") as f:
        f.write("\n".join(lines) + "\n")


def load_chat_adapter(adapter_dir: Path) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Rebuild the base named in the adapter, load the adapter and its saved tokenizer/template."""
    from scalpel.core.artifacts import load_adapter, read_adapter_meta

    meta = read_adapter_meta(adapter_dir)
    if meta.get("extra", {}).get("task") != "nlp.chat":
        from scalpel.core.errors import AdapterError

        raise AdapterError(f"{adapter_dir} was not written by the nlp.chat pipeline")
    tokenizer = load_chat_tokenizer(str(adapter_dir), meta["extra"].get("chat_template", ""))
    model = load_causal_lm(meta["base_model"]["name_or_path"], tokenizer)
    return load_adapter(model, adapter_dir).eval(), tokenizer, meta


def predict(adapter_dir: Path, inputs: list[str], options: dict[str, Any]) -> list[dict[str, Any]]:
    """One reply per prompt (``--file``: one prompt per line). Options: ``max_new_tokens``,
    ``temperature``, ``top_p``, ``top_k``, ``seed``, ``system``."""
    model, tokenizer, _ = load_chat_adapter(Path(adapter_dir))
    prompts = list(inputs)
    if options.get("file"):
        prompts += [line for line in Path(options["file"]).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts or any(not p.strip() for p in prompts):
        raise DataError("give one or more non-empty prompts")
    gen = {k: t(options[k]) for k, t in (("max_new_tokens", int), ("temperature", float), ("top_p", float),
                                         ("top_k", int), ("seed", int)) if k in options}
    rows = []
    for p in prompts:
        messages = ([{"role": "system", "content": options["system"]}] if options.get("system") else []) + [{"role": "user", "content": p}]
        rows.append({"prompt": p, "reply": reply(model, tokenizer, messages, **gen)})
    return rows


PIPELINE = Pipeline(name="nlp.chat", config_cls=ChatConfig, run=run, predict=predict,
                    summary="instruction tuning of a causal LM, loss on assistant tokens only")
