import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import CorruptionConfig  # noqa: E402
from data.synthetic import SyntheticConfig, make_world  # noqa: E402
from reward import (RewardModel, Ranker, build_reward_model, hash_uniform, pad_histories,  # noqa: E402
                    simulate_exposure_logs, train_ranker)

N_ITEMS = 60



def random_train(n_users=40, n_items=N_ITEMS, seed=0):
    """Training prefixes of 1 to 6 distinct items per user."""
    rng = np.random.default_rng(seed)
    return [rng.choice(n_items, size=rng.integers(1, 7), replace=False).tolist() for _ in range(n_users)]


def counts_of(train, n_items=N_ITEMS):
    counts = np.zeros(n_items, dtype=np.int64)
    for items in train:
        np.add.at(counts, items, 1)
    return counts


def simulate(train, exposures=5, seed=0, **options):
    return simulate_exposure_logs(train, N_ITEMS, counts_of(train), exposures, exposure_bias=1.0,
                                  history_length=4, seed=seed, **options)


# ----------------------------------------------------------------------------- exposure logs

def test_logs_one_context_per_training_step():
    train = [[3, 5, 7], [9], [1, 2]]
    logs = simulate(train)
    # User 0 has contexts at t = 1 and 2, user 1 has none, and user 2 has one at t = 1.
    assert logs.items[:, 0].tolist() == [5, 7, 2]
    assert logs.histories.tolist() == [[-1, -1, -1, 3], [-1, -1, 3, 5], [-1, -1, -1, 1]]


def test_logs_positives_in_column_zero():
    logs = simulate(random_train())
    assert torch.equal(logs.labels[:, 0], torch.ones(len(logs.labels)))


def test_logs_shapes_and_item_range():
    train = random_train()
    logs = simulate(train, exposures=5)
    n_contexts = sum(len(items) - 1 for items in train)
    assert logs.items.shape == (n_contexts, 6)
    assert logs.labels.shape == (n_contexts, 6)
    assert int(logs.items.min()) >= 0
    assert int(logs.items.max()) < N_ITEMS


def test_logs_history_is_training_prefix():
    train = random_train()
    logs = simulate(train)
    row = 0
    for items in train:
        for t in range(1, len(items)):
            expected = pad_histories([items[:t]], 4)[0]
            assert torch.equal(logs.histories[row], expected), (row, items, t)
            row += 1


def test_logs_only_training_items():
    # The logs are a function of the training prefixes only: nothing outside them appears as a
    # history item or a positive.
    train = random_train()
    logs = simulate(train)
    train_items = {item for items in train for item in items}
    history_items = set(logs.histories[logs.histories >= 0].tolist())
    assert history_items <= train_items
    assert set(logs.items[:, 0].tolist()) <= train_items


def test_logs_deterministic_by_seed():
    train = random_train()
    first, again, other = simulate(train, seed=3), simulate(train, seed=3), simulate(train, seed=4)
    assert torch.equal(first.items, again.items)
    assert torch.equal(first.labels, again.labels)
    assert not torch.equal(first.items, other.items)


def test_logs_exposure_counts_exclude_positives():
    logs = simulate(random_train())
    shown = logs.items[:, 1:].reshape(-1).numpy()
    assert np.array_equal(logs.exposure_counts, np.bincount(shown, minlength=N_ITEMS))


def test_logs_popular_items_shown_more():
    # Item 0 is in every training prefix, so exposure ~ (count + 1)^alpha shows it far more than a rare item.
    rng = np.random.default_rng(0)
    train = [[0] + rng.choice(np.arange(1, N_ITEMS), size=3, replace=False).tolist() for _ in range(100)]
    logs = simulate(train, exposures=10)
    rest = np.delete(logs.exposure_counts, 0)
    assert logs.exposure_counts[0] > 5 * rest.mean()


def test_logs_shown_next_item_is_positive():
    logs = simulate(random_train(), exposures=30)
    matches = logs.items[:, 1:] == logs.items[:, :1]
    assert matches.any()
    assert torch.equal(logs.labels[:, 1:][matches], torch.ones(int(matches.sum())))
    assert torch.equal(logs.labels[:, 1:][~matches], torch.zeros(int((~matches).sum())))


def test_logs_no_context_rejected():
    with pytest.raises(ValueError, match="no training context"):
        simulate([[1], [2]])


@pytest.fixture(scope="module")
def tiny_world():
    return make_world(SyntheticConfig(n_items=80, n_users=60, max_length=10, seed=0))


