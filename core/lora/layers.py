"""LoRA delta layers: one wrapper for every layer type, with plain LoRA and DoRA as
small strategy objects (PEFT's ``LoraVariant`` idea, without a class per combination).

``LoraLayer`` keeps the original layer as ``base_layer`` and, per named adapter, the
factors under PEFT's names (``lora_A.<name>.weight``, ``lora_embedding_A.<name>``,
``lora_magnitude_vector.<name>``), so trainability follows from parameter names
(core/delta.py) and saved keys match PEFT's.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scalpel.core.errors import ScalpelError


class PlainLora:
    """``y = base(x) + s B A dropout(x)`` and ``W' = W0 + s ΔW``."""

    name = "lora"

    def init(self, layer: LoraLayer, adapter: str) -> None:
        pass

    def forward(self, layer: LoraLayer, adapter: str, x: Tensor, result: Tensor) -> Tensor:
        spec = layer.specs[adapter]
        A, B = layer.factors(adapter)
        return layer.ops.add_branch(result, layer.base_layer, layer.dropped(x, spec), A, B, spec.scaling)

    def merged_weight(self, layer: LoraLayer, adapter: str, weight: Tensor) -> Tensor:
        A, B = layer.factors(adapter)
        if A.dtype != weight.dtype:
            return weight + layer.delta_weight(adapter).to(weight.dtype)
        return layer.ops.add_delta(weight, A, B, layer.specs[adapter].scaling)


class Dora:
    """DoRA (Liu et al., 2024, arXiv:2402.09353): ``W' = m * (W0 + s ΔW) / ||W0 + s ΔW||_c``
    with a learned magnitude ``m`` per output feature, initialised to ``||W0||_c``.

    As in the paper (section 4.3) and PEFT, the norm is treated as a constant in the
    backward pass. Forward, with ``g = m / ||W0 + s ΔW||_c`` and ``b`` the bias:
    ``y = base(x) + (g - 1) (base(x) - b) + g s B A x``, i.e. ``g (W0 x + s B A x) + b``.
    """

    name = "dora"

    def init(self, layer: LoraLayer, adapter: str) -> None:
        with torch.no_grad():
            weight = layer.base_layer.weight
            norm = layer.ops.weight_norm(weight + layer.delta_weight(adapter).to(weight.dtype))
        layer.lora_magnitude_vector[adapter] = nn.Parameter(norm.clone())

    def _gain(self, layer: LoraLayer, adapter: str, weight: Tensor) -> Tensor:
        norm = layer.ops.weight_norm(weight + layer.delta_weight(adapter).detach().to(weight.dtype)).detach()
        return layer.lora_magnitude_vector[adapter] / norm

    def forward(self, layer: LoraLayer, adapter: str, x: Tensor, result: Tensor) -> Tensor:
        spec, ops, base = layer.specs[adapter], layer.ops, layer.base_layer
        A, B = layer.factors(adapter)
        gain = self._gain(layer, adapter, base.weight)
        dropped = layer.dropped(x, spec)
        if dropped is x:
            bias = getattr(base, "bias", None)
            base_no_bias = result if bias is None else result - ops.bias_view(bias, result.dim())
        else:  # PEFT's formula with dropout: the magnitude acts on the dropped-out input
            base_no_bias = ops.base_output(base, dropped)
        return result + (gain - 1) * base_no_bias + gain * ops.branch(base, dropped, A, B) * spec.scaling

    def merged_weight(self, layer: LoraLayer, adapter: str, weight: Tensor) -> Tensor:
        total = weight + layer.delta_weight(adapter).to(weight.dtype)
        return layer.ops.scale_weight(total, layer.lora_magnitude_vector[adapter] / layer.ops.weight_norm(total))


PLAIN, DORA = PlainLora(), Dora()
#: Layer types whose forward is exactly ``ops.forward_with_weight`` (no hooks into subclasses).
_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class AdapterSpec:
    """What one named adapter on one layer needs besides its tensors."""

    r: int
    alpha: float
    scaling: float
    dropout: float
    variant: PlainLora | Dora


