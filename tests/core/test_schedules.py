"""Learning-rate schedules against their closed forms."""

from __future__ import annotations

import math

import pytest

from scalpel.core.schedules import lr_at, warmup_steps_for


def test_warmup_rises_linearly_from_above_zero_to_the_peak():
    rates = [lr_at(s, lr=1.0, total_steps=10, warmup_steps=4, schedule="constant") for s in range(6)]
    assert rates == pytest.approx([1 / 5, 2 / 5, 3 / 5, 4 / 5, 1.0, 1.0])


def test_linear_decays_to_the_floor():
    rates = [lr_at(s, lr=2.0, total_steps=6, warmup_steps=2, schedule="linear", min_lr_ratio=0.1) for s in range(2, 8)]
    floor = 0.2
    assert rates == pytest.approx([floor + (2.0 - floor) * (1 - p / 4) for p in [0, 1, 2, 3, 4, 4]])


def test_cosine_follows_half_a_cosine():
    for s in range(0, 11):
        expected = 0.5 * (1 + math.cos(math.pi * s / 10))
        assert lr_at(s, lr=1.0, total_steps=10, schedule="cosine") == pytest.approx(expected)
    assert lr_at(5, lr=1.0, total_steps=10, schedule="cosine") == pytest.approx(0.5)


def test_constant_and_unknown_schedules():
    assert lr_at(99, lr=3e-4, total_steps=10, schedule="constant") == 3e-4
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_at(0, lr=1.0, total_steps=1, schedule="step")


def test_warmup_from_a_ratio():
    assert warmup_steps_for(100, 0, 0.05) == 5
    assert warmup_steps_for(100, 10, 0.05) == 10
    assert warmup_steps_for(7, 0, 0.1) == 1
