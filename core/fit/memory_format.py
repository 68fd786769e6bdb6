"""Channels-last training of convolutional networks: when ``channels_last="auto"`` turns it on,
and the conversion of a model's weights (base and adapters alike) to and from it.

A 4-D conv weight ``(out, in, kh, kw)`` stored channels-last (NHWC) lets oneDNN on CPU run
its blocked kernels without reordering every activation; a conv whose weight is channels-last
gives a channels-last output, so converting the weights is enough (the first conv reorders
the input once). Measured with LoRA on the convs (``benchmarks/channels_last.py``, table in
docs/benchmarks/channels_last.md) on a 2-core AVX2 EPYC: ResNet-18, MobileNetV3-small and
LR-ASPP steps take 0.66-0.86x the time, a MONAI 3-D UNet step 1.8-3.5x (slower: the 3-D kernels
in NDHWC are not the fast ones). So ``auto`` is on for networks whose convolutions are all
2-D, training on a CPU, and off for any network with a 3-D convolution, without
convolutions, or on a GPU (where channels-last pays off with fp16/bf16 tensor cores, which
``auto`` does not assume). A 2-D network measured slower sets ``channels_last="off"`` in its
pipeline's defaults, as ``vision.detection`` does (SSDlite320's backbone: 1.73x).

``fit`` converts after the method is applied, so LoRA's conv factors (A: a conv with the
base's kernel, B: a 1x1 conv) are in the same format as the base, and back to the default
format before it returns, so merging, saving and prediction see ordinary weights. Every
value is unchanged by a conversion (only the strides differ), so a resumed run is bit-exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from scalpel.core.fit.config import CHANNELS_LAST  # noqa: F401  (the choices, validated by FitConfig)


@dataclass(frozen=True)
class MemoryFormat:
    """Whether a run trains channels-last, and why (for the report)."""

    channels_last: bool
    reason: str

    @property
    def label(self) -> str:
        return "channels-last" if self.channels_last else "default (contiguous)"


def conv_dims(model: nn.Module) -> set[int]:
    """The spatial dimensions of ``model``'s convolutions: ``{2}`` for a 2-D conv net, ``{3}``
    for a 3-D one, empty without convolutions."""
    return {m.weight.dim() - 2 for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)}


def choose_memory_format(requested: str, dims: set[int], cpu: bool) -> MemoryFormat:
    """The memory format of a run that asked for ``requested`` (``"auto"``, ``"on"``, ``"off"``)
    for a model with convolutions of ``dims`` spatial dimensions, training on a CPU when ``cpu``."""
    if requested == "on":
        return MemoryFormat(bool(dims), "asked for" if dims else "asked for, but the model has no convolutions")
    if requested == "off":
        return MemoryFormat(False, "off asked for")
    if not dims:
        return MemoryFormat(False, "auto: the model has no convolutions")
    if dims != {2}:
        return MemoryFormat(False, "auto: off for 3-D (and 1-D) convolutions, measured slower channels-last on CPU")
    if not cpu:
        return MemoryFormat(False, "auto: off on a GPU (on only for 2-D conv nets training on a CPU)")
    return MemoryFormat(True, "auto: a 2-D conv net on a CPU, measured faster channels-last")


def to_channels_last(model: nn.Module) -> None:
    """Store every 4-D parameter and buffer of ``model`` channels-last (5-D ones channels-last-3d),
    in place: the parameter objects stay the same, so an optimizer built before or after sees them."""
    _convert(model, {4: torch.channels_last, 5: torch.channels_last_3d})


def to_contiguous(model: nn.Module) -> None:
    """Back to the default (row-major contiguous) format, in place."""
    _convert(model, {4: torch.contiguous_format, 5: torch.contiguous_format})


def _convert(model: nn.Module, formats: dict[int, torch.memory_format]) -> None:
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            fmt = formats.get(tensor.dim())
            if fmt is not None and not tensor.is_contiguous(memory_format=fmt):
                tensor.data = tensor.data.contiguous(memory_format=fmt)
        for p in model.parameters():  # a gradient left from before keeps the layout of its parameter
            fmt = formats.get(p.dim())
            if p.grad is not None and fmt is not None:
                p.grad = p.grad.contiguous(memory_format=fmt)
