import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from config import GateConfig  # noqa: E402
from gate import GroupView, gate_weights, policy_difficulty, reward_discriminability  # noqa: E402

NAN = math.nan



def make_view(distinct, is_target, rollout_logprobs, target_logprob, rollout_scores, target_score):
    """GroupView from nested lists, one row per sample."""
    return GroupView(
        distinct=torch.tensor(distinct, dtype=torch.bool),
        is_target=torch.tensor(is_target, dtype=torch.bool),
        rollout_logprobs=torch.tensor(rollout_logprobs, dtype=torch.float32),
        target_logprob=torch.tensor(target_logprob, dtype=torch.float32),
        rollout_scores=torch.tensor(rollout_scores, dtype=torch.float32),
        target_score=torch.tensor(target_score, dtype=torch.float32),
    )


def policy_view(distinct, is_target, rollout_logprobs, target_logprob):
    """View for policy diagnostics: scores are irrelevant there and set to zero."""
    batch, group = len(distinct), len(distinct[0])
    return make_view(distinct, is_target, rollout_logprobs, target_logprob,
                     [[0.0] * group for _ in range(batch)], [0.0] * batch)


def reward_view(distinct, is_target, rollout_scores, target_score):
    """View for reward diagnostics: log-probs are irrelevant there and set to zero."""
    batch, group = len(distinct), len(distinct[0])
    return make_view(distinct, is_target, [[0.0] * group for _ in range(batch)], [0.0] * batch,
                     rollout_scores, target_score)


# ----------------------------------------------------------------------------- policy diagnostics

def test_policy_gt_rank_target_present():
    # Rollouts are sorted by log-prob, and the target is the third most likely distinct SID.
    view = policy_view(distinct=[[True, True, True, True]],
                       is_target=[[False, False, True, False]],
                       rollout_logprobs=[[-0.5, -1.0, -1.5, -2.0]],
                       target_logprob=[-1.5])
    passes, rank = policy_difficulty(view, "gt_rank", threshold=2.0)
    assert rank.tolist() == [3.0]
    assert passes.tolist() == [True]


def test_policy_gt_rank_target_top_fails():
    view = policy_view([[True, True, True]], [[True, False, False]], [[-0.1, -1.0, -2.0]], [-0.1])
    passes, rank = policy_difficulty(view, "gt_rank", threshold=1.0)
    assert rank.tolist() == [1.0]
    assert passes.tolist() == [False]


def test_policy_gt_rank_target_absent():
    group = 4
    view = policy_view([[True] * group], [[False] * group], [[-0.5, -1.0, -1.5, -2.0]], [-9.0])
    passes, rank = policy_difficulty(view, "gt_rank", threshold=float(group))
    assert rank.tolist() == [group + 1.0]
    assert passes.tolist() == [True]


def test_policy_gt_rank_ignores_duplicates():
    # Rollouts 0 and 1 are the same SID (sampling repeats it): it counts once above the target.
    view = policy_view(distinct=[[True, False, True, True]],
                       is_target=[[False, False, True, False]],
                       rollout_logprobs=[[-0.5, -0.5, -1.5, -2.0]],
                       target_logprob=[-1.5])
    _, rank = policy_difficulty(view, "gt_rank", threshold=1.0)
    assert rank.tolist() == [2.0]


def test_policy_gt_rank_duplicate_target():
    # The target is sampled twice. The second copy is not distinct, but the target still counts as present.
    view = policy_view(distinct=[[True, True, False]],
                       is_target=[[True, False, True]],
                       rollout_logprobs=[[-1.0, -0.2, -1.0]],
                       target_logprob=[-1.0])
    _, rank = policy_difficulty(view, "gt_rank", threshold=1.0)
    assert rank.tolist() == [2.0]


def test_policy_gt_rank_batch_rows_independent():
    view = policy_view(distinct=[[True, True], [True, True]],
                       is_target=[[True, False], [False, False]],
                       rollout_logprobs=[[-0.1, -3.0], [-0.1, -3.0]],
                       target_logprob=[-0.1, -5.0])
    passes, rank = policy_difficulty(view, "gt_rank", threshold=1.0)
    assert rank.tolist() == [1.0, 3.0]
    assert passes.tolist() == [False, True]


def test_policy_gt_logprob():
    view = policy_view([[True, True], [True, True]], [[False, False], [False, False]],
                       [[-1.0, -2.0], [-1.0, -2.0]], [math.log(0.05), math.log(0.5)])
    passes, prob = policy_difficulty(view, "gt_logprob", threshold=0.1)
    assert torch.allclose(prob, torch.tensor([0.05, 0.5]))
    assert passes.tolist() == [True, False]


