"""Item vectors for building semantic IDs, from item content and from training co-occurrence.

All blocks are computed from sparse TF-IDF or PPMI matrices and reduced with a truncated SVD to
a fixed width, so every item gets a finite vector of the same size. An item without content
(or without training interactions) gets a zero row in that block. Item id values are never
used as features: they only index rows.
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import torch

# A matrix with at most this many entries (32 MB as dense float64) gets an exact dense SVD
# (torch.linalg.svd). A larger one gets the randomized torch.svd_lowrank on a sparse tensor.
DENSE_SVD_MAX_ELEMENTS = 4_000_000
LOWRANK_OVERSAMPLING = 10
LOWRANK_POWER_ITERATIONS = 4

_WORD = re.compile(r"\w+")


def _tfidf(rows: np.ndarray, cols: np.ndarray, counts: np.ndarray, n_rows: int) -> np.ndarray:
    """Weight (row, col, count) entries by TF-IDF and L2-normalise each row.

    tf = 1 + log(count) and idf = 1 + log((1 + n_rows) / (1 + document frequency)), so a token
    present in every row keeps weight 1. Entries must be unique (row, col) pairs.
    """
    df = np.bincount(cols, minlength=int(cols.max()) + 1 if len(cols) else 0)
    idf = 1.0 + np.log((1.0 + n_rows) / (1.0 + df))
    values = (1.0 + np.log(counts)) * idf[cols]
    norms = np.sqrt(np.bincount(rows, weights=values**2, minlength=n_rows))
    return values / norms[rows]


def _fix_signs(u: torch.Tensor) -> torch.Tensor:
    """Flip each singular vector so its largest-magnitude entry is positive (SVD sign is arbitrary).

    Entries within a relative 1e-4 of the maximum count as tied and the first one decides, so
    rounding differences between the dense and the randomized SVD pick the same entry.
    """
    magnitude = u.abs()  # (n_rows, k)
    near_max = magnitude >= magnitude.max(dim=0).values * (1 - 1e-4)
    first = near_max.to(torch.int8).argmax(dim=0)  # (k,) first True per column
    signs = torch.sign(u[first, torch.arange(u.shape[1])])
    signs[signs == 0] = 1.0
    return u * signs


def truncated_svd(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, shape: tuple[int, int],
                  dim: int, seed: int = 0, singular_power: float = 1.0) -> np.ndarray:
    """Compute a rank-k SVD of a sparse (n_rows, n_cols) matrix and return U_k * S_k**singular_power.

    The result is (n_rows, dim) float32 with k = min(dim, n_rows, n_cols), and the columns past k
    are zero, so the width is always `dim`. Small
    matrices use an exact dense SVD. Larger ones use torch.svd_lowrank with the global torch
    RNG seeded by `seed` inside fork_rng, so the caller's RNG state is left unchanged.
    """
    n_rows, n_cols = shape
    out = np.zeros((n_rows, dim), dtype=np.float32)
    k = min(dim, n_rows, n_cols)
    if len(values) == 0 or k == 0:
        return out
    if n_rows * n_cols <= DENSE_SVD_MAX_ELEMENTS:
        matrix = torch.zeros(shape, dtype=torch.float64)
        matrix[torch.from_numpy(rows), torch.from_numpy(cols)] = torch.from_numpy(values.astype(np.float64))
        u, s, _ = torch.linalg.svd(matrix, full_matrices=False)
    else:
        indices = torch.from_numpy(np.stack([rows, cols]).astype(np.int64))
        matrix = torch.sparse_coo_tensor(indices, torch.from_numpy(values.astype(np.float32)), shape,
                                         check_invariants=True).coalesce()
        q = min(k + LOWRANK_OVERSAMPLING, n_rows, n_cols)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            u, s, _ = torch.svd_lowrank(matrix, q=q, niter=LOWRANK_POWER_ITERATIONS)
    u, s = _fix_signs(u[:, :k].double()), s[:k].double()
    out[:, :k] = (u * s.clamp(min=0) ** singular_power).numpy()
    return out


def attribute_vectors(attributes: list[list[str]], dim: int = 64, seed: int = 0) -> np.ndarray:
    """Embed per-item attribute tokens: TF-IDF weighted multi-hot, then truncated SVD.

    attributes: per item, tokens such as "brand:OPI" (repeats count once). Returns (n_items, dim).
    """
    vocabulary: dict[str, int] = {}
    rows, cols = [], []
    for item, tokens in enumerate(attributes):
        for token in dict.fromkeys(tokens):
            rows.append(item)
            cols.append(vocabulary.setdefault(token, len(vocabulary)))
    rows_array, cols_array = np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)
    values = _tfidf(rows_array, cols_array, np.ones(len(rows)), len(attributes))
    return truncated_svd(rows_array, cols_array, values, (len(attributes), len(vocabulary)), dim, seed)


def hashed_ngrams(text: str, n_buckets: int) -> list[int]:
    """Return the hash buckets of the lower-cased word unigrams and bigrams of `text`.

    Words are runs of Unicode word characters. CRC32 is used because Python's hash() of a str
    changes between processes.
    """
    words = _WORD.findall(text.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    return [zlib.crc32(gram.encode("utf-8")) % n_buckets for gram in grams]


def text_vectors(texts: list[str], dim: int = 64, n_buckets: int = 2**20, seed: int = 0) -> np.ndarray:
    """Embed item texts: TF-IDF of hashed word uni- and bigrams, then truncated SVD. Returns (n_items, dim)."""
    keys = []
    for item, text in enumerate(texts):
        keys.extend(item * n_buckets + bucket for bucket in hashed_ngrams(text, n_buckets))
    pairs, counts = np.unique(np.array(keys, dtype=np.int64), return_counts=True)
    rows = pairs // n_buckets
    # Renumber the used buckets 0..n_used-1 so the matrix has no empty columns.
    used, cols = np.unique(pairs % n_buckets, return_inverse=True)
    values = _tfidf(rows, cols, counts.astype(np.float64), len(texts))
    return truncated_svd(rows, cols, values, (len(texts), len(used)), dim, seed)


def combine(*blocks: np.ndarray, weights: list[float] | None = None) -> np.ndarray:
    """L2-normalise each row of each (n_items, d_b) block, scale it by its weight and concatenate.

    Zero rows stay zero. Returns (n_items, sum of d_b) float32.
    """
    if not blocks:
        raise ValueError("combine requires at least one block")
    weights = [1.0] * len(blocks) if weights is None else weights
    if len(weights) != len(blocks):
        raise ValueError(f"got {len(weights)} weights for {len(blocks)} blocks")
    n_items = blocks[0].shape[0]
    parts = []
    for block, weight in zip(blocks, weights):
        if block.ndim != 2 or block.shape[0] != n_items:
            raise ValueError(f"block of shape {block.shape} does not have {n_items} rows")
        block = np.asarray(block, dtype=np.float64)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        parts.append(weight * block / np.maximum(norms, 1e-12))
    return np.concatenate(parts, axis=1).astype(np.float32)


def content_vectors(n_items: int, attributes: list[list[str]] | None = None, texts: list[str] | None = None,
                    dim: int = 64, n_buckets: int = 2**20, seed: int = 0) -> np.ndarray:
    """Combine the attribute block and the text block (each `dim` wide) of the inputs given.

    Returns (n_items, dim) with one input and (n_items, 2 * dim) with both, attributes first.
    """
    for name, values in (("attributes", attributes), ("texts", texts)):
        if values is not None and len(values) != n_items:
            raise ValueError(f"{name} has {len(values)} entries, expected one per item ({n_items})")
    blocks = []
    if attributes is not None:
        blocks.append(attribute_vectors(attributes, dim, seed))
    if texts is not None:
        blocks.append(text_vectors(texts, dim, n_buckets, seed))
    if not blocks:
        raise ValueError("content_vectors requires attributes or texts. Pass at least one")
    return combine(*blocks)


def cooccurrence_counts(train_sequences: list[list[int]], n_items: int,
                        window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count ordered pairs of different items at most `window` positions apart in one sequence.

    Both directions are counted, so the result is symmetric. Returns (rows, cols, counts).
    """
    lengths = np.array([len(s) for s in train_sequences], dtype=np.int64)
    flat = np.array([item for s in train_sequences for item in s], dtype=np.int64)
    if len(flat) and (flat.min() < 0 or flat.max() >= n_items):
        raise ValueError(f"item ids must be in 0..{n_items - 1}, got {flat.min()}..{flat.max()}")
    owner = np.repeat(np.arange(len(lengths)), lengths)  # (n_interactions,) sequence index
    firsts, seconds = [], []
    for distance in range(1, window + 1):
        same = owner[:-distance] == owner[distance:]
        a, b = flat[:-distance][same], flat[distance:][same]
        different = a != b
        firsts += [a[different], b[different]]
        seconds += [b[different], a[different]]
    if not firsts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = np.concatenate(firsts) * n_items + np.concatenate(seconds)
    pairs, counts = np.unique(keys, return_counts=True)
    return pairs // n_items, pairs % n_items, counts


