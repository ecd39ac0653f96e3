"""Tests for residual k-means semantic IDs and their token layout."""

import numpy as np
import pytest
import torch

from data.semantic_ids import BOS, PAD, build_semantic_ids, kmeans


def _blobs(n_per_blob: int = 30, n_blobs: int = 6, dim: int = 8, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 10.0, size=(n_blobs, dim))
    points = centres[np.repeat(np.arange(n_blobs), n_per_blob)] + rng.normal(0.0, 0.5, size=(n_blobs * n_per_blob, dim))
    return points  # (n_blobs * n_per_blob, dim)


def _duplicate_example() -> np.ndarray:
    # Four distinct points, the first repeated three times: 6 items, 3 of them collide.
    distinct = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    return distinct[[0, 0, 0, 1, 2, 3]]  # (6, 2)


def test_sids_unique_after_disambiguation():
    sids = build_semantic_ids(_blobs(), levels=2, codebook_size=4, seed=0)

    rows = {tuple(row) for row in sids.codes.tolist()}

    assert len(rows) == sids.n_items


def test_sids_shapes_and_layout():
    sids = build_semantic_ids(_blobs(), levels=3, codebook_size=5, seed=0)

    assert sids.codes.shape == (180, 4)
    assert sids.sid_len == 4
    assert sids.level_sizes[:3] == [5, 5, 5]
    assert sids.offsets[0] == 2
    assert sids.offsets[1:] == [2 + 5, 2 + 10, 2 + 15]
    assert sids.vocab_size == sids.offsets[-1] + sids.level_sizes[-1]


def test_codes_within_level_sizes():
    sids = build_semantic_ids(_blobs(), levels=2, codebook_size=4, seed=0)

    for level, size in enumerate(sids.level_sizes):
        assert sids.codes[:, level].min() >= 0
        assert sids.codes[:, level].max() < size


def test_duplicate_vectors_collision_rate():
    sids = build_semantic_ids(_duplicate_example(), levels=1, codebook_size=4, seed=0)

    assert sids.collision_rate == pytest.approx(0.5)
    assert sids.level_sizes == [4, 3]
    assert sorted(sids.codes[:3, 1].tolist()) == [0, 1, 2]
    assert sids.codes[3:, 1].tolist() == [0, 0, 0]


def test_duplicate_vectors_usage():
    full = build_semantic_ids(_duplicate_example(), levels=1, codebook_size=4, seed=0)
    half = build_semantic_ids(_duplicate_example(), levels=1, codebook_size=8, seed=0)

    assert full.usage == [1.0]
    assert half.usage == [0.5]


def test_no_collisions_when_points_separate():
    vectors = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])

    sids = build_semantic_ids(vectors, levels=1, codebook_size=4, seed=0)

    assert sids.collision_rate == 0.0
    assert sids.level_sizes == [4, 1]


def test_level_zero_recovers_blobs():
    vectors = _blobs(n_blobs=6)
    blob = np.repeat(np.arange(6), 30)

    sids = build_semantic_ids(vectors, levels=2, codebook_size=6, seed=0)

    for label in range(6):
        assert len(np.unique(sids.codes[blob == label, 0])) == 1
    assert len(np.unique(sids.codes[:, 0])) == 6


def test_tokens_never_pad_or_bos():
    sids = build_semantic_ids(_blobs(), levels=2, codebook_size=4, seed=0)

    tokens = sids.tokens()

    assert (tokens != PAD).all()
    assert (tokens != BOS).all()
    assert tokens.min() >= 2


def test_token_ranges_of_levels_disjoint():
    sids = build_semantic_ids(_blobs(), levels=3, codebook_size=4, seed=0)
    tokens = sids.tokens()

    for level in range(sids.sid_len):
        low = sids.offsets[level]
        high = low + sids.level_sizes[level]
        assert (tokens[:, level] >= low).all()
        assert (tokens[:, level] < high).all()
    assert tokens.max() < sids.vocab_size


def test_lookup_items_round_trip():
    sids = build_semantic_ids(_blobs(), levels=2, codebook_size=4, seed=0)
    tokens = torch.as_tensor(sids.tokens())  # (n_items, 3)

    items = sids.lookup_items(tokens)

    assert items.dtype == torch.int64
    assert torch.equal(items, torch.arange(sids.n_items))


def test_lookup_items_keeps_batch_shape():
    sids = build_semantic_ids(_blobs(), levels=2, codebook_size=4, seed=0)
    tokens = torch.as_tensor(sids.tokens())[:12].reshape(3, 4, sids.sid_len)

    items = sids.lookup_items(tokens)

    assert items.shape == (3, 4)
    assert items.reshape(-1).tolist() == list(range(12))


