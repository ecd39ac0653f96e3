"""Tests for the synthetic world and its preference model."""

import dataclasses
import time

import numpy as np
import pytest

from data.split import leave_one_out
from data.synthetic import SyntheticConfig, World, make_world

SMALL = SyntheticConfig(n_items=300, n_users=400, n_categories=4, n_subcategories=3, dim=16, max_length=20, seed=7)


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(SMALL)


@pytest.fixture(scope="module")
def default_world() -> tuple[World, float]:
    start = time.perf_counter()
    built = make_world(SyntheticConfig())
    return built, time.perf_counter() - start


def _transitions(world: World) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return (users, last_items, next_items, seen_mask) for every step of every sequence.

    last_items is -1 at a user's first step. seen_mask is (n_steps, n_items) with
    True for items consumed before that step.
    """
    users, last_items, next_items, seen_rows = [], [], [], []
    for user, sequence in enumerate(world.sequences):
        for step, item in enumerate(sequence):
            users.append(user)
            last_items.append(sequence[step - 1] if step > 0 else -1)
            next_items.append(item)
            seen_rows.append(sequence[:step])
    seen_mask = np.zeros((len(users), world.n_items), dtype=bool)
    for row, seen in enumerate(seen_rows):
        seen_mask[row, seen] = True
    return np.array(users), np.array(last_items), np.array(next_items), seen_mask


def _masked_log_softmax(logits: np.ndarray, seen_mask: np.ndarray) -> np.ndarray:
    logits = np.where(seen_mask, -np.inf, logits.astype(np.float64))  # (N, n_items)
    shift = logits.max(axis=1, keepdims=True)
    return logits - shift - np.log(np.exp(logits - shift).sum(axis=1, keepdims=True))


def _mean_observed_log_prob(world: World, users, last_items, next_items, seen_mask) -> float:
    log_probs = _masked_log_softmax(world.true_logits(users, last_items), seen_mask)
    return float(log_probs[np.arange(len(users)), next_items].mean())


def _hit_rate_at_10(scores: np.ndarray, histories: list[list[int]], targets: np.ndarray) -> float:
    scores = scores.astype(np.float64).copy()  # (n_users, n_items)
    for user, history in enumerate(histories):
        scores[user, history] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    return float((top == targets[:, None]).any(axis=1).mean())


def test_world_deterministic_given_seed(world):
    again = make_world(SMALL)

    assert again.sequences == world.sequences
    assert np.array_equal(again.item_features, world.item_features)
    assert np.array_equal(again.popularity, world.popularity)
    assert np.array_equal(again.user_tastes, world.user_tastes)


def test_world_seed_changes_sequences(world):
    other = make_world(dataclasses.replace(SMALL, seed=8))

    assert other.sequences != world.sequences


def test_world_shapes_and_types(world):
    assert world.item_features.shape == (300, 16)
    assert world.item_features.dtype == np.float32
    assert world.item_category.shape == (300,)
    assert world.item_category.min() >= 0
    assert world.item_category.max() < 4
    assert np.array_equal(world.item_subcategory // 3, world.item_category)
    assert len(world.sequences) == 400


def test_popularity_is_distribution(world):
    assert world.popularity.shape == (300,)
    assert world.popularity.sum() == pytest.approx(1.0)
    assert (world.popularity > 0).all()


def test_no_repeated_items_per_user(world):
    for user, sequence in enumerate(world.sequences):
        assert len(set(sequence)) == len(sequence), f"user {user} repeats an item"


def test_lengths_within_bounds(world):
    lengths = np.array([len(sequence) for sequence in world.sequences])

    assert lengths.min() >= SMALL.min_length
    assert lengths.max() <= SMALL.max_length


def test_lengths_skewed_short(world):
    lengths = np.array([len(sequence) for sequence in world.sequences])
    counts = np.bincount(lengths)

    assert np.median(lengths) <= SMALL.min_length + 2
    assert np.median(lengths) < lengths.mean()
    assert counts.argmax() == SMALL.min_length


def test_observed_features_add_noise():
    noisy = make_world(SMALL)
    clean = make_world(dataclasses.replace(SMALL, feature_noise=0.0))

    assert np.array_equal(clean.item_features, clean.true_features)
    assert not np.allclose(noisy.item_features, noisy.true_features)


def test_true_logits_match_formula(world):
    cfg = world.config
    users = np.array([0, 5, 9])
    last_items = np.array([world.sequences[0][0], -1, 17])
    log_popularity = np.log(world.popularity)

    logits = world.true_logits(users, last_items)

    for row, (user, last) in enumerate(zip(users, last_items)):
        expected = cfg.taste_weight * world.true_features @ world.user_tastes[user]
        expected = expected + cfg.popularity_weight * log_popularity
        if last >= 0:
            expected = expected + cfg.transition_weight * world.true_features @ world.true_features[last]
        assert np.allclose(logits[row], expected, atol=1e-4), f"row {row}"


def test_true_logits_shape(world):
    logits = world.true_logits(np.arange(7), np.full(7, -1))

    assert logits.shape == (7, 300)
    assert logits.dtype == np.float32


@pytest.mark.parametrize(
    ("users", "last_items", "message"),
    [
        ([400], [0], "user ids"),
        ([-1], [0], "user ids"),
        ([0], [300], "last item ids"),
        ([0], [-2], "last item ids"),
        ([0, 1], [0], "entries"),
    ],
)
def test_true_logits_reject_bad_ids(world, users, last_items, message):
    with pytest.raises(ValueError, match=message):
        world.true_logits(np.array(users), np.array(last_items))


def test_sampling_calibrated_to_true_logits(world):
    # If the next item is drawn from softmax(true logits), the mean log-probability
    # of the drawn items equals minus the mean entropy up to sampling error.
    users, last_items, next_items, seen_mask = _transitions(world)
    log_probs = _masked_log_softmax(world.true_logits(users, last_items), seen_mask)
    probs = np.exp(log_probs)
    entropy = -(probs * np.where(seen_mask, 0.0, log_probs)).sum(axis=1)  # (N,)

    observed = log_probs[np.arange(len(users)), next_items]  # (N,)

    assert np.isfinite(observed).all()
    assert abs(observed.mean() + entropy.mean()) < 0.12


def test_last_item_matters_for_sampling(world):
    users, last_items, next_items, seen_mask = _transitions(world)
    has_last = last_items >= 0
    shuffled = last_items.copy()
    shuffled[has_last] = np.random.default_rng(0).permutation(last_items[has_last])

    true_score = _mean_observed_log_prob(world, users, last_items, next_items, seen_mask)
    shuffled_score = _mean_observed_log_prob(world, users, shuffled, next_items, seen_mask)

    assert true_score > shuffled_score + 0.3


def test_taste_matters_for_sampling(world):
    users, last_items, next_items, seen_mask = _transitions(world)
    shuffled_users = np.random.default_rng(0).permutation(world.n_users)[users]

    true_score = _mean_observed_log_prob(world, users, last_items, next_items, seen_mask)
    shuffled_score = _mean_observed_log_prob(world, shuffled_users, last_items, next_items, seen_mask)

    assert true_score > shuffled_score + 0.3


def test_interactions_follow_popularity(world):
    counts = np.bincount(np.concatenate(world.sequences), minlength=world.n_items)
    top_decile = np.argsort(-world.popularity)[: world.n_items // 10]
    bottom_half = np.argsort(world.popularity)[: world.n_items // 2]

    top_share = counts[top_decile].sum() / counts.sum()
    bottom_share = counts[bottom_half].sum() / counts.sum()

    assert top_share > 0.2
    assert bottom_share < 0.4


def test_default_world_builds_fast(default_world):
    built, seconds = default_world

    assert len(built.sequences) == 3000
    assert seconds < 10.0


def test_default_world_short_median(default_world):
    built, _ = default_world
    lengths = np.array([len(sequence) for sequence in built.sequences])

    assert 5 <= np.median(lengths) <= 7


def test_default_world_terms_carry_signal(default_world):
    built, _ = default_world
    split, _ = leave_one_out(built.sequences, built.n_items)
    histories = [split.history(user, "test") for user in range(split.n_users)]
    targets = np.array(split.test_target)
    users = np.array(split.user_ids)
    last_items = np.array([history[-1] for history in histories])
    popularity_scores = np.tile(np.log1p(split.train_item_counts()), (split.n_users, 1))

    def oracle_hit_rate(**weights) -> float:
        ablated = dataclasses.replace(built, config=dataclasses.replace(built.config, **weights))
        return _hit_rate_at_10(ablated.true_logits(users, last_items), histories, targets)

    popularity = _hit_rate_at_10(popularity_scores, histories, targets)
    oracle = oracle_hit_rate()

    assert oracle > 3 * popularity
    assert oracle_hit_rate(taste_weight=0.0) < oracle - 0.03
    assert oracle_hit_rate(transition_weight=0.0) < oracle - 0.03
    assert oracle_hit_rate(popularity_weight=0.0) < oracle - 0.03


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(max_length=301), "max_length 301"),
        (dict(min_length=10, max_length=9), "max_length 9"),
        (dict(n_users=0), "n_users 0"),
        (dict(second_category_prob=1.5), "second_category_prob"),
        (dict(feature_noise=-0.1), "feature_noise"),
    ],
)
def test_config_rejects_invalid_values(change, message):
    with pytest.raises(ValueError, match=message):
        make_world(dataclasses.replace(SMALL, **change))
