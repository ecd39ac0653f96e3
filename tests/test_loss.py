import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loss import adagrpo_loss, group_advantages, grpo_term  # noqa: E402



# ----------------------------------------------------------------------------- group_advantages

def test_advantages_equal_rewards_zero():
    rewards = torch.tensor([[0.7, 0.7, 0.7, 0.7], [-3.0, -3.0, -3.0, -3.0]])
    advantages = group_advantages(rewards)
    assert torch.equal(advantages, torch.zeros_like(rewards))


def test_advantages_float_residue_zero():
    # In float64, 0.1 + 0.2 != 0.3, so the group's std is a tiny non-zero number.
    rewards = torch.tensor([[0.1 + 0.2, 0.3, 0.3]], dtype=torch.float64)
    assert rewards.std(unbiased=False).item() > 0.0
    for eps in (1e-6, 0.0):
        advantages = group_advantages(rewards, eps=eps)
        assert torch.equal(advantages, torch.zeros_like(rewards)), f"eps={eps}"


def test_advantages_equal_rewards_no_nan():
    rewards = torch.full((3, 5), 2.5)
    advantages = group_advantages(rewards, eps=0.0)
    assert torch.isfinite(advantages).all()


def test_advantages_population_std():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    advantages = group_advantages(rewards, eps=0.0)
    std = math.sqrt(1.25)                         # divide by G = 4, not by G - 1 = 3
    expected = torch.tensor([[-1.5, -0.5, 0.5, 1.5]], dtype=torch.float64) / std
    assert torch.allclose(advantages, expected, rtol=0, atol=1e-12)


def test_advantages_hand_values_with_eps():
    rewards = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    advantages = group_advantages(rewards, eps=0.5)
    # mean 2, population std 1, so A = (r - 2) / 1.5.
    expected = torch.tensor([[-1.0 / 1.5, 1.0 / 1.5]], dtype=torch.float64)
    assert torch.allclose(advantages, expected, rtol=0, atol=1e-12)


def test_advantages_groups_independent():
    rewards = torch.tensor([[0.0, 2.0], [5.0, 5.0]], dtype=torch.float64)
    advantages = group_advantages(rewards, eps=0.0)
    assert torch.allclose(advantages[0], torch.tensor([-1.0, 1.0], dtype=torch.float64))
    assert torch.equal(advantages[1], torch.zeros(2, dtype=torch.float64))


def test_advantages_zero_mean_per_group():
    rewards = torch.tensor([[0.3, -1.2, 4.0, 0.0, 2.2]])
    advantages = group_advantages(rewards)
    assert abs(advantages.mean().item()) < 1e-6


# ----------------------------------------------------------------------------- grpo_term

def test_grpo_ratio_one_minus_mean():
    logp = torch.tensor([[[-0.5, -1.0], [-2.0, -0.1]]])                # (B=1, G=2, L=2)
    advantages = torch.tensor([[1.0, 2.0]])
    loss, stats = grpo_term(logp, logp.clone(), advantages, clip_eps=0.2)
    assert torch.allclose(loss, torch.tensor([-1.5]))
    assert stats["clip_fraction"] == 0.0


def test_grpo_clips_positive_advantage():
    old = torch.zeros(1, 1, 1)
    logp = torch.full((1, 1, 1), math.log(1.5), requires_grad=True)     # ratio 1.5 > 1 + eps
    loss, stats = grpo_term(logp, old, torch.tensor([[2.0]]), clip_eps=0.2)
    assert torch.allclose(loss, torch.tensor([-1.2 * 2.0]))
    loss.sum().backward()
    assert logp.grad.item() == 0.0
    assert stats["clip_fraction"] == 1.0


def test_grpo_negative_advantage_keeps_ratio():
    # With A < 0 the min picks the unclipped, more pessimistic ratio * A.
    old = torch.zeros(1, 1, 1)
    logp = torch.full((1, 1, 1), math.log(1.5))
    loss, stats = grpo_term(logp, old, torch.tensor([[-2.0]]), clip_eps=0.2)
    assert torch.allclose(loss, torch.tensor([1.5 * 2.0]))
    assert stats["clip_fraction"] == 1.0


def test_grpo_within_eps_not_clipped():
    old = torch.zeros(1, 1, 1)
    logp = torch.full((1, 1, 1), math.log(1.1), requires_grad=True)
    loss, stats = grpo_term(logp, old, torch.tensor([[1.0]]), clip_eps=0.2)
    assert torch.allclose(loss, torch.tensor([-1.1]))
    loss.sum().backward()
    assert logp.grad.item() != 0.0
    assert stats["clip_fraction"] == 0.0


def test_grpo_clip_fraction_counts_tokens():
    old = torch.zeros(1, 2, 2)
    logp = torch.tensor([[[math.log(1.5), 0.0], [0.0, math.log(0.5)]]])   # 2 of 4 tokens beyond eps
    _, stats = grpo_term(logp, old, torch.tensor([[1.0, -1.0]]), clip_eps=0.2)
    assert stats["clip_fraction"] == 0.5


def test_grpo_kl_zero_at_reference():
    logp = torch.tensor([[[-0.3, -2.0]]])
    loss_with_kl, stats = grpo_term(logp, logp.clone(), torch.tensor([[1.0]]), 0.2, ref_logp=logp.clone(),
                                    kl_beta=0.5)
    loss_without_kl, _ = grpo_term(logp, logp.clone(), torch.tensor([[1.0]]), 0.2)
    assert stats["kl"] == 0.0
    assert torch.equal(loss_with_kl, loss_without_kl)


