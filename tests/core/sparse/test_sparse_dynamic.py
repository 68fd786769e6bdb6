"""Dynamic sparse masks (SpIEL-style drop and regrow)."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import scalpel.core as sc
from scalpel.core.errors import ScalpelError
from scalpel.core.sparse import SparseConfig, SparseRegrowth, regrow_share, sparse_layers


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 24), nn.Tanh(), nn.Linear(24, 3))


def _data(steps):
    g = torch.Generator().manual_seed(4)
    return [(torch.randn(16, 6, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(steps)]


def _run(model, hook, steps, optimizer=None, start=1):
    optimizer = optimizer or torch.optim.AdamW(sc.trainable_parameters(model).values(), lr=3e-2)
    for step, (x, y) in enumerate(_data(steps)[start - 1 :], start=start):
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        hook.after_step(step, model, optimizer)
    return optimizer


def _snapshot(model):
    return {n: (l.indices("default").clone(), l.values("default").detach().clone()) for n, l in sparse_layers(model, "default").items()}


def test_regrowth_keeps_the_count_moves_entries_and_resets_their_state():
    model = _model()
    sc.apply(model, SparseConfig(count=30, scorer="magnitude", regrow_every=4, regrow_fraction=0.5, regrow_window=2))
    hook = SparseRegrowth.from_config(model, total_steps=12)
    optimizer = _run(model, hook, 3)
    x, y = _data(4)[3]
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    optimizer.zero_grad()
    before = _snapshot(model)
    hook.after_step(4, model, optimizer)  # step 4 ends a window: regrow
    after = _snapshot(model)
    assert hook.regrowths == 1 and hook.changed > 0
    moved = 0
    for name, layer in sparse_layers(model, "default").items():
        idx, values = after[name]
        assert idx.numel() == before[name][0].numel() and idx.unique().numel() == idx.numel()
        changed = idx != before[name][0]
        moved += int(changed.sum())
        assert torch.all(values[changed] == 0)
        if values.numel() == 0:
            continue  # global top-k gave this layer no entries
        state = optimizer.state[layer.values("default")]
        assert torch.all(state["exp_avg"][changed] == 0) and torch.all(state["exp_avg_sq"][changed] == 0)
        assert torch.all(state["exp_avg_sq"][~changed] > 0)
        # the slots dropped held the smallest |delta| of the layer
        if changed.any():
            assert before[name][1][changed].abs().max() <= before[name][1][~changed].abs().min()
    share = regrow_share(4, 12, 0.5, "cosine")
    expected = sum(round(share * l.values("default").numel()) for l in sparse_layers(model, "default").values())
    assert moved == hook.changed == expected
    assert sc.count_parameters(model)[0] == 30


def test_grown_entries_are_those_with_the_largest_gradient():
    model = _model()
    sc.apply(model, SparseConfig(count=10, scorer="random", targets="^0$", regrow_every=1))
    hook = SparseRegrowth(model, every=1, total_steps=100, fraction=0.2, schedule="constant")
    layer = sparse_layers(model, "default")["0"]
    old = set(layer.indices("default").tolist())
    x, y = _data(1)[0]
    weight = layer.weight.detach().clone().requires_grad_(True)
    dense_grad = torch.autograd.grad(F.cross_entropy(model[2](model[1](F.linear(x, weight, layer.bias))), y), weight)[0]
    optimizer = torch.optim.SGD(sc.trainable_parameters(model).values(), lr=0.0)
    _run(model, hook, 1, optimizer)
    new = set(layer.indices("default").tolist()) - old
    ranking = dense_grad.square().reshape(-1).clone()
    ranking[list(old)] = -1
    assert new == set(torch.topk(ranking, 2).indices.tolist())


def test_the_regrown_share_decays_to_zero():
    assert regrow_share(0, 100, 0.3, "cosine") == pytest.approx(0.3)
    assert regrow_share(50, 100, 0.3, "cosine") == pytest.approx(0.15)
    assert regrow_share(100, 100, 0.3, "linear") == 0
    assert regrow_share(70, 100, 0.3, "constant") == 0.3
    shares = [regrow_share(s, 100, 0.3, "cosine") for s in range(0, 101, 10)]
    assert all(a >= b for a, b in zip(shares, shares[1:])) and math.isclose(shares[-1], 0, abs_tol=1e-12)


def test_state_dict_round_trip_restores_indices_and_statistics():
    model = _model()
    sc.apply(model, SparseConfig(count=30, scorer="magnitude", regrow_every=3, regrow_window=2))
    hook = SparseRegrowth.from_config(model, total_steps=9)
    _run(model, hook, 5)  # mid-window after step 5
    saved = hook.state_dict()
    assert any(v.abs().sum() > 0 for k, v in saved.items() if k.startswith("row."))

    fresh = _model()
    sc.apply(fresh, SparseConfig(count=30, scorer="magnitude", regrow_every=3, regrow_window=2))
    other = SparseRegrowth.from_config(fresh, total_steps=9)
    assert not torch.equal(sparse_layers(fresh, "default")["0"].indices("default"), saved["indices.0"])
    other.load_state_dict(saved, step=5)
    for name, layer in sparse_layers(fresh, "default").items():
        assert torch.equal(layer.indices("default"), sparse_layers(model, "default")[name].indices("default"))
    assert other.regrowths == hook.regrowths and other.layers["0"].layer.grad_observer is not None
    with pytest.raises(ScalpelError, match="another run"):
        other.load_state_dict({"regrowths": torch.tensor(0), "changed": torch.tensor(0)})


def test_a_static_config_needs_no_hook_and_bad_settings_are_refused():
    model = _model()
    sc.apply(model, SparseConfig(count=5, scorer="magnitude"))
    assert SparseRegrowth.from_config(model, total_steps=10) is None
    with pytest.raises(ScalpelError, match="window"):
        SparseRegrowth(model, every=2, total_steps=10, window=3)
