"""Sparse fine-tuning as a method: apply, save -> load, merge, adapter info, composition."""

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

import scalpel.core as sc
from scalpel.core.cli import main as cli_main
from scalpel.core.errors import BaseModelMismatchError, ScalpelError, TargetNotFoundError
from scalpel.core.sparse import SparseConfig, SparseDeltaLayer, sparse_layers

MLP = r"intermediate\.dense|layer\.\d+\.output\.dense"


def _bert(seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    return BertForSequenceClassification(config).eval()


def _batches(n=3):
    g = torch.Generator().manual_seed(2)
    return [{"input_ids": torch.randint(0, 50, (4, 8), generator=g), "labels": torch.randint(0, 2, (4,), generator=g)}
            for _ in range(n)]


def _train(model, steps=3):
    optimizer = torch.optim.AdamW(sc.trainable_parameters(model).values(), lr=1e-2)
    model.train()
    for batch in _batches(steps):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


IDS = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(9))


def test_a_fresh_sparse_adapter_equals_the_base_and_trains_only_values():
    model = _bert()
    before = _logits(model, IDS)
    sc.apply(model, SparseConfig(density=0.02, scorer="fisher", targets=MLP), data=_batches())
    assert torch.equal(_logits(model, IDS), before)
    names = list(sc.trainable_parameters(model))
    assert names and all(".sparse_values.default" in n for n in names)
    assert len(sparse_layers(model, "default")) == 4


def test_save_load_gives_the_same_outputs_and_info_shows_density_per_layer(tmp_path, capsys):
    model = _bert()
    sc.apply(model, SparseConfig(density=0.05, scorer="magnitude", targets=MLP, allocation="per_layer"))
    _train(model)
    trained = _logits(model, IDS)
    assert not torch.equal(trained, _logits(_bert(), IDS))
    path = sc.save_adapter(model, tmp_path / "adapter")

    loaded = sc.load_adapter(_bert(), path)
    torch.testing.assert_close(_logits(loaded, IDS), trained, rtol=0, atol=0)
    assert sc.count_parameters(loaded)[0] == sc.count_parameters(model)[0]

    details = sc.adapter_info(path)["methods"][0]["details"]
    k = round(0.05 * 4 * 512)  # four 16x32 MLP weights
    assert details["selected_entries"] == k and details["targeted_entries"] == 4 * 512
    assert details["density"] == f"{100 * k / 2048:.3f}%"
    layers = sparse_layers(model, "default")
    for name, text in details["density_per_layer"].items():
        n = layers[name].values("default").numel()
        assert text == f"{100 * n / 512:.2f}% ({n} of 512)"
    assert cli_main(["adapter", "info", str(path)]) == 0
    assert "density_per_layer" in capsys.readouterr().out


def test_merge_folds_the_delta_exactly_into_a_plain_model():
    model = _bert()
    sc.apply(model, SparseConfig(density=0.05, scorer="random", targets=MLP))
    _train(model)
    adapted = _logits(model, IDS)
    sc.merge(model, unload=False)
    assert torch.equal(_logits(model, IDS), adapted)
    sc.unmerge(model)
    assert torch.equal(_logits(model, IDS), adapted)
    plain = sc.merge(model)
    assert not any(isinstance(m, SparseDeltaLayer) for m in plain.modules())
    assert torch.equal(_logits(plain, IDS), adapted)


def test_loading_onto_another_base_is_refused(tmp_path):
    model = _bert()
    sc.apply(model, SparseConfig(density=0.05, scorer="magnitude", targets=MLP))
    path = sc.save_adapter(model, tmp_path / "a")
    other = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=48, num_labels=2))
    with pytest.raises(BaseModelMismatchError):
        sc.load_adapter(other, path)


def test_two_adapters_switch_and_delete():
    model = _bert()
    base = _logits(model, IDS)
    sc.apply(model, SparseConfig(count=40, scorer="magnitude", targets=MLP), adapter_name="a")
    _train(model)
    out_a = _logits(model, IDS)
    sc.apply(model, SparseConfig(count=40, scorer="random", targets=MLP), adapter_name="b")
    assert torch.equal(_logits(model, IDS), base)  # b is fresh and active
    assert all(n.endswith(".b") for n in sc.trainable_parameters(model))
    sc.set_active_adapter(model, "a")
    assert torch.equal(_logits(model, IDS), out_a)
    sc.delete_adapter(model, "a")
    sc.delete_adapter(model, "b")
    assert not any(isinstance(m, SparseDeltaLayer) for m in model.modules())
    assert torch.equal(_logits(model, IDS), base)