def collaborative_vectors(train_sequences: list[list[int]], n_items: int, dim: int = 64,
                          window: int = 5, scaling: str = "ppmi", seed: int = 0) -> np.ndarray:
    """Embed items by a truncated SVD of their windowed co-occurrence in the training prefixes.

    Pass only the training prefixes (never validation or test targets): the vectors are built
    from exactly the sequences given. scaling "ppmi" uses max(0, log(c_ij * total / (c_i * c_j)))
    and "log" uses log(1 + c_ij). The rows are U_k * sqrt(S_k), which splits the singular values
    evenly between the two sides of the symmetric matrix. Items absent from the prefixes get zero
    rows. Returns (n_items, dim).
    """
    if scaling not in ("ppmi", "log"):
        raise ValueError(f"unknown scaling {scaling!r}. Use 'ppmi' or 'log'")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    rows, cols, counts = cooccurrence_counts(train_sequences, n_items, window)
    counts = counts.astype(np.float64)
    if scaling == "log":
        values = np.log1p(counts)
    else:
        totals = np.bincount(rows, weights=counts, minlength=n_items)  # (n_items,) row sums
        values = np.log(counts * counts.sum() / (totals[rows] * totals[cols]))
        keep = values > 0
        rows, cols, values = rows[keep], cols[keep], values[keep]
    return truncated_svd(rows, cols, values, (n_items, n_items), dim, seed, singular_power=0.5)
