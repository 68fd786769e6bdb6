"""nlp.chat end to end on a tiny Llama: adapter + template out, loss drops, predict streams a reply."""

from __future__ import annotations

import json

import pytest

from scalpel.core.cli import main
from scalpel.core.errors import DataError
from scalpel.nlp.chat.config import ChatConfig
from scalpel.nlp.chat.pipeline import PIPELINE, load_chat_tokenizer, run


def _write_conversations(path, n=48):
    pairs = [("hello", "hi there"), ("how are you", "I am fine thank you"), ("what is your name", "my name is bot"),
             ("do you like music", "yes I like music a lot")]
    with open(path, "w") as f:
        for i in range(n):
            q, a = pairs[i % len(pairs)]
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")


@pytest.mark.integration
@pytest.mark.parametrize("packing", [False, True])
def test_chat_end_to_end(tmp_path, tiny_llama_dir, packing, capsys):
    data = tmp_path / "chat.jsonl"
    _write_conversations(data)
    out = tmp_path / "run"
    result = run(ChatConfig(output_dir=str(out), model=str(tiny_llama_dir), train_file=str(data), max_steps=40, batch_size=8,
                            lr=3e-2, packing=packing, max_length=64, samples=1, device="cpu"))
    metrics = result["metrics"]
    assert metrics["loss_after"] < metrics["loss_before"] - 1.0
    adapter = out / "adapter"
    for name in ("scalpel.json", "adapter_model.safetensors", "tokenizer_config.json"):
        assert (adapter / name).is_file(), name
    assert load_chat_tokenizer(str(adapter)).chat_template == json.loads((adapter / "scalpel.json").read_text())["extra"]["chat_template"]
    report = (out / "report.md").read_text()
    assert "held-out assistant-token loss: before" in report and "Sample replies" in report
    if not packing:
        code = main(["predict", "nlp.chat", "--adapter", str(adapter), "--option", "temperature=0", "--option",
                     "max_new_tokens=8", "how are you"])
        assert code == 0
        row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert row["prompt"] == "how are you" and isinstance(row["reply"], str)


def test_model_without_tokenizer_is_refused(tmp_path, tiny_llama_dir):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_llama_dir, bare)
    for f in bare.iterdir():
        if f.name.startswith("tokenizer") or f.name in ("special_tokens_map.json", "chat_template.jinja"):
            f.unlink()
    with pytest.raises(DataError, match="has no usable tokenizer"):
        load_chat_tokenizer(str(bare))


def test_pipeline_is_published():
    assert PIPELINE.name == "nlp.chat" and PIPELINE.predict is not None