def world_logs(world, with_clicks):
    """Exposure logs of the world's training prefixes (the last two items of each sequence held out)."""
    train = [seq[:-2] for seq in world.sequences]
    counts = np.zeros(world.n_items, dtype=np.int64)
    for items in train:
        np.add.at(counts, items, 1)
    options = {"world": world, "world_users": list(range(len(train)))} if with_clicks else {}
    return train, simulate_exposure_logs(train, world.n_items, counts, exposures=20, exposure_bias=1.0,
                                         history_length=5, seed=0, **options)


def test_clicks_only_add_labels(tiny_world):
    _, plain = world_logs(tiny_world, with_clicks=False)
    _, clicked = world_logs(tiny_world, with_clicks=True)
    assert torch.equal(plain.items, clicked.items)
    assert torch.equal(clicked.labels[:, 0], torch.ones(len(clicked.labels)))
    assert bool((clicked.labels >= plain.labels).all())
    assert set(clicked.labels.unique().tolist()) == {0.0, 1.0}


def test_clicks_follow_true_preferences(tiny_world):
    train, logs = world_logs(tiny_world, with_clicks=True)
    users = [u for u, items in enumerate(train) for _ in range(1, len(items))]
    lasts = [items[t - 1] for items in train for t in range(1, len(items))]
    logits = tiny_world.true_logits(np.asarray(users), np.asarray(lasts))             # (N, n_items)
    shown = logs.items[:, 1:].numpy()
    shown_logits = np.take_along_axis(logits, shown, axis=1)
    clicked = logs.labels[:, 1:].numpy() > 0
    assert 0.0 < clicked.mean() < 0.5
    assert shown_logits[clicked].mean() > shown_logits[~clicked].mean() + 1.0


# ----------------------------------------------------------------------------- ranker

def hot_item_logs(seed=0):
    """Logs in which items 0..4 are the next item about half the time and are shown often."""
    rng = np.random.default_rng(seed)
    train = []
    for _ in range(150):
        items = []
        while len(items) < 6:
            item = int(rng.integers(0, 5)) if rng.random() < 0.5 else int(rng.integers(5, N_ITEMS))
            if item not in items:
                items.append(item)
        train.append(items)
    return simulate_exposure_logs(train, N_ITEMS, counts_of(train), exposures=8, exposure_bias=1.0,
                                  history_length=4, seed=seed)


def logs_bce(ranker, logs):
    with torch.no_grad():
        return F.binary_cross_entropy_with_logits(ranker(logs.histories, logs.items), logs.labels).item()


def fit(logs, epochs):
    return train_ranker(logs, N_ITEMS, dim=8, epochs=epochs, batch_size=64, lr=0.05, weight_decay=0.0,
                        seed=0, device=torch.device("cpu"))


def test_ranker_training_lowers_bce():
    logs = hot_item_logs()
    untrained = fit(logs, epochs=0)
    trained = fit(logs, epochs=5)
    assert logs_bce(trained, logs) < logs_bce(untrained, logs) - 0.1


def test_ranker_ranks_frequent_positives_higher():
    logs = hot_item_logs()
    ranker = fit(logs, epochs=5)
    with torch.no_grad():
        scores = ranker.score_all(logs.histories[:200])                          # (200, n_items)
    hot = scores[:, :5].mean(1)
    cold = scores[:, 5:].mean(1)
    assert bool((hot > cold).float().mean() > 0.9)


def test_ranker_training_deterministic():
    logs = hot_item_logs()
    first, second = fit(logs, epochs=2), fit(logs, epochs=2)
    for name, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[name]), name


def test_ranker_empty_history_finite():
    ranker = Ranker(N_ITEMS, dim=4)
    scores = ranker.score_all(torch.full((2, 3), -1))
    assert torch.isfinite(scores).all()


# ----------------------------------------------------------------------------- hash_uniform

def test_hash_uniform_deterministic():
    users, items = np.arange(100), np.arange(100) * 7
    assert np.array_equal(hash_uniform(5, users, items), hash_uniform(5, users, items))


def test_hash_uniform_range_and_uniformity():
    values = hash_uniform(1234, np.arange(20000), np.full(20000, 3))
    histogram = np.bincount((values * 10).astype(int), minlength=10)
    assert values.min() >= 0.0
    assert values.max() < 1.0
    assert abs(values.mean() - 0.5) < 0.01
    assert histogram.min() > 1800
    assert histogram.max() < 2200


