"""The LoRA family: LoRA, rsLoRA and DoRA on linear, embedding and convolution layers,
with adapters in the Hugging Face PEFT format.

    from scalpel.core import apply
    from scalpel.core.lora import LoraConfig
    model = apply(model, LoraConfig(r=8, alpha=16, targets=r"query|value", modules_to_save=("classifier",)))
"""

from scalpel.core.artifacts import FOREIGN_READERS
from scalpel.core.delta import register_delta_marker
from scalpel.core.lora.config import ALL_LINEAR, LAYER_TYPES, LoraConfig
from scalpel.core.lora.layers import Dora, LoraLayer, ModulesToSave, PlainLora
from scalpel.core.lora.model import apply_lora, find_targets
from scalpel.core.lora.peft_format import (
    LORA_MARKERS,
    describe_lora,
    load_lora,
    lora_state_dict,
    peft_adapter_config,
    read_peft_lora,
)
from scalpel.core.methods import Method, register_method

register_delta_marker(*LORA_MARKERS)

LORA = register_method(
    Method(
        name="lora",
        config_cls=LoraConfig,
        apply=apply_lora,
        state_dict=lora_state_dict,
        load=load_lora,
        peft_config=peft_adapter_config,
        describe=describe_lora,
    )
)
FOREIGN_READERS.append(read_peft_lora)

__all__ = [
    "ALL_LINEAR",
    "LAYER_TYPES",
    "LORA",
    "Dora",
    "LoraConfig",
    "LoraLayer",
    "ModulesToSave",
    "PlainLora",
    "apply_lora",
    "find_targets",
]
