"""Scalpel's shared PEFT core: adapt a pre-trained model by training a small, well-chosen
part of it.

    model = scalpel.core.apply(model, LoraConfig(r=8, alpha=16, targets=r"query|value"))
    scalpel.core.trainable_parameters(model)
    scalpel.core.save_adapter(model, "run/adapter")
    model = scalpel.core.load_adapter(base_model, "run/adapter")
    model = scalpel.core.merge(model)
"""

from scalpel.core.artifacts import adapter_bytes, adapter_info, fingerprint_files, load_adapter, read_adapter_meta, save_adapter
from scalpel.core.delta import (
    adapter_names,
    count_parameters,
    delete_adapter,
    disable_adapters,
    merge,
    parameter_report,
    set_active_adapter,
    trainable_parameters,
    unmerge,
)
from scalpel.core.errors import (
    AdapterError,
    BaseModelMismatchError,
    CheckpointError,
    ConfigError,
    DataError,
    MissingDependencyError,
    ScalpelError,
    TargetNotFoundError,
    TrainingError,
    UnknownNameError,
)
from scalpel.core.methods import METHODS, Method, apply, register_method

__all__ = [
    "METHODS",
    "AdapterError",
    "BaseModelMismatchError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Method",
    "MissingDependencyError",
    "ScalpelError",
    "TargetNotFoundError",
    "TrainingError",
    "UnknownNameError",
    "adapter_bytes",
    "adapter_info",
    "adapter_names",
    "apply",
    "count_parameters",
    "delete_adapter",
    "disable_adapters",
    "fingerprint_files",
    "load_adapter",
    "merge",
    "parameter_report",
    "read_adapter_meta",
    "register_method",
    "save_adapter",
    "set_active_adapter",
    "trainable_parameters",
    "unmerge",
]

from scalpel.core.layerwise.blocks import block_map  # noqa: E402  (after the method registry it builds on)

__all__ += ["block_map"]
