"""Channels-last memory format on CPU: one LoRA training step (forward + backward) of the
vision pipelines' default networks (MobileNetV3 backbones: depthwise convolutions), a plain
2-D ResNet and a 3-D UNet, in the default (NCHW / NCDHW) format against channels-last, the
LoRA conv branch in the same format as its base (converted by ``fit``'s own
``to_channels_last``, after LoRA is applied).

    python benchmarks/channels_last.py           # 10 timed steps per format
    python benchmarks/channels_last.py --quick   # 3

Steps of the two formats alternate (two copies of one model), so a change of the machine's
load hits both alike; the median step time of each and their ratio. Writes
docs/benchmarks/channels_last.md. Whether channels-last helps depends on the CPU, oneDNN's
kernels and the network, so the table names the CPU's features; ``channels_last=auto``
(core/fit/memory_format.py) follows this table.
"""

from __future__ import annotations

import argparse
import copy
import re
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from scalpel.core import apply
from scalpel.core.fit.memory_format import to_channels_last
from scalpel.core.fit.precision import cpu_summary
from scalpel.core.lora import LoraConfig


def resnet18() -> tuple[nn.Module, torch.Tensor, str]:
    from torchvision.models import resnet18 as build

    return build(num_classes=10), torch.randn(8, 3, 128, 128), "torchvision ResNet-18, batch 8 x 3 x 128 x 128"


def mobilenet_classifier() -> tuple[nn.Module, torch.Tensor, str]:
    from torchvision.models import mobilenet_v3_small

    return mobilenet_v3_small(num_classes=10), torch.randn(16, 3, 128, 128), \
        "MobileNetV3-small (vision.classification default), batch 16 x 3 x 128 x 128"


def lraspp() -> tuple[nn.Module, torch.Tensor, str]:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    return _Out(net), torch.randn(8, 3, 128, 128), "LR-ASPP MobileNetV3-large (vision.segmentation default), batch 8 x 3 x 128 x 128"


def ssdlite_backbone() -> tuple[nn.Module, torch.Tensor, str]:
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    net = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    return _Out(net.backbone), torch.randn(8, 3, 320, 320), \
        "SSDlite320 MobileNetV3-large backbone (vision.detection default), batch 8 x 3 x 320 x 320"


def unet3d() -> tuple[nn.Module, torch.Tensor, str]:
    from monai.networks.nets import UNet

    net = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64), strides=(2, 2), num_res_units=1)
    return net, torch.randn(2, 1, 48, 48, 48), "MONAI 3-D UNet (16-32-64), batch 2 x 1 x 48^3"


class _Out(nn.Module):
    """A network whose output is a dict of maps, as one tensor (their sum) for a backward pass."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(v.float().sum() for v in self.net(x).values())


NETWORKS = {"resnet18": resnet18, "mobilenet": mobilenet_classifier, "lraspp": lraspp, "ssdlite": ssdlite_backbone,
            "unet3d": unet3d}


def ungrouped_convs(model: nn.Module) -> str:
    """A target regex of every conv LoRA can adapt (a grouped, e.g. depthwise, conv cannot be merged)."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)) and m.groups == 1]
    return "^(" + "|".join(re.escape(n) for n in names) + ")$"


def one_step(model: nn.Module, x: torch.Tensor) -> float:
    """Wall time of forward + backward of a sum of the outputs."""
    started = time.perf_counter()
    model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def alternating(default: nn.Module, last: nn.Module, x: torch.Tensor, x_last: torch.Tensor, steps: int) -> tuple[float, float]:
    """Median step times of the two models, their steps alternating after one warm-up each
    (oneDNN picks and caches its kernels on the first)."""
    one_step(default, x), one_step(last, x_last)
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(steps):
        order = ((0, default, x), (1, last, x_last)) if i % 2 == 0 else ((1, last, x_last), (0, default, x))
        for k, model, inputs in order:
            times[k].append(one_step(model, inputs))
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "channels_last.md")
    parser.add_argument("--networks", nargs="*", default=list(NETWORKS), choices=list(NETWORKS))
    args = parser.parse_args(argv)
    steps = 3 if args.quick else 10
    rows = []
    for name in args.networks:
        torch.manual_seed(0)
        model, x, what = NETWORKS[name]()
        model = apply(model, LoraConfig(r=8, alpha=16, targets=ungrouped_convs(model))).train()
        last = copy.deepcopy(model)
        to_channels_last(last)
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        assert all(p.is_contiguous(memory_format=fmt) for n, p in last.named_parameters() if p.dim() == x.dim() and "lora_A" in n)
        default, channels_last = alternating(model, last, x, x.contiguous(memory_format=fmt), steps)
        rows.append((what, default, channels_last))
        print(f"{what}: {default * 1e3:.0f} ms vs {channels_last * 1e3:.0f} ms", flush=True)
    lines = [f"# Channels-last on CPU ({'quick' if args.quick else 'standard'} mode)", "",
             f"CPU: {cpu_summary()}; {torch.get_num_threads()} torch threads, torch {torch.__version__}. "
             f"LoRA r=8 on every ungrouped conv (the LoRA factors converted with the base), fp32, median of {steps} training steps "
             f"after a warm-up step, the two formats' steps alternating. Command: `python benchmarks/channels_last.py{' --quick' if args.quick else ''}"
             f"{'' if args.networks == list(NETWORKS) else ' --networks ' + ' '.join(args.networks)}`.", "",
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
