"""Tests for the leave-one-out split."""

import logging

import numpy as np
import pytest

from data.split import leave_one_out


def test_split_hand_case_targets():
    split, n_dropped = leave_one_out([[4, 2, 7, 1, 5], [0, 3, 6]], n_items=8)

    assert n_dropped == 0
    assert split.train == [[4, 2, 7], [0]]
    assert split.valid_target == [1, 3]
    assert split.test_target == [5, 6]


def test_split_histories_exclude_own_target():
    split, _ = leave_one_out([[4, 2, 7, 1, 5]], n_items=8)

    assert split.history(0, "valid") == [4, 2, 7]
    assert split.history(0, "test") == [4, 2, 7, 1]


def test_split_history_returns_copy():
    split, _ = leave_one_out([[4, 2, 7, 1, 5]], n_items=8)

    split.history(0, "valid").append(99)
    split.history(0, "test").append(99)

    assert split.train[0] == [4, 2, 7]


def test_split_history_rejects_unknown_name():
    split, _ = leave_one_out([[4, 2, 7, 1, 5]], n_items=8)

    with pytest.raises(ValueError, match="train"):
        split.history(0, "train")


def test_split_drops_and_counts_short_users(caplog):
    sequences = [[0, 1, 2, 3], [4, 5], [6], [1, 2, 3], [0, 1, 2]]

    with caplog.at_level(logging.INFO, logger="data.split"):
        split, n_dropped = leave_one_out(sequences, n_items=8, min_length=3)

    assert n_dropped == 2
    assert split.n_users == 3
    assert split.user_ids == [0, 3, 4]
    assert split.train == [[0, 1], [1], [0]]
    assert "dropped 2 of 5 users" in caplog.text


def test_split_min_length_above_default():
    split, n_dropped = leave_one_out([[0, 1, 2, 3], [0, 1, 2, 3, 4]], n_items=8, min_length=5)

    assert n_dropped == 1
    assert split.user_ids == [1]


def test_split_rejects_min_length_below_three():
    with pytest.raises(ValueError, match="min_length 2"):
        leave_one_out([[0, 1, 2]], n_items=8, min_length=2)


def test_split_empty_sequence_names_user():
    with pytest.raises(ValueError, match="user 1 has an empty sequence"):
        leave_one_out([[0, 1, 2], []], n_items=8)


@pytest.mark.parametrize("bad_item", [8, -1, 100])
def test_split_out_of_range_names_user_and_value(bad_item):
    with pytest.raises(ValueError, match=f"user 2 has item id {bad_item} "):
        leave_one_out([[0, 1, 2], [3, 4, 5], [0, bad_item, 1]], n_items=8)


def test_split_validates_before_dropping():
    # A bad id in a user that would be dropped must still raise, not vanish silently.
    with pytest.raises(ValueError, match="user 0 has item id 9"):
        leave_one_out([[9]], n_items=8)


def test_split_rejects_non_integer_items():
    with pytest.raises(ValueError, match="user 0"):
        leave_one_out([[0.5, 1.0, 2.0]], n_items=8)


def test_train_item_counts_skip_targets():
    split, _ = leave_one_out([[0, 1, 2, 3, 4], [1, 2, 0, 5], [7, 6, 5]], n_items=8)

    counts = split.train_item_counts()

    assert counts.shape == (8,)
    assert counts.dtype == np.int64
    assert counts.tolist() == [1, 2, 2, 0, 0, 0, 0, 1]
