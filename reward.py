"""The reward model: a ranker trained on simulated exposure-biased logs, with controllable corruption.

1. `simulate_exposure_logs`: for every training context (a user's training prefix up to position t),
   an exposure policy shows `exposures` items drawn with probability ~ (train count + 1)^alpha. The
   actual next item is always a positive. Shown items are negatives on real data; on the synthetic world
   they are clicked with a probability given by the true preference model.
2. `Ranker`: item embedding + item bias, scored against a history encoding; trained with BCE on the logs.
   Rarely shown items keep near-initial parameters, so the ranker is unreliable exactly where real,
   exposure-biased rankers are.
3. `RewardModel`: scores (context, item) pairs and corrupts some of them. Which contexts or pairs are
   corrupted is decided by a seeded hash, so the same case is always corrupted the same way, like a
   production ranker's systematic error. The corruption flags are returned too (the oracle).

Everything here is computed from training prefixes only.
"""

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

log = logging.getLogger(__name__)


def pad_histories(histories: list[list[int]], length: int) -> torch.Tensor:
    """(B, length) item ids of the last `length` items, right-aligned, padded on the left with -1."""
    out = torch.full((len(histories), length), -1, dtype=torch.long)
    for row, items in enumerate(histories):
        tail = items[-length:] if length > 0 else []
        if tail:
            out[row, length - len(tail):] = torch.tensor(tail, dtype=torch.long)
    return out


# ----------------------------------------------------------------------------- exposure logs

@dataclass
class ExposureLog:
    histories: torch.Tensor     # (N, H) history item ids, -1 padded on the left
    items: torch.Tensor         # (N, M+1) shown items; column 0 is the actual next item
    labels: torch.Tensor        # (N, M+1) float 0/1 click labels
    exposure_counts: np.ndarray  # (n_items,) how often each item was shown, positives excluded


def simulate_exposure_logs(train: list[list[int]], n_items: int, item_counts: np.ndarray, exposures: int,
                           exposure_bias: float, history_length: int, seed: int, world=None,
                           world_users: list[int] | None = None) -> ExposureLog:
    """Show `exposures` items per training context, drawn with probability ~ (count + 1)^alpha.

    A context is (user, t) for t >= 1: history = train[:t], next item = train[t]. With a synthetic
    `world`, a shown item is clicked with probability sigmoid(true_logit - q95), where q95 is the 95th
    percentile of the context's true logits over all items (about the 5% most relevant are likely clicks).
    """
    rng = np.random.default_rng(seed)
    histories, nexts, users, lasts = [], [], [], []
    for user, items in enumerate(train):
        for t in range(1, len(items)):
            histories.append(items[:t])
            nexts.append(items[t])
            users.append(user)
            lasts.append(items[t - 1])
    if not nexts:
        raise ValueError("no training context has a history: every user's training prefix has one item; "
                         "use data with longer sequences")

    weights = (item_counts.astype(np.float64) + 1.0) ** exposure_bias
    shown = rng.choice(n_items, size=(len(nexts), exposures), p=weights / weights.sum())  # (N, M)
    labels = np.zeros((len(nexts), exposures + 1), dtype=np.float32)
    labels[:, 0] = 1.0
    labels[:, 1:] = shown == np.asarray(nexts)[:, None]

    if world is not None:
        clicks = _synthetic_clicks(world, np.asarray(world_users)[users], np.asarray(lasts), shown, rng)
        labels[:, 1:] = np.maximum(labels[:, 1:], clicks)

    exposure_counts = np.bincount(shown.ravel(), minlength=n_items)
    items = np.concatenate([np.asarray(nexts)[:, None], shown], axis=1)
    log.info("exposure logs: %d contexts x %d shown items, click rate %.3f", len(nexts), exposures,
             labels[:, 1:].mean())
    return ExposureLog(pad_histories(histories, history_length), torch.from_numpy(items),
                       torch.from_numpy(labels), exposure_counts)


