"""Build everything a run derives from data: interactions, leave-one-out split, item vectors, SIDs.

Only the training prefixes feed anything learned from interactions (collaborative item vectors, item
counts); content vectors come from item side information. Validation and test targets never do.
"""

import logging
from dataclasses import dataclass

import numpy as np

from config import ConfigError
from data.item_vectors import collaborative_vectors, combine, content_vectors
from data.public import load_dataset
from data.semantic_ids import SemanticIds, build_semantic_ids
from data.split import Split, leave_one_out
from data.synthetic import World, make_world

log = logging.getLogger(__name__)

COLLABORATIVE_DIM = 32


@dataclass
class RunData:
    split: Split
    sids: SemanticIds
    item_counts: np.ndarray          # (n_items,) interactions per item in the training prefixes
    user_keys: list                  # per split user: the id in the source data
    world: World | None = None       # the synthetic world (the oracle), None for real data

    def target(self, user: int, split: str) -> int:
        """Return the validation or test target item of a user."""
        if split == "valid":
            return self.split.valid_target[user]
        if split == "test":
            return self.split.test_target[user]
        raise ValueError(f"invalid split name {split!r}: expected 'valid' or 'test'")

    def user_key(self, user: int):
        return self.user_keys[user]

    def world_users(self) -> np.ndarray:
        """(n_users,) index of each split user in the synthetic world."""
        return np.asarray(self.split.user_ids, dtype=np.int64)


def _load_interactions(cfg):
    """Read the configured public data set; returns (Interactions, content item vectors or None)."""
    paths = [cfg.data.path] + ([cfg.data.item_path] if cfg.data.item_path else [])
    options = {"k_core": cfg.data.core} if cfg.data.source == "amazon_raw" else {}
    interactions = load_dataset(cfg.data.source, *paths, **options)
    has_content = bool(interactions.item_attributes) or bool(interactions.item_text)
    content = None
    if has_content:
        content = content_vectors(interactions.n_items, attributes=interactions.item_attributes,
                                  texts=interactions.item_text, seed=cfg.seed)
    return interactions, content


def _item_vectors(kind: str, content: np.ndarray | None, train: list[list[int]], n_items: int, seed: int):
    """Vectors to cluster into SIDs: content, collaborative (training co-occurrence) or both."""
    if kind in ("content", "both") and content is None:
        raise ConfigError(f"data.item_vectors={kind!r} needs item side information, but this data set has "
                          "none; set data.item_path or use data.item_vectors=collaborative")
    if kind == "content":
        return content
    collaborative = collaborative_vectors(train, n_items, COLLABORATIVE_DIM, seed=seed)
    if kind == "collaborative":
        return collaborative
    return combine(content, collaborative)


def build_run_data(cfg) -> RunData:
    """Interactions -> leave-one-out split -> item vectors (training data only) -> semantic IDs."""
    world = None
    if cfg.data.source == "synthetic":
        world = make_world(cfg.world)
        sequences, n_items = world.sequences, world.n_items
        content, source_user_keys = world.item_features, list(range(len(sequences)))
    else:
        interactions, content = _load_interactions(cfg)
        sequences, n_items = interactions.sequences, interactions.n_items
        source_user_keys = interactions.user_keys

    split, dropped = leave_one_out(sequences, n_items, cfg.data.min_length)
    if dropped:
        log.info("dropped %d users with fewer than %d interactions", dropped, cfg.data.min_length)
    vectors = _item_vectors(cfg.data.item_vectors, content, split.train, n_items, cfg.seed)

    sids = build_semantic_ids(np.asarray(vectors, dtype=np.float32), cfg.sid.levels, cfg.sid.codebook_size,
                              seed=cfg.seed, iters=cfg.sid.kmeans_iters)
    log.info("data: %d users, %d items, %d training interactions; SIDs %s, collision rate %.3f, "
             "codebook usage %s", split.n_users, n_items, sum(map(len, split.train)), sids.level_sizes,
             sids.collision_rate, [round(u, 3) for u in sids.usage])
    user_keys = [source_user_keys[i] for i in split.user_ids]
    return RunData(split, sids, split.train_item_counts(), user_keys, world)
