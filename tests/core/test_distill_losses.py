"""Distillation losses against float64 references written from their definitions."""

import math

import pytest
import torch

from scalpel.core.distill import dense, losses



def _softmax64(x, t=1.0):
    x = x.double() / t
    e = torch.exp(x - x.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def _kl64(p, q):
    """sum_v p_v log(p_v / q_v), 0 log 0 = 0, by the definition."""
    return torch.where(p > 0, p * (torch.log(p) - torch.log(q)), torch.zeros_like(p)).sum(-1)


def _jsd64(s, t, beta, temp=1.0):
    ps, pt = _softmax64(s, temp), _softmax64(t, temp)
    if beta == 0:
        return _kl64(pt, ps)
    if beta == 1:
        return _kl64(ps, pt)
    m = beta * pt + (1 - beta) * ps
    return beta * _kl64(pt, m) + (1 - beta) * _kl64(ps, m)


@pytest.fixture
def lm_logits():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 5, 11, generator=g) * 3, torch.randn(3, 5, 11, generator=g) * 3


def test_logit_kd_matches_hinton_definition_with_t_squared():
    s, t = torch.randn(6, 10) * 2, torch.randn(6, 10) * 2
    for temp in (1.0, 2.0, 4.0):
        expected = temp**2 * _kl64(_softmax64(t, temp), _softmax64(s, temp)).mean()
        got = losses.logit_kd_loss(s, t, temperature=temp)
        assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_t_squared_keeps_gradient_scale_for_large_temperature():
    # The soft-target gradient w.r.t. the logits is T * (p_S - p_T) after T^2 scaling, which
    # tends to (s - t - mean) / C as T grows: it neither vanishes nor explodes with T.
    s, t = torch.randn(4, 7), torch.randn(4, 7)
    norms = []
    for temp in (10.0, 100.0, 1000.0):
        x = s.clone().requires_grad_(True)
        losses.logit_kd_loss(x, t, temperature=temp).backward()
        norms.append(x.grad.norm().item())
    assert norms[1] == pytest.approx(norms[2], rel=0.02)
    assert norms[0] == pytest.approx(norms[2], rel=0.1)
    x = s.clone().requires_grad_(True)
    unscaled = losses.logit_kd_loss(x, t, temperature=100.0) / 100.0**2
    unscaled.backward()
    assert x.grad.norm().item() < norms[1] / 1000  # without T^2 the gradient would vanish


@pytest.mark.parametrize("temp", [1.0, 2.0])
def test_forward_and_reverse_kl_match_definition(lm_logits, temp):
    s, t = lm_logits
    fwd = _kl64(_softmax64(t, temp), _softmax64(s, temp)).mean()
    rev = _kl64(_softmax64(s, temp), _softmax64(t, temp)).mean()
    assert losses.forward_kl_loss(s, t, temperature=temp).item() == pytest.approx(fwd.item(), rel=1e-5)
    assert losses.reverse_kl_loss(s, t, temperature=temp).item() == pytest.approx(rev.item(), rel=1e-5)
    assert abs(fwd - rev) > 1e-3  # the two directions are different losses


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_generalized_jsd_matches_definition(lm_logits, beta):
    s, t = lm_logits
    expected = _jsd64(s, t, beta, 2.0).mean()
    got = losses.generalized_jsd_loss(s, t, beta=beta, temperature=2.0)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)


def test_jsd_ends_are_the_kl_directions(lm_logits):
    s, t = lm_logits
    assert losses.generalized_jsd_loss(s, t, beta=0.0).item() == pytest.approx(losses.forward_kl_loss(s, t).item(), rel=1e-6)
    assert losses.generalized_jsd_loss(s, t, beta=1.0).item() == pytest.approx(losses.reverse_kl_loss(s, t).item(), rel=1e-6)


def test_jsd_symmetric_at_half_and_bounded_by_log2(lm_logits):
    s, t = lm_logits
    a = losses.generalized_jsd_loss(s, t, beta=0.5)
    b = losses.generalized_jsd_loss(t, s, beta=0.5)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    assert 0 < a.item() <= math.log(2)
    assert losses.generalized_jsd_loss(s, t, beta=0.3).item() != pytest.approx(losses.generalized_jsd_loss(t, s, beta=0.3).item(), rel=1e-3)


def test_divergence_of_a_distribution_with_itself_is_zero(lm_logits):
    s, _ = lm_logits
    for loss in (losses.forward_kl_loss, losses.reverse_kl_loss, losses.generalized_jsd_loss, losses.logit_kd_loss):
        assert abs(loss(s, s.clone()).item()) < 1e-6


