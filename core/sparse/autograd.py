"""Autograd functions that train ``k`` entries of a frozen weight without ever storing a
dense weight gradient beyond the backward pass of one layer.

For a frozen weight ``W`` (``n`` entries) and a sparse delta ``(indices: int64[k],
values: float[k])`` the layer computes with ``W' = W + scatter(values)``. Autograd would
normally keep ``W'`` alive for the backward pass (a second copy of every adapted weight)
and, if ``W`` were trainable, a dense ``dL/dW`` per layer until the optimizer step. Here:

* :class:`SparseLinear` (``nn.Linear`` and GPT-2's ``Conv1D``) saves only the input and
  the ``k`` values; backward rebuilds ``W'`` (one temporary of one layer's size),
  computes ``dL/dx = g W'`` and ``dL/dvalues = (g^T x)[indices]`` and frees both. When the
  selected entries fall in fewer than half of the weight's rows, only those rows of
  ``g^T x`` are computed.
* :class:`SparseWeight` is the generic path for any module whose forward reads
  ``self.weight`` (convolutions, embeddings, norms): it returns ``W'`` to a
  ``torch.func.functional_call`` of the frozen module and, in backward, reduces the
  module's dense ``dL/dW'`` to the ``k`` entries at once, so that gradient lives only
  while autograd processes this layer.

Gradients and optimizer state therefore exist for the ``k`` values only. Under autocast
(``bf16``/``fp16``) the matmuls run in the autocast dtype and the value gradients are
returned in the values' own dtype.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

#: Called in backward with the dense gradient of the effective weight (shape of W), for
#: the growth statistics of dynamic masks; None on all other steps.
GradObserver = Callable[[Tensor], None]


def effective_weight(weight: Tensor, values: Tensor, indices: Tensor) -> Tensor:
    """``W + scatter(values at indices)`` as a new tensor; ``W`` is not modified.

    Args:
        weight: the frozen weight, any shape ``S``.
        values: ``[k]`` deltas. indices: ``[k]`` unique int64 positions in ``W.reshape(-1)``.

    Returns:
        A tensor of shape ``S`` whose entry at ``indices[i]`` is ``W.flat[indices[i]] + values[i]``,
        computed as one addition per entry, exactly as :meth:`SparseDeltaLayer.merge` does.
    """
    flat = weight.detach().reshape(-1).clone()
    flat.index_add_(0, indices, values.detach().to(flat.dtype))
    return flat.view(weight.shape)


class SparseWeight(torch.autograd.Function):
    """``W' = W + scatter(values)``; backward: ``dL/dvalues = (dL/dW').flat[indices]``."""

    @staticmethod
    def forward(ctx, values: Tensor, weight: Tensor, indices: Tensor, observer: GradObserver | None) -> Tensor:
        ctx.save_for_backward(indices)
        ctx.observer = observer
        ctx.values_dtype = values.dtype
        return effective_weight(weight, values, indices)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (indices,) = ctx.saved_tensors
        if ctx.observer is not None:
            ctx.observer(grad)
        grad_values = grad.reshape(-1).index_select(0, indices).to(ctx.values_dtype) if ctx.needs_input_grad[0] else None
        grad_weight = grad if ctx.needs_input_grad[1] else None
        return grad_values, grad_weight, None, None


class SparseLinear(torch.autograd.Function):
    """``y = x W'^T + b`` (``transposed=False``, ``W: [out, in]``, nn.Linear) or
    ``y = x W' + b`` (``transposed=True``, ``W: [in, out]``, GPT-2 Conv1D), for ``x: [..., in]``.

    Saves ``x`` (as any linear layer does) and the ``k`` values, never ``W'``.
    """

    @staticmethod
    def forward(ctx, x, values, weight, bias, indices, transposed: bool, observer: GradObserver | None):
        device_type = x.device.type
        cast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
        with torch.autocast(device_type, enabled=False):
            w = effective_weight(weight, values, indices)
            x_c = x.to(cast) if cast is not None else x
            w = w.to(x_c.dtype)
            b = bias.to(x_c.dtype) if bias is not None else None
            out = F.linear(x_c, w.t() if transposed else w, b)
        ctx.save_for_backward(x_c, values, weight, indices)
        ctx.transposed, ctx.observer = transposed, observer
        ctx.x_dtype = x.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, values, weight, indices = ctx.saved_tensors
        need_x, need_values, need_weight, need_bias = ctx.needs_input_grad[:4]
        with torch.autocast(grad_out.device.type, enabled=False):
            g = grad_out.reshape(-1, grad_out.shape[-1])
            x2 = x.reshape(-1, x.shape[-1]).to(g.dtype)
            grad_x = grad_values = grad_weight = grad_bias = None
            if need_x:
                w = effective_weight(weight, values, indices).to(g.dtype)
                grad_x = (g @ (w.t() if ctx.transposed else w)).view(*grad_out.shape[:-1], -1).to(ctx.x_dtype)
                del w
            # dL/dW' = a^T b with a, b the factors whose columns index W's rows and columns.
            a, b = (x2, g) if ctx.transposed else (g, x2)
            if ctx.observer is not None or need_weight:
                dense = a.t() @ b
                if ctx.observer is not None:
                    ctx.observer(dense)
                grad_weight = dense.to(weight.dtype) if need_weight else None
                if need_values:
                    grad_values = dense.reshape(-1).index_select(0, indices)
                del dense
            elif need_values:
                grad_values = _selected_entries(a, b, indices)
            if grad_values is not None:
                grad_values = grad_values.to(values.dtype)
            if need_bias:
                grad_bias = g.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_values, grad_weight, grad_bias, None, None, None


def _selected_entries(a: Tensor, b: Tensor, indices: Tensor) -> Tensor:
    """``(a^T b).flat[indices]`` for ``a: [N, R]``, ``b: [N, C]``, computing only the rows
    of ``a^T b`` that hold a selected entry when they are fewer than half of ``R``.

    A sampled dot product per entry (``sum_n a[n, r] b[n, c]``) would do ``N k`` work
    instead of ``N R C``, but it is bound by memory gathers and measured 2-10x slower than
    the dense matmul at 0.5-5% density on CPU, so rows are the unit that is skipped.
    """
    columns = b.shape[1]
    rows = torch.div(indices, columns, rounding_mode="floor")
    used = torch.unique(rows)
    if 2 * used.numel() > a.shape[1]:
        return (a.t() @ b).reshape(-1).index_select(0, indices)
    block = a.index_select(1, used).t() @ b  # [rows used, C]
    position = torch.searchsorted(used, rows) * columns + indices % columns
    return block.reshape(-1).index_select(0, position)
