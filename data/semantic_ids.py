"""Semantic IDs from residual k-means over item content vectors.

Level 0 clusters the vectors into `codebook_size` clusters. Each next level
clusters the residuals (vector minus its assigned centre) of the level before.
After `levels` levels, items sharing the same L-level prefix get an extra
disambiguation code 0, 1, ... so every item has a unique SID of L + 1 codes.

Token layout: PAD = 0, BOS = 1, and level l uses token ids
offsets[l] .. offsets[l] + level_sizes[l] - 1 with offsets[0] = 2.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

PAD = 0
BOS = 1
FIRST_CODE_TOKEN = 2


@dataclass(eq=False)
class SemanticIds:
    """Per-item semantic IDs, their token layout and codebook statistics."""

    codes: np.ndarray  # (n_items, L+1) int64, code per level, the last column disambiguates
    level_sizes: list[int]  # L entries equal to codebook_size, then the disambiguation size
    offsets: list[int]  # first token id of each level
    collision_rate: float  # share of items whose L-level prefix is shared with another item
    usage: list[float]  # per level (first L): share of the codebook_size codes used by at least one item
    _sorted_keys: np.ndarray = field(init=False, repr=False)  # (n_items,) mixed-radix keys, ascending
    _sorted_items: np.ndarray = field(init=False, repr=False)  # (n_items,) item of each sorted key
    _strides: np.ndarray = field(init=False, repr=False)  # (L+1,) mixed-radix place values
    _device_tables: dict = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        # Encode each SID as one integer, key = sum_l code_l * stride_l, so a batch
        # of SIDs is looked up with one searchsorted over the sorted keys.
        sizes = [int(size) for size in self.level_sizes]
        if float(np.prod(np.array(sizes, dtype=np.float64))) >= 2.0**62:
            raise ValueError(f"level sizes {sizes} give more SID combinations than fit in an int64 key")
        strides = np.ones(len(sizes), dtype=np.int64)
        for level in range(len(sizes) - 2, -1, -1):
            strides[level] = strides[level + 1] * sizes[level + 1]

        keys = self.codes @ strides  # (n_items,)
        order = np.argsort(keys, kind="stable")
        if np.any(np.diff(keys[order]) == 0):
            raise ValueError("codes contain two items with the same SID: the last column must disambiguate them")
        self._strides = strides
        self._sorted_keys = keys[order]
        self._sorted_items = order.astype(np.int64)
        self._device_tables = {}

    @property
    def n_items(self) -> int:
        return self.codes.shape[0]

    @property
    def sid_len(self) -> int:
        return len(self.level_sizes)

    @property
    def vocab_size(self) -> int:
        return self.offsets[-1] + self.level_sizes[-1]

    def tokens(self) -> np.ndarray:
        """Return the token ids of every item's SID, shape (n_items, L+1) int64."""
        return self.codes + np.asarray(self.offsets, dtype=np.int64)[None, :]

    def item_of(self, sid_tokens) -> int | None:
        """Return the item whose SID has these tokens, or None when no item has them."""
        tokens = torch.as_tensor(sid_tokens, dtype=torch.long).reshape(1, -1)  # (1, len)
        if tokens.shape[1] != self.sid_len:
            return None
        item = int(self.lookup_items(tokens)[0])
        return None if item < 0 else item

    def lookup_items(self, sids: torch.Tensor) -> torch.Tensor:
        """Map SID token rows to item ids, with -1 for rows that no item has.

        sids: (..., L+1) token ids on any device. A row with a token outside its
        level's range (PAD and BOS included) maps to -1. Returns (...) int64 on
        the same device.
        """
        if sids.shape[-1] != self.sid_len:
            raise ValueError(f"sids has last dimension {sids.shape[-1]}, expected sid_len {self.sid_len}")
        offsets, sizes, strides, sorted_keys, sorted_items = self._tables_on(sids.device)

        codes = sids.long() - offsets  # (..., L+1)
        in_range = ((codes >= 0) & (codes < sizes)).all(dim=-1)  # (...)
        codes = torch.minimum(codes.clamp(min=0), sizes - 1)  # bounds the keys of invalid rows so they cannot overflow
        keys = (codes * strides).sum(dim=-1)  # (...)

        position = torch.searchsorted(sorted_keys, keys.reshape(-1)).reshape(keys.shape)  # (...)
        position = position.clamp(max=sorted_keys.numel() - 1)
        found = in_range & (sorted_keys[position] == keys)
        return torch.where(found, sorted_items[position], torch.full_like(keys, -1))

    def _tables_on(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._device_tables:
            self._device_tables[device] = (
                torch.tensor(self.offsets, dtype=torch.long, device=device),
                torch.tensor(self.level_sizes, dtype=torch.long, device=device),
                torch.as_tensor(self._strides, device=device),
                torch.as_tensor(self._sorted_keys, device=device),
                torch.as_tensor(self._sorted_items, device=device),
            )
        return self._device_tables[device]


def build_semantic_ids(vectors: np.ndarray, levels: int, codebook_size: int, seed: int, iters: int = 20) -> SemanticIds:
    """Build SIDs by residual k-means with k-means++ init, deterministically given `seed`.

    vectors: (n_items, dim) content vectors. Item ids never enter the codes,
    except as the last tie-break when ordering items inside a disambiguation group.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] < 1:
        raise ValueError(f"vectors must have shape (n_items >= 1, dim), got {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError("vectors contain NaN or infinite values")
    if levels < 1:
        raise ValueError(f"invalid levels {levels}: expected at least 1")
    if codebook_size < 1:
        raise ValueError(f"invalid codebook_size {codebook_size}: expected at least 1")
    rng = np.random.default_rng(seed)
    n_items = vectors.shape[0]

    # Residual k-means: level l clusters what the first l centres left unexplained.
    codes = np.zeros((n_items, levels + 1), dtype=np.int64)  # (n_items, L+1)
    residuals = vectors.copy()  # (n_items, dim)
    for level in range(levels):
        centres, labels = kmeans(residuals, codebook_size, iters, rng)
        codes[:, level] = labels
        residuals = residuals - centres[labels]
    usage = [len(np.unique(codes[:, level])) / codebook_size for level in range(levels)]

    # Disambiguation: number the items of each L-level prefix group, closest to
    # the group's centres (smallest final residual) first, then by item id.
    residual_norm = np.linalg.norm(residuals, axis=1)  # (n_items,)
    prefix_columns = [codes[:, level] for level in range(levels - 1, -1, -1)]
    order = np.lexsort([np.arange(n_items), residual_norm, *prefix_columns])  # (n_items,) grouped by prefix
    sorted_prefixes = codes[order, :levels]  # (n_items, L)
    starts_group = np.ones(n_items, dtype=bool)
    starts_group[1:] = np.any(sorted_prefixes[1:] != sorted_prefixes[:-1], axis=1)
    group_start = np.maximum.accumulate(np.where(starts_group, np.arange(n_items), 0))  # (n_items,)
    codes[order, levels] = np.arange(n_items) - group_start

    group_id = np.cumsum(starts_group) - 1  # (n_items,) in sorted order
    group_sizes = np.bincount(group_id)
    collision_rate = float((group_sizes[group_sizes > 1]).sum() / n_items)

    level_sizes = [codebook_size] * levels + [int(group_sizes.max())]
    offsets = [FIRST_CODE_TOKEN]
    for size in level_sizes[:-1]:
        offsets.append(offsets[-1] + size)
    return SemanticIds(
        codes=codes, level_sizes=level_sizes, offsets=offsets, collision_rate=collision_rate, usage=usage
    )


def kmeans(
    points: np.ndarray,
    k: int,
    iters: int,
    rng: np.random.Generator,
    init_centres: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run Lloyd's k-means for a fixed number of iterations and return (centres, labels).

    points: (n, dim). Centres start from k-means++ unless `init_centres` (k, dim)
    is given. Each iteration assigns points to the nearest centre, moves the
    farthest points into empty clusters, then sets each centre to its members'
    mean. With fewer than k distinct points some clusters stay empty, and labels
    then use fewer than k codes. Returns centres (k, dim) and labels (n,) int64.
    """
    if k < 1 or iters < 1:
        raise ValueError(f"k and iters must be at least 1, got k={k}, iters={iters}")
    points = np.asarray(points, dtype=np.float64)
    if init_centres is None:
        centres = _kmeans_plus_plus(points, k, rng)
    else:
        centres = np.array(init_centres, dtype=np.float64)
        if centres.shape != (k, points.shape[1]):
            raise ValueError(f"init_centres must have shape {(k, points.shape[1])}, got {centres.shape}")

    labels = np.zeros(points.shape[0], dtype=np.int64)
    for _ in range(iters):
        distances = _squared_distances(points, centres)  # (n, k)
        labels = np.argmin(distances, axis=1)  # (n,)
        nearest = distances[np.arange(points.shape[0]), labels]  # (n,)
        labels = _reseed_empty_clusters(labels, nearest, k)

        # Move each non-empty cluster's centre to its members' mean.
        counts = np.bincount(labels, minlength=k)  # (k,)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, points)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
    return centres, labels


def _kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Pick k starting centres, each next one with probability proportional to its squared distance.

    Once every point coincides with a chosen centre, the remaining centres repeat
    the first one, which leaves their clusters empty.
    """
    n = points.shape[0]
    centres = np.empty((k, points.shape[1]))  # (k, dim)
    centres[0] = points[rng.integers(n)]
    closest = _squared_distances(points, centres[:1])[:, 0]  # (n,)
    for index in range(1, k):
        total = closest.sum()
        if total <= 0.0:
            centres[index:] = centres[0]
            break
        choice = rng.choice(n, p=closest / total)
        centres[index] = points[choice]
        closest = np.minimum(closest, _squared_distances(points, centres[index : index + 1])[:, 0])
    return centres


def _reseed_empty_clusters(labels: np.ndarray, nearest: np.ndarray, k: int) -> np.ndarray:
    """Move the farthest points into empty clusters, one point per cluster.

    A point is moved only when it is at positive distance from its centre and its
    cluster keeps at least one other member, so no cluster is emptied in turn.
    """
    counts = np.bincount(labels, minlength=k)  # (k,)
    empty = np.flatnonzero(counts == 0)
    if empty.size == 0:
        return labels

    labels = labels.copy()
    candidates = iter(np.argsort(-nearest, kind="stable"))  # farthest first
    for cluster in empty:
        for point in candidates:
            if nearest[point] <= 0.0:
                return labels
            if counts[labels[point]] > 1:
                counts[labels[point]] -= 1
                labels[point] = cluster
                counts[cluster] = 1
                break
    return labels


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Return squared Euclidean distances (n, k), clipped at 0 against rounding."""
    distances = (points**2).sum(1)[:, None] - 2.0 * points @ centres.T + (centres**2).sum(1)[None, :]
    return np.maximum(distances, 0.0)
