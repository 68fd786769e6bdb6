"""Scalpel's LoRA against Hugging Face ``peft`` on the same model and batch.

For a BERT of MiniLM-L6 shape (6 layers, r=8 on query/value) at three widths and a
ResNet-18 with LoRA on every convolution, runs of ours and PEFT's are interleaved
round by round and reported as ratios (never absolute times):

- train step time, ours / peft (forward + backward + AdamW step, median of rounds);
- peak memory, ours / peft: on CUDA ``max_memory_allocated`` over a step; on CPU the
  peak of live bytes replayed from the profiler's allocation records; and the bytes
  autograd keeps for backward (unique storages, via ``saved_tensors_hooks``);
- inference (eval, no grad): ours unmerged / base and merged / base, PEFT's alike.

On CPU the timer is this thread's CPU time (``time.thread_time``) with one torch thread,
so other processes on a shared machine disturb the ratios far less than wall time would.

Goals (issue 2): step time and memory <= PEFT's; merged = base; unmerged <= 1.10x base.

    python benchmarks/lora_vs_peft.py            # full table -> docs/benchmarks/lora_vs_peft.md
    python benchmarks/lora_vs_peft.py --quick    # < 1 min on CPU, smaller shapes
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import scalpel.core as sc
from scalpel.core.lora import LoraConfig

warnings.filterwarnings("ignore")


@dataclass
class Case:
    name: str
    build: object  # () -> nn.Module
    batch: object  # () -> dict of inputs
    ours: LoraConfig
    peft_targets: object  # list of names or regex


def bert_case(hidden: int, layers: int, batch: int, seq: int) -> Case:
    import transformers

    heads = max(1, hidden // 64) if hidden % 64 == 0 else 4

    def build():
        config = transformers.BertConfig(
            vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=4 * hidden, max_position_embeddings=512, num_labels=2,
        )
        torch.manual_seed(0)
        return transformers.BertForSequenceClassification(config)

    ids = torch.randint(1000, 30000, (batch, seq))
    labels = torch.randint(0, 2, (batch,))
    return Case(
        f"BERT h={hidden} L={layers} ({batch}x{seq} tokens)", build,
        lambda: {"input_ids": ids, "labels": labels},
        LoraConfig(r=8, alpha=16, targets="query|value"), ["query", "value"],
    )


def resnet_case(batch: int, size: int) -> Case:
    import torchvision

    def build():
        torch.manual_seed(0)
        return torchvision.models.resnet18(num_classes=10)

    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    conv_names = [n for n, m in build().named_modules() if isinstance(m, nn.Conv2d)]
    return Case(
        f"ResNet-18 convs ({batch}x3x{size}x{size})", build, lambda: {"x": x, "labels": y},
        LoraConfig(r=8, alpha=16, target_types=("Conv2d",)), conv_names,
    )


def loss_of(model, inputs):
    if "input_ids" in inputs:
        return model(**inputs).loss
    return nn.functional.cross_entropy(model(inputs["x"]), inputs["labels"])


def forward(model, inputs):
    return model(input_ids=inputs["input_ids"]) if "input_ids" in inputs else model(inputs["x"])


def make_ours(case):
    return sc.apply(case.build(), case.ours)


def make_peft(case):
    import peft

    config = peft.LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=case.peft_targets)
    return peft.get_peft_model(case.build(), config)


def train_step_timer(model, inputs):
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_of(model, inputs).backward()
        opt.step()

    step()  # warm-up: optimizer state allocated
    return step


def saved_bytes(model, inputs) -> int:
    """Bytes autograd keeps for backward in one training forward (each storage once)."""
    seen: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = loss_of(model, inputs)
    del loss
    return sum(seen.values())


def profiled_peak(model, inputs) -> int:
    """Peak of live CPU bytes over one training step, from the profiler's per-op
    allocation records replayed in start order (frees counted where they happen)."""
    step = train_step_timer(model, inputs)
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as prof:
        step()
    live = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += event.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def peak_memory(model, inputs, device) -> int:
    if device.type != "cuda":
        return profiled_peak(model, inputs)
    step = train_step_timer(model, inputs)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def timed(fn, repeats: int, device) -> float:
    """Fastest of ``repeats`` calls. On CPU (one torch thread, so all work runs in this
    thread, backward included) this is the thread's CPU time: time spent descheduled by
    other processes on a shared machine does not count. On CUDA, wall time after a sync."""
    clock = time.perf_counter if device.type == "cuda" else time.thread_time
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - start)
    return min(times)


def run_case(case: Case, rounds: int, repeats: int, device) -> dict[str, float]:
    inputs = {k: v.to(device) for k, v in case.batch().items()}
    ours, theirs = make_ours(case).to(device), make_peft(case).to(device)
    mem_ours, mem_peft = peak_memory(ours, inputs, device), peak_memory(theirs, inputs, device)
    saved = saved_bytes(ours, inputs) / saved_bytes(theirs, inputs)

    steps = {"ours": train_step_timer(ours, inputs), "peft": train_step_timer(theirs, inputs)}
    base = case.build().to(device).eval()
    ours_merged = sc.merge(copy.deepcopy(ours)).eval()
    peft_merged = copy.deepcopy(theirs).merge_and_unload().eval()
    infer = {
        "base": base, "infer_ours": ours, "infer_peft": theirs, "ours_merged": ours_merged, "peft_merged": peft_merged
    }
    samples: dict[str, list[float]] = {k: [] for k in [*steps, *infer]}
    for _ in range(rounds):  # interleaved: every variant once per round, in the same conditions
        ours.train(), theirs.train()
        for name, step in steps.items():
            samples[name].append(timed(step, repeats, device))
        ours.eval(), theirs.eval()
        with torch.no_grad():
            for name, model in infer.items():
                samples[name].append(timed(lambda: forward(model, inputs), repeats, device))

    def ratio(a: str, b: str) -> float:
        # Fastest over all rounds: other processes on a shared machine only ever add time.
        return min(samples[a]) / min(samples[b])

    return {
        "step": ratio("ours", "peft"),
        "memory": mem_ours / mem_peft,
        "saved": saved,
        "ours_unmerged": ratio("infer_ours", "base"),
        "peft_unmerged": ratio("infer_peft", "base"),
        "ours_merged": ratio("ours_merged", "base"),
        "peft_merged": ratio("peft_merged", "base"),
        "trainable": sc.count_parameters(ours)[0],
    }


def table(rows: list[tuple[str, dict[str, float]]], memory_kind: str) -> str:
    lines = [
        "| model | trainable | step time ours/peft | peak memory ours/peft | saved for backward ours/peft "
        "| unmerged/base ours (peft) | merged/base ours (peft) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {r['trainable']:,} | {r['step']:.2f} | {r['memory']:.2f} | {r['saved']:.2f} | "
            f"{r['ours_unmerged']:.2f} ({r['peft_unmerged']:.2f}) | {r['ours_merged']:.2f} ({r['peft_merged']:.2f}) |"
        )
    lines.append("")
    lines.append(
        f"Memory: {memory_kind}. Ratios < 1 favour Scalpel. Rounds interleave every variant; a ratio compares "
        "the fastest call of each over all rounds. Ours merged is a plain model like the base, so its distance "
        "from 1.00 shows the timing noise."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, < 1 min on CPU")
    default_out = Path(__file__).resolve().parents[1] / "docs/benchmarks/lora_vs_peft.md"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads; 1 (default) so thread CPU time measures all the work")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type != "cuda" and args.threads != 1:
        print("note: with several threads, CPU thread time undercounts work done by the others", file=sys.stderr)
    if args.quick:
        cases = [bert_case(h, layers=2, batch=4, seq=32) for h in (128, 256)] + [resnet_case(2, 32)]
        rounds, repeats = 5, 3
    else:
        cases = [bert_case(h, layers=6, batch=8, seq=128) for h in (256, 384, 768)] + [resnet_case(8, 112)]
        rounds, repeats = 7, 3
    rows = []
    for case in cases:
        start = time.perf_counter()
        rows.append((case.name, run_case(case, rounds, repeats, device)))
        print(f"  {case.name}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    memory_kind = (
        "peak memory is CUDA max_memory_allocated over one step"
        if device.type == "cuda"
        else "peak memory is the peak of live CPU bytes over one step, replayed from the torch profiler's "
        "allocation records"
    ) + "; saved for backward counts the bytes autograd keeps between forward and backward (each storage once)"
    command = "python benchmarks/lora_vs_peft.py" + (" --quick" if args.quick else "")
    command += f" --threads {args.threads}" if args.threads != 1 else ""
    command += f" --device {args.device}" if device.type == "cuda" else ""
    import peft

    header = (
        f"# Scalpel LoRA vs Hugging Face peft {peft.__version__}\n\n"
        f"Command: `{command}` (torch {torch.__version__}, {device.type}, {torch.get_num_threads()} threads). "
        "LoRA r=8, alpha=16, no dropout; BERT of MiniLM-L6 shape on query/value, ResNet-18 on every conv.\n\n"
    )
    text = header + table(rows, memory_kind) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from scalpel.core.files import atomic_write

    with atomic_write(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
