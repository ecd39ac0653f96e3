"""The RL stage: GRPO or AdaGRPO from the SFT policy, with rewards from a (possibly corrupted) ranker.

One step, for a batch of training contexts (a user's training prefix up to some position; the next
item is the ground truth):
  1. rollouts: the top-G beams (default) or G samples at a temperature, from the current policy;
  2. rewards: ranker scores of the rollout items, shaped; invalid or already-seen items get the group's
     lowest valid reward (or a fixed penalty), so they cannot dominate the group normalisation;
  3. advantages: (r - mean) / (std + eps) per group;
  4. gate: per-sample weight g_i from the two rollout diagnostics (gate.py);
  5. update: L = mean_i [NLL_i + lambda * g_i * GRPO_i], `update_epochs` times on the same rollouts.
The best checkpoint by validation HR@10 (step 0, the SFT policy, included) and the final one are saved.
"""

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch

from checkpoint import StopRequest, load_checkpoint, rng_state, save_checkpoint
from config import Config, to_dict
from data.build import RunData
from evaluate import evaluate_split
from gate import GroupView, gate_weights
from generate import beam_search, sample
from loss import adagrpo_loss, group_advantages, grpo_term
from model import Policy, encode_histories
from reward import RewardModel, build_reward_model, pad_histories, simulate_exposure_logs, train_ranker
from train import MetricsLog, check_finite

log = logging.getLogger("rl")


def build_reward(cfg: Config, run: RunData, out: Path, device) -> RewardModel:
    """Simulate exposure logs from the training prefixes, train the ranker (or load ranker.pt), corrupt it."""
    c = cfg.ranker
    world_users = run.world_users() if run.world is not None else None
    logs = simulate_exposure_logs(run.split.train, run.split.n_items, run.item_counts, c.exposures,
                                  c.exposure_bias, cfg.data.max_history, cfg.seed, run.world, world_users)
    path = out / "ranker.pt"
    if path.is_file():
        from reward import Ranker
        ranker = Ranker(run.split.n_items, c.dim).to(device)
        ranker.load_state_dict(load_checkpoint(path)["ranker"])
        ranker.eval()
    else:
        ranker = train_ranker(logs, run.split.n_items, c.dim, c.epochs, c.batch_size, c.lr, c.weight_decay,
                              cfg.seed, device)
        save_checkpoint(path, {"ranker": ranker.state_dict(), "config": to_dict(cfg)})
    return build_reward_model(ranker, logs, cfg.corruption, run.item_counts)


def shape_rewards(scores: np.ndarray, valid: np.ndarray, is_target: np.ndarray, topk_hit: np.ndarray | None,
                  cfg) -> np.ndarray:
    """(B, G) rewards from ranker scores.

    raw: the score; rank: the rollout's rank among the group's valid rollouts scaled to [0, 1] (1 = best);
    topk: 1 if the item is in the ranker's top-K of the catalogue, else 0. Then the hit bonus, then
    invalid rollouts get the group's lowest valid reward (min_valid) or `invalid_penalty`.
    A group with no valid rollout gets all zeros, hence zero advantages.
    """
    if cfg.shaping == "raw":
        shaped = np.where(valid, scores, 0.0)
    elif cfg.shaping == "rank":
        masked = np.where(valid, scores, -np.inf)
        ranks = masked.argsort(1).argsort(1) - (~valid).sum(1, keepdims=True)     # 0 = worst valid
        shaped = np.where(valid, ranks / np.maximum(valid.sum(1, keepdims=True) - 1, 1), 0.0)
    else:
        shaped = topk_hit.astype(np.float64)
    shaped = shaped + cfg.hit_bonus * (is_target & valid)

    if cfg.invalid == "penalty":
        return np.where(valid, shaped, cfg.invalid_penalty)
    lowest = np.where(valid, shaped, np.inf).min(1, keepdims=True)
    lowest = np.where(np.isfinite(lowest), lowest, 0.0)
    return np.where(valid, shaped, lowest)


def first_occurrence(sids: torch.Tensor) -> torch.Tensor:
    """(B, G, L) -> (B, G) bool, True for the first rollout of each distinct SID in its group."""
    same = (sids[:, :, None, :] == sids[:, None, :, :]).all(-1)                   # (B, G, G)
    earlier = torch.tril(torch.ones_like(same[0]), diagonal=-1)                    # j < i
    return ~(same & earlier).any(-1)


def rl_contexts(run: RunData) -> list[tuple[int, list[int], int]]:
    """(user, history, target) for every next item of every training prefix that has a history:
    history = prefix[:t], target = prefix[t] for t >= 1, the same targets as SFT."""
    return [(u, items[:t], items[t]) for u, items in enumerate(run.split.train) for t in range(1, len(items))]


