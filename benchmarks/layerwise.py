"""Layer-wise adaptation: surgical fine-tuning on three distribution shifts, and LISA's memory.

Part 1, surgical fine-tuning (Lee et al., ICLR 2023) on scikit-learn's digits (1,797 real
8x8 handwritten digits). A small ResNet-shaped CNN (stem, layer1..3, head) is pre-trained
on a source split, then fine-tuned on a small target split under three shifts:

* input corruption: the target images are blurred and noisy (Gaussian blur + noise);
* sub-population shift: 5 super-classes made of digit pairs (0|1, 2|3, ...); the source
  sees the first digit of each pair, the target only the second;
* label permutation: the target labels are a fixed permutation of the source labels.

Methods: full fine-tuning, each single entry of the block map alone (stem, layer1,
layer2, layer3, head; nothing else trained), Auto-RGN (full fine-tuning with per-block
learning-rate multipliers RGN/max RGN re-measured every epoch), Auto-RGN top-1 selection,
BitFit (biases + head) and LLRD (full, decay 0.5). Each method takes the better of two
learning rates on a target validation split; target test accuracy is reported as mean
+- std over seeds (pre-training, splits and fine-tuning all reseeded). All runs of one
seed and shift are interleaved in one process.

Part 2, LISA memory (Pan et al., 2024) on a Llama-style decoder of 8 blocks: optimizer
state, gradients and the peak of parameters + gradients + optimizer state over a run, for
full fine-tuning, LISA gamma=2 without freeing the optimizer state of re-frozen blocks
(the reference implementation), LISA with freeing (ours), and LoRA on every linear layer.
On CUDA the real ``max_memory_allocated`` is reported too.

    python benchmarks/layerwise.py            # ~10 min on 2 CPU cores
    python benchmarks/layerwise.py --quick    # < 1 min
"""

from __future__ import annotations

import argparse
import copy
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from scalpel.core import apply
from scalpel.core.layerwise import LISA, AutoRGN, FullConfig, LayerwiseConfig, block_map, llrd_param_groups

ROOT = Path(__file__).resolve().parents[1]
OUT_MD = ROOT / "docs" / "benchmarks" / "layerwise.md"
OUT_PNG = ROOT / "docs" / "benchmarks" / "layerwise.png"
SHIFTS = ("input corruption", "sub-population", "label permutation")
SINGLE = ("stem", "layer1", "layer2", "layer3", "head")
METHODS = ("full", *SINGLE, "auto-rgn", "rgn top-1", "bitfit", "llrd")


@dataclass(frozen=True)
class Settings:
    seeds: int = 3
    pretrain_epochs: int = 15
    finetune_epochs: int = 10
    target_train: int = 250  # target training images (few-shot-ish, as in the paper)
    lrs: tuple[float, ...] = (2e-3, 2e-2)
    lisa_hidden: int = 256
    lisa_vocab: int = 2000
    lisa_steps: int = 60
    lisa_every: int = 5
    lisa_seq: int = 64
    noise: float = 0.6  # std of the input-corruption noise, on standardised pixels
    shifts: tuple[str, ...] = SHIFTS


QUICK = Settings(seeds=2, pretrain_epochs=2, finetune_epochs=2, target_train=48, lrs=(1e-2,), lisa_hidden=64, lisa_vocab=500, lisa_steps=9, lisa_every=3, lisa_seq=32)


# =============================================================================== part 1


def stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU(), nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU())


class DigitNet(nn.Module):
    """ResNet-shaped (conv1, bn1, layer1..3, fc), so the ResNet block map finds it."""

    def __init__(self, classes: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 16, 3, 1, 1), nn.BatchNorm2d(16)
        self.layer1, self.layer2, self.layer3 = stage(16, 16, 1), stage(16, 32, 2), stage(32, 64, 2)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, 1, 8, 8]
        x = F.relu(self.bn1(self.conv1(x)))
        return self.fc(self.layer3(self.layer2(self.layer1(x))).mean((2, 3)))


