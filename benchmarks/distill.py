"""Knowledge distillation: students with and without a teacher, side by side.

1. Classification. scikit-learn's handwritten digits (1,797 real 8x8 scans, UCI):
   a CNN teacher (2 conv + 2 linear layers) trained on all training labels, and CNN
   students with half the layers (1 conv + 1 linear, ~4% of the parameters). Students
   with all labels, and students with the labels of only 10 images per class: without a
   teacher, with Hinton KD (T = 4) on their labelled images, and with KD on their labelled
   images plus unlabelled training images (a transfer set, Hinton et al. 2015), where the
   teacher knows clearly more than the student can learn from its labels. alpha chosen
   once on a validation split. Several seeds; mean ± std test accuracy.
2. Language model. Character-level GPT-2 on the English chatterbot-corpus dialogues
   (the YAML files in the ``chatterbot-corpus`` wheel), 10% of the dialogues held out.
   A 4-layer teacher is pre-trained briefly; a 2-layer, half-width student trains the
   same steps with no teacher, forward KL, reverse KL and JSD(0.5) (alpha = 0.5 mix with
   the next-token loss). Held-out perplexity.
3. KD + PEFT. A 2-layer student built from the teacher (:func:`build_student`, every
   other layer, DistilBERT-style) and adapted with LoRA (r = 8 on every block Linear)
   or a sparse delta (1% of the block weights, Fisher-scored), trained with no teacher,
   forward KL and JSD(0.5).

The students compared in a section see the same (labelled) batches in the same order. Every model is
trained by ``scalpel.core.fit.fit`` (the distillation task is a Task like any other),
with the same optimizer settings for all the students of a section.

    python benchmarks/distill.py            # ~6 CPU-min (~15-25 min wall on a busy shared machine)
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
    seeds: int = 5
    cls_teacher_epochs: int = 30
    cls_student_steps: int = 600
    cls_labelled: int = 10  # labelled images per class of the few-label students
    cls_temperature: float = 4.0
    cls_alphas: tuple[float, ...] = (0.5, 0.7, 0.9)
    lm_context: int = 64
    lm_batch: int = 16
    lm_teacher_steps: int = 800
    lm_student_steps: int = 300
    lm_peft_steps: int = 150
    lm_eval_windows: int = 320


QUICK = Settings(seeds=2, cls_teacher_epochs=5, cls_student_steps=20, lm_teacher_steps=30, lm_student_steps=10,
                 lm_peft_steps=5, lm_eval_windows=32)


# ---------------------------------------------------------------------------- tasks


class ClassificationTask:
    """Cross-entropy on ``batch["x"] -> batch["y"]`` over the labelled examples (``y = -1``
    marks an unlabelled transfer-set image, which only the distillation loss sees); accuracy."""

    def step(self, model, batch):
        logits = model(batch["x"])
        y = batch["y"]
        labelled = y >= 0
        loss = F.cross_entropy(logits[labelled], y[labelled], reduction="sum") / labelled.sum().clamp(min=1)
        return {"loss": loss, "logits": logits}

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
    return DigitsCNN((32,), hidden=0)  # 2 weight layers: half the teacher's 4


def _epochs(n: int, batch: int, steps: int, g: torch.Generator) -> list[torch.Tensor]:
    """``steps`` index batches of size ``batch`` over ``range(n)``, reshuffled every epoch."""
    out = []
    while len(out) < steps:
        order = torch.randperm(n, generator=g)
        out += [order[i:i + batch] for i in range(0, n - batch + 1 if n >= batch else 1, batch)]
    return out[:steps]


def digits_batches(x, y, steps, batch, seed, transfer=None, transfer_batch=64):
    """``steps`` labelled batches; with ``transfer`` (unlabelled images), each batch also
    carries ``transfer_batch`` of them with label -1 (the same labelled part either way)."""
    g = torch.Generator().manual_seed(seed)
    labelled = _epochs(len(x), batch, steps, g)
    if transfer is None:
        return [{"x": x[i], "y": y[i]} for i in labelled]
    extra = _epochs(len(transfer), transfer_batch, steps, g)
    minus = torch.full((transfer_batch,), -1, dtype=y.dtype)
    return [{"x": torch.cat([x[i], transfer[j]]), "y": torch.cat([y[i], minus[: len(j)]])} for i, j in zip(labelled, extra)]


def labelled_subset(y, per_class: int, seed: int) -> torch.Tensor:
    """Indices of ``per_class`` random examples of every class."""
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.nonzero(y == c).flatten()[torch.randperm(int((y == c).sum()), generator=g)[:per_class]]
                      for c in range(int(y.max()) + 1)])


def _mean_std(xs):
    import statistics

    return sum(xs) / len(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def classification(s: Settings) -> tuple[list[str], dict]:
    """Digits: a teacher on all labels; students with all labels and with ``cls_labelled``
    labels per class, without a teacher, with KD on their labelled images, and with KD on
    their labelled images plus the unlabelled rest of the training images (transfer set)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from scalpel.core.distill import DistillationTask

    digits = load_digits()
    x_pool, x_te, y_pool, y_te = train_test_split(digits.data / 16.0, digits.target, test_size=0.33, random_state=0, stratify=digits.target)
    x_tr, x_va, y_tr, y_va = train_test_split(x_pool, y_pool, test_size=200, random_state=1, stratify=y_pool)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    x_tr, x_va, x_te, y_tr, y_va, y_te = as_x(x_tr), as_x(x_va), as_x(x_te), torch.tensor(y_tr), torch.tensor(y_va), torch.tensor(y_te)
    test, val = [{"x": x_te, "y": y_te}], [{"x": x_va, "y": y_va}]
    task = ClassificationTask()
    torch.manual_seed(0)
    teacher = teacher_net()
    teacher_steps = s.cls_teacher_epochs * math.ceil(len(x_tr) / 64)
    train(teacher, task, digits_batches(x_tr, y_tr, teacher_steps, 64, seed=0), lr=2e-3)
    teacher_acc = evaluate(task, teacher, test)["accuracy"]
    steps, n_lab = s.cls_student_steps, s.cls_labelled

    def student(seed, data, alpha=None):
        torch.manual_seed(100 + seed)
        model = student_net()
        train(model, task if alpha is None else DistillationTask(task, teacher, loss="kd", alpha=alpha, temperature=s.cls_temperature),
              data, lr=2e-3)
        return model

    def few_label_batches(seed, transfer):
        idx = labelled_subset(y_tr, n_lab, seed=1000 + seed)
        return digits_batches(x_tr[idx], y_tr[idx], steps, 32, 100 + seed, transfer=x_tr if transfer else None)

    # alpha: chosen once, on the validation images, for the transfer-set student of seed 0
    alpha_val = {a: evaluate(task, student(0, few_label_batches(0, True), alpha=a), val)["accuracy"] for a in s.cls_alphas}
    alpha = max(alpha_val, key=alpha_val.get)
    rows = {
        "student, no teacher": ("all", "-"),
        "student + KD": ("all", "labelled images"),
        f"student, no teacher ({n_lab}/class)": (n_lab, "-"),
        f"student + KD ({n_lab}/class)": (n_lab, "labelled images"),
        f"student + KD + transfer set ({n_lab}/class)": (n_lab, f"labelled + {len(x_tr)} unlabelled"),
    }
    results = {name: [] for name in rows}
    for seed in range(s.seeds):
        full = digits_batches(x_tr, y_tr, steps, 64, 100 + seed)
        few, few_transfer = few_label_batches(seed, False), few_label_batches(seed, True)
        runs = [(full, None), (full, alpha), (few, None), (few, alpha), (few_transfer, alpha)]
        for name, (data, a) in zip(rows, runs):
            results[name].append(evaluate(task, student(seed, data, a), test)["accuracy"])
    n_s, n_t = count(student_net()), count(teacher_net())
    lines = [
        f"### 1. Classification: digits (sklearn: {len(x_tr)} train / {len(x_va)} validation / {len(x_te)} test images)",
        "",
        f"Teacher: 2 conv + 2 linear layers, all {len(x_tr)} training labels, {s.cls_teacher_epochs} epochs. Students: "
        f"1 conv + 1 linear layer (half the layers, {n_s / n_t:.1%} of the parameters), {steps} AdamW steps each, "
        f"{s.seeds} seeds (initialisation, labelled subset and batch order), mean ± std of test accuracy. "
        f"The '{n_lab}/class' students see the labels of {10 * n_lab} training images only (batches of 32 of them); "
        f"'+ transfer set' adds 64 unlabelled training images per batch on which only the teacher's soft targets "
        f"(T = {s.cls_temperature:g}) are learnt - the teacher is then clearly better than what the student can learn "
        "from its labels alone. All-label students: batches of 64 labelled images. "
        f"KD: loss = (1 - alpha) CE + alpha T^2 KL; alpha = {alpha} chosen once from "
        f"{', '.join(f'{a} ({alpha_val[a]:.3f})' for a in s.cls_alphas)} (validation accuracy of the seed-0 transfer-set "
        "student) and used for every KD row.",
        "",
        "| model | labels | distillation on | parameters | test accuracy, mean ± std | % of teacher |",
        "|---|---|---|---|---|---|",
        f"| teacher | all | - | {n_t:,} (100%) | {teacher_acc:.4f} | 100.0% |",
    ]
    summary = {"teacher": teacher_acc, "alpha": alpha}
    for name, accs in results.items():
        mean, std = _mean_std(accs)
        labels, on = rows[name]
        lines.append(f"| {name} | {labels if labels == 'all' else f'{10 * labels}'} | {on} | {n_s:,} ({n_s / n_t:.0%}) | "
                     f"{mean:.4f} ± {std:.4f} | {mean / teacher_acc:.1%} |")
        summary[name] = (mean, std, accs)
    summary["few"] = n_lab
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


