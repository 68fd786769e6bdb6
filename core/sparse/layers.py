"""The sparse delta layer: a frozen module plus, per adapter, ``k`` trainable entries.

    y = f(x; W + scatter(values at indices))

``W`` is the wrapped module's weight (any shape), ``indices`` an int64 ``[k]`` buffer of
positions in ``W.reshape(-1)`` and ``values`` a ``[k]`` parameter initialised to zero, so
a fresh adapter computes exactly what the base does. Parameters are named
``<module>.sparse_values.<adapter>`` and buffers ``<module>.sparse_indices.<adapter>``,
which is how :func:`scalpel.core.delta.refresh_trainable` finds them.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from scalpel.core.delta import register_delta_marker
from scalpel.core.errors import ScalpelError
from scalpel.core.sparse.autograd import GradObserver, SparseLinear, SparseWeight

register_delta_marker("sparse_values", "sparse_indices", "sparse_original")


class TensorSlots(nn.Module):
    """Named buffers, one per adapter (``nn.ParameterDict`` for buffers)."""

    def __init__(self, persistent: bool = True):
        super().__init__()
        self.persistent = persistent

    def set(self, name: str, tensor: Tensor) -> None:
        self._buffers.pop(name, None)
        self.register_buffer(name, tensor, persistent=self.persistent)

    def get(self, name: str) -> Tensor:
        return self._buffers[name]

    def pop(self, name: str) -> Tensor | None:
        self._non_persistent_buffers_set.discard(name)
        return self._buffers.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._buffers


def _kind_of(module: nn.Module) -> str:
    """Which autograd path adapts ``module``: a fused linear one, or the generic one."""
    if type(module) is nn.Linear:
        return "linear"
    if type(module).__name__ == "Conv1D" and hasattr(module, "nf") and module.weight.dim() == 2:
        return "conv1d"  # transformers.pytorch_utils.Conv1D: y = x W + b with W [in, out]
    return "generic"


class SparseDeltaLayer(nn.Module):
    """Wraps any module with a ``weight`` (Linear, Conv, Embedding, norms, GPT-2 Conv1D).

    Implements :class:`scalpel.core.delta.DeltaLayer`. Attribute reads the wrapper does not
    have (``in_features``, ``bias``, ``weight``...) fall through to the base module.
    """

    def __init__(self, base_layer: nn.Module):
        super().__init__()
        weight = getattr(base_layer, "weight", None)
        if not isinstance(weight, nn.Parameter):
            raise ScalpelError(f"{type(base_layer).__name__} has no weight parameter; a sparse delta needs one")
        self.base_layer = base_layer
        self.sparse_values = nn.ParameterDict()
        self.sparse_indices = TensorSlots()
        self.sparse_original = TensorSlots(persistent=False)  # base values under the indices while merged
        self.active_adapter: str | None = None
        self.merged = False
        self.kind = _kind_of(base_layer)
        self.grad_observer: GradObserver | None = None  # set by dynamic regrowth while it accumulates

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    # ---------------------------------------------------------------- adapters

    @property
    def weight(self) -> nn.Parameter:
        return self.base_layer.weight

    def adapter_names(self) -> list[str]:
        return list(self.sparse_values.keys())

    def add_adapter(self, name: str, indices: Tensor, values: Tensor | None = None) -> None:
        """Add ``k = len(indices)`` trainable entries at ``indices`` (zero-initialised unless given)."""
        if name in self.sparse_values:
            raise ScalpelError(f"this layer already has a sparse delta for adapter {name!r}; use another adapter_name")
        weight = self.weight
        indices = torch.as_tensor(indices).to(device=weight.device, dtype=torch.int64).reshape(-1)
        check_indices(indices, weight.numel(), where=f"adapter {name!r} of a {tuple(weight.shape)} weight")
        if values is None:
            values = torch.zeros(indices.numel(), dtype=weight.dtype, device=weight.device)
        elif values.shape != indices.shape:
            raise ScalpelError(f"adapter {name!r} has {values.numel()} values for {indices.numel()} indices; the delta is damaged")
        self.sparse_indices.set(name, indices)
        self.sparse_values[name] = nn.Parameter(values.detach().to(device=weight.device, dtype=weight.dtype).clone())

    def delete_adapter(self, name: str) -> None:
        if self.merged and self.active_adapter == name:
            raise ScalpelError(f"adapter {name!r} is merged into this layer; unmerge before deleting it")
        del self.sparse_values[name]
        self.sparse_indices.pop(name)
        if self.active_adapter == name:
            self.active_adapter = None

    def indices(self, name: str) -> Tensor:
        return self.sparse_indices.get(name)

    def values(self, name: str) -> nn.Parameter:
        return self.sparse_values[name]

    # ----------------------------------------------------------------- forward

    def forward(self, *args, **kwargs):
        name = self.active_adapter
        if name is None or self.merged or name not in self.sparse_values or self.sparse_values[name].numel() == 0:
            return self.base_layer(*args, **kwargs)
        values, indices = self.sparse_values[name], self.sparse_indices.get(name)
        base = self.base_layer
        if self.kind in ("linear", "conv1d") and len(args) == 1 and not kwargs:
            return SparseLinear.apply(args[0], values, base.weight, base.bias, indices, self.kind == "conv1d", self.grad_observer)
        weight = SparseWeight.apply(values, base.weight, indices, self.grad_observer)
        return functional_call(base, {"weight": weight}, args, kwargs)

    # ------------------------------------------------------------------- merge

    def merge(self) -> None:
        """Write ``W.flat[indices] = W.flat[indices] + values``; keep the old entries for :meth:`unmerge`.

        The addition is the one :func:`~scalpel.core.sparse.autograd.effective_weight`
        does, so merged and unmerged outputs agree bit for bit.
        """
        name = self.active_adapter
        if name is None or self.merged:
            return
        flat = _flat_view(self.weight)
        indices = self.sparse_indices.get(name)
        with torch.no_grad():
            original = flat.index_select(0, indices).clone()
            flat.index_copy_(0, indices, original + self.sparse_values[name].detach().to(flat.dtype))
        self.sparse_original.set(name, original)
        self.merged = True

    def unmerge(self) -> None:
        """Restore the exact base entries saved by :meth:`merge`."""
        if not self.merged:
            return
        name = self.active_adapter
        original = self.sparse_original.pop(name)
        with torch.no_grad():
            _flat_view(self.weight).index_copy_(0, self.sparse_indices.get(name), original)
        self.merged = False

    def extra_repr(self) -> str:
        n = self.weight.numel()
        parts = [f"{a}: {self.sparse_values[a].numel():,}/{n:,}" for a in self.adapter_names()]
        return f"kind={self.kind}, " + ", ".join(parts)


def check_indices(indices: Tensor, numel: int, where: str) -> None:
    """Refuse indices that are out of range, repeated or not 1-D: they mean a damaged delta."""
    if indices.dim() != 1:
        raise ScalpelError(f"sparse indices of {where} must be 1-D; the delta is damaged")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= numel):
        raise ScalpelError(
            f"sparse indices of {where} reach {int(indices.max())} but the weight has {numel} entries; "
            "the adapter was made for a different base model"
        )
    if indices.numel() != torch.unique(indices).numel():
        raise ScalpelError(f"sparse indices of {where} repeat an entry; the delta is damaged")


def _flat_view(weight: Tensor) -> Tensor:
    if not weight.is_contiguous():
        raise ScalpelError("cannot merge a sparse delta into a non-contiguous weight; call .contiguous() on the model's weights first")
    return weight.data.view(-1)
