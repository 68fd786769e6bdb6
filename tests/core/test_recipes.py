import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

import scalpel.core as sc
from scalpel.core.recipes import adapt, method_names


def tiny_bert():
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3)
    return BertForSequenceClassification(config).eval()


def batches(n=2):
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(0, 50, (4, 8), generator=g), "labels": torch.randint(0, 3, (4,), generator=g)}
            for _ in range(n)]


@pytest.mark.parametrize("method", ["lora", "dora", "rslora", "sparse", "layerwise", "bitfit", "full"])
def test_every_recipe_trains_the_head_and_little_else(method):
    model = tiny_bert()
    total = sum(p.numel() for p in model.parameters())
    options = {"density": 0.05} if method == "sparse" else {}
    adapt(model, method, head=["classifier"], data=batches(), **options)
    trainable = sc.trainable_parameters(model)
    assert any("classifier" in name for name in trainable), sorted(trainable)
    count = sum(p.numel() for p in trainable.values())
    if method == "full":
        assert count == total
    else:
        assert 0 < count < total
    assert model(input_ids=batches(1)[0]["input_ids"]).logits.shape == (4, 3)


def test_save_load_round_trip_for_each_recipe(tmp_path):
    for method in ["lora", "sparse", "bitfit"]:
        torch.manual_seed(0)
        model = tiny_bert()
        options = {"density": 0.05} if method == "sparse" else {}
        adapt(model, method, head=["classifier"], data=batches(), **options)
        with torch.no_grad():
            for p in sc.trainable_parameters(model).values():
                p.add_(0.05 * torch.randn_like(p))
        sc.save_adapter(model, tmp_path / method)
        torch.manual_seed(0)
        fresh = sc.load_adapter(tiny_bert(), tmp_path / method)
        x = batches(1)[0]["input_ids"]
        torch.testing.assert_close(fresh(input_ids=x).logits, model(input_ids=x).logits, rtol=1e-5, atol=1e-5)


def test_unknown_method_and_option_are_clear_errors():
    with pytest.raises(sc.UnknownNameError, match="known: .*lora"):
        adapt(tiny_bert(), "lorra")
    with pytest.raises(sc.ConfigError, match="unknown option 'rank'"):
        adapt(tiny_bert(), "lora", rank=4)
    assert {"lora", "sparse", "layerwise", "full"} <= set(method_names())