def classification_verdict(cls: dict) -> list[str]:
    """The issue's goal, judged on the few-label students (where a teacher can add something),
    and the all-label comparison stated alongside."""
    few = cls["few"]
    kd, plain = cls[f"student + KD + transfer set ({few}/class)"], cls[f"student, no teacher ({few}/class)"]
    kept, gain = kd[0] / cls["teacher"], kd[0] - plain[0]
    wins = sum(a > b for a, b in zip(kd[2], plain[2]))
    met = kept >= 0.97 and gain > 0
    kd_all, plain_all = cls["student + KD"], cls["student, no teacher"]
    kd_few = cls[f"student + KD ({few}/class)"]
    return [
        f"Classification goal (KD student >= 97% of the teacher's accuracy and above the no-KD student), "
        f"{10 * few} labels + transfer set: {kept:.1%} of the teacher; {gain:+.4f} vs the no-KD student with the same "
        f"labels (better in {wins} of {len(kd[2])} seeds) -> **{'met' if met else 'NOT met'}**.",
        "",
        f"Without the transfer set the teacher adds less: KD on the same {10 * few} labelled images "
        f"{kd_few[0] - plain[0]:+.4f} vs no KD; with all labels, KD {kd_all[0] - plain_all[0]:+.4f} vs no KD "
        f"({kd_all[0] / cls['teacher']:.1%} vs {plain_all[0] / cls['teacher']:.1%} of the teacher) - the small student "
        "already learns nearly all the teacher knows from the labels of this small task.",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a < 1 min smoke run")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "distill.md")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: these models are too small to gain from more)")
    parser.add_argument("--classification-only", action="store_true", help="only section 1 (seconds; the table then lacks 2-3)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = QUICK if args.quick else Settings()
    start, cpu_start = time.perf_counter(), time.process_time()
    cls_lines, cls = classification(s)
    lm_lines = [] if args.classification_only else language_model(s)[0]
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    command = "python benchmarks/distill.py" + (" --quick" if args.quick else "") + (" --classification-only" if args.classification_only else "")
    verdict = ["", *classification_verdict(cls)]
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
