"""MONAI networks by name: UNet, SegResNet, SwinUNETR, DenseNet121, ResNet, or any MONAI class.

    spec = NetworkSpec("segresnet", spatial_dims=3, out_channels=3, options={"init_filters": 8})
    model = spec.build()                                   # monai.networks.nets.SegResNet
    NetworkSpec("monai.networks.nets.AttentionUnet", 2, 1, 3, {"channels": [8, 16], "strides": [2]}).build()
    model = build_network(my_module)                       # an nn.Module passes through unchanged
    adapt(model, "lora", target_types=lora_target_types(model))   # Conv2d/Conv3d and attention Linear
    save_checkpoint(model, spec, "base/", structures=[...]); model, spec, facts, sha = load_checkpoint("base/")

A spec is what a base checkpoint stores beside its weights (``to_dict`` / ``from_dict``), so
the base can be rebuilt exactly. It has the interface of
:class:`~scalpel.medical.segmentation.UNetSpec` (``spatial_dims``, ``out_channels``,
``downsampling``, ``build``, ``to_dict``, ``from_dict``); :func:`spec_from_dict` reads either.

Families (``FAMILIES``, a registry: adding one is a decorated function):

============  ==============  ===========================================================
name          task            MONAI class, input multiple (``downsampling``)
============  ==============  ===========================================================
unet          segmentation    ``UNet`` (Ronneberger et al. 2015; residual units), prod(strides)
segresnet     segmentation    ``SegResNet`` (Myronenko 2018, arXiv:1810.11654), 2^(levels-1)
swinunetr     segmentation    ``SwinUNETR`` (Hatamizadeh et al. 2022, arXiv:2201.01266), 32;
                              needs ``einops``; attention ``qkv``/``proj`` are ``nn.Linear``
densenet121   classification  ``DenseNet121`` (Huang et al. 2017)
resnet10..50  classification  ``resnet10/18/34/50`` (He et al. 2016; MONAI's 2D/3D ResNet)
============  ==============  ===========================================================
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from scalpel.core.config import raise_if_problems
from scalpel.core.errors import AdapterError, ConfigError, MissingDependencyError
from scalpel.core.files import read_json, read_safetensors, write_json, write_safetensors
from scalpel.core.registry import Registry

WEIGHTS, SPEC = "model.safetensors", "model.json"


@dataclass(frozen=True)
class Family:
    """How to build one network family from a :class:`NetworkSpec`."""

    task: str
    """``"segmentation"`` (logits ``(B, out, *spatial)``) or ``"classification"`` (``(B, out)``)"""
    build: Callable[[NetworkSpec, dict[str, Any]], nn.Module]
    defaults: dict[str, Any]
    """keyword arguments used unless ``spec.options`` overrides them"""
    divisor: Callable[[dict[str, Any]], int] = lambda options: 1
    """input sizes must be multiples of this, from the resolved options"""


FAMILIES: Registry[Family] = Registry("network family")


@dataclass(frozen=True)
class NetworkSpec:
    """A MONAI network: a family name (see ``FAMILIES``) or a dotted ``nn.Module`` class path.

    For a dotted path, ``spatial_dims``, ``in_channels`` and ``out_channels`` are passed when
    the class takes arguments of those names, and ``options`` are the other keyword arguments.
    """

    name: str = "unet"
    spatial_dims: int = 3
    in_channels: int = 1
    out_channels: int = 2
    """classes, counting the background for segmentation"""
    options: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of the MONAI class (override the family's defaults)"""
    divisor: int = 0
    """input sizes must be multiples of this; 0: the family's own rule (1 for a dotted path)"""

    def __post_init__(self) -> None:
        if isinstance(self.options, dict):  # lists from JSON/YAML -> tuples, so a round trip compares equal
            object.__setattr__(self, "options", {k: _tuples(v) for k, v in self.options.items()})
        problems = []
        if self.spatial_dims not in (2, 3):
            problems.append(f"spatial_dims must be 2 or 3, got {self.spatial_dims}")
        if self.in_channels < 1:
            problems.append(f"in_channels must be >= 1, got {self.in_channels}")
        if self.out_channels < 2:
            problems.append(f"out_channels must be >= 2 (segmentation: background + a structure; classification: 2 classes), "
                            f"got {self.out_channels}")
        if self.divisor < 0:
            problems.append(f"divisor must be >= 0, got {self.divisor}")
        if "." not in self.name and self.name not in FAMILIES:
            problems.append(f"unknown network {self.name!r}; choose from {', '.join(FAMILIES.names())} "
                            "or give a dotted class path such as monai.networks.nets.AttentionUnet")
        if not isinstance(self.options, dict):
            problems.append(f"options must be a mapping of keyword arguments, got {type(self.options).__name__}")
        raise_if_problems("network spec", problems)

    @property
    def family(self) -> Family | None:
        return FAMILIES.get(self.name) if self.name in FAMILIES else None

    @property
    def task(self) -> str:
        """``"segmentation"``, ``"classification"``, or ``"any"`` for a dotted class path."""
        return self.family.task if self.family else "any"

    def resolved_options(self) -> dict[str, Any]:
        return {**(self.family.defaults if self.family else {}), **self.options}

    @property
    def downsampling(self) -> int:
        """Every spatial size fed to the network must be a multiple of this."""
        if self.divisor:
            return self.divisor
        return self.family.divisor(self.resolved_options()) if self.family else 1

    def build(self) -> nn.Module:
        if self.family is not None:
            try:
                return self.family.build(self, self.resolved_options())
            except TypeError as err:
                raise ConfigError("network spec", [f"{self.name}: {err}; check the options {sorted(self.options)}"]) from err
        return _build_dotted(self)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "spatial_dims": self.spatial_dims, "in_channels": self.in_channels,
                "out_channels": self.out_channels, "options": _plain(self.options), "divisor": self.divisor}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError("network spec", [f"unknown key {k!r}; known: {sorted(known)}" for k in unknown])
        return cls(**data)


