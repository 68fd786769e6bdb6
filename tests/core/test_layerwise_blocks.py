"""Block maps: every listed family is found by structure, selections resolve, custom maps
and errors behave."""

import re

import pytest
import torch
from torch import nn

from scalpel.core import ConfigError, ScalpelError, apply, block_map
from scalpel.core.layerwise import BlockMap


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32)
    return BertForSequenceClassification(cfg)


def tiny_distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    return DistilBertForSequenceClassification(DistilBertConfig(vocab_size=40, dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=32))


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=3, n_head=2, n_positions=32, bos_token_id=0, eos_token_id=0))


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32)
    return LlamaForCausalLM(cfg)


def torchvision_model(name):
    from torchvision import models
    from torchvision.models import detection, segmentation

    builders = {
        "resnet18": lambda: models.resnet18(),
        "densenet121": lambda: models.densenet121(),
        "mobilenet_v3_small": lambda: models.mobilenet_v3_small(),
        "fasterrcnn": lambda: detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None),
        "fasterrcnn_mobilenet": lambda: detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None),
        "retinanet": lambda: detection.retinanet_resnet50_fpn(weights=None, weights_backbone=None),
        "fcos": lambda: detection.fcos_resnet50_fpn(weights=None, weights_backbone=None),
        "ssdlite": lambda: detection.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None),
        "deeplabv3": lambda: segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None),
        "fcn": lambda: segmentation.fcn_resnet50(weights=None, weights_backbone=None),
        "lraspp": lambda: segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None),
    }
    with torch.device("meta"):  # names and shapes only: no memory, no init time
        return builders[name]()


def monai_model(name):
    from monai.networks.nets import DenseNet121, SegResNet, SwinUNETR, UNet

    if name == "densenet121":
        return DenseNet121(spatial_dims=3, in_channels=1, out_channels=2, init_features=8, growth_rate=4, block_config=(1, 2, 1, 1))
    if name == "unet":
        return UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=1)
    if name == "segresnet":
        return SegResNet(spatial_dims=2, init_filters=8, in_channels=1, out_channels=2, blocks_down=(1, 1, 1), blocks_up=(1, 1))
    return SwinUNETR(in_channels=1, out_channels=2, feature_size=12, spatial_dims=2, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))