def test_hash_uniform_depends_on_every_key():
    base = hash_uniform(1, np.arange(1000), np.zeros(1000))
    assert not np.array_equal(base, hash_uniform(2, np.arange(1000), np.zeros(1000)))
    assert not np.array_equal(base, hash_uniform(1, np.arange(1000), np.ones(1000)))
    assert not np.array_equal(base, hash_uniform(1, np.arange(1000) + 1, np.zeros(1000)))


def test_hash_uniform_broadcasts():
    grid = hash_uniform(9, np.arange(4)[:, None], np.arange(3)[None, :])
    assert grid.shape == (4, 3)
    assert grid[2, 1] == hash_uniform(9, np.array([2]), np.array([1]))[0]


# ----------------------------------------------------------------------------- corruption

def reward_model(rate, unit="pair", kind="popularity", exposure_coupled=False, item_counts=None,
                 exposure_counts=None, n_items=N_ITEMS):
    torch.manual_seed(0)
    ranker = Ranker(n_items, dim=4)
    with torch.no_grad():                               # spread the clean scores so corruption is visible
        ranker.bias.weight.normal_(0.0, 1.0)
    cfg = CorruptionConfig(rate=rate, unit=unit, kind=kind, noise_std=2.0, exposure_coupled=exposure_coupled,
                           seed=11)
    if item_counts is None:
        item_counts = np.arange(n_items) + 1
    if exposure_counts is None:
        exposure_counts = np.arange(n_items) * 3
    return RewardModel(ranker.eval(), cfg, np.asarray(item_counts), np.asarray(exposure_counts),
                       score_mean=0.2, score_std=1.5)


def score_batch(model, n_users=50, items=None):
    """Score every item for n_users contexts with one-item histories."""
    users = np.arange(n_users)
    positions = np.full(n_users, 3)
    histories = torch.tensor([[-1, u % N_ITEMS] for u in range(n_users)])
    if items is None:
        items = torch.arange(N_ITEMS).expand(n_users, N_ITEMS).clone()
    return model.score(users, positions, histories, items)


def clean_scores(model, n_users=50):
    clean = reward_model(0.0)
    clean.ranker = model.ranker
    return score_batch(clean, n_users)[0]


@pytest.mark.parametrize("unit", ["sample", "pair"])
def test_corruption_rate_zero_flags_nothing(unit):
    model = reward_model(0.0, unit=unit)
    _, flags = score_batch(model)
    assert not flags.any()


@pytest.mark.parametrize("unit", ["sample", "pair"])
def test_corruption_rate_one_flags_all(unit):
    model = reward_model(1.0, unit=unit)
    _, flags = score_batch(model)
    assert flags.all()


def test_corruption_sample_flags_whole_rows():
    model = reward_model(0.5, unit="sample")
    _, flags = score_batch(model, n_users=200)
    rows = flags.any(1)
    assert np.array_equal(flags.all(1), rows)
    assert 0 < rows.sum() < 200


def test_corruption_pair_varies_within_row():
    model = reward_model(0.5, unit="pair")
    _, flags = score_batch(model, n_users=20)
    mixed = flags.any(1) & ~flags.all(1)
    assert mixed.all()
    assert abs(flags.mean() - 0.5) < 0.05


@pytest.mark.parametrize("unit", ["sample", "pair"])
def test_corruption_same_case_same_flag(unit):
    model = reward_model(0.5, unit=unit, kind="gaussian")
    scores, flags = score_batch(model, n_users=10)
    # The same (user, position, item) in another column and another batch gets the same flag and score.
    permutation = torch.randperm(N_ITEMS, generator=torch.Generator().manual_seed(0))
    items = permutation.expand(10, N_ITEMS).clone()
    shuffled_scores, shuffled_flags = score_batch(model, n_users=10, items=items)
    assert np.array_equal(shuffled_flags, flags[:, permutation.numpy()])
    assert np.allclose(shuffled_scores, scores[:, permutation.numpy()])


def test_corruption_position_changes_context():
    model = reward_model(0.5, unit="sample")
    users = np.arange(200)
    histories = torch.full((200, 2), 3)
    items = torch.zeros((200, 1), dtype=torch.long)
    _, flags_a = model.score(users, np.full(200, 1), histories, items)
    _, flags_b = model.score(users, np.full(200, 2), histories, items)
    assert not np.array_equal(flags_a, flags_b)


