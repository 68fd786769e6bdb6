"""GPU smoke test of ``scalpel.core.fit``: LoRA on a ~0.5B-parameter Llama-style decoder in bf16.

The decoder is built from a ``transformers.LlamaConfig`` with random weights (speed does
not depend on the values): hidden 1536, 16 layers, 12 heads (4 key/value heads), MLP 4096,
vocabulary 32,000, untied embeddings = 0.50B parameters. The base weights are held in bf16,
the LoRA factors (r=16 on every attention and MLP projection) in fp32 under bf16 autocast,
the usual LoRA recipe.

Side by side, interleaved in one process (bare, fit, bare, fit), the same steps run
through ``fit`` and through a bare PyTorch loop doing the same work (autocast forward,
backward, clip, fused AdamW, one ``loss.item()`` per step as ``fit``'s NaN check does), so
the table shows ``fit``'s overhead as a ratio. Reported: tokens/s (steady state, first
steps of each block skipped), peak GPU memory, and model FLOPs utilisation

    MFU = 6 * N * tokens/s / peak,   N = all parameters, peak = 989e12 bf16 dense FLOP/s

(the H100/H200 SXM dense bf16 figure). 6N counts the weight gradients of frozen weights
that LoRA never computes (the true work is nearer 4N), as MFU figures for LoRA usually do.

    python benchmarks/gpu_smoke.py             # CUDA: 4 blocks x 80 steps, batch 8 x 1024 tokens
    python benchmarks/gpu_smoke.py --quick     # CUDA: 4 x 15 steps; CPU: a tiny decoder, < 1 min
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from scalpel.core import apply, count_parameters
from scalpel.core.fit import FitConfig, fit
from scalpel.core.lora import LoraConfig

ROOT = Path(__file__).resolve().parents[1]
PEAK_BF16 = 989e12  # H100 / H200 SXM, dense bf16 tensor-core FLOP/s
TARGETS = "q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj"


class CausalLmTask:
    """Next-token loss on a batch of token ids (labels = inputs, shifted inside the model)."""

    def step(self, model, batch):
        ids = batch[0]
        return {"loss": model(input_ids=ids, labels=ids).loss}

    def evaluate(self, model, batches):
        losses = [self.step(model, b)["loss"].item() for b in batches]
        return {"loss": sum(losses) / len(losses)}


class StepClock:
    """A fit hook that timestamps every optimizer step (after a device sync)."""

    def __init__(self):
        self.times: list[float] = []

    def after_step(self, step, model, optimizer):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def build_model(cuda: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    if cuda:
        config = LlamaConfig(vocab_size=32000, hidden_size=1536, intermediate_size=4096, num_hidden_layers=16,
                             num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=2048,
                             tie_word_embeddings=False)
    else:
        config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):  # initialise on the GPU: seconds instead of a minute on the CPU
        model = LlamaForCausalLM(config)
    if cuda:
        model = model.to(torch.bfloat16)
    model = apply(model, LoraConfig(r=16, alpha=32, targets=TARGETS))
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()  # LoRA factors and their AdamW moments in fp32
    return model


def steady_rate(times: list[float], skip: int, tokens_per_step: int) -> float:
    times = times[skip:]
    return tokens_per_step * (len(times) - 1) / (times[-1] - times[0])


def bare_loop(model, batches, device, bf16: bool) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, **({"fused": True} if device.type == "cuda" else {}))
    task, times = CausalLmTask(), []
    model.train()
    for (ids,) in batches:
        ids = ids.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = task.step(model, (ids,))["loss"]
        loss.backward()
        if not math.isfinite(loss.item()):
            raise RuntimeError("non-finite loss")
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="few steps (CUDA) / tiny model (CPU), < 1 min on CPU")
    parser.add_argument("--steps", type=int, default=None, help="steps per block (4 blocks: bare, fit, bare, fit)")
    parser.add_argument("--batch", type=int, default=None, help="sequences per step")
    parser.add_argument("--seq", type=int, default=None, help="tokens per sequence")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    steps = args.steps or (80 if cuda and not args.quick else 15 if cuda else 6)
    batch, seq = args.batch or (8 if cuda else 2), args.seq or (1024 if cuda else 32)
    out = args.out or ROOT / "docs" / "benchmarks" / ("gpu_smoke.md" if cuda else "gpu_smoke_cpu.md")
    skip = min(5, steps // 3)

    model = build_model(cuda).to(device)
    trainable, total = count_parameters(model)
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randint(0, vocab, (steps * batch, seq), generator=g))
    tokens = batch * seq
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rates: dict[str, list[float]] = {"bare": [], "fit": []}
    loss = float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        for block in range(2):
            rates["bare"].append(steady_rate(bare_loop(model, DataLoader(data, batch_size=batch), device, cuda), skip, tokens))
            clock = StepClock()
            result = fit(model, CausalLmTask(), DataLoader(data, batch_size=batch), config=FitConfig(
                output_dir=f"{tmp}/run{block}", max_steps=steps, lr=1e-4, save_every=0, log_every=max(steps // 4, 1),
                progress=False), hooks=(clock,))
            rates["fit"].append(steady_rate(clock.times, skip, tokens))
            loss = result.train_loss
    peak_mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    fit_rate = sum(rates["fit"]) / 2
    bare_rate = sum(rates["bare"]) / 2
    mfu = 6 * total * fit_rate / PEAK_BF16
    name = torch.cuda.get_device_name() if cuda else "CPU (tiny decoder; MFU not meaningful)"
    command = "python benchmarks/gpu_smoke.py" + (" --quick" if args.quick else "")
    lines = [
        "# GPU smoke: LoRA through scalpel.core.fit", "",
        f"Device: {name}. Command: `{command}`. Llama-style decoder, {total:,} parameters "
        f"({trainable:,} trainable LoRA), batch {batch} x {seq} tokens, {steps} steps per block, "
        f"blocks interleaved bare/fit/bare/fit, first {skip} steps of each block skipped.", "",
        f"MFU assumption: 6 x N x tokens/s / {PEAK_BF16:.3g} FLOP/s (H100/H200 SXM dense bf16 peak); N = all "
        "parameters (6N overstates LoRA's work, which skips frozen weights' gradients: nearer 4N).", "",
        "| loop | tokens/s | ratio to bare loop | peak GPU memory (GiB) | MFU | final loss |",
        "|---|---|---|---|---|---|",
        f"| bare PyTorch | {bare_rate:,.0f} | 1.00 | {peak_mem:.2f} | {6 * total * bare_rate / PEAK_BF16:.1%} | - |",
        f"| scalpel fit | {fit_rate:,.0f} | {fit_rate / bare_rate:.2f} | {peak_mem:.2f} | {mfu:.1%} | {loss:.3f} |",
        "", "Peak memory is one figure for the whole process (both loops share the model).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