# family, builder, expected family name, expected middle block names (first, last, count), stem module
CASES = [
    ("bert", tiny_bert, "transformers encoder", "bert.encoder.layer.0", "bert.encoder.layer.3", 4, "bert.embeddings"),
    ("distilbert", tiny_distilbert, "DistilBERT", "distilbert.transformer.layer.0", "distilbert.transformer.layer.1", 2, "distilbert.embeddings"),
    ("gpt2", tiny_gpt2, "GPT-2", "transformer.h.0", "transformer.h.2", 3, "transformer.wte"),
    ("llama", tiny_llama, "Llama-style decoder", "model.layers.0", "model.layers.2", 3, "model.embed_tokens"),
    ("resnet18", lambda: torchvision_model("resnet18"), "ResNet", "layer1", "layer4", 4, "conv1"),
    ("mobilenet_v3", lambda: torchvision_model("mobilenet_v3_small"), "MobileNet features", "features.1", "features.12", 12, "features.0"),
    ("fasterrcnn", lambda: torchvision_model("fasterrcnn"), "ResNet", "backbone.body.layer1", "backbone.fpn", 5, "backbone.body.conv1"),
    ("fasterrcnn_mobilenet", lambda: torchvision_model("fasterrcnn_mobilenet"), "MobileNet features", "backbone.body.1", "backbone.fpn", 17, "backbone.body.0"),
    ("retinanet", lambda: torchvision_model("retinanet"), "ResNet", "backbone.body.layer1", "backbone.fpn", 5, "backbone.body.conv1"),
    ("fcos", lambda: torchvision_model("fcos"), "ResNet", "backbone.body.layer1", "backbone.fpn", 5, "backbone.body.conv1"),
    ("ssdlite", lambda: torchvision_model("ssdlite"), "SSDlite MobileNet", "backbone.features.0.1", "backbone.extra.3", 21, "backbone.features.0.0"),
    ("deeplabv3", lambda: torchvision_model("deeplabv3"), "ResNet", "backbone.layer1", "backbone.layer4", 4, "backbone.conv1"),
    ("fcn", lambda: torchvision_model("fcn"), "ResNet", "backbone.layer1", "backbone.layer4", 4, "backbone.conv1"),
    ("lraspp", lambda: torchvision_model("lraspp"), "MobileNet features", "backbone.1", "backbone.16", 16, "backbone.0"),
    ("monai_unet", lambda: monai_model("unet"), "MONAI UNet", "model.1.submodule.0", "model.1.submodule.2", 5, "model.0"),
    ("segresnet", lambda: monai_model("segresnet"), "MONAI SegResNet", "down_layers.0", "up_layers.1", 5, "convInit"),
    ("swinunetr", lambda: monai_model("swinunetr"), "MONAI SwinUNETR", "swinViT.layers1", "decoder1", 13, "swinViT.patch_embed"),
    ("monai_densenet121", lambda: monai_model("densenet121"), "DenseNet", "features.denseblock1", "features.denseblock4", 4, "features.conv0"),
    ("torchvision_densenet121", lambda: torchvision_model("densenet121"), "DenseNet", "features.denseblock1", "features.denseblock4", 4, "features.conv0"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_every_listed_family_is_mapped_and_every_parameter_has_one_block(case):
    _, build, family, first, last, count, stem_module = case
    model = build()
    bm = block_map(model)
    assert bm.family == family
    assert [b.name for b in bm.blocks][0] == first and bm.blocks[-1].name == last
    assert len(bm.blocks) == count
    assert stem_module in bm.stem.modules
    groups = bm.assign(model)
    assert groups[""] == []  # nothing unassigned
    assert all(groups[b.name] for b in bm.blocks), "every middle block owns parameters"
    assert sum(len(v) for v in groups.values()) == len(list(model.named_parameters()))
    assert sum(b.num_parameters for b in bm.entries) == sum(p.numel() for p in model.parameters())


def test_llama_head_holds_final_norm_and_lm_head():
    model = tiny_llama()
    head = {n for n, _ in block_map(model).assign(model)["head"]}
    assert head == {"model.norm.weight", "lm_head.weight"}


def test_a_wrapped_model_is_found_by_structure_and_the_wrapper_head_is_head():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torchvision_model("resnet18")
            self.extra_head = nn.Linear(1000, 3, device="meta")

    model = Wrapper()
    bm = block_map(model)
    assert bm.root == "net" and bm.blocks[0].name == "net.layer1"
    head = {n for n, _ in bm.assign(model)["head"]}
    assert {"net.fc.weight", "extra_head.weight", "extra_head.bias"} <= head


def test_lora_wrapped_layers_keep_their_block():
    from scalpel.core.lora import LoraConfig

    model = tiny_bert()
    before = block_map(model)
    apply(model, LoraConfig(r=2, targets="query|value"))
    after = block_map(model)
    assert after.pairs() == before.pairs()
    groups = after.assign(model)
    assert any("lora_A" in n for n, _ in groups["bert.encoder.layer.2"])
    assert groups[""] == []


@pytest.fixture(scope="module")
def bert_map():
    return block_map(tiny_bert())


@pytest.mark.parametrize(
    "selection, expected",
    [
        (["first 2"], ["bert.encoder.layer.0", "bert.encoder.layer.1"]),
        (["last 1"], ["bert.encoder.layer.3"]),
        (["blocks 1-2"], ["bert.encoder.layer.1", "bert.encoder.layer.2"]),
        (["block 3"], ["bert.encoder.layer.3"]),
        (["-1", "0"], ["bert.encoder.layer.0", "bert.encoder.layer.3"]),
        (["encoder.layer.2"], ["bert.encoder.layer.2"]),
        (["stem", "head"], ["stem", "head"]),
        (["all"], [f"bert.encoder.layer.{i}" for i in range(4)]),
        (["last 1", "3"], ["bert.encoder.layer.3"]),
    ],
)
def test_selection_strings(bert_map, selection, expected):
    assert [b.name for b in bert_map.select(selection)] == expected


def test_bad_selections_are_all_reported_with_the_block_names(bert_map):
    with pytest.raises(ConfigError) as err:
        bert_map.select(["first 9", "blocks 2-7", "decoder.layer.0"])
    assert len(err.value.problems) == 4  # three bad strings + the list of names
    assert "bert.encoder.layer.3" in err.value.problems[-1]


def test_regex_for_restricts_lora_and_sparse_style_matching(bert_map):
    from scalpel.core.lora.config import name_matches

    regex = bert_map.regex_for(["last 2"], within="query|value")
    assert name_matches(regex, "bert.encoder.layer.3.attention.self.query")
    assert name_matches(regex, "bert.encoder.layer.2.attention.self.value")
    assert not name_matches(regex, "bert.encoder.layer.1.attention.self.query")
    assert not name_matches(regex, "bert.encoder.layer.3.attention.self.key")
    plain = bert_map.regex_for(["blocks 0-1"])
    assert re.search(plain, "bert.encoder.layer.0.output.dense")
    assert not re.search(plain, "bert.encoder.layer.2.output.dense")
    assert bert_map.prefixes(["last 1"]) == ["bert.encoder.layer.3"]
    with pytest.raises(ScalpelError, match="regex_for"):
        bert_map.prefixes(["head"])


def test_custom_map_overrides_and_accepts_both_spellings():
    model = torchvision_model("resnet18")
    bm = block_map(model, [("stem", r"^(conv1|bn1)\."), "early=^layer[12]\\.", ("late", r"^layer[34]\."), ("head", r"^fc\.")])
    assert bm.family == "custom" and [b.name for b in bm.blocks] == ["early", "late"]
    assert bm.block_of("layer2.0.conv1.weight").name == "early"
    assert bm.assign(model)[""] == []
    assert "early" in str(bm) and "^layer[34]" in str(bm)
    assert isinstance(block_map(model, bm), BlockMap)


def test_bad_custom_maps_name_every_problem():
    model = torchvision_model("resnet18")
    with pytest.raises(ConfigError) as err:
        block_map(model, [("stem", "(unclosed"), "no-equals-sign", ("x", "^a"), ("x", "^b")])
    assert len(err.value.problems) == 3
    with pytest.raises(ConfigError, match="matches no parameter"):
        block_map(model, [("stem", r"^conv1\."), ("b", r"^nothing_here\.")])


def test_unknown_architecture_shows_how_to_pass_a_map():
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 3), nn.Linear(3, 1))
    with pytest.raises(ScalpelError) as err:
        block_map(model)
    text = str(err.value)
    assert "block_map=" in text and 'r"^0\\."' in text and "Sequential" in text
    # the map the message suggests works
    bm = block_map(model, [("stem", r"^0\."), ("2", r"^2\."), ("head", r"^3\.")])
    assert [b.name for b in bm.blocks] == ["2"]


def test_printed_map_lists_roles_names_and_counts(bert_map):
    text = str(bert_map)
    assert text.splitlines()[0].startswith("BlockMap: transformers encoder at 'bert', 4 blocks")
    assert "block 3" in text and "bert.encoder.layer.3" in text and "everything else" in text