def test_policy_entropy_uniform_is_log_g():
    group = 4
    view = policy_view([[True] * group], [[False] * group], [[-3.0] * group], [-3.0])
    passes, entropy = policy_difficulty(view, "entropy", threshold=math.log(group) - 1e-4)
    assert math.isclose(entropy.item(), math.log(group), rel_tol=1e-5)
    assert passes.tolist() == [True]


def test_policy_entropy_renormalised_over_distinct():
    # Two distinct SIDs with probabilities 0.3 and 0.1 are renormalised to 0.75 and 0.25. The duplicate is ignored.
    view = policy_view([[True, True, False]], [[False, False, False]],
                       [[math.log(0.3), math.log(0.1), math.log(0.3)]], [-5.0])
    passes, entropy = policy_difficulty(view, "entropy", threshold=0.6)
    expected = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert math.isclose(entropy.item(), expected, rel_tol=1e-5)
    assert passes.tolist() == [False]


def test_policy_entropy_single_distinct_zero():
    view = policy_view([[True, False, False]], [[False, False, False]], [[-0.1, -0.1, -0.1]], [-5.0])
    _, entropy = policy_difficulty(view, "entropy", threshold=0.0)
    assert entropy.item() == 0.0


def test_policy_none_passes_all():
    view = policy_view([[True, True]] * 3, [[True, False]] * 3, [[-0.1, -2.0]] * 3, [-0.1] * 3)
    passes, _ = policy_difficulty(view, "none", threshold=1.0)
    assert passes.tolist() == [True, True, True]


def test_policy_unknown_kind_rejected():
    view = policy_view([[True, True]], [[False, False]], [[-1.0, -2.0]], [-1.0])
    with pytest.raises(ValueError, match="gate.policy='bogus'"):
        policy_difficulty(view, "bogus", threshold=1.0)


# ----------------------------------------------------------------------------- reward diagnostics

def test_reward_gt_rank():
    # Negatives score 3, 1 and 0.5. Only 3 beats the ground truth (2.0), so its rank is 2.
    view = reward_view([[True, True, True]], [[False, False, False]], [[3.0, 1.0, 0.5]], [2.0])
    passes, value, _ = reward_discriminability(view, "gt_rank", threshold=1.0)
    assert value.tolist() == [2.0]
    assert passes.tolist() == [False]


def test_reward_gt_rank_best_passes():
    view = reward_view([[True, True]], [[False, False]], [[1.0, 0.5]], [2.0])
    passes, value, _ = reward_discriminability(view, "gt_rank", threshold=1.0)
    assert value.tolist() == [1.0]
    assert passes.tolist() == [True]


def test_reward_excludes_target_duplicates_invalid():
    # Rollout 0 is the ground truth itself, rollout 2 a repeat of rollout 1, rollout 3 invalid (NaN).
    view = reward_view(distinct=[[True, True, False, True, True]],
                       is_target=[[True, False, False, False, False]],
                       rollout_scores=[[2.0, 5.0, 5.0, NAN, 1.0]],
                       target_score=[2.0])
    _, rank, auc = reward_discriminability(view, "gt_rank", threshold=1.0)
    assert rank.tolist() == [2.0]
    assert auc.tolist() == [0.5]                       # beats 1.0, loses to 5.0


def test_reward_auc_ties_count_half():
    view = reward_view([[True, True, True, True]], [[False, False, False, False]],
                       [[1.0, 2.0, 2.0, 3.0]], [2.0])
    passes, value, auc = reward_discriminability(view, "auc", threshold=0.5)
    assert value.tolist() == [0.5]                     # (1 + 0.5 + 0.5 + 0) / 4
    assert auc.tolist() == [0.5]
    assert passes.tolist() == [True]


def test_reward_auc_below_threshold_fails():
    view = reward_view([[True, True, True, True]], [[False, False, False, False]],
                       [[1.0, 3.0, 4.0, 5.0]], [2.0])
    passes, value, _ = reward_discriminability(view, "auc", threshold=0.5)
    assert value.tolist() == [0.25]
    assert passes.tolist() == [False]


def test_reward_margin():
    view = reward_view([[True, True, True], [True, True, True]], [[False] * 3, [False] * 3],
                       [[0.5, 1.25, -1.0], [0.5, 3.0, -1.0]], [2.0, 2.0])
    passes, margin, _ = reward_discriminability(view, "margin", threshold=0.5)
    assert margin.tolist() == [0.75, -1.0]
    assert passes.tolist() == [True, False]


def test_reward_none_passes_all():
    view = reward_view([[True, True]], [[False, False]], [[9.0, 9.0]], [0.0])
    passes, _, auc = reward_discriminability(view, "none", threshold=1.0)
    assert passes.tolist() == [True]
    assert auc.tolist() == [0.0]


