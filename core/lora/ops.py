"""How LoRA adapts each kind of layer: one small stateless object per layer type.

Every object answers the same questions (minLoRA's ``{nn.Linear: factory}`` mapping,
without subclassing the layers): which factors to create, the branch output
``B A x``, the weight update ``B A`` in the base weight's own layout, the base output
without bias, and the per-output-feature weight norm DoRA needs.

Shapes (``r`` = rank):

=================  ====================  ==================  ==========================
layer              base weight           A                   B
=================  ====================  ==================  ==========================
``nn.Linear``      (out, in)             Linear(in, r)       Linear(r, out)
GPT-2 ``Conv1D``   (in, out)             Linear(in, r)       Linear(r, out)
``nn.Embedding``   (num, dim)            (r, num)            (dim, r)
``nn.ConvNd``      (out, in, *k)         ConvNd(in, r, k)    ConvNd(r, out, 1)
=================  ====================  ==================  ==========================

The factor names and shapes are Hugging Face PEFT's, so saved adapters load in PEFT.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _add_linear_branch(result: Tensor, ax: Tensor, B: Tensor, scaling: float) -> Tensor:
    """``result + scaling * ax @ B^T`` as one fused ``addmm``: one output allocation instead
    of three (branch, scaled branch, sum). Not in place: an in-place op on a view of the
    base output would make autograd rebuild the whole output gradient (``CopySlices``)."""
    if result.dtype == ax.dtype == B.dtype:
        out = torch.addmm(result.reshape(-1, result.shape[-1]), ax.reshape(-1, ax.shape[-1]), B.t(), alpha=scaling)
        return out.view(result.shape)
    return result + F.linear(ax, B).to(result.dtype) * scaling


class LinearOps:
    """``nn.Linear``: ``y = x W^T + b``; ``ΔW = B A``."""

    type_name = "Linear"
    uses_dropout = True

    def features(self, base: nn.Module) -> tuple[int, int]:
        return base.in_features, base.out_features

    def new_factors(self, base: nn.Module, r: int) -> tuple[nn.Module, nn.Module]:
        fin, fout = self.features(base)
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        return nn.Linear(fin, r, bias=False, **kw), nn.Linear(r, fout, bias=False, **kw)

    def init_factors(self, A: Tensor, B: Tensor, init: str, r: int) -> None:
        _init_a(A, init, r)
        nn.init.zeros_(B)

    def add_branch(self, result: Tensor, base: nn.Module, x: Tensor, A: Tensor, B: Tensor, scaling: float) -> Tensor:
        return _add_linear_branch(result, F.linear(x, A), B, scaling)

    def branch(self, base: nn.Module, x: Tensor, A: Tensor, B: Tensor) -> Tensor:
        return F.linear(F.linear(x, A), B)

    def delta_weight(self, base: nn.Module, A: Tensor, B: Tensor) -> Tensor:
        return B @ A

    def add_delta(self, weight: Tensor, A: Tensor, B: Tensor, scaling: float) -> Tensor:
        """``W0 + s ΔW`` as one fused ``addmm`` (no separate ΔW and scaled copies)."""
        return torch.addmm(weight, B, A, alpha=scaling)

    def base_output(self, base: nn.Module, x: Tensor) -> Tensor:
        return F.linear(x, base.weight)

    def weight_norm(self, weight: Tensor) -> Tensor:
        """Row norms of ``W`` (out, in) -> (out,)."""
        return torch.linalg.norm(weight, dim=1)

    def scale_weight(self, weight: Tensor, factor: Tensor) -> Tensor:
        return weight * factor.view(-1, 1)

    def bias_view(self, bias: Tensor, ndim: int) -> Tensor:
        return bias

    def folds_in_inference(self, base: nn.Module, x: Tensor) -> bool:
        """Fold ``W0 + s ΔW`` once instead of running the branch when that is cheaper:
        ``r (in + out)`` per row of ``x`` against ``r in out`` once (plus an ``in x out`` add)."""
        fin, fout = self.features(base)
        return (x.numel() // max(fin, 1)) * (fin + fout) >= fin * fout

    def forward_with_weight(self, base: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
        return F.linear(x, weight, base.bias)


class GPT2Conv1DOps(LinearOps):
    """transformers' GPT-2 ``Conv1D``: ``y = x W + b`` with ``W: (in, out)`` ("fan_in_fan_out");
    ``ΔW = (B A)^T``. Only the weight layout differs from ``nn.Linear``.

    A subclass, against the house habit, on purpose: these ops objects are stateless
    tables of functions, and restating the six identical ones would hide the four that differ.
    """

    type_name = "Conv1D"

    def features(self, base: nn.Module) -> tuple[int, int]:
        return base.weight.shape[0], base.weight.shape[1]

    def delta_weight(self, base: nn.Module, A: Tensor, B: Tensor) -> Tensor:
        return (B @ A).t()

    def add_delta(self, weight: Tensor, A: Tensor, B: Tensor, scaling: float) -> Tensor:
        return torch.addmm(weight, A.t(), B.t(), alpha=scaling)  # (B A)^T = A^T B^T

    def base_output(self, base: nn.Module, x: Tensor) -> Tensor:
        return x @ base.weight

    def weight_norm(self, weight: Tensor) -> Tensor:
        return torch.linalg.norm(weight, dim=0)

    def scale_weight(self, weight: Tensor, factor: Tensor) -> Tensor:
        return weight * factor.view(1, -1)

    def forward_with_weight(self, base: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
        out = torch.addmm(base.bias, x.reshape(-1, x.shape[-1]), weight)
        return out.view(*x.shape[:-1], weight.shape[1])


class EmbeddingOps:
    """``nn.Embedding``: ``y = W[x]``; branch ``(A^T[x]) B^T``; ``ΔW = (B A)^T`` (num, dim).
    No dropout on token ids."""

    type_name = "Embedding"
    uses_dropout = False

    def features(self, base: nn.Module) -> tuple[int, int]:
        return base.num_embeddings, base.embedding_dim

    def new_factors(self, base: nn.Module, r: int) -> tuple[nn.Parameter, nn.Parameter]:
        num, dim = self.features(base)
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        return nn.Parameter(torch.empty(r, num, **kw)), nn.Parameter(torch.empty(dim, r, **kw))

    def init_factors(self, A: Tensor, B: Tensor, init: str, r: int) -> None:
        # As PEFT / loralib: A = 0 and B Gaussian; the product B A is zero either way.
        nn.init.zeros_(A)
        nn.init.normal_(B)

    def _lookup(self, base: nn.Module, x: Tensor, A: Tensor) -> Tensor:
        return F.embedding(
            x, A.t(), base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq, base.sparse
        )

    def add_branch(self, result: Tensor, base: nn.Module, x: Tensor, A: Tensor, B: Tensor, scaling: float) -> Tensor:
        return _add_linear_branch(result, self._lookup(base, x, A), B, scaling)

    def branch(self, base: nn.Module, x: Tensor, A: Tensor, B: Tensor) -> Tensor:
        return self._lookup(base, x, A) @ B.t()

    def delta_weight(self, base: nn.Module, A: Tensor, B: Tensor) -> Tensor:
        return (B @ A).t()

    def add_delta(self, weight: Tensor, A: Tensor, B: Tensor, scaling: float) -> Tensor:
        return torch.addmm(weight, A.t(), B.t(), alpha=scaling)

    def base_output(self, base: nn.Module, x: Tensor) -> Tensor:
        return base(x)

    def weight_norm(self, weight: Tensor) -> Tensor:
        """Column norms of ``W`` (num, dim) -> (dim,): one magnitude per output feature."""
        return torch.linalg.norm(weight, dim=0)

    def scale_weight(self, weight: Tensor, factor: Tensor) -> Tensor:
        return weight * factor.view(1, -1)

    def bias_view(self, bias: Tensor, ndim: int) -> Tensor:
        return bias

    def folds_in_inference(self, base: nn.Module, x: Tensor) -> bool:
        return False  # a lookup touches few rows; folding would rebuild the whole table


class ConvOps:
    """``nn.Conv1d/2d/3d``: A is a conv with the base's kernel, stride, padding and dilation
    (in -> r), B a 1x1 conv (r -> out); ``ΔW[o, i, k] = sum_r B[o, r] A[r, i, k]``.

    Grouped convolutions are refused by the caller: a low-rank update across groups is
    not a grouped weight, so it could not be merged.
    """

    uses_dropout = True

    def __init__(self, dims: int):
        self.dims = dims
        self.type_name = f"Conv{dims}d"
        self.conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]

    def features(self, base: nn.Module) -> tuple[int, int]:
        return base.in_channels, base.out_channels

    def new_factors(self, base: nn.Module, r: int) -> tuple[nn.Module, nn.Module]:
        cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[self.dims]  # plain factors even under a subclass
        kw = {"device": base.weight.device, "dtype": base.weight.dtype}
        A = cls(base.in_channels, r, base.kernel_size, base.stride, base.padding, base.dilation, bias=False,
                padding_mode=base.padding_mode, **kw)
        B = cls(r, base.out_channels, 1, bias=False, **kw)
        return A, B

    def init_factors(self, A: Tensor, B: Tensor, init: str, r: int) -> None:
        _init_a(A, init, r)
        nn.init.zeros_(B)

    def _a(self, base: nn.Module, x: Tensor, A: Tensor) -> Tensor:
        if base.padding_mode != "zeros":
            return base._conv_forward(x, A, None)  # the base's own padding mode, with A's weight
        return self.conv(x, A, None, base.stride, base.padding, base.dilation)

    def add_branch(self, result: Tensor, base: nn.Module, x: Tensor, A: Tensor, B: Tensor, scaling: float) -> Tensor:
        ax = self._a(base, x, A) * scaling  # scale the r-channel map, not the out-channel one
        branch = self.conv(ax, B)
        if result.dtype == branch.dtype:
            return result.add_(branch)
        return result + branch.to(result.dtype)

    def branch(self, base: nn.Module, x: Tensor, A: Tensor, B: Tensor) -> Tensor:
        return self.conv(self._a(base, x, A), B)

    def delta_weight(self, base: nn.Module, A: Tensor, B: Tensor) -> Tensor:
        r = A.shape[0]
        return (B.reshape(-1, r) @ A.reshape(r, -1)).reshape(base.weight.shape)

    def add_delta(self, weight: Tensor, A: Tensor, B: Tensor, scaling: float) -> Tensor:
        r, out = A.shape[0], weight.shape[0]
        flat = torch.addmm(weight.reshape(out, -1), B.reshape(out, r), A.reshape(r, -1), alpha=scaling)
        return flat.view(weight.shape)

    def base_output(self, base: nn.Module, x: Tensor) -> Tensor:
        if base.padding_mode != "zeros":
            return base._conv_forward(x, base.weight, None)
        return self.conv(x, base.weight, None, base.stride, base.padding, base.dilation, base.groups)

    def weight_norm(self, weight: Tensor) -> Tensor:
        """Norm over everything but the output channel: (out, in, *k) -> (1, out, 1, ...), PEFT's shape."""
        dims = tuple(range(1, weight.dim()))
        return weight.norm(p=2, dim=dims, keepdim=True).transpose(1, 0)

    def scale_weight(self, weight: Tensor, factor: Tensor) -> Tensor:
        return weight * factor.transpose(1, 0)

    def bias_view(self, bias: Tensor, ndim: int) -> Tensor:
        return bias.view(1, -1, *([1] * (ndim - 2)))

    def folds_in_inference(self, base: nn.Module, x: Tensor) -> bool:
        """Same rule as for ``nn.Linear``, with one "row" per output position (estimated
        from the input size and stride) and ``in = in_channels * prod(kernel)``."""
        positions = x.shape[0] * math.prod(x.shape[2:]) // math.prod(base.stride)
        fin = base.in_channels * math.prod(base.kernel_size)
        return positions * (fin + base.out_channels) >= fin * base.out_channels

    def forward_with_weight(self, base: nn.Module, x: Tensor, weight: Tensor) -> Tensor:
        return base._conv_forward(x, weight, base.bias)


def _init_a(A: Tensor, init: str, r: int) -> None:
    if init == "gaussian":
        nn.init.normal_(A, std=1 / r)
    else:  # "kaiming": what nn.Linear itself uses, as in loralib and PEFT
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))


def ops_for(module: nn.Module):
    """The ops object for ``module``'s type, or None when LoRA cannot adapt it."""
    if isinstance(module, nn.Linear):
        return LINEAR
    if isinstance(module, nn.Embedding):
        return EMBEDDING
    for dims, cls in ((1, nn.Conv1d), (2, nn.Conv2d), (3, nn.Conv3d)):
        if isinstance(module, cls):
            return CONV[dims]
    if type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers"):
        return GPT2_CONV1D
    return None


LINEAR = LinearOps()
GPT2_CONV1D = GPT2Conv1DOps()
EMBEDDING = EmbeddingOps()
CONV = {d: ConvOps(d) for d in (1, 2, 3)}
