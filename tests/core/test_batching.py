"""Length-grouped batches: every sample once per epoch, an order fixed by (seed, epoch),
less padding than plain shuffling, and an exact resume in ``fit``."""

from __future__ import annotations

import pytest
import torch
from fit_toy import RegressionTask, fit_config, scrambled_lora_model, toy_lora_model, trained_tensors
from torch.utils.data import DataLoader, TensorDataset

from scalpel.core.batching import (
    LengthGroupedBatches,
    default_group_batches,
    length_sorted_batches,
    padding_share,
    padding_summary,
    shuffled_batches,
)
from scalpel.core.errors import ConfigError
from scalpel.core.fit import fit


def _lengths(n: int = 1000, seed: int = 0) -> list[int]:
    return [int(v) for v in torch.randint(3, 120, (n,), generator=torch.Generator().manual_seed(seed))]


@pytest.mark.parametrize(("n", "batch_size", "group_batches"), [(1000, 32, 50), (1000, 32, 4), (37, 8, 2), (5, 8, 50), (64, 1, 3)])
def test_every_sample_is_in_exactly_one_batch_per_epoch(n, batch_size, group_batches):
    sampler = LengthGroupedBatches(_lengths(n), batch_size, seed=1, group_batches=group_batches)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert sorted(i for b in batches for i in b) == list(range(n))
        assert len(batches) == len(sampler) and all(1 <= len(b) <= batch_size for b in batches)


def test_the_order_is_a_function_of_seed_and_epoch():
    lengths = _lengths()
    a, b = LengthGroupedBatches(lengths, 32, seed=5), LengthGroupedBatches(lengths, 32, seed=5)
    b.set_epoch(1)
    b.set_epoch(0)  # what was set before does not matter, only the epoch
    assert list(a) == list(b) == a.batches(0)
    assert a.batches(0) != a.batches(1)  # reshuffled every epoch
    assert a.batches(0) != LengthGroupedBatches(lengths, 32, seed=6).batches(0)


def test_batches_hold_similar_lengths_and_come_in_a_shuffled_order():
    lengths = _lengths()  # uniform in 3..119: plain shuffling pads about half the tokens
    batches = LengthGroupedBatches(lengths, 32, seed=0).batches(0)  # 32 batches: groups of 8
    grouped, shuffled = padding_share(lengths, batches), padding_share(lengths, shuffled_batches(len(lengths), 32, 0))
    assert grouped < 0.2 < 0.4 < shuffled
    wide = padding_share(lengths, LengthGroupedBatches(lengths, 32, seed=0, group_batches=32).batches(0))
    assert wide < 0.05  # one sorted group of the whole set: almost no padding
    longest = [max(lengths[i] for i in b) for b in batches]
    assert longest != sorted(longest) and longest != sorted(longest, reverse=True)
    summary = padding_summary(lengths, 32, 0)
    assert summary == {"padding_share_shuffled": shuffled, "padding_share_grouped": grouped}


def test_the_default_group_is_a_quarter_of_the_epoch_and_short_epochs_are_not_grouped():
    assert default_group_batches(1000, 32) == 8 and default_group_batches(600, 32) == 4 and default_group_batches(10**6, 32) == 50
    assert default_group_batches(192, 32) == 1 and default_group_batches(5, 8) == 1  # under 16 batches: plain shuffling
    lengths = _lengths(600)
    grouped = padding_share(lengths, LengthGroupedBatches(lengths, 32, seed=0).batches(0))
    assert grouped < 0.6 * padding_share(lengths, shuffled_batches(600, 32, 0))


def test_padding_share_counts_pad_tokens():
    assert padding_share([2, 4, 4, 1], [[0, 1], [2, 3]]) == pytest.approx(1 - 11 / 16)
    assert padding_share([3, 3], [[0, 1]]) == 0.0


def test_length_sorted_batches_cover_every_input_longest_first():
    lengths = [3, 9, 1, 7, 5]
    batches = length_sorted_batches(lengths, 2)
    assert batches == [[1, 3], [4, 0], [2]]


def test_bad_settings_are_reported_together():
    with pytest.raises(ConfigError) as err:
        LengthGroupedBatches([], 0, group_batches=0)
    assert "batch_size" in str(err.value) and "group_batches" in str(err.value) and "empty" in str(err.value)


def test_length_grouped_batches_resume_exactly_in_fit(tmp_path):
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(2))
    data = TensorDataset(x, x[:, :2] * 3)
    lengths = [int(n) for n in torch.randint(1, 30, (40,), generator=torch.Generator().manual_seed(3))]

    def grouped():
        return DataLoader(data, batch_sampler=LengthGroupedBatches(lengths, batch_size=4, seed=4, group_batches=3))

    straight, loader = toy_lora_model(), grouped()
    fit(straight, RegressionTask(), loader, None, fit_config(tmp_path, "a", max_steps=14))
    assert loader.batch_sampler.epoch == 1  # fit set the epoch, so epoch 1 had its own order
    fit(toy_lora_model(), RegressionTask(), grouped(), None, fit_config(tmp_path, "b", max_steps=7, save_every=7))
    resumed = scrambled_lora_model()  # step 7 is mid-epoch 0 (10 batches an epoch), step 14 is mid-epoch 1
    fit(resumed, RegressionTask(), grouped(), None, fit_config(tmp_path, "b", max_steps=14, save_every=7, resume=True))
    for name, a in trained_tensors(straight).items():
        assert torch.equal(a, trained_tensors(resumed)[name]), name
