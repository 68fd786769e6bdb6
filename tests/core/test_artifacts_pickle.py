"""A model folder whose weights are a pickle (``pytorch_model.bin``) is refused with a clear
message, never unpickled (not even by torch's ``weights_only`` loader)."""

from __future__ import annotations

import pytest
import torch

import scalpel.core as sc
from scalpel.core.cli import main
from scalpel.core.lora import LoraConfig

transformers = pytest.importorskip("transformers")

CONFIG = dict(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20,
              num_labels=2)


class Payload:
    """What torch's weights_only loader refuses, with advice to set weights_only=False."""

    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.fixture
def pickle_folders(tmp_path):
    """``plain``: a pickled state dict (transformers would load it); ``payload``: one with an object in it."""
    config = transformers.BertConfig(**CONFIG)
    model = transformers.BertForSequenceClassification(config)
    folders = {}
    for name, extra in (("plain", {}), ("payload", {"x": Payload()})):
        folder = tmp_path / name
        config.save_pretrained(folder)
        torch.save({**model.state_dict(), **extra}, folder / "pytorch_model.bin")
        folders[name] = folder
    model.save_pretrained(tmp_path / "safe")
    adapter = sc.apply(transformers.BertForSequenceClassification(config), LoraConfig(r=2, targets="query"))
    sc.save_adapter(adapter, tmp_path / "adapter")
    return folders, tmp_path


@pytest.mark.parametrize("name", ["plain", "payload"])
def test_merge_refuses_a_pickle_model_folder_with_how_to_convert_it(pickle_folders, capsys, name):
    folders, tmp_path = pickle_folders
    assert main(["adapter", "merge", "--base", str(folders[name]), "--adapter", str(tmp_path / "adapter"),
                 "--out", str(tmp_path / "merged")]) == 2
    captured = capsys.readouterr()
    assert "pytorch_model.bin" in captured.err and "Scalpel never unpickles" in captured.err
    assert "save_pretrained(DIR, safe_serialization=True)" in captured.err
    assert "weights_only=False" not in captured.err and "unpickled!" not in captured.out
    assert not (tmp_path / "merged").exists()


def test_refuse_pickle_weights_lets_safetensors_folders_through(pickle_folders, tmp_path):
    from scalpel.core.files import refuse_pickle_weights

    folders, _ = pickle_folders
    with pytest.raises(sc.ScalpelError, match="only as a pickle"):
        refuse_pickle_weights(folders["plain"])
    refuse_pickle_weights(tmp_path / "safe")
    (tmp_path / "safe" / "training_args.bin").write_bytes(b"not weights")  # Trainer's pickle beside the weights
    torch.save({}, tmp_path / "safe" / "pytorch_model.bin")  # loaders prefer the safetensors copy
    refuse_pickle_weights(tmp_path / "safe")
    refuse_pickle_weights("bert-base-uncased")  # a hub name: the loader's business
