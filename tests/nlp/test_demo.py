"""nlp.demo in quick mode with tiny sizes: every contract key, real artifacts, both tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scalpel.nlp.demo import METHODS, DemoSize, run_demo

KEYS = {"domain", "task", "model", "method", "metric", "before", "after", "trainable", "total", "train_seconds",
        "adapter_bytes", "run_dir", "curve", "examples"}
TINY = DemoSize(train_texts=32, eval_texts=24, max_length=24, epochs=1, batch_size=16, base_steps=30, chat_steps=8,
                chat_max_length=64, samples=1, chat_prompts=16)


@pytest.mark.integration
def test_quick_demo_rows(tmp_path):
    rows = run_demo(tmp_path / "nlp", quick=True, size=TINY)
    assert [(r["task"], r["method"]) for r in rows] == [("sentiment", m) for m in METHODS] + [("chat", "lora")]
    for r in rows:
        assert KEYS <= set(r), KEYS - set(r)
        assert r["domain"] == "nlp" and 0 < r["trainable"] <= r["total"] and r["adapter_bytes"] > 0
        meta = json.loads((Path(r["run_dir"]) / "adapter" / "scalpel.json").read_text())
        assert meta["extra"]["task"] == f"nlp.{r['task']}"
        assert Path(r["curve"]).is_file()
        assert r["examples"] and all("caption" in e and ("text" in e or Path(e["image"]).is_file()) for e in r["examples"])
    sentiment = [r for r in rows if r["task"] == "sentiment"]
    assert len({r["before"] for r in sentiment}) == 1 and 0 <= sentiment[0]["before"] <= 1  # one probe, shared
    trainable = {r["method"]: r["trainable"] for r in sentiment}
    assert trainable["full"] > trainable["layerwise"] > trainable["lora"] > trainable["sparse"]  # density 1 % < rank 8 < 2 blocks < all
    assert trainable["lora"] < trainable["full"] / 10
    chat = rows[-1]
    assert chat["metric"] == "held-out answer accuracy" and 0 <= chat["before"] <= 1 and 0 <= chat["after"] <= 1
    assert set(chat["answer_format"]) == {"before", "after"} and 0.3 < chat["majority"] < 0.7  # balanced review answers
    assert chat["held_out_loss"]["after"] < chat["held_out_loss"]["before"]
    assert "before:" in chat["examples"][0]["text"] and "after:" in chat["examples"][0]["text"]
    assert len((Path(chat["run_dir"]) / "answers.jsonl").read_text().splitlines()) == TINY.chat_prompts
    assert (tmp_path / "nlp" / "report.md").read_text().count("| sentiment |") == len(METHODS)
    assert json.loads((tmp_path / "nlp" / "results.json").read_text())[0]["method"] == METHODS[0]
    # a rerun into the same folder replaces the earlier runs instead of refusing them
    again = run_demo(tmp_path / "nlp", quick=True, methods=("lora",), size=TINY)
    assert [(r["task"], r["method"]) for r in again] == [("sentiment", "lora"), ("chat", "lora")]
    assert again[0]["run_dir"] == rows[0]["run_dir"] and again[-1]["run_dir"] == chat["run_dir"]
