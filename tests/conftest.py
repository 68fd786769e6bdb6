import os

import pytest
import torch

# Never reach a hub from tests, even by accident.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def pipeline_root(tmp_path_factory):
    """``name -> folder`` shared by every test that runs pipeline ``name``: the vision and medical
    pipelines cache their synthetic base beside the run folder, so runs in one parent build it once."""
    roots = {}

    def root(name: str):
        if name not in roots:
            roots[name] = tmp_path_factory.mktemp(name.replace(".", "-"))
        return roots[name]

    return root


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A 2-layer BERT with the embedded MiniLM tokenizer (the NLP and app tests' sentiment base)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from scalpel.nlp.sentiment.model import default_model_path

    path = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