@pytest.mark.parametrize("kind", ["gt_rank", "auc", "margin"])
def test_reward_no_negatives_fails_finite(kind):
    # Row 0: every rollout is invalid. Row 1: the only distinct rollout is the ground truth.
    view = reward_view(distinct=[[True, True], [True, False]],
                       is_target=[[False, False], [True, True]],
                       rollout_scores=[[NAN, NAN], [1.0, 1.0]],
                       target_score=[1.0, 1.0])
    passes, value, auc = reward_discriminability(view, kind, threshold=-100.0)
    assert passes.tolist() == [False, False]
    assert torch.isfinite(value).all()
    assert torch.isfinite(auc).all()


def test_reward_unknown_kind_rejected():
    view = reward_view([[True, True]], [[False, False]], [[1.0, 2.0]], [1.5])
    with pytest.raises(ValueError, match="gate.reward='bogus'"):
        reward_discriminability(view, "bogus", threshold=1.0)


# ----------------------------------------------------------------------------- gate_weights

def gate_batch():
    """Build four samples: both tests pass, the policy test fails, the reward test fails, no negatives.

    Policy test gt_rank > 1: samples 0, 2 and 3 have the target absent (rank G + 1), sample 1 has it on top.
    Reward test gt_rank <= 1: sample 0 beats both negatives (AUC 1), sample 2 beats one of two (AUC 0.5).
    """
    return make_view(
        distinct=[[True, True]] * 4,
        is_target=[[False, False], [True, False], [False, False], [False, False]],
        rollout_logprobs=[[-1.0, -2.0], [-0.1, -2.0], [-1.0, -2.0], [-1.0, -2.0]],
        target_logprob=[-5.0, -0.1, -5.0, -5.0],
        rollout_scores=[[1.0, 0.0], [0.0, 1.0], [3.0, 0.0], [NAN, NAN]],
        target_score=[2.0, 2.0, 2.0, 2.0],
    )


def test_gate_grpo_all_ones():
    weights, stats = gate_weights("grpo", GateConfig(), gate_batch(), np.arange(4), step=0)
    assert weights.tolist() == [1.0, 1.0, 1.0, 1.0]
    assert stats["gate/admission_rate"] == 1.0


def test_gate_adagrpo_binary():
    cfg = GateConfig(policy="gt_rank", policy_threshold=1.0, reward="gt_rank", reward_threshold=1.0)
    weights, stats = gate_weights("adagrpo", cfg, gate_batch(), np.arange(4), step=0)
    assert weights.tolist() == [1.0, 0.0, 0.0, 0.0]
    assert stats["gate/admission_rate"] == 0.25
    assert stats["gate/fail_policy"] == 0.25
    assert stats["gate/fail_reward"] == 0.5


def test_gate_adagrpo_graded():
    weights, stats = gate_weights("adagrpo", GateConfig(graded=True), gate_batch(), np.arange(4), step=0)
    assert weights.tolist() == [1.0, 0.0, 0.5, 0.0]    # policy pass x AUC
    assert stats["gate/admission_rate"] == 0.5
    assert stats["gate/mean_weight"] == 0.375


def test_gate_stats_finite():
    _, stats = gate_weights("adagrpo", GateConfig(), gate_batch(), np.arange(4), step=0)
    for key, value in stats.items():
        assert math.isfinite(value), key


def random_view(batch):
    return make_view([[True, True]] * batch, [[False, False]] * batch, [[-1.0, -2.0]] * batch,
                     [-5.0] * batch, [[1.0, 0.0]] * batch, [2.0] * batch)


def test_gate_random_admission_share():
    users = np.arange(5000)
    cfg = GateConfig(random_rate=0.3)
    weights, stats = gate_weights("random", cfg, random_view(len(users)), users, step=7)
    assert set(weights.unique().tolist()) <= {0.0, 1.0}
    assert abs(stats["gate/admission_rate"] - 0.3) < 0.03


def test_gate_random_deterministic_per_user_step():
    users = np.arange(200)
    cfg = GateConfig(random_rate=0.5)
    first, _ = gate_weights("random", cfg, random_view(200), users, step=3)
    again, _ = gate_weights("random", cfg, random_view(200), users, step=3)
    # The same users in another order and in a smaller batch get the same draws.
    reordered, _ = gate_weights("random", cfg, random_view(200), users[::-1].copy(), step=3)
    subset, _ = gate_weights("random", cfg, random_view(50), users[100:150], step=3)
    assert torch.equal(first, again)
    assert torch.equal(first, reordered.flip(0))
    assert torch.equal(first[100:150], subset)


def test_gate_random_varies_with_step():
    users = np.arange(200)
    cfg = GateConfig(random_rate=0.5)
    step_3, _ = gate_weights("random", cfg, random_view(200), users, step=3)
    step_4, _ = gate_weights("random", cfg, random_view(200), users, step=4)
    assert not torch.equal(step_3, step_4)


def test_gate_unknown_method_rejected():
    with pytest.raises(ValueError, match="rl.method='none'"):
        gate_weights("none", GateConfig(), gate_batch(), np.arange(4), step=0)