def corrupt(x: torch.Tensor, gen: torch.Generator, noise: float) -> torch.Tensor:
    """Gaussian blur (sigma 1) plus Gaussian noise of std ``noise``, per image."""
    k = torch.tensor([0.27, 0.46, 0.27])
    kernel = (k[:, None] * k[None, :]).view(1, 1, 3, 3)
    blurred = F.conv2d(x, kernel, padding=1)
    return blurred + noise * torch.randn(x.shape, generator=gen)


def make_shift(shift: str, seed: int, s: Settings) -> dict:
    """Source train/val and target train/val/test tensors for one shift and seed."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = (x - 0.3) / 0.4
    y = torch.tensor(digits.target)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(y), generator=gen)
    half = len(order) // 2
    src, tgt = order[:half], order[half:]
    classes = 10
    if shift == "sub-population":  # super-class = digit // 2; source: even digits, target: odd
        classes = 5
        src, tgt = src[y[src] % 2 == 0], tgt[y[tgt] % 2 == 1]
        y = y // 2
    xs, ys, xt, yt = x[src], y[src], x[tgt], y[tgt]
    if shift == "input corruption":
        xt = corrupt(xt, gen, s.noise)
    if shift == "label permutation":
        perm = torch.randperm(classes, generator=gen)
        while (perm == torch.arange(classes)).any():  # a derangement: every label moves
            perm = torch.randperm(classes, generator=gen)
        yt = perm[yt]
    n_train = min(s.target_train, len(yt) // 2)
    n_val = (len(yt) - n_train) // 3
    cut = int(len(ys) * 0.85)
    return {
        "classes": classes,
        "source": (xs[:cut], ys[:cut]), "source_val": (xs[cut:], ys[cut:]),
        "train": (xt[:n_train], yt[:n_train]), "val": (xt[n_train : n_train + n_val], yt[n_train : n_train + n_val]),
        "test": (xt[n_train + n_val :], yt[n_train + n_val :]),
    }


def loader(data: tuple[torch.Tensor, torch.Tensor], batch: int, gen: torch.Generator):
    x, y = data
    order = torch.randperm(len(y), generator=gen)
    return [(x[order[i : i + batch]], y[order[i : i + batch]]) for i in range(0, len(y), batch)]


@torch.no_grad()
def accuracy(model: nn.Module, data) -> float:
    model.eval()
    x, y = data
    return float((model(x).argmax(-1) == y).float().mean()) * 100


def train_loop(model, groups, data, *, lr, epochs, seed, hooks=(), batch=32) -> None:
    """A plain AdamW loop that honours ``lr_scale`` per group and calls ``after_step`` hooks."""
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    step = 0
    for _ in range(epochs):
        model.train()
        for x, y in loader(data, batch, gen):
            for g in optimizer.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            step += 1
            for hook in hooks:
                hook.after_step(step, model, optimizer)


def pretrain(data: dict, seed: int, s: Settings) -> nn.Module:
    torch.manual_seed(seed)
    model = DigitNet(data["classes"])
    train_loop(model, [{"params": list(model.parameters())}], data["source"], lr=3e-3, epochs=s.pretrain_epochs, seed=seed)
    return model


def finetune(method: str, base: nn.Module, data: dict, lr: float, seed: int, s: Settings) -> tuple[nn.Module, str]:
    """Fine-tune a copy of ``base`` with one method; returns the model and a note (RGN's pick)."""
    model = copy.deepcopy(base)
    torch.manual_seed(seed)
    note = ""
    hooks: tuple = ()
    if method in SINGLE:
        apply(model, LayerwiseConfig(blocks=(method,), train_head=False))
    elif method == "bitfit":
        apply(model, LayerwiseConfig(bitfit=True))
    elif method == "rgn top-1":
        batches = loader(data["train"], 32, torch.Generator().manual_seed(seed))
        apply(model, LayerwiseConfig(rgn_top_k=1, train_head=False, rgn_batches=4), data=batches)
        note = next(b.name for b in block_map(model).entries if any(p.requires_grad for _, p in block_map(model).assign(model)[b.name]))
    else:
        apply(model, FullConfig())
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if method == "llrd":
        groups = llrd_param_groups(model, decay=0.5)
    if method == "auto-rgn":
        steps_per_epoch = -(-len(data["train"][1]) // 32)
        rgn = AutoRGN(model, loader(data["train"], 32, torch.Generator().manual_seed(seed + 1)), every=steps_per_epoch, num_batches=2)
        groups, hooks = rgn.param_groups(), (rgn,)
    train_loop(model, groups, data["train"], lr=lr, epochs=s.finetune_epochs, seed=seed, hooks=hooks)
    return model, note


def surgical(s: Settings) -> tuple[dict, dict, dict]:
    """results[shift][method] = test accuracies over seeds; plus source-model baselines and RGN picks."""
    results = {sh: {m: [] for m in METHODS} for sh in s.shifts}
    zero_shot = {sh: [] for sh in s.shifts}
    picks = {sh: [] for sh in s.shifts}
    for seed in range(s.seeds):
        for shift in s.shifts:
            data = make_shift(shift, seed, s)
            base = pretrain(data, seed, s)
            zero_shot[shift].append(accuracy(base, data["test"]))
            for method in METHODS:  # interleaved: every method of this seed and shift in turn
                best = (-1.0, 0.0)
                for lr in s.lrs:
                    model, note = finetune(method, base, data, lr, seed, s)
                    val = accuracy(model, data["val"])
                    if val > best[0]:
                        best = (val, accuracy(model, data["test"]))
                        if note:
                            pick = note
                results[shift][method].append(best[1])
                if method == "rgn top-1":
                    picks[shift].append(pick)
            print(f"  seed {seed} {shift}: " + ", ".join(f"{m} {results[shift][m][-1]:.1f}" for m in METHODS), flush=True)
    return results, zero_shot, picks


# =============================================================================== part 2


def tiny_decoder(s: Settings) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=s.lisa_vocab, hidden_size=s.lisa_hidden, intermediate_size=s.lisa_hidden * 8 // 3,
        num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=s.lisa_seq,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def sequences(s: Settings, gen: torch.Generator) -> torch.Tensor:
    """Arithmetic token sequences t_{i+1} = t_i + k (mod V): learnable, so the loss falls."""
    start = torch.randint(0, s.lisa_vocab, (4, 1), generator=gen)
    step = torch.randint(1, 7, (4, 1), generator=gen)
    return (start + step * torch.arange(s.lisa_seq)) % s.lisa_vocab


def lora_kinds(s: Settings) -> tuple[str, str]:
    """LoRA at rank hidden/16 and hidden/4 (16 and 64 for hidden 256): the goal depends on the rank."""
    return f"lora:{s.lisa_hidden // 16}", f"lora:{s.lisa_hidden // 4}"


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


def memory_run(kind: str, s: Settings, device: torch.device) -> dict:
    model = tiny_decoder(s)
    hooks = ()
    if kind.startswith("lora:"):
        from scalpel.core.lora import LoraConfig

        rank = int(kind.split(":")[1])
        apply(model, LoraConfig(r=rank, alpha=2 * rank, targets="all-linear"))
    else:
        apply(model, FullConfig())
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if kind.startswith("lisa"):
        lisa = LISA(model, gamma=2, every=s.lisa_every, seed=0, free_state=kind == "lisa-free")
        params, hooks = lisa.param_groups()[0]["params"], (lisa,)
    optimizer = torch.optim.AdamW(params, lr=3e-4)
    gen = torch.Generator().manual_seed(0)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    peak = state_peak = grad_peak = 0
    losses = []
    for step in range(1, s.lisa_steps + 1):
        ids = sequences(s, gen).to(device)
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        # the moment parameters, gradients and optimizer state all coexist
        state = tensor_bytes(v for st in optimizer.state.values() for v in st.values())
        grads = tensor_bytes(p.grad for p in model.parameters() if p.grad is not None)
        weights = tensor_bytes(model.parameters())
        peak, state_peak, grad_peak = max(peak, state + grads + weights), max(state_peak, state), max(grad_peak, grads)
        losses.append(float(loss.detach()))
        for hook in hooks:
            hook.after_step(step, model, optimizer)
    cuda_peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    trainable = sum(p.numel() for p in params)
    return {"kind": kind, "state": state_peak, "grads": grad_peak, "peak": peak, "cuda_peak": cuda_peak,
            "loss_first": statistics.mean(losses[:3]), "loss_last": statistics.mean(losses[-3:]), "trainable": trainable}


# =============================================================================== report


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} +- {statistics.stdev(values) if len(values) > 1 else 0.0:.1f}"


def render(results, zero_shot, picks, memory, s: Settings, seconds: float, quick: bool, device: torch.device, command: str) -> str:
    shifts = list(results)
    lines = [
        "# Layer-wise adaptation benchmark" + (" (--quick smoke run: too small to read anything into)" if quick else ""),
        "",
        f"Command: `{command}` ({seconds:.0f} s, device {device.type}); input-corruption noise std {s.noise}.",
        "",
        "## 1. Surgical fine-tuning on digits (target test accuracy %, mean +- std over "
        f"{s.seeds} seeds; best of lr {', '.join(map(str, s.lrs))} on target validation)",
        "",
        "| method | " + " | ".join(shifts) + " |",
        "|---|" + "---|" * len(shifts),
        "| source model, no fine-tuning | " + " | ".join(mean_std(zero_shot[sh]) for sh in shifts) + " |",
    ]
    for m in METHODS:
        label = {"full": "full fine-tuning", "bitfit": "BitFit (+ head)", "llrd": "LLRD (decay 0.5)",
                 "auto-rgn": "Auto-RGN (lr multipliers)", "rgn top-1": "Auto-RGN top-1 block"}.get(m, f"only {m}")
        lines.append(f"| {label} | " + " | ".join(mean_std(results[sh][m]) for sh in shifts) + " |")
    lines += ["", "Auto-RGN top-1 picked: " + "; ".join(f"{sh}: {', '.join(picks[sh])}" for sh in shifts), ""]
    lines += ["Claims of Lee et al. (2023), checked on these numbers:", ""]
    for sh, expected in (("input corruption", "stem"), ("sub-population", "middle"), ("label permutation", "head")):
        if sh not in results:
            continue
        means = {m: statistics.mean(results[sh][m]) for m in SINGLE}
        best = max(means, key=means.get)
        full = statistics.mean(results[sh]["full"])
        if expected == "middle":
            verdict = "expected a middle block (layer1-3): " + ("holds" if best.startswith("layer") else "does not hold")
        else:
            verdict = f"expected the {'first' if expected == 'stem' else 'last'} block ({expected}): " + ("holds" if best == expected else "does not hold")
        lines.append(
            f"- {sh}: best single block **{best}** ({means[best]:.1f}); {verdict}{'; ' if verdict else ''}"
            f"best single block {'matches or beats' if means[best] >= full - 0.5 else 'is below'} full fine-tuning ({full:.1f})."
        )
    mb = lambda b: f"{b / 2**20:.2f}"  # noqa: E731
    full = next(r for r in memory if r["kind"] == "full")
    loras = [r for r in memory if r["kind"].startswith("lora:")]
    lora = loras[-1]  # the larger rank is the reference of the "vs LoRA" column
    lines += [
        "",
        f"## 2. LISA memory: Llama-style decoder, 8 blocks, hidden {s.lisa_hidden}, vocab {s.lisa_vocab}, "
        f"{s.lisa_steps} AdamW steps, switch every {s.lisa_every}",
        "",
        f"| method | parameters in the optimizer | optimizer state MB (max) | vs LoRA r={lora['kind'].split(':')[1]} | gradients MB (max) | params+grads+state peak MB | "
        + ("CUDA peak MB | " if device.type == "cuda" else "")
        + "loss first -> last |",
        "|---|---|---|---|---|---|" + ("---|" if device.type == "cuda" else "") + "---|",
    ]
    names = {"full": "full fine-tuning", "lisa-keep": "LISA gamma=2, state kept (reference)", "lisa-free": "LISA gamma=2, state freed (ours)"}
    names.update({r["kind"]: f"LoRA r={r['kind'].split(':')[1]}, all linear" for r in loras})
    for r in memory:
        cuda = f"{mb(r['cuda_peak'])} | " if device.type == "cuda" else ""
        lines.append(
            f"| {names[r['kind']]} | {r['trainable']:,} | {mb(r['state'])} | {r['state'] / lora['state']:.2f}x | {mb(r['grads'])} | "
            f"{mb(r['peak'])} | {cuda}{r['loss_first']:.2f} -> {r['loss_last']:.2f} |"
        )
    free = next(r for r in memory if r["kind"] == "lisa-free")
    lines += [
        "",
        "Goal: LISA with freeing <= 2x LoRA's optimizer state: "
        + "; ".join(
            f"vs LoRA r={r['kind'].split(':')[1]}: {free['state'] / r['state']:.2f}x -> {'met' if free['state'] <= 2 * r['state'] else 'NOT met'}"
            for r in loras
        )
        + f". LISA with freeing vs full fine-tuning: {free['state'] / full['state']:.2f}x; "
        f"LISA without freeing vs full: {next(r for r in memory if r['kind'] == 'lisa-keep')['state'] / full['state']:.2f}x.",
        "For LISA the optimizer holds every parameter it may train; "
        "at any step only stem, head and 2 blocks have gradients. Memory figures are exact tensor byte counts "
        "taken after each optimizer step (parameters, .grad, optimizer state), maximised over the run.",
    ]
    return "\n".join(lines) + "\n"


def plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shifts = list(results)
    fig, axes = plt.subplots(1, len(shifts), figsize=(4.2 * len(shifts), 3.6), sharey=False, squeeze=False)
    axes = axes[0]
    for ax, sh in zip(axes, shifts):
        means = [statistics.mean(results[sh][m]) for m in METHODS]
        stds = [statistics.stdev(results[sh][m]) if len(results[sh][m]) > 1 else 0 for m in METHODS]
        colors = ["#444444"] + ["#4c72b0"] * len(SINGLE) + ["#dd8452"] * (len(METHODS) - 1 - len(SINGLE))
        ax.bar(range(len(METHODS)), means, yerr=stds, color=colors, capsize=2)
        ax.set_xticks(range(len(METHODS)), METHODS, rotation=60, ha="right", fontsize=8)
        ax.set_title(sh)
        ax.set_ylim(max(0, min(means) - 15), 100)
        ax.axhline(means[0], color="#444444", lw=0.8, ls="--")
    axes[0].set_ylabel("target test accuracy (%)")
    fig.suptitle("Surgical fine-tuning on digits: full FT (grey), single blocks (blue), others (orange)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def _shown_args(argv: list[str]) -> list[str]:
    """The arguments that change the figures (not --out / --device), for the table's command line."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--out", "--device"):
            skip = True
        elif not arg.startswith(("--out=", "--device=")):
            shown.append(arg)
    return shown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a < 1 min smoke run")
    parser.add_argument("--out", type=Path, default=OUT_MD, help="markdown table path")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device of the LISA memory part")
    parser.add_argument("--noise", type=float, default=0.6, help="std of the input-corruption noise (standardised pixels)")
    parser.add_argument("--shifts", nargs="+", choices=SHIFTS, default=list(SHIFTS), help="shifts to run")
    args = parser.parse_args(argv)
    s = replace(QUICK if args.quick else Settings(), noise=args.noise, shifts=tuple(args.shifts))
    command = shlex.join(["python", "benchmarks/layerwise.py", *_shown_args(argv if argv is not None else sys.argv[1:])])
    # One thread: these models are tiny, and on a shared machine a second thread mostly waits.
    torch.set_num_threads(1)
    started = time.perf_counter()
    print("part 1: surgical fine-tuning", flush=True)
    results, zero_shot, picks = surgical(s)
    print("part 2: LISA memory", flush=True)
    device = torch.device(args.device)
    memory = [memory_run(kind, s, device) for kind in ("full", "lisa-keep", "lisa-free", *lora_kinds(s))]
    table = render(results, zero_shot, picks, memory, s, time.perf_counter() - started, args.quick, device, command)
    from scalpel.core.files import atomic_write

    with atomic_write(args.out, "w") as f:
        f.write(table)
    png = args.out.with_suffix(".png")
    plot(results, png)
    table = table.replace("# Layer-wise adaptation benchmark", f"# Layer-wise adaptation benchmark\n\n![surgical fine-tuning]({png.name})", 1)
    with atomic_write(args.out, "w") as f:
        f.write(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