def test_a_second_sparse_config_under_one_adapter_is_refused():
    model = _bert()
    sc.apply(model, SparseConfig(count=10, scorer="magnitude", targets=r"intermediate"))
    with pytest.raises(ScalpelError, match="already has a sparse delta"):
        sc.apply(model, SparseConfig(count=10, scorer="magnitude", targets=r"query"))


def test_tied_weights_and_mha_out_proj_are_never_adapted():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight
            self.attn = nn.MultiheadAttention(4, 1)
            self.other = nn.Linear(4, 4)

    model = Tied()
    sc.apply(model, SparseConfig(count=5, scorer="magnitude", target_types=("Embedding", "Linear")))
    assert list(sparse_layers(model, "default")) == ["other"]
    with pytest.raises(TargetNotFoundError, match="tied"):
        sc.apply(Tied(), SparseConfig(count=5, scorer="magnitude", targets="emb|head"))


def test_lora_on_attention_and_sparse_on_mlp_under_one_adapter(tmp_path):
    lora = pytest.importorskip("scalpel.core.lora")
    model = _bert()
    base = _logits(model, IDS)
    sc.apply(model, lora.LoraConfig(r=2, targets="query|value"))
    sc.apply(model, SparseConfig(density=0.05, scorer="fisher", targets=MLP), data=_batches())
    assert torch.equal(_logits(model, IDS), base)
    trainable = list(sc.trainable_parameters(model))
    assert any("lora_" in n for n in trainable) and any("sparse_values" in n for n in trainable)
    _train(model)
    trained = _logits(model, IDS)
    path = sc.save_adapter(model, tmp_path / "both")
    info = sc.adapter_info(path)
    assert [m["method"] for m in info["methods"]] == ["lora", "sparse"]

    loaded = sc.load_adapter(_bert(), path)
    torch.testing.assert_close(_logits(loaded, IDS), trained)
    merged = sc.merge(loaded)
    torch.testing.assert_close(_logits(merged, IDS), trained, rtol=1e-5, atol=1e-5)


def test_gpt2_conv1d_and_tied_embeddings_train_and_merge_exactly():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    ids = torch.randint(0, 40, (2, 8))
    base = model(input_ids=ids).logits.detach()
    sc.apply(model, SparseConfig(density=0.05, scorer="gradient", target_types=("Conv1D", "Embedding")),
             data=[{"input_ids": ids, "labels": ids}])
    adapted = sparse_layers(model, "default")
    assert "transformer.wpe" in adapted  # tied wte / lm_head are left alone, see weight_modules
    assert "transformer.wte" not in adapted and "lm_head" not in adapted
    assert adapted["transformer.h.0.attn.c_attn"].kind == "conv1d"
    assert torch.equal(model(input_ids=ids).logits, base)
    _train_lm(model, ids)
    trained = model(input_ids=ids).logits.detach()
    assert not torch.equal(trained, base)
    assert torch.equal(sc.merge(model)(input_ids=ids).logits, trained)


def _train_lm(model, ids, steps=3):
    optimizer = torch.optim.AdamW(sc.trainable_parameters(model).values(), lr=1e-2)
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_blocks_follow_the_layerwise_block_map_and_compose_with_layerwise(tmp_path):
    from scalpel.core.layerwise import LayerwiseConfig

    model = _bert()
    sc.apply(model, LayerwiseConfig(blocks=("last 1",)))  # block 1 trained in full, and the head
    sc.apply(model, SparseConfig(count=50, scorer="magnitude", blocks=("first 1",)))
    assert all(n.startswith("bert.encoder.layer.0.") for n in sparse_layers(model, "default"))
    trainable = list(sc.trainable_parameters(model))
    assert any(n.startswith("bert.encoder.layer.1.") for n in trainable)
    assert any(".sparse_values." in n for n in trainable)
    _train(model)
    trained = _logits(model, IDS)
    loaded = sc.load_adapter(_bert(), sc.save_adapter(model, tmp_path / "a"))
    torch.testing.assert_close(_logits(loaded, IDS), trained)
