"""torchvision detectors, segmenters and classifiers, sized to the user's classes.

Every model is built with torchvision's own builder (``torchvision.models.get_model``)
with random weights and ``num_classes`` set to the user's classes, then weights are
loaded from one of three places:

- a torchvision weights enum (``"DEFAULT"`` or a member name such as ``"COCO_V1"``),
  which downloads once into the torch hub cache - only when online;
- a local ``.pth``/``.pt`` file (read with ``torch.load(weights_only=True)``, nothing
  unpickled) or a ``.safetensors`` file;
- nothing (``None``/``""``): random weights, as in tests and the offline demo.

The class-specific head (box predictor, classifier) is not loaded when its shape differs
from the checkpoint's: it is re-initialised for the user's classes and trained in full
by every PEFT method (:attr:`ModelSpec.head`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.models.swin_transformer import ShiftedWindowAttention

from scalpel.core.errors import ConfigError, DataError, ScalpelError, UnknownNameError
from scalpel.core.files import read_safetensors


@dataclass(frozen=True)
class ModelSpec:
    """How Scalpel uses one torchvision architecture.

    Attributes:
        name: the torchvision builder name (``torchvision.models.get_model``).
        task: ``"detection"``, ``"segmentation"`` or ``"classification"``.
        head: modules resized to the user's classes and trained in full (absent ones,
            e.g. ``aux_classifier`` without ``aux_loss``, are ignored).
        builder_options: fixed keyword arguments for the builder.
        blocks: the layer-wise default (``--blocks`` left empty), in the block-map
            selection syntax of :meth:`scalpel.core.layerwise.BlockMap.select`.
    """

    name: str
    task: str
    head: tuple[str, ...]
    builder_options: tuple[tuple[str, Any], ...] = ()
    blocks: tuple[str, ...] = ("last 2",)


def _spec(name: str, task: str, *head: str, blocks: tuple[str, ...] = ("last 2",), **options: Any) -> ModelSpec:
    return ModelSpec(name, task, head, tuple(options.items()), blocks)


_RCNN = ("roi_heads.box_predictor",)
SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _spec("fasterrcnn_resnet50_fpn_v2", "detection", *_RCNN),
        _spec("fasterrcnn_mobilenet_v3_large_fpn", "detection", *_RCNN),
        _spec("fasterrcnn_mobilenet_v3_large_320_fpn", "detection", *_RCNN),
        _spec("retinanet_resnet50_fpn_v2", "detection", "head.classification_head.cls_logits"),
        _spec("fcos_resnet50_fpn", "detection", "head.classification_head.cls_logits"),
        # "last 2" of SSDlite's map would be the two smallest extra layers (2x2 and 1x1 maps at
        # 128 px): train the last MobileNet stage and all extra layers instead, as torchvision's
        # trainable_backbone_layers=1 does.
        _spec("ssdlite320_mobilenet_v3_large", "detection", "head.classification_head", blocks=("blocks 13-20",)),
        _spec("deeplabv3_resnet50", "segmentation", "classifier.4", "aux_classifier.4"),
        _spec("deeplabv3_mobilenet_v3_large", "segmentation", "classifier.4", "aux_classifier.4"),
        _spec("fcn_resnet50", "segmentation", "classifier.4", "aux_classifier.4"),
        _spec("lraspp_mobilenet_v3_large", "segmentation", "classifier.low_classifier", "classifier.high_classifier"),
        _spec("resnet18", "classification", "fc"),
        _spec("resnet50", "classification", "fc"),
        _spec("convnext_tiny", "classification", "classifier.2"),
        _spec("vit_b_16", "classification", "heads.head"),
        _spec("swin_t", "classification", "head"),
        _spec("mobilenet_v3_small", "classification", "classifier.3"),
        _spec("mobilenet_v3_large", "classification", "classifier.3"),
    )
}


def model_names(task: str | None = None) -> list[str]:
    return sorted(n for n, s in SPECS.items() if task is None or s.task == task)


def spec_for(name: str, task: str | None = None) -> ModelSpec:
    if name not in SPECS or (task and SPECS[name].task != task):
        raise UnknownNameError(f"unknown {task or 'vision'} model {name!r}; choose one of {', '.join(model_names(task))}")
    return SPECS[name]


def num_outputs(task: str, class_names: list[str]) -> int:
    """The builder's ``num_classes`` for these classes: detectors add the background (label 0)."""
    return len(class_names) + 1 if task == "detection" else len(class_names)


