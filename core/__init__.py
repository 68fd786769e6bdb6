"""Scalpel's shared PEFT core: adapt a pre-trained model by training a small, well-chosen
part of it.

    model = scalpel.core.apply(model, LoraConfig(r=8, alpha=16, targets=r"query|value"))
    scalpel.core.trainable_parameters(model)
    scalpel.core.save_adapter(model, "run/adapter")
    model = scalpel.core.load_adapter(base_model, "run/adapter")
    model = scalpel.core.merge(model)

The names below are imported when first used (PEP 562), so that a command which needs
only the errors or the file helpers (``scalpel dicom deid``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

#: public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(("adapter_bytes", "adapter_info", "fingerprint_files", "load_adapter", "read_adapter_meta",
                     "save_adapter"), "scalpel.core.artifacts"),
    **dict.fromkeys(("adapter_names", "count_parameters", "delete_adapter", "disable_adapters", "merge",
                     "parameter_report", "set_active_adapter", "trainable_parameters", "unmerge"), "scalpel.core.delta"),
    **dict.fromkeys(("AdapterError", "BaseModelMismatchError", "CheckpointError", "ConfigError", "DataError",
                     "MissingDependencyError", "ScalpelError", "TargetNotFoundError", "TrainingError",
                     "UnknownNameError"), "scalpel.core.errors"),
    **dict.fromkeys(("METHODS", "Method", "apply", "register_method"), "scalpel.core.methods"),
    "block_map": "scalpel.core.layerwise.blocks",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scalpel.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from scalpel.core.artifacts import (  # noqa: F401
        adapter_bytes, adapter_info, fingerprint_files, load_adapter, read_adapter_meta, save_adapter)
    from scalpel.core.delta import (  # noqa: F401
        adapter_names, count_parameters, delete_adapter, disable_adapters, merge, parameter_report,
        set_active_adapter, trainable_parameters, unmerge)
    from scalpel.core.errors import (  # noqa: F401
        AdapterError, BaseModelMismatchError, CheckpointError, ConfigError, DataError, MissingDependencyError,
        ScalpelError, TargetNotFoundError, TrainingError, UnknownNameError)
    from scalpel.core.layerwise.blocks import block_map  # noqa: F401
    from scalpel.core.methods import METHODS, Method, apply, register_method  # noqa: F401
