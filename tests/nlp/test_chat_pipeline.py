"""nlp.chat end to end on a tiny Llama: adapter + template out, loss drops, held-out answers
scored before/after (answers.jsonl), predict streams a reply."""

from __future__ import annotations

import json

import pytest

from scalpel.core.artifacts import adapter_bytes
from scalpel.core.cli import main
from scalpel.core.errors import ConfigError, DataError
from scalpel.core.run import RunResult
from scalpel.nlp.chat.pipeline import PIPELINE, load_chat_tokenizer


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
    result = PIPELINE.run(output_dir=str(out), model=str(tiny_llama_dir), train_file=str(data), max_steps=40, batch_size=8,
                          lr=3e-2, packing=packing, max_length=64, samples=1, device="cpu")
    assert isinstance(result, RunResult) and (result.metric, result.greater_is_better) == ("loss", False)
    assert result.after["loss"] < result.before["loss"] - 1.0
    assert result.after["assistant_tokens"] > 0 and result.steps == 40
    adapter = out / "adapter"
    for name in ("scalpel.json", "adapter_model.safetensors", "tokenizer_config.json"):
        assert (adapter / name).is_file(), name
    assert load_chat_tokenizer(str(adapter)).chat_template == json.loads((adapter / "scalpel.json").read_text())["extra"]["chat_template"]
    assert [set(s) for s in result.extras["samples"]] == [{"prompt", "reference", "before", "reply"}]
    for key in ("exact_match", "token_f1", "rouge_l", "answer_format"):  # four distinct replies: a closed answer set
        assert 0 <= result.before[key] <= 1 and 0 <= result.after[key] <= 1, key
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 5 and {"prompt", "reference", "before", "after", "before_scores", "after_scores"} <= set(answers[0])
    assert sum(a["after_scores"]["exact_match"] for a in answers) / 5 == pytest.approx(result.after["exact_match"])
    assert result.adapter_bytes == adapter_bytes(adapter)  # the tokenizer travels with the adapter and counts
    assert result.adapter_bytes > (adapter / "adapter_model.safetensors").stat().st_size + (adapter / "tokenizer_config.json").stat().st_size
    report = (out / "report.md").read_text()
    assert "held-out assistant-token loss: before" in report and "exact_match: before" in report
    assert "Held-out answers before and after tuning" in report
    assert RunResult.read(out) == result
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


def test_settings_are_flag_names_and_quick_keeps_its_sizes():
    quick = PIPELINE.settings(quick=True)
    assert (quick.options.base_steps, quick.options.max_length, quick.options.max_train_samples) == (80, 128, 400)
    assert (quick.options.corpus, quick.options.eval_prompts) == ("reviews", 64)
    assert quick.train.epochs == 1
    plain = PIPELINE.settings()
    assert (plain.method.r, plain.method.alpha, plain.train.schedule, plain.train.lr) == (16, 32.0, "cosine", 2e-4)
    with pytest.raises(ConfigError) as caught:
        PIPELINE.settings(quick=True, lora_r=16, lora_alpha=32, base_steps=-1)
    text = str(caught.value)
    assert "unknown setting 'lora_r'" in text and "unknown setting 'lora_alpha'" in text


def test_distillation_is_refused_by_name(tmp_path, tiny_llama_dir):
    data = tmp_path / "chat.jsonl"
    _write_conversations(data, 8)
    with pytest.raises(ConfigError, match="nlp.chat cannot distil"):
        PIPELINE.run(output_dir=str(tmp_path / "run"), model=str(tiny_llama_dir), train_file=str(data), teacher="elsewhere",
                     max_steps=1, device="cpu")
