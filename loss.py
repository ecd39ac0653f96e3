"""Losses: NLL on the true next item, group-relative advantages, the clipped GRPO term, and their
AdaGRPO combination

    L = mean_i [ NLL_i + lambda * g_i * GRPO_i ],   g_i in {0, 1} (or in [0, 1] for a graded gate).

Uniform GRPO is the same loss with g_i = 1 for every sample.
"""

import torch

# Log-ratios are clamped at this value before exp (ratio <= e^20, about 4.9e8). A rollout whose
# log-prob moved further gets a finite term with zero gradient instead of inf, so inf * 0 cannot
# put NaN into the gradient of a sample that the gate turned off.
LOG_RATIO_MAX = 20.0


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Compute A = (r - mean) / (std + eps) within each group, with the population std (divide by G).

    rewards: (B, G). A group whose rewards are all equal gets exactly 0, also when float residue
    makes its std a tiny non-zero number (std <= 1e-7 * (1 + |mean|) counts as equal).
    """
    mean = rewards.mean(dim=-1, keepdim=True)                            # (B, 1)
    std = rewards.std(dim=-1, unbiased=False, keepdim=True)              # (B, 1)
    flat = std <= 1e-7 * (1.0 + mean.abs())
    advantages = (rewards - mean) / (std + eps)
    return torch.where(flat, torch.zeros_like(advantages), advantages)   # (B, G)


def grpo_term(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, clip_eps: float,
              ref_logp: torch.Tensor | None = None, kl_beta: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Per-sample GRPO loss: the PPO clipped surrogate per SID token, plus beta * k3 KL to a reference.

    logp, old_logp, ref_logp: (B, G, L) per-token log-probs under the current, the rollout and the
    frozen reference policy; advantages: (B, G), shared by every token of a rollout.
    surrogate = min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A) with ratio = exp(logp - old_logp);
    k3 KL = exp(ref - logp) - (ref - logp) - 1, a non-negative, unbiased estimate of KL(policy || ref).
    Both log-ratios are clamped at LOG_RATIO_MAX before exp.
    Returns the (B,) loss averaged over tokens and rollouts, and detached statistics.
    """
    ratio = torch.exp((logp - old_logp).clamp(max=LOG_RATIO_MAX))          # (B, G, L)
    adv = advantages.unsqueeze(-1)                                         # (B, G, 1)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    per_token = -torch.minimum(unclipped, clipped)                         # (B, G, L)

    kl = torch.zeros_like(per_token)
    if ref_logp is not None and kl_beta > 0:
        log_ratio = (ref_logp - logp).clamp(max=LOG_RATIO_MAX)
        kl = torch.exp(log_ratio) - log_ratio - 1.0
        per_token = per_token + kl_beta * kl

    stats = {
        "clip_fraction": ((ratio - 1.0).abs() > clip_eps).float().mean().item(),
        "kl": kl.mean().item(),
    }
    return per_token.mean(dim=(1, 2)), stats                               # (B,)


def adagrpo_loss(nll: torch.Tensor, grpo: torch.Tensor, weights: torch.Tensor, lam: float) -> torch.Tensor:
    """mean_i [NLL_i + lambda * g_i * GRPO_i] over the batch.

    nll, grpo, weights: (B,). A sample with g_i = 0 contributes its NLL only and gets exactly zero
    gradient from its GRPO (and KL) term, even if that term is not finite; with every g_i = 0 the loss
    is the mean NLL.
    """
    # The inner where, not the zero weight, keeps a non-finite GRPO_i out of the value and the gradient.
    gated = weights * torch.where(weights > 0, grpo, torch.zeros_like(grpo))
    return (nll + lam * gated).mean()