def test_mask_ignores_positions(lm_logits):
    s, t = lm_logits
    labels = torch.randint(0, 11, (3, 5))
    labels[0, :3] = -100  # prompt
    labels[2, 3:] = -100  # padding
    mask = losses.token_mask(labels, shift=True)
    assert mask.tolist()[0] == [False, False, True, True, False]
    assert not mask[:, -1].any()
    per = _jsd64(s, t, 0.5)
    expected = per[mask].mean()
    assert losses.generalized_jsd_loss(s, t, mask=mask).item() == pytest.approx(expected.item(), rel=1e-5)
    # Changing the logits at masked positions changes nothing.
    s2 = s.clone()
    s2[~mask] = torch.randn_like(s2[~mask]) * 10
    for loss in (losses.forward_kl_loss, losses.reverse_kl_loss, losses.generalized_jsd_loss):
        assert loss(s2, t, mask=mask).item() == pytest.approx(loss(s, t, mask=mask).item(), rel=1e-6)
    aligned = losses.token_mask(labels, shift=False)
    assert torch.equal(aligned, labels != -100)


def test_all_masked_gives_zero_not_nan(lm_logits):
    s, t = lm_logits
    s = s.clone().requires_grad_(True)
    loss = losses.generalized_jsd_loss(s, t, mask=torch.zeros(3, 5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(s.grad).all()


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="differ"):
        losses.forward_kl_loss(torch.randn(2, 3, 5), torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match="beta"):
        losses.generalized_jsd_loss(torch.randn(2, 5), torch.randn(2, 5), beta=1.5)


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 1.0])
def test_jsd_parity_with_trl(lm_logits, beta, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    gkd = pytest.importorskip("trl.experimental.gkd")
    s, t = lm_logits
    labels = torch.randint(0, 11, (3, 5))
    labels[1, :2] = -100
    ours = losses.generalized_jsd_loss(s, t, beta=beta, mask=labels != -100, temperature=1.5)
    theirs = gkd.GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=1.5)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5, abs=1e-7)


def test_hint_losses():
    s, t = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    assert losses.hint_loss(s, t).item() == pytest.approx(((s.double() - t.double()) ** 2).mean().item(), rel=1e-6)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    expected = ((s.double() - t.double()) ** 2).mean(-1)[mask].mean()
    assert losses.hint_loss(s, t, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    assert losses.cosine_hint_loss(s, 3 * s).abs().item() < 1e-6


# ---------------------------------------------------------------------------------- dense


def test_pixel_kl_is_per_pixel_hinton():
    s, t = torch.randn(2, 5, 4, 3), torch.randn(2, 5, 4, 3)
    ps, pt = _softmax64(s.movedim(1, -1), 2.0), _softmax64(t.movedim(1, -1), 2.0)
    expected = 4.0 * _kl64(pt, ps).mean()
    assert dense.pixel_kl_loss(s, t, temperature=2.0).item() == pytest.approx(expected.item(), rel=1e-5)
    assert dense.pixel_kl_loss(t, t).abs().item() < 1e-6


def test_channel_wise_matches_shu_et_al():
    s, t = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    temp = 4.0
    ps = _softmax64(s.flatten(2), temp)  # distribution over H*W per channel
    pt = _softmax64(t.flatten(2), temp)
    expected = temp**2 * _kl64(pt, ps).sum() / (2 * 3)
    assert dense.channel_wise_loss(s, t, temperature=temp).item() == pytest.approx(expected.item(), rel=1e-5)
    # A smaller student map is upsampled to the teacher's size instead of failing.
    assert torch.isfinite(dense.channel_wise_loss(torch.randn(2, 3, 2, 2), t))
    with pytest.raises(ValueError, match="equal"):
        dense.channel_wise_loss(torch.randn(2, 4, 4, 5), t)


def test_detection_kd_sigmoid_and_softmax_heads():
    sc, tc = torch.randn(2, 6, 3), torch.randn(2, 6, 3)
    sb, tb = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    ps, pt = torch.sigmoid(sc.double()), torch.sigmoid(tc.double())
    bern = (pt * torch.log(pt / ps) + (1 - pt) * torch.log((1 - pt) / (1 - ps))).sum(-1).mean()
    box = (pt.amax(-1) * ((sb.double() - tb.double()) ** 2).mean(-1)).mean()
    got = dense.detection_kd_loss(sc, tc, sb, tb, sigmoid=True, box_weight=0.5)
    assert got.item() == pytest.approx((bern + 0.5 * box).item(), rel=1e-5)
    soft = dense.detection_kd_loss(sc, tc, sigmoid=False, temperature=2.0)
    assert soft.item() == pytest.approx(losses.logit_kd_loss(sc, tc, temperature=2.0).item(), rel=1e-6)
    with pytest.raises(ValueError, match="anchor"):
        dense.detection_kd_loss(sc, torch.randn(2, 7, 3))


def test_feature_imitation_mask():
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[0, 1:3, 1:3] = True
    sq = ((s.double() - t.double()) ** 2).mean(1)
    assert dense.feature_imitation_loss(s, t, mask).item() == pytest.approx(sq[mask].mean().item(), rel=1e-6)
    assert dense.feature_imitation_loss(s, t).item() == pytest.approx(sq.mean().item(), rel=1e-6)