def _synthetic_clicks(world, users: np.ndarray, lasts: np.ndarray, shown: np.ndarray, rng) -> np.ndarray:
    """(N, M) 0/1 clicks drawn from the true preference model, in chunks to bound memory."""
    clicks = np.zeros(shown.shape, dtype=np.float32)
    for start in range(0, len(users), 2048):
        stop = start + 2048
        logits = world.true_logits(users[start:stop], lasts[start:stop])          # (b, n_items)
        q95 = np.quantile(logits, 0.95, axis=1, keepdims=True)
        shown_logits = np.take_along_axis(logits, shown[start:stop], axis=1)    # (b, M)
        p = 1.0 / (1.0 + np.exp(-(shown_logits - q95)))
        clicks[start:stop] = rng.random(p.shape) < p
    return clicks


# ----------------------------------------------------------------------------- ranker

class Ranker(nn.Module):
    """score(history, item) = <W [mean(history); last(history)], e_item> + b_item."""

    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.n_items = n_items
        self.item = nn.Embedding(n_items, dim)
        self.bias = nn.Embedding(n_items, 1)
        self.history = nn.Embedding(n_items + 1, dim, padding_idx=n_items)   # last row = padding
        self.proj = nn.Linear(2 * dim, dim)
        for emb in (self.item, self.bias, self.history):
            nn.init.normal_(emb.weight, std=0.01)
        with torch.no_grad():
            self.history.weight[n_items].zero_()

    def encode(self, histories: torch.Tensor) -> torch.Tensor:
        """(B, H) right-aligned item ids (-1 = pad) -> (B, dim)."""
        mask = histories >= 0
        emb = self.history(torch.where(mask, histories, self.n_items))          # (B, H, dim)
        mean = emb.sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        last = emb[:, -1]                                                        # zero when empty
        return self.proj(torch.cat([mean, last], dim=-1))

    def forward(self, histories: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(B, H), (B, C) item ids -> (B, C) logits. Items must be valid ids (>= 0)."""
        h = self.encode(histories)                                               # (B, dim)
        return torch.einsum("bd,bcd->bc", h, self.item(items)) + self.bias(items).squeeze(-1)

    def score_all(self, histories: torch.Tensor) -> torch.Tensor:
        """(B, H) -> (B, n_items) logits for the whole catalogue."""
        return self.encode(histories) @ self.item.weight.T + self.bias.weight.T


def train_ranker(logs: ExposureLog, n_items: int, dim: int, epochs: int, batch_size: int, lr: float,
                 weight_decay: float, seed: int, device: torch.device) -> Ranker:
    """Fit the ranker with binary cross-entropy on the exposure logs (every shown item is one example)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ranker = Ranker(n_items, dim).to(device)
    optimizer = torch.optim.Adam(ranker.parameters(), lr=lr, weight_decay=weight_decay)
    n = len(logs.items)
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            logits = ranker(logs.histories[idx].to(device), logs.items[idx].to(device))
            loss = F.binary_cross_entropy_with_logits(logits, logs.labels[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        log.info("ranker epoch %d/%d: BCE %.4f", epoch + 1, epochs, total / n)
    return ranker.eval()


# ----------------------------------------------------------------------------- corruption

def hash_uniform(seed: int, *keys: np.ndarray) -> np.ndarray:
    """Deterministic uniform [0, 1) numbers from integer keys (a splitmix64-style mix per key)."""
    with np.errstate(over="ignore"):                          # uint64 products wrap modulo 2^64 on purpose
        h = np.full(np.broadcast(*keys).shape, np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15), dtype=np.uint64)
        for key in keys:
            h = h ^ (np.asarray(key).astype(np.int64).astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15))
            h = (h ^ (h >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = (h ^ (h >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            h = h ^ (h >> np.uint64(31))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _quantiles(values: np.ndarray) -> np.ndarray:
    """Rank of each value among all values, scaled to [0, 1] (ties share the mean rank)."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts
    mean_rank = first + (counts - 1) / 2.0
    return mean_rank[inverse] / max(len(values) - 1, 1)


class RewardModel:
    """A trained ranker plus systematic corruption; `score` returns scores and the oracle flags.

    Corruption probability per unit is `rate`, or with `exposure_coupled` it is
    clip(rate * 2 * (1 - q), 0, 1), where q is the exposure quantile of the item (unit=pair) or the mean
    exposure quantile of the context's history items (unit=sample), so the mean stays near `rate`.
    """

    def __init__(self, ranker: Ranker, cfg, item_counts: np.ndarray, exposure_counts: np.ndarray,
                 score_mean: float, score_std: float):
        self.ranker, self.cfg = ranker, cfg
        self.exposure_quantile = _quantiles(exposure_counts.astype(np.float64))       # (n_items,)
        log_pop = np.log1p(item_counts.astype(np.float64))
        self.popularity_z = (log_pop - log_pop.mean()) / (log_pop.std() + 1e-12)      # (n_items,)
        self.score_mean, self.score_std = score_mean, score_std

    def corrupted(self, users: np.ndarray, positions: np.ndarray, histories: torch.Tensor,
                  items: np.ndarray) -> np.ndarray:
        """(B, C) bool: which (context, item) scores are corrupted. A context is (user, history length)."""
        cfg = self.cfg
        if cfg.unit == "sample":
            u = hash_uniform(cfg.seed, users, positions)[:, None]                        # (B, 1)
            if cfg.exposure_coupled:
                hist = histories.cpu().numpy()
                valid = hist >= 0
                total = np.where(valid, self.exposure_quantile[np.maximum(hist, 0)], 0.0).sum(1)
                count = valid.sum(1)
                context_q = np.where(count > 0, total / np.maximum(count, 1), 0.5)[:, None]   # empty: 0.5
                p = np.clip(cfg.rate * 2.0 * (1.0 - context_q), 0.0, 1.0)
            else:
                p = cfg.rate
            return np.broadcast_to(u < p, items.shape).copy()
        u = hash_uniform(cfg.seed, users[:, None], positions[:, None], items)            # (B, C)
        if cfg.exposure_coupled:
            p = np.clip(cfg.rate * 2.0 * (1.0 - self.exposure_quantile[np.maximum(items, 0)]), 0.0, 1.0)
        else:
            p = cfg.rate
        return u < p

    def _corrupt(self, scores: np.ndarray, flags: np.ndarray, users, positions, items) -> np.ndarray:
        """Replace flagged scores: popularity -> z(log popularity), gaussian -> + noise, flip -> mirrored."""
        kind = self.cfg.kind
        if kind == "popularity":
            bad = self.score_mean + self.score_std * self.popularity_z[np.maximum(items, 0)]
        elif kind == "gaussian":
            u1 = hash_uniform(self.cfg.seed + 1, users[:, None], positions[:, None], items)
            u2 = hash_uniform(self.cfg.seed + 2, users[:, None], positions[:, None], items)
            normal = np.sqrt(-2.0 * np.log(1.0 - u1)) * np.cos(2.0 * np.pi * u2)    # Box-Muller
            bad = scores + self.cfg.noise_std * self.score_std * normal
        else:
            bad = 2.0 * self.score_mean - scores
        return np.where(flags, bad, scores)

    @torch.no_grad()
    def score(self, users: np.ndarray, positions: np.ndarray, histories: torch.Tensor,
              items: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(B,), (B,), (B, H), (B, C) item ids (-1 = no item) -> scores (B, C) float64 (NaN where item
        is -1) and corrupted flags (B, C) bool."""
        device = next(self.ranker.parameters()).device
        clean = self.ranker(histories.to(device), items.clamp(min=0).to(device)).double().cpu().numpy()
        item_ids = items.cpu().numpy()
        flags = self.corrupted(users, positions, histories, item_ids) & (item_ids >= 0)
        if self.cfg.rate > 0:
            clean = self._corrupt(clean, flags, users, positions, item_ids)
        return np.where(item_ids >= 0, clean, np.nan), flags

    @torch.no_grad()
    def score_all(self, users: np.ndarray, positions: np.ndarray, histories: torch.Tensor) -> np.ndarray:
        """(B, n_items) corrupted scores of the whole catalogue (for reward.shaping=topk)."""
        n_items = self.ranker.n_items
        items = torch.arange(n_items).expand(len(users), n_items)
        return self.score(users, positions, histories, items)[0]


def build_reward_model(ranker: Ranker, logs: ExposureLog, cfg, item_counts: np.ndarray) -> RewardModel:
    """Wrap a trained ranker with corruption; the score scale comes from the ranker's scores on its logs."""
    device = next(ranker.parameters()).device
    with torch.no_grad():
        sample = slice(0, min(len(logs.items), 4096))
        scores = ranker(logs.histories[sample].to(device), logs.items[sample].to(device)).double().cpu()
    return RewardModel(ranker, cfg, item_counts, logs.exposure_counts, scores.mean().item(),
                       scores.std().item() + 1e-12)