def rl_step(cfg: Config, run: RunData, policy: Policy, reference: Policy | None, reward: RewardModel,
            optimizer, batch: list, step: int, device) -> dict:
    """Rollouts, rewards, advantages, gate and `update_epochs` policy updates for one batch of contexts."""
    c = cfg.rl
    sid_tokens = torch.as_tensor(run.sids.tokens())
    users = np.asarray([u for u, _, _ in batch])
    histories = [h for _, h, _ in batch]
    targets = torch.as_tensor([t for _, _, t in batch])
    positions = np.asarray([len(h) for h in histories])
    prefix, mask = encode_histories(histories, sid_tokens, cfg.data.max_history)
    prefix, mask = prefix.to(device), mask.to(device)
    target_sids = sid_tokens[targets].to(device)[:, None, :]                        # (B, 1, L)

    # 1. rollouts from the current policy, without dropout
    policy.eval()
    with torch.no_grad():
        if c.rollout == "beam":
            sids, _ = beam_search(policy, prefix, mask, c.group_size)
        else:
            generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + step)
            sids, _ = sample(policy, prefix, mask, c.group_size, c.temperature, generator)
        old_logp = policy.sid_logprobs(prefix, mask, sids)                         # (B, G, L)
        target_logp = policy.sid_logprobs(prefix, mask, target_sids)[:, 0].sum(-1)  # (B,)
        ref_logp = reference.sid_logprobs(prefix, mask, sids) if reference is not None else None

    # 2. rewards of the rollout items; seen or invalid items are not valid recommendations
    items = run.sids.lookup_items(sids.cpu())                                       # (B, G), -1 = no item
    history_sets = [set(h) for h in histories]
    seen = torch.tensor([[i in consumed for i in row] for row, consumed in zip(items.tolist(), history_sets)],
                        dtype=torch.bool)
    valid = (items >= 0) & ~seen
    hist_pad = pad_histories(histories, cfg.data.max_history)
    scores, flags = reward.score(users, positions, hist_pad, torch.where(valid, items, -1))
    target_scores, target_flags = reward.score(users, positions, hist_pad, targets[:, None])
    topk_hit = None
    if cfg.reward.shaping == "topk":
        full = reward.score_all(users, positions, hist_pad)
        kth = np.sort(full, axis=1)[:, -min(cfg.reward.topk, full.shape[1])][:, None]
        in_topk = np.take_along_axis(full >= kth, items.clamp(min=0).numpy(), axis=1)   # same scores as kth
        topk_hit = valid.numpy() & in_topk
    is_target = (items == targets[:, None]).numpy()
    rewards = shape_rewards(scores, valid.numpy(), is_target, topk_hit, cfg.reward)

    # 3. group-relative advantages
    rewards_t = torch.as_tensor(rewards, dtype=torch.float32)
    advantages = group_advantages(rewards_t, c.adv_eps).to(device)

    # 4. the gate, from the same rollouts
    view = GroupView(first_occurrence(sids).cpu(), torch.as_tensor(is_target),
                     old_logp.sum(-1).cpu(), target_logp.cpu(),
                     torch.as_tensor(scores, dtype=torch.float32),
                     torch.as_tensor(target_scores[:, 0], dtype=torch.float32))
    weights, gate_stats = gate_weights(c.method, cfg.gate, view, users * 1_000_003 + positions, step)
    weights = weights.to(device)

    # 5. updates: NLL on the ground truth for every sample, the gated GRPO term on the rollouts
    policy.train()
    candidates = torch.cat([target_sids, sids], dim=1)                              # (B, 1 + G, L)
    for _ in range(c.update_epochs):
        torch.manual_seed(cfg.seed * 1_000_003 + step)
        logp = policy.sid_logprobs(prefix, mask, candidates)                         # (B, 1 + G, L)
        nll = -logp[:, 0].sum(-1)                                                    # (B,)
        grpo, loss_stats = grpo_term(logp[:, 1:], old_logp, advantages, c.clip_eps, ref_logp, c.kl_beta)
        loss = adagrpo_loss(nll, grpo, weights, c.lambda_)
        check_finite(loss, "the loss", "RL", step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), c.grad_clip or float("inf"))
        check_finite(grad_norm, "the gradient norm", "RL", step)
        optimizer.step()

    record = {"stage": "rl", "step": step + 1, "loss": loss.item(), "nll": nll.mean().item(),
              "reward/mean": float(rewards.mean()), "reward/std": float(rewards.std(1).mean()),
              "reward/zero_std_groups": float((rewards_t.std(1, unbiased=False) <= 1e-7).float().mean()),
              "rollout/invalid": float((items < 0).float().mean()), "rollout/seen": float(seen.float().mean()),
              "rollout/hit": float(is_target.any(1).mean()), **loss_stats, **gate_stats}
    record.update(oracle_stats(weights.cpu().numpy() > 0, target_flags[:, 0], flags, valid.numpy()))
    return record


