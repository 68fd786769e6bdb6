"""``scalpel predict nlp.sentiment --adapter A --adapter B``: several adapters on the same
texts in one mixed-adapter pass give each adapter's own predictions."""

import json

import pytest
import torch

import scalpel.core as sc
from scalpel.core.cli import main
from scalpel.nlp.sentiment.compare import compare
from scalpel.nlp.sentiment.predict import predict

TEXTS = ["a wonderful, moving film", "dull and far too long", "not bad at all", "I hated every minute"]


def _adapter(path, bert_dir, seed, method="lora"):
    from scalpel.core.recipes import adapt
    from scalpel.nlp.sentiment.model import head_modules, load_classifier

    names = ("negative", "positive")
    model = load_classifier(str(bert_dir), names)
    model = adapt(model, method, targets="query|value", head=head_modules(model), r=2, alpha=4)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in sc.trainable_parameters(model).values():
            p.add_(torch.randn_like(p) * 0.5)
    extra = {"task": "nlp.sentiment", "label_names": list(names), "max_length": 32, "tokenizer": None}
    return sc.save_adapter(model, path, extra=extra,
                           base_model={"name_or_path": str(bert_dir), "class": "transformers.BertForSequenceClassification"})


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("compare")
    return [_adapter(root / f"a{seed}", tiny_bert_dir, seed) for seed in (1, 2, 3)]


def test_one_mixed_pass_gives_each_adapters_own_predictions(adapters):
    mixed = compare(adapters, TEXTS, {"batch_size": 4})  # 4 // 3 adapters: batches of one text each
    for adapter, rows in zip(adapters, mixed):
        alone = predict(adapter, TEXTS, {})
        assert [r["label"] for r in rows] == [r["label"] for r in alone]
        for got, want in zip(rows, alone):
            for label, p in want["probabilities"].items():
                assert got["probabilities"][label] == pytest.approx(p, abs=1e-5)
    assert mixed[0] != mixed[1]  # distinct adapters, distinct scores


def test_cli_repeats_adapter_and_groups_rows_by_input(adapters, capsys):
    assert main(["predict", "nlp.sentiment", "--adapter", str(adapters[0]), "--adapter", str(adapters[1]), *TEXTS[:2]]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == TEXTS[:2]
    assert set(rows[0]["adapters"]) == {str(adapters[0]), str(adapters[1])}
    assert rows[0]["adapters"][str(adapters[1])]["score"] == pytest.approx(predict(adapters[1], TEXTS[:1], {})[0]["score"], abs=1e-5)


def test_adapters_of_another_base_or_unmixable_ones(adapters, tmp_path, tiny_bert_dir, capsys):
    bitfit = _adapter(tmp_path / "bitfit", tiny_bert_dir, 4, method="bitfit")
    rows = compare([adapters[0], bitfit], TEXTS[:2], {})  # trains biases in full: not mixable: compared one after another
    assert rows[1] == predict(bitfit, TEXTS[:2], {})
    assert main(["predict", "nlp.sentiment", "--adapter", str(adapters[0]), "--adapter", str(adapters[0]), "x"]) == 2
    assert "same folder twice" in capsys.readouterr().err
