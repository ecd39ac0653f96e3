"""Leave-one-out split of user sequences into train, validation and test.

For a user sequence s[0..n-1] (oldest first) the test target is s[n-1], the
validation target is s[n-2] and the training prefix is s[0..n-3]. The validation
history is the training prefix and the test history is the training prefix
followed by the validation target, so no target is ever part of its own history.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

SPLIT_NAMES = ("valid", "test")


@dataclass
class Split:
    """Leave-one-out split. Users are renumbered densely 0..n_users-1."""

    n_items: int
    train: list[list[int]]  # per user: training prefix s[0..n-3], oldest first
    valid_target: list[int]  # per user: s[n-2]
    test_target: list[int]  # per user: s[n-1]
    user_ids: list[int]  # per user: index of the sequence in the input list

    @property
    def n_users(self) -> int:
        return len(self.train)

    def history(self, user: int, split: str) -> list[int]:
        """Return a new list with the history items that precede the target of `split`.

        "valid" returns the training prefix and "test" returns the training prefix
        followed by the validation target.
        """
        if split == "valid":
            return list(self.train[user])
        if split == "test":
            return self.train[user] + [self.valid_target[user]]
        raise ValueError(f"invalid split name {split!r}: expected one of {SPLIT_NAMES}")

    def train_item_counts(self) -> np.ndarray:
        """Count how often each item occurs in the training prefixes.

        Validation and test targets are not counted, so the counts can serve as a
        popularity prior without leaking evaluation targets.
        Returns an int64 array of shape (n_items,).
        """
        counts = np.zeros(self.n_items, dtype=np.int64)
        for prefix in self.train:
            np.add.at(counts, np.asarray(prefix, dtype=np.int64), 1)
        return counts


def leave_one_out(sequences: list[list[int]], n_items: int, min_length: int = 3) -> tuple[Split, int]:
    """Split each user's sequence leave-one-out and drop users shorter than `min_length`.

    Every sequence is checked before any user is dropped. An empty sequence or an
    item id outside 0..n_items-1 raises ValueError naming the user index and the
    value. Returns (split, n_dropped).
    """
    if n_items < 1:
        raise ValueError(f"invalid n_items {n_items}: expected at least 1")
    if min_length < 3:
        raise ValueError(
            f"invalid min_length {min_length}: expected at least 3 so that every kept user "
            "has a non-empty training prefix besides the validation and test targets"
        )

    for user, sequence in enumerate(sequences):
        _validate_sequence(user, sequence, n_items)

    train: list[list[int]] = []
    valid_target: list[int] = []
    test_target: list[int] = []
    user_ids: list[int] = []
    n_dropped = 0
    for user, sequence in enumerate(sequences):
        if len(sequence) < min_length:
            n_dropped += 1
            continue
        items = [int(item) for item in sequence]
        train.append(items[:-2])
        valid_target.append(items[-2])
        test_target.append(items[-1])
        user_ids.append(user)

    logger.info(
        "leave-one-out split kept %d users and dropped %d of %d users with fewer than %d items",
        len(train),
        n_dropped,
        len(sequences),
        min_length,
    )
    split = Split(n_items=n_items, train=train, valid_target=valid_target, test_target=test_target, user_ids=user_ids)
    return split, n_dropped


def _validate_sequence(user: int, sequence: list[int], n_items: int) -> None:
    if len(sequence) == 0:
        raise ValueError(f"user {user} has an empty sequence: remove the user or give at least one item")

    items = np.asarray(sequence)
    if items.ndim != 1 or not np.issubdtype(items.dtype, np.integer):
        raise ValueError(f"user {user} has a sequence that is not a flat list of integers: {sequence!r}")

    out_of_range = (items < 0) | (items >= n_items)
    if out_of_range.any():
        value = int(items[np.argmax(out_of_range)])
        raise ValueError(f"user {user} has item id {value} outside the valid range 0..{n_items - 1}")
