"""LISA: block switching, optimizer-state freeing, weighted sampling, resume."""

import json

import pytest
import torch

from scalpel.core import ConfigError, ScalpelError, apply
from scalpel.core.layerwise import LISA, FullConfig


def tiny_llama(layers=6):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32, max_position_embeddings=32)
    return apply(LlamaForCausalLM(cfg), FullConfig())


def train(model, lisa, optimizer, steps, seed=0):
    """A plain loop calling the hook as fit does: after each optimizer step."""
    g = torch.Generator().manual_seed(seed)
    history = []
    for step in range(1, steps + 1):
        ids = torch.randint(0, 40, (2, 8), generator=g)
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        lisa.after_step(step, model, optimizer)
        history.append((tuple(lisa.active), len(optimizer.state)))
    return history


def layer_of(name):
    return name.split(".")[2] if name.startswith("model.layers.") else None


def test_initial_sample_freezes_all_but_gamma_middle_blocks_and_keeps_stem_and_head():
    model = tiny_llama()
    lisa = LISA(model, gamma=2, every=3, seed=0)
    assert len(lisa.active) == 2
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    layers = {layer_of(n) for n in trainable} - {None}
    assert {f"model.layers.{i}" for i in layers} == set(lisa.active)
    assert {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} <= trainable


def test_blocks_switch_every_k_steps_and_frozen_state_is_freed():
    model = tiny_llama()
    lisa = LISA(model, gamma=2, every=2, seed=1)
    optimizer = torch.optim.AdamW(lisa.param_groups()[0]["params"], lr=1e-3)
    history = train(model, lisa, optimizer, steps=8)
    actives = [a for a, _ in history]
    # history[i] is taken after step i + 1; the set may change only at steps 2, 4, 6, 8
    assert all(actives[i] == actives[i - 1] for i in range(1, 8) if (i + 1) % 2)
    assert len({a for a in actives}) > 1  # it switched
    per_block = sum(1 for n, _ in model.named_parameters() if n.startswith("model.layers.0."))
    always = len(lisa.always)
    # after each switch, state only for always-trained + the previous active blocks (freed: the new ones have no state yet)
    for _, count in history:
        assert count <= always + 2 * per_block
    # without freeing, the optimizer state keeps growing as new blocks get trained
    model2 = tiny_llama()
    lisa2 = LISA(model2, gamma=2, every=2, seed=1, free_state=False)
    optimizer2 = torch.optim.AdamW(lisa2.param_groups()[0]["params"], lr=1e-3)
    history2 = train(model2, lisa2, optimizer2, steps=8)
    assert history2[-1][1] > history[-1][1]
    assert history2[-1][1] > always + 2 * per_block


def test_state_count_drops_exactly_by_the_blocks_frozen_at_a_switch():
    model = tiny_llama()
    lisa = LISA(model, gamma=2, every=2, seed=3)
    optimizer = torch.optim.AdamW(lisa.param_groups()[0]["params"], lr=1e-3)
    train(model, lisa, optimizer, steps=1)
    before, active_before = len(optimizer.state), set(lisa.active)
    ids = torch.randint(0, 40, (2, 8))
    optimizer.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    lisa.after_step(2, model, optimizer)  # switch
    per_block = sum(1 for n, _ in model.named_parameters() if n.startswith("model.layers.0."))
    kept = len(active_before & set(lisa.active))
    assert len(optimizer.state) == before - (2 - kept) * per_block
    frozen = [p for n, p in model.named_parameters() if n.startswith("model.layers.") and not p.requires_grad]
    assert all(p not in optimizer.state and p.grad is None for p in frozen)


def test_weighted_sampling_never_picks_zero_weight_blocks():
    model = tiny_llama()
    weights = {"model.layers.1": 1.0, "model.layers.4": 3.0, "model.layers.5": 0.5}
    lisa = LISA(model, gamma=2, every=1, weights=weights, seed=0)
    seen = set()
    for _ in range(40):
        lisa._resample()
        seen.update(lisa.active)
    assert seen == set(weights)


def test_resume_reproduces_the_sampler():
    model = tiny_llama()
    lisa = LISA(model, gamma=2, every=1, seed=5)
    for _ in range(3):
        lisa._resample()
    state = json.loads(json.dumps(lisa.state_dict()))  # JSON-safe
    future = []
    for _ in range(5):
        lisa._resample()
        future.append(tuple(lisa.active))
    other = LISA(tiny_llama(), gamma=2, every=1, seed=99)
    other.load_state_dict(state)
    replay = []
    for _ in range(5):
        other._resample()
        replay.append(tuple(other.active))
    assert replay == future


def test_bad_arguments():
    model = tiny_llama()
    with pytest.raises(ConfigError) as err:
        LISA(model, gamma=7, every=0)
    assert len(err.value.problems) == 2
    with pytest.raises(ConfigError, match="weights"):
        LISA(model, gamma=2, weights=[1.0, 0, 0, 0, 0, 0])
    lisa = LISA(model, gamma=1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with pytest.raises(ScalpelError, match="param_groups"):
        lisa.after_step(1, model, optimizer)
    from transformers import LlamaConfig, LlamaForCausalLM

    frozen = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32))
    for p in frozen.parameters():
        p.requires_grad_(False)
    with pytest.raises(ScalpelError, match="FullConfig"):
        LISA(frozen, gamma=1)