def oracle_stats(admitted: np.ndarray, target_corrupted: np.ndarray, pair_corrupted: np.ndarray,
                 valid: np.ndarray) -> dict:
    """Gate quality against the known corruption: a sample is trustworthy when the ground truth's score
    is not corrupted (for unit=sample that is the whole context). precision = trustworthy share of the
    admitted samples, recall = admitted share of the trustworthy samples."""
    trust = ~target_corrupted
    corrupted_pairs = np.where(valid, pair_corrupted, False).sum(1) / np.maximum(valid.sum(1), 1)
    return {
        "oracle/trustworthy_rate": float(trust.mean()),
        "oracle/precision": float(trust[admitted].mean()) if admitted.any() else float("nan"),
        "oracle/recall": float(admitted[trust].mean()) if trust.any() else float("nan"),
        "oracle/corrupted_pairs_all": float(corrupted_pairs.mean()),
        "oracle/corrupted_pairs_admitted": float(corrupted_pairs[admitted].mean()) if admitted.any()
        else float("nan"),
    }


def train_rl(cfg: Config, run: RunData, policy: Policy, out: Path, metrics: MetricsLog, device) -> dict:
    """Run the RL stage from the SFT policy; save `<method>_best.pt` (by validation HR@10) and
    `<method>_final.pt`. Resumes from rl_last.pt. Returns the best/final steps and the mean admission."""
    c = cfg.rl
    reward = build_reward(cfg, run, out, device)
    contexts = rl_contexts(run)
    reference = copy.deepcopy(policy).eval() if c.kl_beta > 0 else None
    optimizer = torch.optim.AdamW(policy.parameters(), lr=c.lr, weight_decay=0.0)
    last_path, best_path = out / "rl_last.pt", out / f"{c.method}_best.pt"
    step, best, best_step, admissions = 0, -1.0, 0, []

    if last_path.is_file():
        state = load_checkpoint(last_path)
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        if reference is not None:
            reference.load_state_dict(state["reference"])
        step, best, best_step, admissions = state["step"], state["best"], state["best_step"], state["admissions"]
        log.info("RL: resuming at step %d of %d", step, c.steps)

    def save_last():
        save_checkpoint(last_path, {
            "stage": "rl", "policy": policy.state_dict(), "optimizer": optimizer.state_dict(),
            "reference": reference.state_dict() if reference is not None else None, "step": step,
            "best": best, "best_step": best_step, "admissions": admissions, "rng": rng_state(),
            "config": to_dict(cfg)})

    def validate():
        nonlocal best, best_step
        valid = evaluate_split(policy, run, "valid", cfg, device, max_users=cfg.sft.eval_users)
        if valid["hr@10"] > best:
            best, best_step = valid["hr@10"], step
            save_checkpoint(best_path, {"stage": "rl", "policy": policy.state_dict(), "step": step,
                                        "config": to_dict(cfg)})
        metrics.write({"stage": "rl_eval", "step": step, "valid/hr@10": valid["hr@10"],
                       "valid/ndcg@10": valid["ndcg@10"], "valid/hallucination": valid["hallucination"]})
        return valid

    if step == 0:
        validate()                                                     # the SFT starting point competes
    n_batches = max(1, len(contexts) // c.batch_size)
    started = time.time()
    with StopRequest() as stop:
        while step < c.steps:
            if stop.requested:
                save_last()
                raise KeyboardInterrupt
            epoch, index = divmod(step, n_batches)
            order = np.random.default_rng([cfg.seed, 7919, epoch]).permutation(len(contexts))
            batch = [contexts[i] for i in order[index * c.batch_size:(index + 1) * c.batch_size]]
            record = rl_step(cfg, run, policy, reference, reward, optimizer, batch, step, device)
            step += 1
            admissions.append(record["gate/admission_rate"])
            record["elapsed_s"] = round(time.time() - started, 1)
            metrics.write(record)
            if step % c.eval_every == 0 or step == c.steps:
                valid = validate()
                log.info("RL step %d/%d: reward %.3f, admission %.2f, NLL %.3f, valid HR@10 %.4f", step,
                         c.steps, record["reward/mean"], record["gate/admission_rate"], record["nll"],
                         valid["hr@10"])
                save_last()
    save_checkpoint(out / f"{c.method}_final.pt", {"stage": "rl", "policy": policy.state_dict(), "step": step,
                                                   "config": to_dict(cfg)})
    return {"best_step": best_step, "final_step": step,
            "admission_rate": float(np.mean(admissions)) if admissions else float("nan")}
