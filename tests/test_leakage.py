"""Validation and test targets must not reach anything learned from interactions.

The run data is built twice from the same synthetic world: once as generated, once with the last two items
of every sequence (the validation and test targets) replaced. Everything derived from training data must
come out identical.
"""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data.build  # noqa: E402
from config import load_config  # noqa: E402
from data.build import build_run_data  # noqa: E402
from reward import simulate_exposure_logs, train_ranker  # noqa: E402
from rl import build_reward  # noqa: E402

TINY = ["world.n_items=200", "world.n_users=300", "sid.codebook_size=16", "ranker.epochs=2",
        "ranker.exposures=20", "device=cpu"]



def replace_targets(sequences, n_items):
    """Replace the last two items of every sequence with other items that are not in the sequence."""
    changed = []
    for items in sequences:
        kept = items[:-2]
        replacements = [i for i in range(n_items) if i not in items][:2]
        changed.append(kept + replacements)
    return changed


def build_pair(monkeypatch, item_vectors):
    """(run data as generated, run data with every validation and test target replaced)."""
    cfg = load_config(str(ROOT / "small.yaml"), TINY + [f"data.item_vectors={item_vectors}"])
    original = build_run_data(cfg)
    make_world = data.build.make_world

    def world_with_new_targets(world_cfg):
        world = make_world(world_cfg)
        return dataclasses.replace(world, sequences=replace_targets(world.sequences, world.n_items))

    monkeypatch.setattr(data.build, "make_world", world_with_new_targets)
    changed = build_run_data(cfg)
    return cfg, original, changed


@pytest.fixture(scope="module")
def pair():
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield build_pair(monkeypatch, "collaborative")


def test_leakage_targets_really_changed(pair):
    _, original, changed = pair
    assert original.split.train == changed.split.train
    assert all(a != b for a, b in zip(original.split.valid_target, changed.split.valid_target))
    assert all(a != b for a, b in zip(original.split.test_target, changed.split.test_target))


def test_leakage_collaborative_sids_unchanged(pair):
    _, original, changed = pair
    assert np.array_equal(original.sids.codes, changed.sids.codes)


def test_leakage_both_sids_unchanged(monkeypatch):
    _, original, changed = build_pair(monkeypatch, "both")
    assert np.array_equal(original.sids.codes, changed.sids.codes)


def test_leakage_item_counts_unchanged(pair):
    _, original, changed = pair
    assert np.array_equal(original.item_counts, changed.item_counts)


def exposure_logs(cfg, run):
    return simulate_exposure_logs(run.split.train, run.split.n_items, run.item_counts, cfg.ranker.exposures,
                                  cfg.ranker.exposure_bias, cfg.data.max_history, cfg.seed, run.world,
                                  run.world_users())


def test_leakage_exposure_logs_unchanged(pair):
    cfg, original, changed = pair
    logs_a, logs_b = exposure_logs(cfg, original), exposure_logs(cfg, changed)
    assert torch.equal(logs_a.histories, logs_b.histories)
    assert torch.equal(logs_a.items, logs_b.items)
    assert torch.equal(logs_a.labels, logs_b.labels)
    assert np.array_equal(logs_a.exposure_counts, logs_b.exposure_counts)


def test_leakage_ranker_unchanged(pair):
    cfg, original, changed = pair
    rankers = []
    for run in (original, changed):
        rankers.append(train_ranker(exposure_logs(cfg, run), run.split.n_items, cfg.ranker.dim, cfg.ranker.epochs,
                                    cfg.ranker.batch_size, cfg.ranker.lr, cfg.ranker.weight_decay, cfg.seed,
                                    torch.device("cpu")))
    state_a, state_b = rankers[0].state_dict(), rankers[1].state_dict()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


def test_leakage_reward_model_unchanged(pair, tmp_path):
    # build_reward is the RL stage's entry point: logs, ranker, score scale and corruption together.
    cfg, original, changed = pair
    cfg = dataclasses.replace(cfg, corruption=dataclasses.replace(cfg.corruption, rate=0.4))
    models = []
    for name, run in (("original", original), ("changed", changed)):
        folder = tmp_path / name
        folder.mkdir()
        models.append(build_reward(cfg, run, folder, torch.device("cpu")))
    users = np.arange(50)
    histories = torch.tensor([[-1] * 18 + items[-2:] for items in original.split.train[:50]])
    items = torch.arange(20).expand(50, 20)
    scores_a, flags_a = models[0].score(users, np.full(50, 2), histories, items)
    scores_b, flags_b = models[1].score(users, np.full(50, 2), histories, items)
    assert np.array_equal(scores_a, scores_b)
    assert np.array_equal(flags_a, flags_b)
