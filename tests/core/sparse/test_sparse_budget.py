"""Budgets, bad input, and the importance scorers."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import scalpel.core as sc
from scalpel.core.errors import ConfigError, DataError, TargetNotFoundError
from scalpel.core.sparse import ScoringData, SparseConfig, per_layer_counts, select_indices, sparse_layers
from scalpel.core.sparse.scorers import SCORERS, score_weights


def _mlp():
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 16), nn.Tanh(), nn.Linear(16, 3))


def _batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(n)]


# ------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5])
def test_density_outside_zero_one_is_refused(density):
    with pytest.raises(ConfigError, match=r"density must be in \(0, 1\]"):
        SparseConfig(density=density)


def test_every_config_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        SparseConfig(density=2.0, scorer="fishr", allocation="row", targets="(", regrow_fraction=1.0)
    assert len(err.value.problems) == 5
    assert "choose from" in str(err.value) and "lottery_ticket" in str(err.value)


def test_a_count_larger_than_the_targets_is_refused():
    model = _mlp()
    with pytest.raises(ConfigError, match="larger than the 192 entries"):
        sc.apply(model, SparseConfig(count=193, scorer="magnitude", targets=r"^0$"))


def test_a_data_scorer_without_data_says_how_to_fix_it():
    for name in ("fisher", "gradient", "movement", "lottery_ticket"):
        with pytest.raises(DataError, match="data=batches"):
            sc.apply(_mlp(), SparseConfig(scorer=name))


def test_targets_that_match_nothing_name_the_modules_there_are():
    with pytest.raises(TargetNotFoundError, match=r"0 \(Linear\)"):
        sc.apply(_mlp(), SparseConfig(scorer="magnitude", targets="attention"))


def test_empty_scoring_data_is_refused():
    with pytest.raises(DataError, match="no batches"):
        sc.apply(_mlp(), SparseConfig(scorer="fisher"), data=[])


# ---------------------------------------------------------------------------- budget


@pytest.mark.parametrize("allocation", ["global", "per_layer"])
@pytest.mark.parametrize("budget", [{"density": 0.05}, {"count": 37}, {"density": 1.0}])
def test_the_mask_holds_exactly_the_budget(allocation, budget):
    model = _mlp()
    sc.apply(model, SparseConfig(scorer="random", allocation=allocation, **budget))
    layers = sparse_layers(model, "default")
    total = sum(layer.weight.numel() for layer in layers.values())
    k = budget.get("count") or round(budget["density"] * total)
    assert sum(layer.values("default").numel() for layer in layers.values()) == k
    assert sc.count_parameters(model)[0] == k
    for layer in layers.values():
        idx = layer.indices("default")
        assert idx.unique().numel() == idx.numel()
    if allocation == "per_layer":
        for layer in layers.values():
            assert abs(layer.values("default").numel() - k * layer.weight.numel() / total) < 1


def test_per_layer_counts_sum_exactly_and_stay_proportional():
    counts = per_layer_counts({"a": 1000, "b": 333, "c": 7}, 101)
    assert sum(counts.values()) == 101
    assert counts == {"a": 75, "b": 25, "c": 1}


def test_global_selection_keeps_the_highest_scores_across_layers():
    scores = {"a": torch.tensor([[0.1, 5.0], [0.2, 0.3]]), "b": torch.tensor([4.0, float("nan"), 3.0])}
    chosen = select_indices(scores, 3, "global")
    assert chosen["a"].tolist() == [1] and chosen["b"].tolist() == [0, 2]


def test_blocks_and_exclude_restrict_the_targets():
    model = _mlp()
    sc.apply(model, SparseConfig(scorer="magnitude", blocks=("2", "4"), exclude="^4$"))
    assert list(sparse_layers(model, "default")) == ["2"]


# --------------------------------------------------------------------------- scorers


def _weights(model):
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def test_fisher_is_the_sum_of_squared_batch_gradients():
    model, batches = _mlp(), _batches()
    config = SparseConfig(scorer="fisher", num_batches=3)
    scores = score_weights("fisher", model, _weights(model), batches, config)
    expected = {n: torch.zeros_like(w) for n, w in _weights(model).items()}
    for x, y in batches[:3]:
        model.zero_grad()
        for p in model.parameters():
            p.requires_grad_(True)
        F.cross_entropy(model(x), y).backward()
        for n, w in _weights(model).items():
            expected[n] += w.grad.square()
    for n in scores:
        torch.testing.assert_close(scores[n], expected[n])


def test_gradient_and_movement_scores_follow_their_formulas():
    model, batches = _mlp(), _batches(2)
    config = SparseConfig(scorer="gradient", num_batches=2)
    weights = _weights(model)
    for p in model.parameters():
        p.requires_grad_(False)
    grad = score_weights("gradient", model, weights, batches, config)
    movement = score_weights("movement", model, weights, batches, config)
    assert all(not w.requires_grad and w.grad is None for w in weights.values())  # the model is left as it was
    total = {n: torch.zeros_like(w) for n, w in weights.items()}
    for x, y in batches:
        for w in weights.values():
            w.requires_grad_(True)
        grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(weights.values()))
        for n, g in zip(weights, grads):
            total[n] += g
    for n, w in weights.items():
        torch.testing.assert_close(grad[n], total[n].abs())
        torch.testing.assert_close(movement[n], -(w.detach() * total[n]))


def test_lottery_ticket_scores_the_change_and_restores_the_weights():
    model, batches = _mlp(), _batches()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    config = SparseConfig(scorer="lottery_ticket", lt_steps=5, lt_lr=1e-2)
    scores = score_weights("lottery_ticket", model, _weights(model), batches, config)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert all(s.min() >= 0 for s in scores.values()) and sum(s.sum() for s in scores.values()) > 0


def test_random_scores_are_reproducible_and_magnitude_is_abs_weight():
    model = _mlp()
    config = SparseConfig(scorer="random", seed=3)
    one = score_weights("random", model, _weights(model), None, config)
    two = score_weights("random", model, _weights(model), None, config)
    assert all(torch.equal(one[n], two[n]) for n in one)
    mag = score_weights("magnitude", model, _weights(model), None, config)
    assert all(torch.equal(mag[n], w.abs()) for n, w in _weights(model).items())


def test_dict_batches_and_a_custom_loss_are_scored():
    model = _mlp()
    data = ScoringData([{"x": x, "y": y} for x, y in _batches(2)], loss_fn=lambda m, b: F.cross_entropy(m(b["x"]), b["y"]))
    sc.apply(model, SparseConfig(scorer="fisher", density=0.1), data=data)
    assert sc.count_parameters(model)[0] == round(0.1 * (6 * 32 + 32 * 16 + 16 * 3))


def test_a_dict_batch_without_a_loss_is_a_data_error():
    class NoLoss(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2)

        def forward(self, x):
            return {"logits": self.lin(x)}

    with pytest.raises(DataError, match="labels"):
        sc.apply(NoLoss(), SparseConfig(scorer="fisher"), data=[{"x": torch.randn(2, 4)}])


def test_every_registered_scorer_selects_the_budget():
    for name in SCORERS.names():
        model = _mlp()
        sc.apply(model, SparseConfig(scorer=name, count=20, lt_steps=3), data=_batches())
        assert sc.count_parameters(model)[0] == 20, name
