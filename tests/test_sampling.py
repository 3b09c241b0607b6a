"""Epoch orders: draws follow the per-clip weights, class balance, the same seed gives the same order;
batches grouped by length pad less and keep the draws."""

from __future__ import annotations

import pytest
import torch

from kwsbatch.train.sampling import epoch_order, epoch_size, group_by_length, loss_weights


def draws(order: torch.Tensor, n_clips: int) -> list[int]:
    return torch.bincount(order, minlength=n_clips).tolist()


def test_whole_weights_draw_each_clip_exactly_that_often():
    targets = torch.tensor([0, 0, 1, 1, 1])
    weights = torch.tensor([1.0, 1.0, 4.0, 4.0, 2.0], dtype=torch.float64)
    order = epoch_order(targets, weights, "none", torch.Generator().manual_seed(0))
    assert len(order) == epoch_size(weights) == 12
    assert draws(order, 5) == [1, 1, 4, 4, 2]
    assert order.tolist() != sorted(order.tolist())  # shuffled, not grouped by clip


def test_weights_of_one_give_the_plain_permutation():
    """Training without weights draws exactly what it drew before weights existed."""
    targets = torch.tensor([0, 1] * 50)
    order = epoch_order(targets, torch.ones(100, dtype=torch.float64), "none", torch.Generator().manual_seed(7))
    assert torch.equal(order, torch.randperm(100, generator=torch.Generator().manual_seed(7)))


def test_fractional_weights_round_each_clip_up_or_down_and_keep_the_epoch_size():
    # 100 synthetic clips at 0.5 and 20 real ones at 2.5: 100 draws an epoch, half of them real.
    targets = torch.zeros(120, dtype=torch.long)
    weights = torch.tensor([0.5] * 100 + [2.5] * 20, dtype=torch.float64)
    shuffle = torch.Generator().manual_seed(0)
    totals = torch.zeros(120)
    for _ in range(200):
        counts = torch.tensor(draws(epoch_order(targets, weights, "none", shuffle), 120))
        assert counts.sum() == 100
        assert set(counts[:100].tolist()) == {0, 1} and set(counts[100:].tolist()) == {2, 3}
        assert 40 <= counts[100:].sum() <= 60
        totals += counts
    # Over many epochs every clip is drawn its weight's worth: no clip is always rounded down.
    assert torch.allclose(totals / 200, weights.float(), atol=0.2)


def test_same_seed_same_order_other_seed_other_order():
    targets = torch.tensor([0, 1, 2] * 10)
    weights = torch.tensor([1.0, 0.3, 2.7] * 10, dtype=torch.float64)
    for balance in ("none", "sample"):
        one = epoch_order(targets, weights, balance, torch.Generator().manual_seed(3))
        again = epoch_order(targets, weights, balance, torch.Generator().manual_seed(3))
        other = epoch_order(targets, weights, balance, torch.Generator().manual_seed(4))
        assert torch.equal(one, again) and not torch.equal(one, other)
        assert len(one) == 40


def test_class_balanced_sampling_draws_every_class_about_equally():
    targets = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    weights = torch.ones(1000, dtype=torch.float64)
    order = epoch_order(targets, weights, "sample", torch.Generator().manual_seed(0))
    assert len(order) == 1000
    drawn = torch.bincount(targets[order], minlength=3).tolist()
    assert all(280 < n < 390 for n in drawn), drawn
    plain = epoch_order(targets, weights, "none", torch.Generator().manual_seed(0))
    assert sorted(plain.tolist()) == list(range(1000))
    again = epoch_order(targets, weights, "sample", torch.Generator().manual_seed(0))
    assert torch.equal(order, again)


def test_class_balance_with_weights_balances_classes_and_follows_weights_within_one():
    # Class 0: 100 clips of weight 1 and 100 of weight 3; class 1: 50 clips of weight 1.
    targets = torch.tensor([0] * 200 + [1] * 50)
    weights = torch.tensor([1.0] * 100 + [3.0] * 100 + [1.0] * 50, dtype=torch.float64)
    shuffle = torch.Generator().manual_seed(0)
    orders = [epoch_order(targets, weights, "sample", shuffle) for _ in range(20)]
    assert all(len(order) == 450 for order in orders)
    order = torch.cat(orders)
    per_class = torch.bincount(targets[order]).tolist()
    assert all(4300 <= n <= 4700 for n in per_class), per_class
    light, heavy = (order < 100).sum().item(), ((order >= 100) & (order < 200)).sum().item()
    assert 2.7 < heavy / light < 3.3, (light, heavy)


@pytest.mark.parametrize("weights", [[1.0] * 6, [1.0, 1.0, 1.0, 3.0, 3.0, 0.5]])
def test_loss_weights_are_inverse_to_each_class_draws_per_epoch(weights):
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    weights = torch.tensor(weights, dtype=torch.float64)
    per_class = torch.zeros(3, dtype=torch.float64).index_add_(0, targets, weights)
    expected = per_class.sum() / (3 * per_class)
    assert torch.allclose(loss_weights(targets, weights, 3).double(), expected)


def padded_samples(order: torch.Tensor, lengths: torch.Tensor, batch_size: int) -> int:
    """Samples the batches cut from order hold once padded to their longest clip."""
    return sum(int(lengths[batch].max()) * len(batch) for batch in torch.split(order, batch_size))


def test_length_groups_pad_less_and_keep_each_group_of_draws():
    lengths = torch.randint(8_000, 24_000, (500,), generator=torch.Generator().manual_seed(0))
    weights = torch.tensor([1.0, 2.0] * 250, dtype=torch.float64)
    order = epoch_order(torch.zeros(500, dtype=torch.long), weights, "none", torch.Generator().manual_seed(1))
    grouped = group_by_length(order, lengths, 16, 4)
    for drawn, sorted_ in zip(torch.split(order, 64), torch.split(grouped, 64)):  # 750 draws: the last group is short
        assert sorted(drawn.tolist()) == sorted(sorted_.tolist())
        assert lengths[sorted_].tolist() == sorted(lengths[drawn].tolist(), reverse=True)
    assert padded_samples(grouped, lengths, 16) < 0.8 * padded_samples(order, lengths, 16)
    assert torch.equal(group_by_length(order, lengths, 16, 0), order)


def test_equal_lengths_keep_the_order_as_drawn():
    """On a corpus of equal-length clips grouping changes nothing: the same batches, so the same model."""
    lengths = torch.full((300,), 16_000)
    lengths[::7] = 12_000  # and clips of one length keep their drawn order among themselves
    order = torch.randperm(300, generator=torch.Generator().manual_seed(2))
    assert torch.equal(group_by_length(order, torch.full((300,), 16_000), 32, 4), order)
    grouped = group_by_length(order, lengths, 32, 4)
    for drawn, sorted_ in zip(torch.split(order, 128), torch.split(grouped, 128)):
        long_ones = [i for i in drawn.tolist() if lengths[i] == 16_000]
        assert sorted_[: len(long_ones)].tolist() == long_ones