class LoraLayer(nn.Module):
    """A frozen layer plus one low-rank update per named adapter (only the active one runs).

    Args:
        base_layer: ``nn.Linear``, ``nn.Embedding``, ``nn.Conv1d/2d/3d`` or GPT-2 ``Conv1D``.
        ops: the layer type's ops object (core/lora/ops.py).
    """

    def __init__(self, base_layer: nn.Module, ops) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.ops = ops
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        self.lora_magnitude_vector = nn.ParameterDict()
        self.specs: dict[str, AdapterSpec] = {}
        self.active_adapter: str | None = None
        self.merged = False
        self._unmerged_weight: Tensor | None = None  # exact copy of the base weight while merged

    # ------------------------------------------------------------------ adapters
    def add_adapter(
        self, name: str, *, r: int, alpha: float, scaling: float, dropout: float, dora: bool, init: str
    ) -> None:
        if name in self.specs:
            raise ScalpelError(f"layer already has an adapter named {name!r}; delete it first or choose another name")
        A, B = self.ops.new_factors(self.base_layer, r)
        if isinstance(A, nn.Module):
            self.lora_A[name], self.lora_B[name] = A, B
        else:
            self.lora_embedding_A[name], self.lora_embedding_B[name] = A, B
        a, b = self.factors(name)
        with torch.no_grad():
            self.ops.init_factors(a, b, init, r)
        dropout = dropout if self.ops.uses_dropout else 0.0
        self.specs[name] = AdapterSpec(r, alpha, scaling, dropout, DORA if dora else PLAIN)
        self.specs[name].variant.init(self, name)

    def adapter_names(self) -> list[str]:
        return list(self.specs)

    def delete_adapter(self, name: str) -> None:
        if self.merged and self.active_adapter == name:
            self.unmerge()
        stores = (self.lora_A, self.lora_B, self.lora_embedding_A, self.lora_embedding_B, self.lora_magnitude_vector)
        for store in stores:
            if name in store:
                del store[name]
        del self.specs[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def factors(self, name: str) -> tuple[Tensor, Tensor]:
        """(A, B) weight tensors of adapter ``name``."""
        if name in self.lora_A:
            return self.lora_A[name].weight, self.lora_B[name].weight
        return self.lora_embedding_A[name], self.lora_embedding_B[name]

    def delta_weight(self, name: str) -> Tensor:
        """``s ΔW`` of adapter ``name`` in the base weight's layout."""
        A, B = self.factors(name)
        return self.ops.delta_weight(self.base_layer, A, B) * self.specs[name].scaling

    def dropped(self, x: Tensor, spec: AdapterSpec) -> Tensor:
        # No dropout call at all when it is off: an identity module still costs a call per layer.
        return F.dropout(x, spec.dropout, True) if spec.dropout > 0 and self.training else x

    # ------------------------------------------------------------------- forward
    def forward(self, x: Tensor, *args, **kwargs) -> Tensor:
        name = self.active_adapter
        if name is None or self.merged:
            return self.base_layer(x, *args, **kwargs)
        if not (self.training or torch.is_grad_enabled() or args or kwargs):
            folded = self._inference_forward(x)
            if folded is not None:
                return folded
        result = self.base_layer(x, *args, **kwargs)
        A = self.factors(name)[0]
        if x.is_floating_point() and x.dtype != A.dtype:
            x = x.to(A.dtype)
        return self.specs[name].variant.forward(self, name, x, result)

    def _inference_forward(self, x: Tensor) -> Tensor | None:
        """Inference without autograd: one base op with ``W0 + s ΔW`` (DoRA: its merged
        weight) built on the fly, when that is cheaper than the branch. The stored weights
        stay unmerged, so adapters still switch freely."""
        name, base = self.active_adapter, self.base_layer
        if type(base) not in _FOLDABLE and self.ops.type_name != "Conv1D":
            return None
        if base._forward_hooks or base._forward_pre_hooks or not x.is_floating_point() or x.dtype != base.weight.dtype:
            return None
        if not self.ops.folds_in_inference(base, x):
            return None
        weight = self.specs[name].variant.merged_weight(self, name, base.weight)
        return self.ops.forward_with_weight(base, x, weight.to(base.weight.dtype))

    # --------------------------------------------------------------------- merge
    def merge(self) -> None:
        """Fold the active adapter into ``base_layer.weight``; a copy of the original is kept."""
        if self.merged or self.active_adapter is None:
            return
        weight = self.base_layer.weight
        with torch.no_grad():
            self._unmerged_weight = weight.detach().clone()
            spec = self.specs[self.active_adapter]
            exact = weight.float() if weight.dtype in (torch.float16, torch.bfloat16) else weight  # fold in fp32
            merged = spec.variant.merged_weight(self, self.active_adapter, exact)
            weight.copy_(merged.to(weight.dtype))
        self.merged = True

    def unmerge(self) -> None:
        """Restore the base weight exactly (bit for bit) from the copy kept by :meth:`merge`."""
        if not self.merged:
            return
        with torch.no_grad():
            self.base_layer.weight.copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        specs = ", ".join(f"{n}: {s.variant.name} r={s.r} scaling={s.scaling:g}" for n, s in self.specs.items())
        return f"{self.ops.type_name}; {specs}; active={self.active_adapter}"


class ModulesToSave(nn.Module):
    """A module trained in full, one copy per adapter (PEFT's ``modules_to_save``), e.g. a
    task head: each adapter gets its own head, the original stays as ``base_layer``."""

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.merged = False
        self._unmerged_state: dict[str, Tensor] | None = None

    def add_adapter(self, name: str) -> None:
        copy_ = copy.deepcopy(self.base_layer)
        self.modules_to_save[name] = copy_

    def adapter_names(self) -> list[str]:
        return list(self.modules_to_save)

    def delete_adapter(self, name: str) -> None:
        if self.merged and self.active_adapter == name:
            self.unmerge()
        del self.modules_to_save[name]
        if self.active_adapter == name:
            self.active_adapter = None

    def forward(self, *args, **kwargs):
        if self.active_adapter is None or self.merged:
            return self.base_layer(*args, **kwargs)
        return self.modules_to_save[self.active_adapter](*args, **kwargs)

    def merge(self) -> None:
        """Copy the active adapter's module into ``base_layer`` (keeping the original state)."""
        if self.merged or self.active_adapter is None:
            return
        trained = self.modules_to_save[self.active_adapter].state_dict()
        self._unmerged_state = {k: v.detach().clone() for k, v in self.base_layer.state_dict().items()}
        with torch.no_grad():
            self.base_layer.load_state_dict(trained)
        self.merged = True

    def unmerge(self) -> None:
        if not self.merged:
            return
        with torch.no_grad():
            self.base_layer.load_state_dict(self._unmerged_state)
        self._unmerged_state = None
        self.merged = False
