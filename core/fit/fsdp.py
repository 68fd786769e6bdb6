"""Full (unsharded) model and optimizer state of an FSDP-wrapped model, for ``fit``'s
checkpoints and best weights.

These use ``torch.distributed.checkpoint.state_dict`` (PyTorch >= 2.2), which knows both
FSDP1 (``FullyShardedDataParallel``) and FSDP2 (``fully_shard``): tensors are gathered to
full size, keyed by the original parameter names, and offloaded to the CPU of rank 0
(other ranks get empty dicts). Every call is a collective: all processes must make it.
Optimizer state comes keyed by parameter name rather than by index, so it does not
depend on how FSDP flattened the parameters.

Not exercised by the CPU test suite (FSDP needs GPUs); see docs/training.md.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def _options(**kw: Any):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_options(cpu_offload=True))


def load_full_model_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Load full tensors (every rank passes the same dict; names absent from it keep their values)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(model, tensors, options=_options(strict=False))


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=_options(cpu_offload=True))


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=_options())
