"""Structure detectors for block maps: one small function per model family.

Each detector looks at one module and returns ``(stem paths, [block paths, ...])``
relative to it, or None. Paths name submodules; the head is whatever the stem and the
blocks leave. Detection reads attribute paths, not class names, so wrapped and
re-implemented models are found too.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Found = tuple[list[str], list[list[str]]]


def _children(module: nn.Module) -> dict[str, nn.Module]:
    return dict(module.named_children())


def _indexed(module: nn.Module | None) -> list[str] | None:
    """Child names of a ModuleList/Sequential-like module whose children are named 0..n-1."""
    if module is None:
        return None
    names = list(_children(module))
    return names if names and names == [str(i) for i in range(len(names))] else None


def _get(module: nn.Module, path: str) -> nn.Module | None:
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def _stack(module: nn.Module, embed: list[str], layers: str) -> Found | None:
    if all(_get(module, e) is not None for e in embed[:1]) and (idx := _indexed(_get(module, layers))):
        return [e for e in embed if _get(module, e) is not None], [[f"{layers}.{i}"] for i in idx]
    return None


def _hf_encoder(m: nn.Module) -> Found | None:
    return _stack(m, ["embeddings"], "encoder.layer")


def _distilbert(m: nn.Module) -> Found | None:
    return _stack(m, ["embeddings"], "transformer.layer")


def _gpt2(m: nn.Module) -> Found | None:
    return _stack(m, ["wte", "wpe"], "h")


def _llama(m: nn.Module) -> Found | None:
    return _stack(m, ["embed_tokens"], "layers")


def _resnet(m: nn.Module) -> Found | None:
    kids = _children(m)
    if "conv1" not in kids or "layer1" not in kids:
        return None
    layers = []
    while f"layer{len(layers) + 1}" in kids:
        layers.append([f"layer{len(layers) + 1}"])
    return [k for k in ("conv1", "bn1") if k in kids], layers


def _is_inverted_residual(m: nn.Module) -> bool:
    return isinstance(getattr(m, "block", None), nn.Module) and hasattr(m, "use_res_connect")


def _mobilenet_features(m: nn.Module) -> Found | None:
    idx = _indexed(m)
    if not idx or len(idx) < 3:
        return None
    kids = _children(m)
    if sum(_is_inverted_residual(kids[i]) for i in idx) < len(idx) / 2:
        return None
    return ["0"], [[i] for i in idx[1:]]


def _ssdlite(m: nn.Module) -> Found | None:
    features, extra = _indexed(_get(m, "features")), _indexed(_get(m, "extra"))
    if features != ["0", "1"] or not extra:
        return None
    first = _mobilenet_features(_get(m, "features.0"))
    if first is None:
        return None
    second = _indexed(_get(m, "features.1")) or []
    blocks = [[f"features.0.{p[0]}"] for p in first[1]] + [[f"features.1.{i}"] for i in second]
    return ["features.0.0"], blocks + [[f"extra.{i}"] for i in extra]


def _monai_unet(m: nn.Module) -> Found | None:
    """MONAI UNet nests (down, SkipConnection(submodule=...), up) Sequentials; depth order
    is down_0 (stem), down_1.., the bottom, up_k..up_1, with up_0 the output (head)."""
    seq = _get(m, "model")
    if _indexed(seq) != ["0", "1", "2"] or _get(seq, "1.submodule") is None:
        return None
    downs, ups, path = [], [], "model"
    while _indexed(_get(m, path)) == ["0", "1", "2"] and _get(m, f"{path}.1.submodule") is not None:
        downs.append(f"{path}.0")
        ups.append(f"{path}.2")
        path = f"{path}.1.submodule"
    # ups[0] (model.2) is the output layer and stays in the head.
    return [downs[0]], [[d] for d in downs[1:]] + [[path]] + [[u] for u in reversed(ups[1:])]


def _segresnet(m: nn.Module) -> Found | None:
    kids = _children(m)
    if not all(k in kids for k in ("convInit", "down_layers", "up_layers", "up_samples", "conv_final")):
        return None
    downs = [[f"down_layers.{i}"] for i in _indexed(kids["down_layers"]) or []]
    ups = [[f"up_layers.{i}", f"up_samples.{i}"] for i in _indexed(kids["up_layers"]) or []]
    return ["convInit"], downs + ups


def _swin_unetr(m: nn.Module) -> Found | None:
    kids = _children(m)
    vit = kids.get("swinViT")
    if vit is None or not all(hasattr(vit, a) for a in ("patch_embed", "layers1")) or "out" not in kids:
        return None
    order = ["swinViT.layers1", "encoder2", "swinViT.layers2", "encoder3", "swinViT.layers3", "encoder4"]
    order += ["swinViT.layers4", "encoder10", "decoder5", "decoder4", "decoder3", "decoder2", "decoder1"]
    stem = ["swinViT.patch_embed"] + (["encoder1"] if "encoder1" in kids else [])
    return stem, [[p] for p in order if _get(m, p) is not None]


def _densenet(m: nn.Module) -> Found | None:
    """DenseNet (MONAI DenseNet121/169/..., torchvision densenet*): ``features`` holds
    ``conv0, norm0, ..., denseblock{i}, transition{i}, ..., norm5``; each dense block with its
    transition is one block, ``norm5`` joins the last."""
    kids = _children(m)
    if "conv0" not in kids or "denseblock1" not in kids:
        return None
    blocks, i = [], 1
    while f"denseblock{i}" in kids:
        block = [f"denseblock{i}"] + ([f"transition{i}"] if f"transition{i}" in kids else [])
        blocks.append(block)
        i += 1
    if "norm5" in kids:
        blocks[-1].append("norm5")
    return [k for k in ("conv0", "norm0") if k in kids], blocks


#: (family, detector), tried in this order on each module, shallowest modules first.
DETECTORS: list[tuple[str, Callable[[nn.Module], Found | None]]] = [
    ("transformers encoder", _hf_encoder),
    ("DistilBERT", _distilbert),
    ("GPT-2", _gpt2),
    ("Llama-style decoder", _llama),
    ("SSDlite MobileNet", _ssdlite),
    ("ResNet", _resnet),
    ("MobileNet features", _mobilenet_features),
    ("MONAI UNet", _monai_unet),
    ("MONAI SegResNet", _segresnet),
    ("MONAI SwinUNETR", _swin_unetr),
    ("DenseNet", _densenet),
]