def test_corruption_pair_exposure_coupled():
    # Exposure counts rise with the item id: the first third is rarely shown, the last third often.
    model = reward_model(0.4, unit="pair", exposure_coupled=True)
    _, flags = score_batch(model, n_users=300)
    rare = flags[:, :N_ITEMS // 3].mean()
    frequent = flags[:, -N_ITEMS // 3:].mean()
    assert rare > frequent + 0.3
    assert abs(flags.mean() - 0.4) < 0.05


def test_corruption_sample_exposure_coupled():
    model = reward_model(0.4, unit="sample", exposure_coupled=True)
    users = np.arange(400)
    positions = np.full(400, 2)
    items = torch.zeros((400, 3), dtype=torch.long)
    rare_history = torch.tensor([[0, 1]] * 400)
    frequent_history = torch.tensor([[N_ITEMS - 2, N_ITEMS - 1]] * 400)
    _, rare_flags = model.score(users, positions, rare_history, items)
    _, frequent_flags = model.score(users, positions, frequent_history, items)
    assert rare_flags.mean() > frequent_flags.mean() + 0.4


def test_corruption_popularity_orders_by_counts():
    # Item counts fall with the item id, so corrupted scores must fall with it too.
    counts = np.arange(N_ITEMS)[::-1] * 5 + 1
    model = reward_model(1.0, unit="sample", kind="popularity", item_counts=counts)
    scores, _ = score_batch(model, n_users=3)
    for row in scores:
        assert np.all(np.diff(row) < 0)
    log_pop = np.log1p(counts.astype(np.float64))
    z = (log_pop - log_pop.mean()) / log_pop.std()
    assert np.allclose(scores[0], 0.2 + 1.5 * z, atol=1e-6)


def test_corruption_popularity_same_for_all_contexts():
    model = reward_model(1.0, unit="sample", kind="popularity")
    scores, _ = score_batch(model, n_users=4)
    assert np.allclose(scores, scores[:1])


def test_corruption_flip_mirrors_around_mean():
    model = reward_model(1.0, unit="pair", kind="flip")
    flipped, _ = score_batch(model)
    clean = clean_scores(model)
    assert np.allclose(flipped + clean, 2 * 0.2)


def test_corruption_gaussian_adds_noise():
    model = reward_model(1.0, unit="pair", kind="gaussian")
    noisy, _ = score_batch(model, n_users=200)
    noise = noisy - clean_scores(model, n_users=200)
    assert np.all(noise != 0.0)
    assert abs(noise.mean()) < 0.1
    assert abs(noise.std() - 2.0 * 1.5) < 0.15              # noise_std in units of the score std


def test_corruption_only_flagged_scores_change():
    model = reward_model(0.3, unit="pair", kind="gaussian")
    scores, flags = score_batch(model)
    clean = clean_scores(model)
    assert np.array_equal(scores[~flags], clean[~flags])
    assert np.all(scores[flags] != clean[flags])


@pytest.mark.parametrize("unit", ["sample", "pair"])
@pytest.mark.parametrize("kind", ["popularity", "gaussian", "flip"])
def test_corruption_invalid_items_nan_unflagged(unit, kind):
    model = reward_model(1.0, unit=unit, kind=kind)
    items = torch.tensor([[-1, 4, -1], [7, -1, 2]])
    scores, flags = model.score(np.arange(2), np.full(2, 1), torch.tensor([[-1, 1], [2, 3]]), items)
    invalid = items.numpy() < 0
    assert np.isnan(scores[invalid]).all()
    assert np.isfinite(scores[~invalid]).all()
    assert not flags[invalid].any()


def test_corruption_score_all_matches_score():
    model = reward_model(0.5, unit="pair", kind="flip")
    histories = torch.tensor([[-1, 1], [2, 3]])
    full = model.score_all(np.arange(2), np.full(2, 2), histories)
    direct, _ = model.score(np.arange(2), np.full(2, 2), histories, torch.arange(N_ITEMS).expand(2, N_ITEMS))
    assert np.array_equal(full, direct)


def test_build_reward_model_score_scale():
    logs = hot_item_logs()
    ranker = fit(logs, epochs=1)
    model = build_reward_model(ranker, logs, CorruptionConfig(rate=0.0), counts_of([[0, 1]]))
    with torch.no_grad():
        scores = ranker(logs.histories, logs.items).double()
    assert math.isclose(model.score_mean, scores.mean().item(), rel_tol=1e-9)
    assert math.isclose(model.score_std, scores.std().item(), rel_tol=1e-6)