def spec_from_dict(data: dict[str, Any]) -> Any:
    """A :class:`NetworkSpec` (a dict with ``name``) or a legacy :class:`UNetSpec` (without)."""
    if "name" in data:
        return NetworkSpec.from_dict(data)
    from scalpel.medical.segmentation import UNetSpec

    return UNetSpec.from_dict(data)


def build_network(network: nn.Module | NetworkSpec | Any) -> nn.Module:
    """``network`` itself when it is an ``nn.Module``; else ``network.build()`` (any spec)."""
    if isinstance(network, nn.Module):
        return network
    if callable(getattr(network, "build", None)):
        return network.build()
    raise ConfigError("network", [f"expected an nn.Module or a network spec, got {type(network).__name__}"])


def lora_target_types(model: nn.Module) -> tuple[str, ...]:
    """The layer types LoRA should adapt in a MONAI network: its convolutions (Conv2d/Conv3d)
    and, where it has them (SwinUNETR, UNETR), its linear layers: attention ``qkv``/``proj``,
    MLPs and patch merging. Output-head detection is left to the caller (``exclude``)."""
    present = {type(m).__name__ for m in model.modules()}
    return tuple(t for t in ("Conv2d", "Conv3d", "Linear") if t in present)


#: Attention projections of MONAI's Swin and ViT blocks (``WindowAttention.qkv/proj``, ``SABlock.qkv/out_proj``).
ATTENTION_TARGETS = r"attn\.(qkv|proj|out_proj)"


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(model: nn.Module, spec: Any, folder: str | os.PathLike, **facts: Any) -> Path:
    """Write a base: ``model.safetensors`` + ``model.json`` (``{"network": spec, **facts}``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_safetensors(folder / WEIGHTS, {k: v.detach().contiguous() for k, v in model.state_dict().items()})
    write_json(folder / SPEC, {"network": spec.to_dict(), **facts})
    return folder


def load_checkpoint(folder: str | os.PathLike) -> tuple[nn.Module, Any, dict[str, Any], str]:
    """``(model in eval mode, network spec, model.json, SHA-256 of the weights)``; ``model.json``
    always has an ``orientation`` (:func:`recorded_orientation`).

    Raises:
        AdapterError: not a checkpoint folder, or weights that do not fit the spec.
    """
    folder = Path(folder)
    spec, facts, sha = read_checkpoint(folder)
    model = spec.build()
    try:
        model.load_state_dict(read_safetensors(folder / WEIGHTS))
    except RuntimeError as err:
        raise AdapterError(f"{folder / WEIGHTS} does not fit the network in {SPEC}: {str(err)[:300]}") from err
    return model.eval(), spec, facts, sha


def read_checkpoint(folder: str | os.PathLike) -> tuple[Any, dict[str, Any], str]:
    """What a checkpoint is, without building it: ``(network spec, model.json, SHA-256 of the weights)``.

    Raises:
        AdapterError: not a checkpoint folder.
    """
    folder = Path(folder)
    sha = checkpoint_sha256(folder)
    facts = read_json(folder / SPEC)
    facts["orientation"] = recorded_orientation(facts)
    return spec_from_dict(facts.get("network") or facts.get("unet") or {}), facts, sha


def checkpoint_sha256(folder: str | os.PathLike) -> str:
    """SHA-256 of a base checkpoint's weights: what its adapters record as ``base_sha256``.

    Raises:
        AdapterError: no checkpoint (``model.safetensors`` + ``model.json``) in ``folder``.
    """
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file() or not (folder / SPEC).is_file():
        raise AdapterError(f"{folder} is not a base checkpoint: it needs {WEIGHTS} and {SPEC}")
    return hashlib.sha256((folder / WEIGHTS).read_bytes()).hexdigest()


def recorded_orientation(facts: dict[str, Any]) -> str:
    """The axis codes a base was trained in. Bases written before they recorded it: RAS for the
    pipelines' (key ``network``, MONAI-preprocessed), the stored order for ``save_base``'s (key ``unet``)."""
    return str(facts.get("orientation", "" if "unet" in facts else "RAS"))


# ----------------------------------------------------------------------------- families


def _register(name: str, task: str, defaults: dict[str, Any], divisor: Callable[[dict[str, Any]], int] = lambda o: 1):
    def add(build: Callable[[NetworkSpec, dict[str, Any]], nn.Module]):
        FAMILIES.add(name, Family(task, build, defaults, divisor))
        return build

    return add


@_register("unet", "segmentation", {"channels": (16, 32, 64, 128), "strides": (2, 2, 2), "num_res_units": 2, "norm": "batch"},
           divisor=lambda o: math.prod(o["strides"]))
def _unet(spec: NetworkSpec, o: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import UNet

    o = {**o, "channels": tuple(o["channels"]), "strides": tuple(o["strides"])}
    return UNet(spatial_dims=spec.spatial_dims, in_channels=spec.in_channels, out_channels=spec.out_channels, **o)


@_register("segresnet", "segmentation", {"init_filters": 8, "blocks_down": (1, 2, 2, 4), "blocks_up": (1, 1, 1)},
           divisor=lambda o: 2 ** (len(o["blocks_down"]) - 1))
def _segresnet(spec: NetworkSpec, o: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import SegResNet

    groups = o.get("num_groups", 8)
    if o["init_filters"] % groups:  # GroupNorm over the first level's channels
        raise ConfigError("network spec", [f"segresnet: init_filters {o['init_filters']} must be a multiple of num_groups {groups}"])
    o = {**o, "blocks_down": tuple(o["blocks_down"]), "blocks_up": tuple(o["blocks_up"])}
    return SegResNet(spatial_dims=spec.spatial_dims, in_channels=spec.in_channels, out_channels=spec.out_channels, **o)


@_register("swinunetr", "segmentation", {"feature_size": 24, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24), "window_size": 7},
           divisor=lambda o: 32)
def _swinunetr(spec: NetworkSpec, o: dict[str, Any]) -> nn.Module:
    try:
        import einops  # noqa: F401  (MONAI's Swin blocks import it lazily, at the first forward pass)
    except ImportError:
        raise MissingDependencyError("einops", "SwinUNETR") from None
    from monai.networks.nets import SwinUNETR

    if o["feature_size"] % 12:
        raise ConfigError("network spec", [f"swinunetr: feature_size must be a multiple of 12, got {o['feature_size']}"])
    o = {**o, "depths": tuple(o["depths"]), "num_heads": tuple(o["num_heads"])}
    return SwinUNETR(spatial_dims=spec.spatial_dims, in_channels=spec.in_channels, out_channels=spec.out_channels, **o)


@_register("densenet121", "classification", {"init_features": 64, "growth_rate": 32, "block_config": (6, 12, 24, 16)})
def _densenet121(spec: NetworkSpec, o: dict[str, Any]) -> nn.Module:
    from monai.networks.nets import DenseNet121

    o = {**o, "block_config": tuple(o["block_config"])}
    return DenseNet121(spatial_dims=spec.spatial_dims, in_channels=spec.in_channels, out_channels=spec.out_channels, **o)


def _resnet(depth: int) -> Callable[[NetworkSpec, dict[str, Any]], nn.Module]:
    def build(spec: NetworkSpec, o: dict[str, Any]) -> nn.Module:
        from monai.networks import nets

        return getattr(nets, f"resnet{depth}")(spatial_dims=spec.spatial_dims, n_input_channels=spec.in_channels,
                                               num_classes=spec.out_channels, **o)

    return build


for _depth in (10, 18, 34, 50):
    _register(f"resnet{_depth}", "classification", {})(_resnet(_depth))


def _build_dotted(spec: NetworkSpec) -> nn.Module:
    module_name, _, class_name = spec.name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise ConfigError("network spec", [f"cannot import {spec.name!r} ({err}); give an importable class path "
                                           "such as monai.networks.nets.AttentionUnet"]) from err
    # Only network classes are built: a dotted path read from a model.json must not call arbitrary functions.
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError("network spec", [f"{spec.name!r} is not an nn.Module class"])
    accepted = inspect.signature(cls).parameters
    standard = {"spatial_dims": spec.spatial_dims, "in_channels": spec.in_channels, "out_channels": spec.out_channels}
    kwargs = {k: v for k, v in standard.items() if k in accepted} | dict(spec.options)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as err:
        raise ConfigError("network spec", [f"{spec.name}({', '.join(kwargs)}) failed: {err}; check the options"]) from err


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
