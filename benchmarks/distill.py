"""Knowledge distillation: students with and without a teacher, side by side.

1. Classification. scikit-learn's handwritten digits (1,797 real 8x8 scans, UCI):
   a CNN teacher (2 conv + 2 linear layers) and a CNN student with half the layers
   (1 conv + 1 linear, ~2% of the parameters), trained on the same batches without a
   teacher (cross-entropy) and with one (Hinton KD, T = 4, alpha = 0.5). Several student
   seeds; mean (min-max) test accuracy.
2. Language model. Character-level GPT-2 on the English chatterbot-corpus dialogues
   (the YAML files in the ``chatterbot-corpus`` wheel), 10% of the dialogues held out.
   A 4-layer teacher is pre-trained briefly; a 2-layer, half-width student trains the
   same steps with no teacher, forward KL, reverse KL and JSD(0.5) (alpha = 0.5 mix with
   the next-token loss). Held-out perplexity.
3. KD + PEFT. A 2-layer student built from the teacher (:func:`build_student`, every
   other layer, DistilBERT-style) and adapted with LoRA (r = 8 on every block Linear)
   or a sparse delta (1% of the block weights, Fisher-scored), trained with no teacher,
   forward KL and JSD(0.5).

Every student of a section sees the same batches in the same order. Every model is
trained by ``scalpel.core.fit.fit`` (the distillation task is a Task like any other),
with the same optimizer settings for all the students of a section.

    python benchmarks/distill.py            # ~5-9 min on one busy CPU core
    python benchmarks/distill.py --quick    # < 1 min, a smoke run
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch import nn

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Settings:
    seeds: int = 3
    cls_teacher_epochs: int = 30
    cls_student_epochs: int = 40
    lm_context: int = 64
    lm_batch: int = 16
    lm_teacher_steps: int = 800
    lm_student_steps: int = 300
    lm_peft_steps: int = 150
    lm_eval_windows: int = 320


QUICK = Settings(seeds=1, cls_teacher_epochs=5, cls_student_epochs=3, lm_teacher_steps=30, lm_student_steps=10,
                 lm_peft_steps=5, lm_eval_windows=32)


# ---------------------------------------------------------------------------- tasks


class ClassificationTask:
    """Cross-entropy on ``batch["x"] -> batch["y"]``; accuracy."""

    def step(self, model, batch):
        logits = model(batch["x"])
        return {"loss": F.cross_entropy(logits, batch["y"]), "logits": logits}

    def evaluate(self, model, batches):
        hits = total = 0
        for b in batches:
            hits += (model(b["x"]).argmax(-1) == b["y"]).sum().item()
            total += len(b["y"])
        return {"accuracy": hits / total}


class CausalLMTask:
    """Next-token loss of a Hugging Face causal LM; held-out perplexity."""

    def step(self, model, batch):
        out = model(input_ids=batch["input_ids"], labels=batch["labels"])
        return {"loss": out.loss, "logits": out.logits}

    def evaluate(self, model, batches):
        nll = tokens = 0.0
        for b in batches:
            n = (b["labels"][:, 1:] != -100).sum().item()
            nll += model(input_ids=b["input_ids"], labels=b["labels"]).loss.item() * n
            tokens += n
        return {"perplexity": math.exp(nll / tokens)}


def train(model, task, batches, lr):
    """``scalpel.core.fit`` over ``batches`` once: AdamW, 5% warm-up then cosine decay,
    clipping at 1; returns the training seconds ``fit`` measured."""
    from scalpel.core.fit import FitConfig, fit

    workdir = tempfile.mkdtemp(prefix="distill-bench-")
    config = FitConfig(
        output_dir=workdir, max_steps=len(batches), lr=lr, weight_decay=0.01, schedule="cosine",
        warmup_ratio=0.05, save_every=0, eval_at_epoch_end=False, progress=False, device="cpu", log_every=10**6,
    )
    groups = task.param_groups(model) if hasattr(task, "param_groups") else None
    hooks = (task,) if hasattr(task, "after_step") else ()
    try:
        result = fit(model, task, batches, None, config, param_groups=groups, hooks=hooks)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    model.eval()
    return result.train_seconds


def evaluate(task, model, batches):
    model.eval()
    with torch.no_grad():
        return task.evaluate(model, batches)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- 1. digits


class DigitsCNN(nn.Module):
    """Conv nets on the 8x8 digit images: ``convs`` conv layers (3x3, ReLU) with
    ``channels``, a 2x2 max-pool, then ``hidden`` (0: none) and a 10-way linear head."""

    def __init__(self, channels: tuple[int, ...], hidden: int):
        super().__init__()
        layers, c_in = [], 1
        for c in channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.ReLU()]
            c_in = c
        layers += [nn.MaxPool2d(2), nn.Flatten()]
        width = c_in * 16
        if hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, 10))

    def forward(self, x):
        return self.net(x.view(-1, 1, 8, 8))


def teacher_net() -> nn.Module:
    return DigitsCNN((32, 64), hidden=128)  # 4 weight layers


def student_net() -> nn.Module:
    return DigitsCNN((16,), hidden=0)  # 2 weight layers


def digits_batches(x, y, epochs, batch, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=g)
        out += [{"x": x[order[i:i + batch]], "y": y[order[i:i + batch]]} for i in range(0, len(x), batch)]
    return out


def classification(s: Settings) -> tuple[list[str], dict]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from scalpel.core.distill import DistillationTask

    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(digits.data / 16.0, digits.target, test_size=0.33, random_state=0, stratify=digits.target)
    x_tr, x_te = torch.tensor(x_tr, dtype=torch.float32), torch.tensor(x_te, dtype=torch.float32)
    y_tr, y_te = torch.tensor(y_tr), torch.tensor(y_te)
    test = [{"x": x_te, "y": y_te}]
    task = ClassificationTask()
    results = {"teacher": [], "student, no teacher": [], "student + KD": []}
    torch.manual_seed(0)
    teacher = teacher_net()
    train(teacher, task, digits_batches(x_tr, y_tr, s.cls_teacher_epochs, 64, seed=0), lr=2e-3)
    results["teacher"].append(evaluate(task, teacher, test)["accuracy"])
    for seed in range(s.seeds):
        torch.manual_seed(100 + seed)
        plain = student_net()
        kd = copy.deepcopy(plain)
        batches = digits_batches(x_tr, y_tr, s.cls_student_epochs, 64, 100 + seed)
        train(plain, task, batches, lr=2e-3)
        distill = DistillationTask(task, teacher, loss="kd", alpha=0.5, temperature=4.0)
        train(kd, distill, batches, lr=2e-3)
        results["student, no teacher"].append(evaluate(task, plain, test)["accuracy"])
        results["student + KD"].append(evaluate(task, kd, test)["accuracy"])
    sizes = {"teacher": count(teacher_net()), "student, no teacher": count(student_net()), "student + KD": count(student_net())}
    depth = {"teacher": "2 conv + 2 linear", "student, no teacher": "1 conv + 1 linear", "student + KD": "1 conv + 1 linear"}
    teacher_mean = sum(results["teacher"]) / len(results["teacher"])
    lines = [
        f"### 1. Classification: digits (sklearn, {len(x_tr)} train / {len(x_te)} test), one teacher, "
        f"{s.seeds} student seed(s), {s.cls_student_epochs} epochs, KD: alpha = 0.5, T = 4",
        "",
        "| model | layers | parameters | test accuracy, mean (min-max) | % of teacher |",
        "|---|---|---|---|---|",
    ]
    for name, accs in results.items():
        mean = sum(accs) / len(accs)
        lines.append(
            f"| {name} | {depth[name]} | {sizes[name]:,} ({sizes[name] / sizes['teacher']:.0%}) | "
            f"{mean:.4f} ({min(accs):.4f}-{max(accs):.4f}) | {mean / teacher_mean:.1%} |"
        )
    summary = {name: sum(a) / len(a) for name, a in results.items()}
    return lines, summary


# ---------------------------------------------------------------------------- 2-3. LM


def chatterbot_dialogues() -> list[str]:
    import chatterbot_corpus

    folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    dialogues = []
    for path in sorted(folder.glob("*.yml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for conv in data.get("conversations") or []:
            turns = [str(t).strip() for t in conv if t is not None]
            if turns:
                dialogues.append("\n".join(turns) + "\n\n")
    return dialogues


def lm_data(s: Settings, seed: int = 0):
    dialogues = chatterbot_dialogues()
    random.Random(seed).shuffle(dialogues)
    cut = len(dialogues) // 10
    held, train_text = "".join(dialogues[:cut]), "".join(dialogues[cut:])
    chars = sorted(set(train_text) | set(held))
    stoi = {c: i for i, c in enumerate(chars)}
    encode = lambda text: torch.tensor([stoi[c] for c in text])  # noqa: E731
    return encode(train_text), encode(held), len(chars)


def lm_batches(stream, steps, s: Settings, seed):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - s.lm_context - 1, (s.lm_batch,), generator=g)
        ids = torch.stack([stream[i:i + s.lm_context] for i in starts])
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def lm_eval_batches(stream, s: Settings):
    n = min(s.lm_eval_windows, (len(stream) - 1) // s.lm_context)
    ids = stream[: n * s.lm_context].view(n, s.lm_context)
    return [{"input_ids": ids[i:i + 64], "labels": ids[i:i + 64]} for i in range(0, n, 64)]


def gpt2(vocab, layers, width, context):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab, n_positions=context, n_embd=width, n_layer=layers, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


LM_LOSSES = {"no teacher": None, "forward KL": "forward_kl", "reverse KL": "reverse_kl", "JSD(0.5)": "jsd"}


def language_model(s: Settings) -> tuple[list[str], dict]:
    from scalpel.core import apply, trainable_parameters
    from scalpel.core.distill import DistillationTask, build_student
    from scalpel.core.lora.config import LoraConfig
    from scalpel.core.sparse.config import SparseConfig
    from scalpel.core.sparse.scorers import ScoringData

    train_stream, held_stream, vocab = lm_data(s)
    held = lm_eval_batches(held_stream, s)
    task = CausalLMTask()
    torch.manual_seed(0)
    teacher = gpt2(vocab, 4, 128, s.lm_context)
    t_sec = train(teacher, task, lm_batches(train_stream, s.lm_teacher_steps, s, seed=1), lr=2e-3)
    teacher_ppl = evaluate(task, teacher, held)["perplexity"]
    rows = [("teacher", "4 x 128", count(teacher), count(teacher), "-", teacher_ppl, t_sec)]
    summary = {"teacher": teacher_ppl}

    batches = lm_batches(train_stream, s.lm_student_steps, s, seed=2)
    torch.manual_seed(1)
    scratch = gpt2(vocab, 2, 64, s.lm_context)
    for name, loss in LM_LOSSES.items():
        student = copy.deepcopy(scratch)
        distill = task if loss is None else DistillationTask(task, teacher, loss=loss, alpha=0.5)
        sec = train(student, distill, batches, lr=2e-3)
        ppl = evaluate(task, student, held)["perplexity"]
        rows.append((f"student, {name}", "2 x 64, scratch", count(student), count(student), name, ppl, sec))
        summary[f"scratch/{name}"] = ppl

    peft_rows = []
    pruned = build_student(teacher, every=2)
    pruned_ppl = evaluate(task, pruned, held)["perplexity"]
    peft_rows.append(("built from teacher, untrained", count(pruned), 0, "-", pruned_ppl, 0.0))
    batches = lm_batches(train_stream, s.lm_peft_steps, s, seed=3)
    targets = r"c_attn|c_proj|c_fc"
    for adapt in ("LoRA r=8", "sparse 1%"):
        for name, loss in (("no teacher", None), ("forward KL", "forward_kl"), ("JSD(0.5)", "jsd")):
            student = build_student(teacher, every=2)
            if adapt.startswith("LoRA"):
                student = apply(student, LoraConfig(r=8, alpha=16, targets=targets))
            else:
                scoring = ScoringData(batches[:4], lambda m, b: task.step(m, b)["loss"])
                student = apply(student, SparseConfig(density=0.01, scorer="fisher", targets=targets, num_batches=4), data=scoring)
            distill = task if loss is None else DistillationTask(task, teacher, loss=loss, alpha=0.5)
            sec = train(student, distill, batches, lr=5e-3)
            ppl = evaluate(task, student, held)["perplexity"]
            trainable = sum(p.numel() for p in trainable_parameters(student).values())
            peft_rows.append((f"{adapt}, {name}", count(pruned), trainable, name, ppl, sec))
            summary[f"{adapt}/{name}"] = ppl

    lines = [
        f"### 2. Language model: character-level GPT-2 on chatterbot-corpus (English), vocabulary {vocab}, "
        f"context {s.lm_context}",
        "",
        f"Teacher: {s.lm_teacher_steps} steps; students: {s.lm_student_steps} steps of batch {s.lm_batch}, "
        "alpha = 0.5 (half next-token loss, half distillation), T = 1. Held-out: 10% of the dialogues.",
        "",
        "| model | layers x width | parameters | distillation | held-out perplexity |",
        "|---|---|---|---|---|",
    ]
    for name, shape, n, _, loss, ppl, _sec in rows:
        lines.append(f"| {name} | {shape} | {n:,} | {loss} | {ppl:.3f} |")
    lines += [
        "",
        f"### 3. KD + PEFT: a 2 x 128 student built from the teacher (layers 0 and 2), adapted, {s.lm_peft_steps} steps",
        "",
        "| student | parameters | trainable | distillation | held-out perplexity |",
        "|---|---|---|---|---|",
    ]
    for name, n, trainable, loss, ppl, _ in peft_rows:
        lines.append(f"| {name} | {n:,} | {trainable:,} | {loss} | {ppl:.3f} |")
    return lines, summary


# ---------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a < 1 min smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "distill.md")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: these models are too small to gain from more)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else Settings()
    start, cpu_start = time.perf_counter(), time.process_time()
    cls_lines, cls = classification(s)
    lm_lines, lm = language_model(s)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    command = "python benchmarks/distill.py" + (" --quick" if args.quick else "")
    kept = cls["student + KD"] / cls["teacher"]
    verdict = [
        "",
        f"Classification goal (KD student >= 97% of the teacher's accuracy and above the no-KD student): "
        f"{kept:.1%} of the teacher, {cls['student + KD'] - cls['student, no teacher']:+.4f} vs no KD -> "
        f"{'met' if kept >= 0.97 and cls['student + KD'] > cls['student, no teacher'] else 'NOT met'}.",
    ]
    text = "\n".join(
        ["## Knowledge distillation", "", f"`{command}`: {elapsed:.0f} s wall, {cpu:.0f} s CPU, "
         f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}", "", *cls_lines, *verdict, "", *lm_lines, ""]
    )
    print(text)
    from scalpel.core.files import atomic_write

    with atomic_write(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
