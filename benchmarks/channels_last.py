"""Channels-last memory format on CPU: one LoRA training step (forward + backward) of a
2-D and a 3-D conv net in the default (NCHW / NCDHW) format against channels-last, the LoRA
conv branch in the same format as its base (``model.to(memory_format=...)`` converts the
LoRA factors too, since they are conv weights).

    python benchmarks/channels_last.py           # 20 timed steps per format
    python benchmarks/channels_last.py --quick   # 5

The median step time of each, side by side in one process, and their ratio. Writes
docs/benchmarks/channels_last.md. Whether channels-last helps depends on the CPU and on
oneDNN's kernels, so the table names the CPU's features.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from scalpel.core import apply
from scalpel.core.fit.precision import cpu_summary
from scalpel.core.lora import LoraConfig


def resnet18() -> tuple[nn.Module, torch.Tensor, str]:
    from torchvision.models import resnet18 as build

    return build(num_classes=10), torch.randn(8, 3, 128, 128), "torchvision ResNet-18, batch 8 x 3 x 128 x 128"


def unet3d() -> tuple[nn.Module, torch.Tensor, str]:
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64), strides=(2, 2), num_res_units=1)
    return net, torch.randn(2, 1, 48, 48, 48), "MONAI 3-D UNet (16-32-64), batch 2 x 1 x 48^3"


def step_seconds(model: nn.Module, x: torch.Tensor, steps: int) -> float:
    """Median wall time of forward + backward of a sum of the outputs."""
    times = []
    for i in range(steps + 2):  # two warm-up steps (oneDNN picks and caches its kernels)
        started = time.perf_counter()
        model(x).float().sum().backward()
        if i >= 2:
            times.append(time.perf_counter() - started)
        model.zero_grad(set_to_none=True)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "channels_last.md")
    args = parser.parse_args(argv)
    steps = 5 if args.quick else 20
    rows = []
    for build, fmt in ((resnet18, torch.channels_last), (unet3d, torch.channels_last_3d)):
        torch.manual_seed(0)
        model, x, what = build()
        model = apply(model, LoraConfig(r=8, alpha=16, target_types=("Conv2d", "Conv3d")))
        model.train()
        default = step_seconds(model, x, steps)
        model = model.to(memory_format=fmt)
        assert all(p.is_contiguous(memory_format=fmt) for n, p in model.named_parameters() if p.dim() == x.dim() and "lora_A" in n)
        last = step_seconds(model, x.contiguous(memory_format=fmt), steps)
        rows.append((what, default, last))
        print(f"{what}: {default * 1e3:.0f} ms vs {last * 1e3:.0f} ms", flush=True)
    lines = [f"# Channels-last on CPU ({'quick' if args.quick else 'standard'} mode)", "",
             f"CPU: {cpu_summary()}; {torch.get_num_threads()} torch threads, torch {torch.__version__}. "
             f"LoRA r=8 on every conv (the LoRA factors converted with the base), fp32, median of {steps} training steps "
             f"after 2 warm-up steps. Command: `python benchmarks/channels_last.py{' --quick' if args.quick else ''}`.", "",
             "| network | default format | channels-last | channels-last / default |", "|---|---:|---:|---:|"]
    lines += [f"| {w} | {d * 1e3:.0f} ms | {c * 1e3:.0f} ms | {c / d:.2f} |" for w, d, c in rows]
    lines += ["", "Times are wall-clock on the machine that ran it, side by side in one process; a ratio below 1 means "
              "channels-last is faster there."]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