def test_grpo_kl_positive_off_reference():
    logp = torch.tensor([[[-0.3, -2.0]]])
    ref = torch.tensor([[[-1.0, -0.5]]])
    loss_with_kl, stats = grpo_term(logp, logp.clone(), torch.tensor([[0.0]]), 0.2, ref_logp=ref, kl_beta=0.5)
    log_ratio = ref - logp
    k3 = (log_ratio.exp() - log_ratio - 1.0).mean()
    assert stats["kl"] > 0.0
    assert math.isclose(stats["kl"], k3.item(), rel_tol=1e-6)
    assert torch.allclose(loss_with_kl, 0.5 * k3.reshape(1))


def test_grpo_kl_off_when_beta_zero():
    logp = torch.tensor([[[-0.3, -2.0]]])
    ref = torch.tensor([[[-1.0, -0.5]]])
    loss, stats = grpo_term(logp, logp.clone(), torch.tensor([[0.0]]), 0.2, ref_logp=ref, kl_beta=0.0)
    assert stats["kl"] == 0.0
    assert torch.equal(loss, torch.zeros(1))


@pytest.mark.parametrize("overflow", ["ratio", "kl"])
def test_grpo_extreme_log_ratio_finite(overflow):
    logp = torch.zeros(1, 1, 2)
    old = torch.zeros(1, 1, 2)
    ref = torch.zeros(1, 1, 2)
    if overflow == "ratio":
        old -= 200.0
    else:
        ref += 200.0
    loss, stats = grpo_term(logp, old, torch.tensor([[-1.0]]), 0.2, ref_logp=ref, kl_beta=0.1)
    assert torch.isfinite(loss).all()
    assert math.isfinite(stats["kl"])


def test_grpo_output_shape():
    logp = torch.zeros(3, 4, 2)
    loss, _ = grpo_term(logp, logp, torch.zeros(3, 4), 0.2)
    assert loss.shape == (3,)


# ----------------------------------------------------------------------------- adagrpo_loss

@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_adagrpo_gated_off_zero_grad(bad):
    nll = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    grpo = torch.tensor([0.5, bad, -0.25], requires_grad=True)
    weights = torch.tensor([1.0, 0.0, 1.0])
    loss = adagrpo_loss(nll, grpo, weights, lam=2.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert grpo.grad[1].item() == 0.0
    assert torch.allclose(grpo.grad, torch.tensor([2.0 / 3, 0.0, 2.0 / 3]))
    assert torch.allclose(nll.grad, torch.full((3,), 1.0 / 3))


@pytest.mark.parametrize("overflow", ["ratio", "kl"])
def test_adagrpo_gated_off_overflow_zero_grad(overflow):
    """Through grpo_term: a gated-off rollout whose ratio or k3 KL would overflow exp must not put NaN
    into the gradient of the log-probs (inf * 0 in the backward pass of exp)."""
    logp = torch.tensor([[[-0.5, -0.7]], [[-1.0, -1.2]]], requires_grad=True)   # (B=2, G=1, L=2)
    old = logp.detach().clone()
    ref = logp.detach().clone()
    if overflow == "ratio":
        old[1] = -200.0                                   # exp(logp - old) overflows float32
    else:
        ref[1] = 200.0                                    # exp(ref - logp) overflows float32
    advantages = torch.tensor([[1.0], [0.0]])
    grpo, _ = grpo_term(logp, old, advantages, clip_eps=0.2, ref_logp=ref, kl_beta=0.1)
    nll = -logp[:, 0].sum(-1)
    loss = adagrpo_loss(nll, grpo, torch.tensor([1.0, 0.0]), lam=1.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(logp.grad).all()
    assert torch.equal(logp.grad[1], torch.tensor([[-0.5, -0.5]]))   # NLL only: d(-logp / B) = -1/2


def test_adagrpo_all_gated_off_is_mean_nll():
    nll = torch.tensor([0.3, 1.7, 2.2, 0.9])
    grpo = torch.tensor([5.0, math.nan, -3.0, math.inf])
    loss = adagrpo_loss(nll, grpo, torch.zeros(4), lam=1.0)
    assert loss.item() == nll.mean().item()


def test_adagrpo_all_admitted_adds_term():
    nll = torch.tensor([1.0, 2.0])
    grpo = torch.tensor([0.5, -1.5])
    loss = adagrpo_loss(nll, grpo, torch.ones(2), lam=0.5)
    assert math.isclose(loss.item(), (1.0 + 0.25 + 2.0 - 0.75) / 2, rel_tol=1e-6)


def test_adagrpo_graded_weights_scale_term():
    nll = torch.zeros(3)
    grpo = torch.tensor([2.0, 2.0, 2.0], requires_grad=True)
    weights = torch.tensor([1.0, 0.5, 0.25])
    loss = adagrpo_loss(nll, grpo, weights, lam=1.0)
    loss.backward()
    assert math.isclose(loss.item(), (2.0 + 1.0 + 0.5) / 3, rel_tol=1e-6)
    assert torch.allclose(grpo.grad, weights / 3)


def test_adagrpo_lambda_zero_is_mean_nll():
    nll = torch.tensor([1.0, 3.0])
    grpo = torch.tensor([10.0, -10.0])
    loss = adagrpo_loss(nll, grpo, torch.ones(2), lam=0.0)
    assert loss.item() == 2.0
