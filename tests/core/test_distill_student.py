"""build_student: keep every k-th layer of a transformers teacher, copy its weights."""

import pytest
import torch
from torch import nn

from scalpel.core.distill import build_student, layer_stack
from scalpel.core.errors import ConfigError, ScalpelError

transformers = pytest.importorskip("transformers")


def tiny_bert():
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=6, num_attention_heads=2, intermediate_size=32, num_labels=3
    )
    return transformers.BertForSequenceClassification(config).eval()


def tiny_gpt2():
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=4, n_head=2)
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config).eval()


FAMILIES = {
    "bert": (tiny_bert, "bert.encoder.layer"),
    "gpt2": (tiny_gpt2, "transformer.h"),
    "llama": (tiny_llama, "model.layers"),
}


@pytest.mark.parametrize("family", FAMILIES)
def test_keeps_every_kth_layer_with_the_teachers_weights(family):
    build, path = FAMILIES[family]
    teacher = build()
    assert layer_stack(teacher)[0] == path
    n = teacher.config.num_hidden_layers
    student = build_student(teacher, every=2)
    assert type(student) is type(teacher)
    assert student.config.num_hidden_layers == n // 2 and teacher.config.num_hidden_layers == n
    assert len(layer_stack(student)[1]) == n // 2
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for key, value in s_state.items():
        if key.startswith(path + "."):
            j, rest = key[len(path) + 1:].split(".", 1)
            source = t_state[f"{path}.{2 * int(j)}.{rest}"]  # student layer j = teacher layer 2j
        else:
            source = t_state[key]  # embeddings, final norm, head
        assert torch.equal(value, source), key
    # The student is an independent copy, not a view of the teacher.
    next(student.parameters()).data.add_(1.0)
    assert not torch.equal(next(student.parameters()), next(teacher.parameters()))


@pytest.mark.parametrize("family", FAMILIES)
def test_keeping_every_layer_reproduces_the_teacher(family):
    teacher = FAMILIES[family][0]()
    student = build_student(teacher, every=1).eval()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        assert torch.allclose(student(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-6)


def test_explicit_layers_and_offset():
    teacher = tiny_bert()
    student = build_student(teacher, layers=[5, 0])
    s, t = student.state_dict(), teacher.state_dict()
    key = "attention.self.query.weight"
    assert torch.equal(s[f"bert.encoder.layer.0.{key}"], t[f"bert.encoder.layer.5.{key}"])
    assert torch.equal(s[f"bert.encoder.layer.1.{key}"], t[f"bert.encoder.layer.0.{key}"])
    odd = build_student(teacher, every=2, offset=1)
    assert torch.equal(odd.state_dict()[f"bert.encoder.layer.2.{key}"], t[f"bert.encoder.layer.5.{key}"])
    assert odd(input_ids=torch.randint(0, 50, (1, 4))).logits.shape == (1, 3)


def test_per_layer_config_lists_are_subset():
    teacher = tiny_gpt2()
    teacher.config.per_layer_window = [8, 16, 32, 64]  # as layer_types of sliding-window models
    student = build_student(teacher, every=2, offset=1)
    assert student.config.per_layer_window == [16, 64]
    assert teacher.config.per_layer_window == [8, 16, 32, 64]


def test_bad_requests_are_explained():
    teacher = tiny_gpt2()
    with pytest.raises(ConfigError, match=r"in \[0, 4\)"):
        build_student(teacher, layers=[0, 9])
    with pytest.raises(ConfigError, match="distinct"):
        build_student(teacher, layers=[1, 1])
    with pytest.raises(ConfigError, match="every"):
        build_student(teacher, every=0)
    with pytest.raises(ScalpelError, match="transformers"):
        build_student(nn.Linear(2, 2))