def build_model(
    name: str,
    num_classes: int,
    *,
    weights: str | None = None,
    image_size: int | None = None,
    aux_loss: bool = True,
    task: str | None = None,
) -> nn.Module:
    """Build a torchvision model for ``num_classes`` classes and load ``weights``.

    Args:
        num_classes: detection: object classes + 1 (background, label 0); segmentation:
            classes including the background; classification: classes.
        weights: ``None``/``""``, ``"DEFAULT"``/an enum member name, or a ``.pth``/
            ``.safetensors`` path (see the module docstring).
        image_size: detection: the size the model resizes images to (``min_size`` =
            ``max_size``; SSDlite: the fixed square size); ViT: the input size.
        aux_loss: segmentation models with an auxiliary FCN head (DeepLabV3, FCN).
    """
    spec = spec_for(name, task)
    options: dict[str, Any] = dict(spec.builder_options)
    if spec.task in ("detection", "segmentation"):
        options["weights_backbone"] = None  # the backbone's ImageNet weights would be a download
    if spec.task == "segmentation" and not name.startswith("lraspp"):
        options["aux_loss"] = aux_loss
    if spec.task == "detection" and image_size and not name.startswith("ssdlite"):
        options.update(min_size=image_size, max_size=image_size)
    if name.startswith("vit") and image_size:
        options["image_size"] = image_size
    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    if name.startswith("ssdlite") and image_size:
        t = model.transform
        model.transform = GeneralizedRCNNTransform(image_size, image_size, t.image_mean, t.image_std,
                                                   size_divisible=1, fixed_size=(image_size, image_size))
    if name.startswith("vit"):
        split_attention(model)
    if weights:
        load_weights(model, read_weights(name, weights), head_modules(model, spec))
    return model


class SplitAttention(nn.Module):
    """Self-attention computing exactly what a ``batch_first`` ``nn.MultiheadAttention``
    computes, with ``q``, ``k``, ``v`` and ``out_proj`` as separate ``nn.Linear`` layers,
    so LoRA and sparse deltas can go on the attention projections.

    torchvision's ViT fuses q/k/v into ``in_proj_weight`` of ``nn.MultiheadAttention``,
    whose forward reads the tensors directly (a wrapper around them would be bypassed).
    The state dict keeps torchvision's layout: ``state_dict()`` fuses plain ``q``/``k``/``v``
    back into ``in_proj_weight``/``in_proj_bias`` and ``load_state_dict`` splits them, so
    torchvision checkpoints load and merged exports load into a plain torchvision ViT.
    """

    def __init__(self, attention: nn.MultiheadAttention):
        super().__init__()
        if not attention.batch_first or attention.in_proj_weight is None:
            raise ConfigError("model", ["SplitAttention needs a batch_first nn.MultiheadAttention with a fused in_proj_weight"])
        d = attention.embed_dim
        self.embed_dim, self.num_heads, self.dropout = d, attention.num_heads, attention.dropout
        bias = attention.in_proj_bias is not None
        self.q, self.k, self.v = nn.Linear(d, d, bias=bias), nn.Linear(d, d, bias=bias), nn.Linear(d, d, bias=bias)
        self.out_proj = nn.Linear(d, d, bias=attention.out_proj.bias is not None)
        self.register_state_dict_post_hook(_fuse_qkv)
        self.register_load_state_dict_pre_hook(_split_qkv)
        self.load_state_dict(attention.state_dict())  # in_proj_* split into q, k, v by the pre-hook

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, need_weights: bool = False,
                **_: Any) -> tuple[torch.Tensor, None]:
        if not (query is key is value):
            raise ScalpelError("SplitAttention is self-attention only (ViT calls it with x, x, x)")
        b, n, d = query.shape
        h = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, h, d // h).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(
            heads(self.q(query)), heads(self.k(query)), heads(self.v(query)), dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d)), None


def _fuse_qkv(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, _metadata: Any) -> None:
    for kind in ("weight", "bias"):
        keys = [f"{prefix}{p}.{kind}" for p in "qkv"]
        if all(k in state for k in keys):  # plain layers (an adapter's wrapped ones keep their own keys)
            state[f"{prefix}in_proj_{kind}"] = torch.cat([state.pop(k) for k in keys])


def _split_qkv(module: nn.Module, state: dict[str, torch.Tensor], prefix: str, *_: Any) -> None:
    for kind in ("weight", "bias"):
        fused = state.pop(f"{prefix}in_proj_{kind}", None)
        if fused is not None:
            for p, part in zip("qkv", fused.chunk(3)):
                state[f"{prefix}{p}.{kind}"] = part