def test_lookup_items_unused_combination():
    sids = build_semantic_ids(_duplicate_example(), levels=1, codebook_size=8, seed=0)
    used = {tuple(row) for row in sids.codes.tolist()}
    unused = next((a, b) for a in range(8) for b in range(3) if (a, b) not in used)
    tokens = torch.tensor([[sids.offsets[0] + unused[0], sids.offsets[1] + unused[1]]])

    assert sids.lookup_items(tokens).tolist() == [-1]


def test_lookup_items_invalid_tokens():
    sids = build_semantic_ids(_blobs(), levels=2, codebook_size=4, seed=0)
    valid = torch.as_tensor(sids.tokens()[0])  # (3,)
    cases = [
        torch.tensor([PAD, PAD, PAD]),
        torch.tensor([BOS, valid[1], valid[2]]),
        torch.stack([valid[1], valid[1], valid[2]]),  # a level-1 token at level 0
        torch.tensor([valid[0], valid[1], sids.vocab_size]),
    ]

    for case in cases:
        assert sids.lookup_items(case[None]).tolist() == [-1], case.tolist()


def test_lookup_items_rejects_wrong_length():
    sids = build_semantic_ids(_blobs(), levels=2, codebook_size=4, seed=0)

    with pytest.raises(ValueError, match="sid_len 3"):
        sids.lookup_items(torch.zeros(5, 2, dtype=torch.long))


def test_item_of_round_trip_and_none():
    sids = build_semantic_ids(_blobs(), levels=2, codebook_size=4, seed=0)
    tokens = sids.tokens()

    assert sids.item_of(tuple(tokens[17].tolist())) == 17
    assert sids.item_of(list(tokens[0].tolist())) == 0
    assert sids.item_of([PAD, PAD, PAD]) is None
    assert sids.item_of(tokens[17][:2].tolist()) is None


def test_build_deterministic_given_seed():
    vectors = np.random.default_rng(3).normal(size=(200, 8))

    first = build_semantic_ids(vectors, levels=3, codebook_size=8, seed=5)
    second = build_semantic_ids(vectors, levels=3, codebook_size=8, seed=5)

    assert np.array_equal(first.codes, second.codes)
    assert first.collision_rate == second.collision_rate


def test_build_seed_changes_codes():
    vectors = np.random.default_rng(3).normal(size=(200, 8))

    first = build_semantic_ids(vectors, levels=3, codebook_size=8, seed=5)
    second = build_semantic_ids(vectors, levels=3, codebook_size=8, seed=6)

    assert not np.array_equal(first.codes, second.codes)


def test_fewer_points_than_codebook():
    vectors = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])

    sids = build_semantic_ids(vectors, levels=2, codebook_size=8, seed=0)

    assert len(np.unique(sids.codes[:, 0])) == 3
    assert sids.usage[0] == pytest.approx(3 / 8)
    assert sids.collision_rate == 0.0


def test_single_item():
    sids = build_semantic_ids(np.ones((1, 4)), levels=2, codebook_size=4, seed=0)

    assert sids.codes.tolist() == [[0, 0, 0]]
    assert sids.item_of(sids.tokens()[0].tolist()) == 0


@pytest.mark.parametrize(
    ("vectors", "levels", "codebook_size", "message"),
    [
        (np.zeros((0, 3)), 1, 4, "shape"),
        (np.zeros(5), 1, 4, "shape"),
        (np.array([[0.0, np.nan]]), 1, 4, "NaN"),
        (np.zeros((5, 3)), 0, 4, "levels 0"),
        (np.zeros((5, 3)), 1, 0, "codebook_size 0"),
    ],
)
def test_build_rejects_bad_input(vectors, levels, codebook_size, message):
    with pytest.raises(ValueError, match=message):
        build_semantic_ids(vectors, levels=levels, codebook_size=codebook_size, seed=0)


def test_kmeans_reseeds_empty_cluster():
    points = _blobs(n_blobs=3)  # (90, 8)
    init = np.stack([points[0], points[30], points[60], np.full(8, 1e3)])  # the last centre attracts no point

    centres, labels = kmeans(points, k=4, iters=10, rng=np.random.default_rng(0), init_centres=init)

    assert np.bincount(labels, minlength=4).min() >= 1
    assert np.abs(centres[3]).max() < 1e2


def test_kmeans_duplicates_leave_clusters_empty():
    points = np.zeros((10, 2))

    centres, labels = kmeans(points, k=3, iters=5, rng=np.random.default_rng(0))

    assert centres.shape == (3, 2)
    assert labels.tolist() == [0] * 10


def test_kmeans_centres_are_member_means():
    points = _blobs(n_blobs=4)

    centres, labels = kmeans(points, k=4, iters=20, rng=np.random.default_rng(1))

    for cluster in range(4):
        assert np.allclose(centres[cluster], points[labels == cluster].mean(axis=0))
