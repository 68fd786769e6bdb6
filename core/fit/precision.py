"""Which precision ``mixed_precision="auto"`` means on a given machine.

The choice is a pure function of a :class:`Hardware` description, so it is tested for
machines this code never runs on (a Xeon with AMX, an Ampere GPU, a laptop):

    choose_precision("auto", Hardware(kind="cpu", cpu_flags=frozenset({"avx512_bf16"})))
    -> Precision(mode="bf16", reason="auto: the CPU runs bf16 natively (AVX512-BF16)")

``auto`` picks bf16 autocast where the hardware runs bf16 matrix products natively: a CUDA
GPU that supports bf16 (compute capability 8.0 and later), or a CPU with AMX-BF16 (Intel
Sapphire Rapids and later) or AVX512-BF16 (Cooper Lake, AMD Zen 4 and later). Elsewhere bf16
autocast on CPU still runs, but oneDNN emulates it and it is slower than fp32, so ``auto``
stays fp32. Autocast only changes the dtype of the matrix products' inputs: parameters,
gradients, optimizer state, losses (``fit`` casts them to fp32) and saved adapters stay fp32.

Flag names are those of Linux's ``/proc/cpuinfo``.
"""

from __future__ import annotations

import sys
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

#: ``/proc/cpuinfo`` flag -> the feature's usual name, strongest first.
NATIVE_BF16_FLAGS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}
#: Flags worth naming in a benchmark table (what decides the speed of fp32 and bf16 on CPU).
NOTABLE_CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512_vnni", "avx512f", "avx2", "fma")


@dataclass(frozen=True)
class Hardware:
    """What the precision choice depends on.

    Attributes:
        kind: ``"cpu"`` or ``"cuda"`` (the device ``fit`` trains on).
        cpu_flags: the CPU's feature flags, as ``/proc/cpuinfo`` spells them.
        cuda_bf16: the GPU supports bf16 (``torch.cuda.is_bf16_supported()``).
    """

    kind: str = "cpu"
    cpu_flags: frozenset[str] = frozenset()
    cuda_bf16: bool = False


@dataclass(frozen=True)
class Precision:
    """The autocast mode ``fit`` uses (``"no"``, ``"bf16"`` or ``"fp16"``) and why, for the report."""

    mode: str
    reason: str

    @property
    def label(self) -> str:
        return {"no": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}.get(self.mode, self.mode)


def native_cpu_bf16(cpu_flags: frozenset[str] | set[str]) -> str | None:
    """The name of the CPU feature that runs bf16 natively (``"AMX-BF16"``, ``"AVX512-BF16"``), or None."""
    return next((name for flag, name in NATIVE_BF16_FLAGS.items() if flag in cpu_flags), None)


def choose_precision(requested: str, hardware: Hardware) -> Precision:
    """The precision of a run that asked for ``requested`` (``FitConfig.mixed_precision``:
    ``"auto"``, ``"no"``, ``"bf16"`` or ``"fp16"``) on ``hardware``.

    A pipeline whose metric does not hold under bf16 sets ``mixed_precision="no"`` in its
    default :class:`~scalpel.core.options.TrainOptions` rather than ``auto``.
    """
    if requested != "auto":
        return Precision(requested, "asked for" if requested != "no" else "fp32 asked for")
    if hardware.kind == "cuda":
        if hardware.cuda_bf16:
            return Precision("bf16", "auto: the GPU runs bf16 natively")
        return Precision("no", "auto: fp32 (the GPU has no bf16)")
    feature = native_cpu_bf16(hardware.cpu_flags)
    if feature:
        return Precision("bf16", f"auto: the CPU runs bf16 natively ({feature})")
    return Precision("no", "auto: fp32 (the CPU has neither AMX-BF16 nor AVX512-BF16, so bf16 would be emulated)")


def read_cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The first CPU's feature flags from ``/proc/cpuinfo``; empty where there is no such file
    (macOS, Windows), which makes ``auto`` choose fp32 there."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86, ARM
            return frozenset(value.split())
    return frozenset()


def this_hardware(cpu: bool) -> Hardware:
    """This machine, training on the CPU when ``cpu`` is True, else on CUDA."""
    flags = read_cpu_flags() if sys.platform.startswith("linux") else frozenset()
    if cpu:
        return Hardware(kind="cpu", cpu_flags=flags)
    return Hardware(kind="cuda", cpu_flags=flags, cuda_bf16=bool(torch.cuda.is_bf16_supported()))


def cpu_summary(flags: frozenset[str] | None = None) -> str:
    """The CPU's model and its notable features, for benchmark tables: ``"AMD EPYC (avx2, fma)"``."""
    flags = read_cpu_flags() if flags is None else flags
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    features = [f for f in NOTABLE_CPU_FLAGS if f in flags]
    return f"{model or 'CPU'} ({', '.join(features) or 'no AVX2'}; native bf16: {native_cpu_bf16(flags) or 'no'})"


def inference_autocast(requested: str, device: torch.device | str):
    """The autocast context for evaluation or prediction on ``device`` that matches what
    ``fit`` trains with under ``requested`` (``"auto"`` for prediction): bf16 where the
    device runs it natively, else a no-op. Outputs are cast to fp32 by the callers."""
    device = torch.device(device)
    cpu = device.type != "cuda"
    mode = choose_precision(requested, this_hardware(cpu)).mode
    if mode == "no" or (cpu and mode == "fp16"):
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if mode == "bf16" else torch.float16)