def split_attention(model: nn.Module) -> nn.Module:
    """Replace every ``nn.MultiheadAttention`` of ``model`` by an equivalent :class:`SplitAttention`."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.MultiheadAttention):
                setattr(module, child_name, SplitAttention(child))
    return model


def head_modules(model: nn.Module, spec: ModelSpec) -> list[str]:
    """The head modules ``model`` actually has."""
    present = {n for n, _ in model.named_modules()}
    return [h for h in spec.head if h in present]


def read_weights(name: str, weights: str) -> dict[str, torch.Tensor]:
    """A state dict from a torchvision enum member or a local file (never unpickled)."""
    path = Path(weights)
    if path.suffix in (".pth", ".pt", ".bin", ".safetensors") or path.exists():
        if not path.is_file():
            raise DataError(f"weights file {path} does not exist")
        if path.suffix == ".safetensors":
            return read_safetensors(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # weights_only refuses pickled objects; corrupt files fail too
            raise DataError(f"cannot read weights {path} ({err}); pass a plain state dict saved with torch.save "
                            "or a .safetensors file") from err
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise DataError(f"{path} does not hold a state dict")
        return state
    enum = torchvision.models.get_model_weights(name)
    member = enum.DEFAULT if weights.upper() == "DEFAULT" else getattr(enum, weights, None)
    if member is None:
        raise ConfigError("weights", [f"{weights!r} is neither a file nor a member of {enum.__name__} "
                                      f"({', '.join(m.name for m in enum)}, DEFAULT)"])
    try:
        return member.get_state_dict(progress=False, check_hash=True)
    except Exception as err:  # offline: URLError, socket errors, ...
        raise ScalpelError(
            f"cannot fetch torchvision weights {enum.__name__}.{member.name} ({err}). On a machine with internet run "
            f"`python -c \"import torch, torchvision; torch.save(torchvision.models.get_model_weights('{name}').{member.name}"
            f".get_state_dict(), 'w.pth')\"` and pass --weights w.pth"
        ) from err


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], head: list[str]) -> list[str]:
    """Load ``state`` into ``model``; head tensors whose shape differs are skipped.

    Returns:
        the names of the head tensors left at their fresh initialisation.

    Raises:
        DataError: a non-head tensor is missing, unexpected or of another shape (the
            checkpoint belongs to another architecture).
    """
    own = model.state_dict()
    in_head = re.compile(rf"^(?:{'|'.join(re.escape(h) for h in head)})\.") if head else None
    skipped, problems = [], []
    usable = {}
    for key, value in state.items():
        if key not in own:
            (skipped if in_head and in_head.match(key) else problems).append(key)
        elif own[key].shape != value.shape:
            if in_head and in_head.match(key):
                skipped.append(key)
            else:
                problems.append(f"{key} {list(value.shape)} vs {list(own[key].shape)}")
        else:
            usable[key] = value
    missing = [k for k in own if k not in state and not (in_head and in_head.match(k)) and not k.endswith("num_batches_tracked")]
    if problems or missing:
        raise DataError(
            f"the weights do not fit this architecture: {len(problems)} unexpected/mis-shaped tensors "
            f"({', '.join(problems[:5])}) and {len(missing)} missing ({', '.join(missing[:5])}); "
            "pass weights saved from the same torchvision model"
        )
    model.load_state_dict(usable, strict=False)
    return skipped


def adaptable_layers(model: nn.Module, spec: ModelSpec) -> list[str]:
    """Names of the layers LoRA and sparse deltas go on: every ``nn.Linear`` and dense
    ``nn.Conv2d`` (``groups == 1``) outside the head.

    Depthwise convolutions are skipped (a rank-r update of a ``k x k`` per-channel kernel
    saves nothing). So are the projections of attention modules whose forward reads the
    weight tensors directly instead of calling the layers - a wrapper there would be
    bypassed: ``nn.MultiheadAttention`` (the vision builders replace it in ViT by
    :class:`SplitAttention`, whose q, k, v and output projection are adapted) and Swin's
    ``ShiftedWindowAttention`` (``attn.qkv``/``attn.proj``; Swin's MLPs are adapted).
    """
    head = head_modules(model, spec)
    names = []
    for parent_name, parent in model.named_modules():
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if any(name == h or name.startswith(h + ".") for h in head):
                continue
            if isinstance(parent, (nn.MultiheadAttention, ShiftedWindowAttention)):
                continue
            if isinstance(child, nn.Linear) or (isinstance(child, nn.Conv2d) and child.groups == 1):
                names.append(name)
    return names


def names_regex(names: list[str]) -> str:
    """A regex matching exactly these module names."""
    return "|".join(re.escape(n) for n in names)

