"""The sparse delta layer: exactness, gradients only for the k values, merge/unmerge."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from transformers.pytorch_utils import Conv1D

from scalpel.core.errors import ScalpelError
from scalpel.core.sparse.autograd import _selected_entries
from scalpel.core.sparse.layers import SparseDeltaLayer


def _layer_and_input(kind: str):
    if kind == "linear":
        return nn.Linear(12, 10), torch.randn(3, 5, 12)
    if kind == "conv1d":
        return Conv1D(10, 12), torch.randn(3, 5, 12)
    if kind == "conv2d":
        return nn.Conv2d(3, 4, 3, padding=1), torch.randn(2, 3, 6, 6)
    if kind == "embedding":
        return nn.Embedding(20, 6), torch.randint(0, 20, (3, 7))
    if kind == "layernorm":
        return nn.LayerNorm(12), torch.randn(3, 12)
    raise AssertionError(kind)


KINDS = ["linear", "conv1d", "conv2d", "embedding", "layernorm"]


def _reference(base: nn.Module, x, indices, values):
    """Plain autograd: the base module called with W + scatter(values) built densely."""
    delta = torch.zeros(base.weight.numel()).index_put((indices,), values).view_as(base.weight)
    return torch.func.functional_call(base, {"weight": base.weight.detach() + delta}, (x,))


def _wrapped(kind: str, k: int):
    base, x = _layer_and_input(kind)
    for p in base.parameters():
        p.requires_grad_(False)
    layer = SparseDeltaLayer(base)
    indices = torch.randperm(base.weight.numel())[:k]
    layer.add_adapter("a", indices)
    layer.active_adapter = "a"
    return layer, base, x, indices


@pytest.mark.parametrize("kind", KINDS)
def test_zero_initialised_delta_computes_the_base(kind):
    layer, base, x, _ = _wrapped(kind, 5)
    assert torch.equal(layer(x), base(x))


@pytest.mark.parametrize("kind", KINDS)
def test_forward_and_value_gradients_match_dense_autograd(kind):
    layer, base, x, indices = _wrapped(kind, 7)
    with torch.no_grad():
        layer.values("a").copy_(torch.randn(7))
    values = layer.values("a").detach().clone().requires_grad_(True)
    if x.is_floating_point():
        x.requires_grad_(True)
    out = layer(x)
    expected = _reference(base, x, indices, values)
    torch.testing.assert_close(out, expected)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    got_x = x.grad.clone() if x.is_floating_point() else None
    if got_x is not None:
        x.grad = None
    expected.backward(upstream)
    torch.testing.assert_close(layer.values("a").grad, values.grad)
    if got_x is not None:
        torch.testing.assert_close(got_x, x.grad)


@pytest.mark.parametrize("kind", KINDS)
def test_only_the_values_receive_gradients(kind):
    layer, base, x, _ = _wrapped(kind, 6)
    layer(x).sum().backward()
    assert layer.values("a").grad is not None and layer.values("a").grad.shape == (6,)
    assert all(p.grad is None for p in base.parameters())


def test_trainable_bias_still_gets_its_gradient():
    layer, base, x, indices = _wrapped("linear", 5)
    base.bias.requires_grad_(True)
    upstream = torch.randn(3, 5, 10)
    layer(x).backward(upstream)
    torch.testing.assert_close(base.bias.grad, upstream.sum((0, 1)))


@pytest.mark.parametrize("kind", KINDS)
def test_merge_equals_unmerged_and_unmerge_restores_the_base_bit_for_bit(kind):
    layer, base, x, _ = _wrapped(kind, 9)
    original = base.weight.detach().clone()
    with torch.no_grad():
        layer.values("a").copy_(torch.randn(9))
    unmerged = layer(x)
    layer.merge()
    assert layer.merged and not torch.equal(base.weight, original)
    assert torch.equal(layer(x), unmerged)
    layer.unmerge()
    assert not layer.merged and torch.equal(base.weight, original)
    assert torch.equal(layer(x), unmerged)


def test_optimizer_state_holds_only_k_entries():
    layer, base, x, _ = _wrapped("linear", 11)
    optimizer = torch.optim.AdamW([p for p in layer.parameters() if p.requires_grad], lr=1e-2)
    layer(x).pow(2).mean().backward()
    optimizer.step()
    state = optimizer.state[layer.values("a")]
    assert state["exp_avg"].numel() == 11 and state["exp_avg_sq"].numel() == 11
    assert len(optimizer.state) == 1


def test_row_subset_gradient_equals_the_dense_product():
    a, b = torch.randn(9, 40), torch.randn(9, 7)
    dense = (a.t() @ b).reshape(-1)
    few_rows = torch.tensor([3, 5, 8, 70, 71, 200, 279])  # rows 0, 10, 11, 28, 39: under half
    many_rows = torch.randperm(280)[:150]
    for indices in (few_rows, many_rows):
        torch.testing.assert_close(_selected_entries(a, b, indices), dense[indices])


def test_autocast_bf16_runs_in_low_precision_and_returns_float32_value_gradients():
    layer, base, x, indices = _wrapped("linear", 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert layer.values("a").grad.dtype == torch.float32
    expected = _reference(base, x, indices, torch.zeros(8, requires_grad=True))
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)


def test_two_adapters_on_one_layer_and_delete():
    layer, base, x, _ = _wrapped("linear", 4)
    layer.add_adapter("b", torch.tensor([0, 1]), torch.tensor([1.0, -1.0]))
    layer.active_adapter = "b"
    assert not torch.equal(layer(x), base(x))
    layer.delete_adapter("b")
    assert layer.adapter_names() == ["a"] and layer.active_adapter is None
    assert torch.equal(layer(x), base(x))


def test_bad_indices_are_refused_with_a_clear_error():
    layer = SparseDeltaLayer(nn.Linear(3, 2))
    with pytest.raises(ScalpelError, match="different base model"):
        layer.add_adapter("a", torch.tensor([0, 6]))
    with pytest.raises(ScalpelError, match="repeat"):
        layer.add_adapter("a", torch.tensor([1, 1]))
    with pytest.raises(ScalpelError, match="no weight"):
        SparseDeltaLayer(nn.ReLU())


def test_attribute_reads_fall_through_to_the_base():
    layer = SparseDeltaLayer(nn.Linear(3, 2))
    assert layer.in_features == 3 and layer.weight is layer.base_layer.weight


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_no_copy_of_the_weight_is_saved_for_backward(kind):
    layer, base, x, _ = _wrapped(kind, 6)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x.requires_grad_(True))
    weight_sized = [t for t in saved if t.numel() == base.weight.numel()]
    assert all(t.data_ptr() == base.weight.data_ptr() for t in weight_sized)  # the frozen weight itself, no W + delta
    assert sum(t.numel() for t in saved) <= x.numel() + base.weight.numel() + 2 * 6
    out.sum().backward()


def test_sparse_adamw_makes_exactly_the_updates_of_dense_gradient_masking():
    """The FISH reference trains dense weights and multiplies their gradients by a 0/1 mask;
    with AdamW without weight decay that is the same training as the sparse delta."""
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    sparse = nn.Sequential(SparseDeltaLayer(copy.deepcopy(dense[0])), nn.Tanh(), SparseDeltaLayer(copy.deepcopy(dense[2])))
    for p in list(dense.parameters()) + list(sparse.parameters()):
        p.requires_grad_(False)
    for i in (0, 2):
        chosen = torch.randperm(dense[i].weight.numel())[:7]
        sparse[i].add_adapter("a", chosen)
        sparse[i].active_adapter = "a"
        mask = torch.zeros(dense[i].weight.numel()).index_fill_(0, chosen, 1.0).view_as(dense[i].weight)
        dense[i].weight.requires_grad_(True)
        dense[i].weight.register_hook(lambda g, m=mask: g * m)
    opt_dense = torch.optim.AdamW([dense[0].weight, dense[2].weight], lr=0.05, weight_decay=0.0)
    opt_sparse = torch.optim.AdamW([sparse[0].values("a"), sparse[2].values("a")], lr=0.05, weight_decay=0.0)
    for _ in range(5):
        x, y = torch.randn(6, 5), torch.randint(0, 2, (6,))
        for model, opt in ((dense, opt_dense), (sparse, opt_sparse)):
            F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
    for i in (0, 2):
        sparse[i].merge()
        torch.testing.assert_close(sparse[i].weight, dense[i].weight, rtol=1e-6, atol=1e-7)
