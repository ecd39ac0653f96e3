"""The AdaGRPO gate: two rollout diagnostics decide which samples get the GRPO term.

Policy-side difficulty (`gate.policy`): is the policy still uncertain about this sample?
  gt_rank     rank of the ground-truth SID among the group's distinct rollouts by policy log-prob
              (G + 1 when absent); passes when rank > threshold, i.e. the ground truth is not already
              among the policy's `threshold` most likely candidates.
  gt_logprob  passes when the policy's probability of the ground-truth SID is below the threshold.
  entropy     entropy (nats) of the rollout distribution renormalised over the distinct rollouts;
              passes when it is at least the threshold.
Reward discriminability (`gate.reward`): can the ranker tell the ground truth from the negatives?
Negatives are the group's distinct valid rollout items other than the ground truth.
  gt_rank     rank of the ground truth's score among {ground truth} + negatives; passes when <= threshold.
  auc         share of negatives the ground truth beats (ties count half); passes when >= threshold.
  margin      ground-truth score minus the best negative's score; passes when >= threshold.
A sample with no valid negative fails the reward test: the ranker has shown nothing to separate.
Everything here runs without gradient.
"""

from dataclasses import dataclass

import numpy as np
import torch

from reward import hash_uniform


@dataclass
class GroupView:
    """The gate's input: one rollout group per sample (B samples, G rollouts)."""
    distinct: torch.Tensor          # (B, G) bool: first occurrence of each SID in its group
    is_target: torch.Tensor         # (B, G) bool: the rollout is the ground-truth SID
    rollout_logprobs: torch.Tensor  # (B, G) policy log-prob of each rollout
    target_logprob: torch.Tensor    # (B,) policy log-prob of the ground-truth SID
    rollout_scores: torch.Tensor    # (B, G) ranker score, NaN for invalid rollouts
    target_score: torch.Tensor      # (B,) ranker score of the ground truth


def policy_difficulty(view: GroupView, kind: str, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (passes (B,) bool, diagnostic value (B,)) for the policy-side test."""
    group = view.rollout_logprobs.shape[1]
    if kind == "none":
        ones = torch.ones(len(view.target_logprob))
        return ones.bool(), ones
    if kind == "gt_rank":
        others = view.distinct & ~view.is_target
        above = (others & (view.rollout_logprobs > view.target_logprob[:, None])).sum(1)
        present = (view.is_target & view.distinct).any(1)
        rank = torch.where(present, above + 1, torch.full_like(above, group + 1)).float()
        return rank > threshold, rank
    if kind == "gt_logprob":
        prob = view.target_logprob.exp()
        return prob < threshold, prob
    if kind == "entropy":
        logits = view.rollout_logprobs.masked_fill(~view.distinct, float("-inf"))
        p = torch.softmax(logits, dim=1)
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(1)
        return entropy >= threshold, entropy
    raise ValueError(f"gate.policy={kind!r} is not a known diagnostic")


def reward_discriminability(view: GroupView, kind: str, threshold: float
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (passes (B,) bool, value (B,), auc (B,)); auc = share of negatives the ground truth beats."""
    negatives = view.distinct & ~view.is_target & ~torch.isnan(view.rollout_scores)     # (B, G)
    n_neg = negatives.sum(1)
    has_neg = n_neg > 0
    scores = torch.nan_to_num(view.rollout_scores, nan=0.0)
    gt = view.target_score[:, None]
    beats = ((gt > scores).float() + 0.5 * (gt == scores).float()) * negatives
    auc = torch.where(has_neg, beats.sum(1) / n_neg.clamp(min=1), torch.zeros_like(view.target_score))
    if kind == "none":
        return torch.ones_like(has_neg), auc, auc
    if kind == "gt_rank":
        value = 1.0 + ((scores > gt) & negatives).sum(1).float()
        passes = value <= threshold
    elif kind == "auc":
        value, passes = auc, auc >= threshold
    elif kind == "margin":
        best = scores.masked_fill(~negatives, float("-inf")).max(1).values
        value = view.target_score - best
        passes = value >= threshold
    else:
        raise ValueError(f"gate.reward={kind!r} is not a known diagnostic")
    value = torch.where(has_neg, value.float(), torch.zeros_like(auc))   # no negatives: no finite value
    return passes & has_neg, value, auc


def gate_weights(method: str, cfg, view: GroupView, context_keys: np.ndarray, step: int
                 ) -> tuple[torch.Tensor, dict]:
    """Per-sample weight g_i of the GRPO term and the gate's statistics for logging.

    grpo: g = 1 for all. adagrpo: g = policy pass AND reward pass (graded: policy pass x AUC).
    random: g ~ Bernoulli(gate.random_rate) from a seeded hash of (context key, step), a control that
    admits a matched share of samples with no information. context_keys: (B,) integers, one per context.
    """
    policy_pass, policy_value = policy_difficulty(view, cfg.policy, cfg.policy_threshold)
    reward_pass, reward_value, auc = reward_discriminability(view, cfg.reward, cfg.reward_threshold)

    if method == "grpo":
        weights = torch.ones_like(auc)
    elif method == "adagrpo":
        weights = policy_pass.float() * (auc if cfg.graded else reward_pass.float())
    elif method == "random":
        draws = hash_uniform(987_654_321, context_keys, np.full(len(context_keys), step))
        weights = torch.from_numpy(draws < cfg.random_rate).float()
    else:
        raise ValueError(f"rl.method={method!r} has no gate; use adagrpo, grpo or random")

    stats = {
        "gate/admission_rate": (weights > 0).float().mean().item(),
        "gate/mean_weight": weights.mean().item(),
        "gate/fail_policy": (~policy_pass).float().mean().item(),
        "gate/fail_reward": (~reward_pass).float().mean().item(),
        "gate/policy_value": policy_value.float().mean().item(),
        "gate/reward_value": reward_value.float().mean().item(),
        "gate/gt_auc": auc.mean().item(),
    }
    return weights, stats
