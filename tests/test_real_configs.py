"""The real-data configs load, and point at files that exist when the public data is present."""

from pathlib import Path

import numpy as np
import pytest

from config import load_config
from data.build import build_run_data

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CONFIGS = {
    "beauty.yaml": ("amazon_beauty/Beauty.txt", "amazon_beauty/Beauty_item_meta.jsonl"),
    "sports.yaml": ("amazon_sports/Sports_and_Outdoors.txt",
                    "amazon_sports/Sports_and_Outdoors_item2attributes.json"),
    "toys.yaml": ("amazon_toys/Toys_and_Games.txt", "amazon_toys/Toys_and_Games_item2attributes.json"),
    "scientific.yaml": ("amazon2018_scientific/Scientific.inter.json",
                        "amazon2018_scientific/Scientific.item.json"),
}
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason=f"public data folder {SHARED} not found")


@needs_data
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_real_config_validates(name):
    path, item_path = CONFIGS[name]
    cfg = load_config(str(ROOT / name), [f"data.path={SHARED / path}", f"data.item_path={SHARED / item_path}"])
    assert cfg.data.source in ("s3rec", "lcrec")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_real_config_names_data_files(name):
    # Without the data paths the shipped placeholders are missing, and the validation error names the key to set.
    with pytest.raises(ValueError, match="data.path"):
        load_config(str(ROOT / name), ["data.path=missing/file.txt"])


@needs_data
def test_scientific_builds_semantic_ids():
    path, item_path = CONFIGS["scientific.yaml"]
    cfg = load_config(str(ROOT / "scientific.yaml"),
                      [f"data.path={SHARED / path}", f"data.item_path={SHARED / item_path}"])
    run = build_run_data(cfg)
    assert run.split.n_users == 8317
    assert run.split.n_items == 4344
    assert sum(map(len, run.split.train)) == 41858
    codes = run.sids.codes
    assert len(np.unique(codes, axis=0)) == len(codes)
    assert 0.0 <= run.sids.collision_rate < 1.0
