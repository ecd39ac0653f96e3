"""Tests for content and collaborative item vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from data import item_vectors
from data.item_vectors import (
    attribute_vectors,
    collaborative_vectors,
    combine,
    content_vectors,
    cooccurrence_counts,
    hashed_ngrams,
    text_vectors,
)

ATTRIBUTES = [
    ["brand:Rosa", "category:Makeup", "category:Lips"],  # 0
    ["brand:Rosa", "category:Makeup", "category:Lips", "category:Gloss"],  # 1
    ["brand:Acqua", "category:Skin Care", "category:Cleansers"],  # 2
    ["brand:Acqua", "category:Skin Care", "category:Moisturizers"],  # 3
    ["brand:Ferro", "category:Tools", "category:Tweezers"],  # 4
    [],  # 5: no content at all
]
TEXTS = [
    "Rosa red lipstick matte",
    "Rosa red lipstick gloss",
    "Acqua foaming face cleanser",
    "Acqua face moisturizer cream",
    "Ferro steel tweezers slanted",
    "",
]
# Two groups of items that are bought together: {0, 1, 2} and {3, 4, 5}. Item 6 is never bought.
TRAIN = [[0, 1, 2], [1, 2, 0], [2, 0, 1, 0], [3, 4, 5], [4, 5, 3], [5, 3, 4], [0, 1], [3, 4]]
N_ITEMS = 7


def cosine(vectors: np.ndarray, i: int, j: int) -> float:
    a, b = vectors[i], vectors[j]
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---- shapes and finiteness ---------------------------------------------------------------------


def test_attribute_vectors_shape():
    assert attribute_vectors(ATTRIBUTES, dim=4).shape == (6, 4)


def test_text_vectors_shape():
    assert text_vectors(TEXTS, dim=4).shape == (6, 4)


def test_content_vectors_stack_both_blocks():
    assert content_vectors(6, ATTRIBUTES, TEXTS, dim=4).shape == (6, 8)


def test_content_vectors_need_an_input():
    with pytest.raises(ValueError, match="requires attributes or texts"):
        content_vectors(6, dim=4)


def test_content_vectors_check_item_count():
    with pytest.raises(ValueError, match="texts has 6 entries, expected one per item"):
        content_vectors(7, texts=TEXTS, dim=4)


def test_collaborative_vectors_shape():
    assert collaborative_vectors(TRAIN, N_ITEMS, dim=3).shape == (N_ITEMS, 3)


def test_dim_above_item_count_pads_zeros():
    vectors = attribute_vectors(ATTRIBUTES, dim=32)
    assert vectors.shape == (6, 32)
    assert np.all(vectors[:, 6:] == 0)  # a 6-row matrix has at most 6 components


def test_item_without_content_is_finite_zero():
    vectors = content_vectors(6, ATTRIBUTES, TEXTS, dim=4)
    assert np.all(np.isfinite(vectors))
    assert np.all(vectors[5] == 0)


def test_item_without_interactions_is_finite_zero():
    vectors = collaborative_vectors(TRAIN, N_ITEMS, dim=3)
    assert np.all(np.isfinite(vectors))
    assert np.all(vectors[6] == 0)


def test_empty_training_gives_zero_vectors():
    vectors = collaborative_vectors([[0], [1]], N_ITEMS, dim=3)
    assert np.all(vectors == 0)


def test_out_of_range_item_is_rejected():
    with pytest.raises(ValueError, match="item ids must be in 0..6"):
        collaborative_vectors([[0, 7]], N_ITEMS, dim=3)


# ---- similarity --------------------------------------------------------------------------------


def test_shared_attributes_are_closer():
    vectors = attribute_vectors(ATTRIBUTES, dim=4)
    assert cosine(vectors, 0, 1) > cosine(vectors, 0, 2)
    assert cosine(vectors, 2, 3) > cosine(vectors, 2, 4)


def test_shared_words_are_closer():
    vectors = text_vectors(TEXTS, dim=4)
    assert cosine(vectors, 0, 1) > cosine(vectors, 0, 3)
    assert cosine(vectors, 2, 3) > cosine(vectors, 2, 4)


@pytest.mark.parametrize("scaling", ["ppmi", "log"])
def test_cooccurring_items_are_closer(scaling):
    vectors = collaborative_vectors(TRAIN, N_ITEMS, dim=3, scaling=scaling)
    assert cosine(vectors, 0, 1) > cosine(vectors, 0, 3)
    assert cosine(vectors, 3, 4) > cosine(vectors, 3, 1)


def test_hashed_ngrams_are_stable_across_processes():
    # CRC32 values; Python's salted str hash() would change these between runs.
    assert hashed_ngrams("Red  LIPSTICK!", 2**20) == [89999, 242597, 764187]


# ---- training prefixes only --------------------------------------------------------------------


def test_cooccurrence_respects_window():
    rows, cols, counts = cooccurrence_counts([[0, 1, 2, 3]], 4, window=1)
    pairs = set(zip(rows.tolist(), cols.tolist()))
    assert pairs == {(0, 1), (1, 0), (1, 2), (2, 1), (2, 3), (3, 2)}


def test_collaborative_ignores_changed_targets():
    # Two datasets with the same training prefixes but different validation and test targets.
    full_a = [s + [6, 5] for s in TRAIN]
    full_b = [s + [2, 3] for s in TRAIN]
    train_a = [s[:-2] for s in full_a]
    train_b = [s[:-2] for s in full_b]
    vectors_a = collaborative_vectors(train_a, N_ITEMS, dim=3)
    vectors_b = collaborative_vectors(train_b, N_ITEMS, dim=3)
    assert np.array_equal(vectors_a, vectors_b)


def test_collaborative_changes_when_targets_leak():
    # The same comparison on full sequences must differ, or the previous test proves nothing.
    vectors_a = collaborative_vectors([s + [6, 5] for s in TRAIN], N_ITEMS, dim=3)
    vectors_b = collaborative_vectors([s + [2, 3] for s in TRAIN], N_ITEMS, dim=3)
    assert not np.allclose(vectors_a, vectors_b)


# ---- determinism and the two SVD paths ---------------------------------------------------------


def test_content_vectors_are_deterministic():
    first = content_vectors(6, ATTRIBUTES, TEXTS, dim=4, seed=3)
    second = content_vectors(6, ATTRIBUTES, TEXTS, dim=4, seed=3)
    assert np.array_equal(first, second)


def test_lowrank_path_is_deterministic(monkeypatch):
    monkeypatch.setattr(item_vectors, "DENSE_SVD_MAX_ELEMENTS", 0)
    first = collaborative_vectors(TRAIN, N_ITEMS, dim=3, seed=1)
    second = collaborative_vectors(TRAIN, N_ITEMS, dim=3, seed=1)
    assert np.array_equal(first, second)


def test_lowrank_path_matches_dense_svd(monkeypatch):
    dense = text_vectors(TEXTS, dim=4)
    monkeypatch.setattr(item_vectors, "DENSE_SVD_MAX_ELEMENTS", 0)
    lowrank = text_vectors(TEXTS, dim=4)
    # The sketch has q = 6 = n_rows columns, so it spans the full column space and the SVD is exact.
    np.testing.assert_allclose(lowrank, dense, atol=1e-4)


def test_lowrank_path_keeps_caller_rng(monkeypatch):
    monkeypatch.setattr(item_vectors, "DENSE_SVD_MAX_ELEMENTS", 0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    collaborative_vectors(TRAIN, N_ITEMS, dim=3)
    assert torch.equal(torch.rand(3), expected)


# ---- combine -----------------------------------------------------------------------------------


def test_combine_normalises_each_block():
    left = np.array([[3.0, 4.0], [0.0, 0.0]])
    right = np.array([[1.0], [2.0]])
    combined = combine(left, right)
    np.testing.assert_allclose(combined, [[0.6, 0.8, 1.0], [0.0, 0.0, 1.0]])


def test_combine_applies_weights():
    combined = combine(np.array([[2.0]]), np.array([[5.0]]), weights=[0.5, 2.0])
    np.testing.assert_allclose(combined, [[0.5, 2.0]])


def test_combine_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="does not have 2 rows"):
        combine(np.zeros((2, 3)), np.zeros((3, 3)))


def test_combine_returns_float32():
    assert combine(np.ones((2, 2))).dtype == np.float32
