"""Tests for the public dataset loaders on small fixtures and, when present, the real files."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from data.public import DataError, Interactions, load_amazon_raw, load_csv, load_dataset, load_lcrec, load_s3rec

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

A, B, C, D, E, F, G = (f"B00{n}{letter * 6}" for n, letter in enumerate("ABCDEFG", start=1))
U1, U2, U3, U4, U5 = (f"A{n}REVIEWER{n}X" for n in range(1, 6))


def fixture(name: str) -> Path:
    return FIXTURES / name


# ---- s3rec -------------------------------------------------------------------------------------


def test_s3rec_renumbers_by_first_appearance():
    data = load_s3rec(fixture("s3rec_good.txt"))
    assert data.item_keys == ["1", "2", "3", "4", "5", "6", "7", "8"]
    assert data.sequences == [[0, 1, 2, 3], [4, 1, 5], [2, 6, 0, 7, 4]]
    assert data.user_keys == ["1", "2", "3"]
    assert data.item_text is None
    assert data.item_attributes is None


def test_s3rec_counts():
    data = load_s3rec(fixture("s3rec_good.txt"))
    assert data.n_users == 3
    assert data.n_items == 8
    assert data.n_interactions == 12


def test_s3rec_item2attributes_tokens():
    data = load_s3rec(fixture("s3rec_good.txt"), fixture("s3rec_good_item2attributes.json"))
    assert data.item_attributes[0] == ["attr:1", "attr:2"]
    assert data.item_attributes[1] == ["attr:1", "attr:2"]  # repeated attribute 2 counts once
    assert data.item_attributes[7] == ["attr:7"]


def test_s3rec_meta_lines_give_text_and_tokens():
    data = load_s3rec(fixture("s3rec_good.txt"), fixture("s3rec_good_items.jsonl"))
    assert data.item_text[0] == "Rosa red lipstick Rosa Makeup Lips Lipstick"
    assert data.item_attributes[0] == ["brand:Rosa", "category:Makeup", "category:Lips", "category:Lipstick"]
    assert data.item_attributes[2] == ["category:Skin Care", "category:Face", "category:Moisturizers"]


def test_s3rec_items_without_meta_are_empty():
    data = load_s3rec(fixture("s3rec_good.txt"), fixture("s3rec_good_items.jsonl"))
    item_4 = data.item_keys.index("4")
    assert data.item_text[item_4] == ""
    assert data.item_attributes[item_4] == []


def test_s3rec_both_side_files_concatenate():
    data = load_s3rec(fixture("s3rec_good.txt"), fixture("s3rec_good_item2attributes.json"),
                      fixture("s3rec_good_items.jsonl"))
    assert data.item_attributes[1] == ["attr:1", "attr:2", "brand:Rosa", "category:Makeup", "category:Lips",
                                       "category:Lip Gloss"]


def test_s3rec_rejects_two_jsonl_files():
    with pytest.raises(ValueError, match="Pass at most one"):
        load_s3rec(fixture("s3rec_good.txt"), fixture("s3rec_good_items.jsonl"), fixture("s3rec_good_items.jsonl"))


def test_load_dataset_dispatches_s3rec():
    data = load_dataset("s3rec", fixture("s3rec_good.txt"), fixture("s3rec_good_item2attributes.json"))
    assert isinstance(data, Interactions)
    assert data.sequences == load_s3rec(fixture("s3rec_good.txt")).sequences


def test_load_dataset_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown dataset format 'parquet'"):
        load_dataset("parquet", fixture("s3rec_good.txt"))


# ---- lcrec -------------------------------------------------------------------------------------


def test_lcrec_keeps_item_zero():
    data = load_lcrec(fixture("lcrec_good.inter.json"))
    assert data.item_keys == ["0", "1", "2", "3", "4", "5", "6"]
    assert data.sequences == [[0, 1, 2, 3], [4, 1, 5], [2, 0, 6, 4]]
    assert data.user_keys == ["0", "1", "2"]


def test_lcrec_item_text_leaves_out_description():
    data = load_lcrec(fixture("lcrec_good.inter.json"), fixture("lcrec_good.item.json"))
    assert data.item_text[2] == "Nitrile gloves, box of 100. Industrial & Scientific Lab Supplies Gloves"


def test_lcrec_attributes_use_category_prefixes():
    data = load_lcrec(fixture("lcrec_good.inter.json"), fixture("lcrec_good.item.json"))
    assert data.item_attributes[0] == [
        "brand:Mensura.",
        "category:Industrial & Scientific",
        "category:Industrial & Scientific,Test",
        "category:Industrial & Scientific,Test,Measure & Inspect",
        "category:Industrial & Scientific,Test,Measure & Inspect,Calipers",
    ]


def test_lcrec_empty_brand_and_categories():
    data = load_lcrec(fixture("lcrec_good.inter.json"), fixture("lcrec_good.item.json"))
    assert data.item_attributes[2][0] == "category:Industrial & Scientific"  # empty brand gives no token
    assert data.item_attributes[6] == ["brand:Vitrum."]
    assert data.item_text[3] == ""  # item without metadata


# ---- amazon_raw --------------------------------------------------------------------------------


def test_raw_k_core_is_iterative():
    data = load_amazon_raw(fixture("amazon_raw_reviews.json"), k_core=2)
    # Dropping D and F leaves U5 with one item, which drops E, then U4, then G (held by U1).
    assert data.user_keys == [U2, U1, U3]
    assert data.item_keys == [A, B, C]


def test_raw_orders_by_time_then_asin():
    data = load_amazon_raw(fixture("amazon_raw_reviews.json"), k_core=0)
    u1 = data.user_keys.index(U1)
    ordered = [data.item_keys[i] for i in data.sequences[u1]]
    assert ordered == [A, G, B, C]  # B and C share a day; the file lists C first


def test_raw_keeps_a_repeated_pair_once():
    data = load_amazon_raw(fixture("amazon_raw_reviews.json"), k_core=0)
    u2 = data.user_keys.index(U2)
    assert [data.item_keys[i] for i in data.sequences[u2]] == [A, B]


def test_raw_without_filter_keeps_everyone():
    data = load_amazon_raw(fixture("amazon_raw_reviews.json"), k_core=0)
    assert data.user_keys == [U2, U1, U3, U4, U5]
    assert data.n_interactions == 13


def test_raw_reads_gzip(tmp_path):
    packed = tmp_path / "reviews.json.gz"
    packed.write_bytes(gzip.compress(fixture("amazon_raw_reviews.json").read_bytes()))
    plain = load_amazon_raw(fixture("amazon_raw_reviews.json"), k_core=2)
    assert load_amazon_raw(packed, k_core=2) == plain


def test_raw_filter_that_removes_everyone():
    with pytest.raises(DataError, match="Lower k_core"):
        load_amazon_raw(fixture("amazon_raw_reviews.json"), k_core=5)


# ---- csv ---------------------------------------------------------------------------------------


def test_csv_orders_by_timestamp_then_file_order():
    data = load_csv(fixture("csv_good.csv"))
    assert data.user_keys == ["alice", "bob"]
    assert data.item_keys == ["desk", "lamp", "chair"]
    assert data.sequences == [[0, 1, 2], [0, 1]]


def test_csv_k_core():
    data = load_csv(fixture("csv_good.csv"), k_core=2)
    assert data.item_keys == ["desk", "lamp"]
    assert data.sequences == [[0, 1], [0, 1]]


# ---- broken files ------------------------------------------------------------------------------

BROKEN = [
    # (test id, loader call, expected file name, expected line, expected text in the message)
    ("s3rec malformed", lambda: load_s3rec(fixture("s3rec_malformed.txt")), "s3rec_malformed.txt", 2, "'x'"),
    ("s3rec non-utf8", lambda: load_s3rec(fixture("s3rec_non_utf8.txt")), "s3rec_non_utf8.txt", 3, "UTF-8"),
    ("s3rec duplicate user", lambda: load_s3rec(fixture("s3rec_duplicate_user.txt")),
     "s3rec_duplicate_user.txt", 3, "duplicate user 1 (first on line 1)"),
    ("s3rec empty sequence", lambda: load_s3rec(fixture("s3rec_empty_sequence.txt")),
     "s3rec_empty_sequence.txt", 2, "no items"),
    ("s3rec id zero", lambda: load_s3rec(fixture("s3rec_zero_id.txt")), "s3rec_zero_id.txt", 2, ">= 1"),
    ("s3rec unknown attribute item",
     lambda: load_s3rec(fixture("s3rec_good.txt"), fixture("s3rec_unknown_item2attributes.json")),
     "s3rec_unknown_item2attributes.json", 3, "item id 99"),
    ("s3rec unknown meta item",
     lambda: load_s3rec(fixture("s3rec_good.txt"), fixture("s3rec_unknown_items.jsonl")),
     "s3rec_unknown_items.jsonl", 3, "item id 99"),
    ("s3rec duplicate meta item",
     lambda: load_s3rec(fixture("s3rec_good.txt"), fixture("s3rec_duplicate_items.jsonl")),
     "s3rec_duplicate_items.jsonl", 3, "duplicate item_id 1 (first on line 1)"),
    ("lcrec malformed", lambda: load_lcrec(fixture("lcrec_malformed.inter.json")),
     "lcrec_malformed.inter.json", 3, "invalid JSON"),
    ("lcrec duplicate user", lambda: load_lcrec(fixture("lcrec_duplicate_user.inter.json")),
     "lcrec_duplicate_user.inter.json", 4, "appears twice"),
    ("lcrec empty sequence", lambda: load_lcrec(fixture("lcrec_empty_sequence.inter.json")),
     "lcrec_empty_sequence.inter.json", 4, "no items"),
    ("lcrec unknown item", lambda: load_lcrec(fixture("lcrec_good.inter.json"), fixture("lcrec_unknown.item.json")),
     "lcrec_unknown.item.json", 4, "item id 42"),
    ("lcrec non-utf8", lambda: load_lcrec(fixture("lcrec_good.inter.json"), fixture("lcrec_non_utf8.item.json")),
     "lcrec_non_utf8.item.json", 3, "UTF-8"),
    ("raw malformed", lambda: load_amazon_raw(fixture("amazon_raw_malformed.json")),
     "amazon_raw_malformed.json", 3, "invalid JSON"),
    ("raw missing field", lambda: load_amazon_raw(fixture("amazon_raw_missing_field.json")),
     "amazon_raw_missing_field.json", 2, "unixReviewTime"),
    ("raw non-utf8", lambda: load_amazon_raw(fixture("amazon_raw_non_utf8.json")),
     "amazon_raw_non_utf8.json", 2, "UTF-8"),
    ("csv wrong field count", lambda: load_csv(fixture("csv_wrong_field_count.csv")),
     "csv_wrong_field_count.csv", 3, "2 fields, expected 3"),
    ("csv bad timestamp", lambda: load_csv(fixture("csv_bad_timestamp.csv")),
     "csv_bad_timestamp.csv", 4, "'yesterday'"),
    ("csv missing column", lambda: load_csv(fixture("csv_missing_column.csv")),
     "csv_missing_column.csv", 1, "timestamp"),
    ("csv non-utf8", lambda: load_csv(fixture("csv_non_utf8.csv")), "csv_non_utf8.csv", 3, "UTF-8"),
]


@pytest.mark.parametrize("call, name, line, words", [case[1:] for case in BROKEN], ids=[case[0] for case in BROKEN])
def test_broken_file_names_file_and_line(call, name, line, words):
    with pytest.raises(DataError) as caught:
        call()
    assert Path(caught.value.path).name == name
    assert caught.value.line == line
    assert f"{name}:{line}: " in str(caught.value)
    assert words in str(caught.value)


@pytest.mark.parametrize("name, load", [
    ("s3rec_empty.txt", load_s3rec),
    ("lcrec_empty.inter.json", load_lcrec),
    ("amazon_raw_empty.json", load_amazon_raw),
    ("csv_empty.csv", load_csv),
])
def test_empty_file_is_rejected(name, load):
    with pytest.raises(DataError, match="file is empty") as caught:
        load(fixture(name))
    assert Path(caught.value.path).name == name


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)


# ---- real files --------------------------------------------------------------------------------

REAL = {
    # dataset: (loader arguments, users, items, interactions)
    "Beauty": (("s3rec", "amazon_beauty/Beauty.txt"), 22_363, 12_101, 198_502),
    "Sports": (("s3rec", "amazon_sports/Sports_and_Outdoors.txt"), 35_598, 18_357, 296_337),
    "Toys": (("s3rec", "amazon_toys/Toys_and_Games.txt"), 19_412, 11_924, 167_597),
    "Scientific": (("lcrec", "amazon2018_scientific/Scientific.inter.json"), 8_317, 4_344, 58_492),
}


def real_file(relative: str) -> Path:
    path = REAL_DATA / relative
    if not path.exists():
        pytest.skip(f"real dataset file {path} not found; the public data folder sits beside the repository")
    return path


@pytest.mark.parametrize("dataset", sorted(REAL))
def test_real_dataset_counts(dataset):
    (format, relative), users, items, interactions = REAL[dataset]
    data = load_dataset(format, real_file(relative))
    assert data.n_users == users
    assert data.n_items == items
    assert data.n_interactions == interactions
    assert min(len(s) for s in data.sequences) == 5


@pytest.fixture(scope="module")
def beauty() -> Interactions:
    return load_s3rec(real_file("amazon_beauty/Beauty.txt"), real_file("amazon_beauty/Beauty_item2attributes.json"),
                      real_file("amazon_beauty/Beauty_item_meta.jsonl"))


def test_beauty_dense_id_is_file_id_minus_one(beauty):
    assert beauty.item_keys == [str(i + 1) for i in range(beauty.n_items)]


def test_beauty_every_item_has_attributes(beauty):
    assert all(beauty.item_attributes)


def test_beauty_first_item_side_information(beauty):
    assert beauty.item_text[0] == "OPI Makeup Nails Nail Polish"
    assert "brand:OPI" in beauty.item_attributes[0]


def test_beauty_has_no_repeated_items(beauty):
    assert all(len(set(s)) == len(s) for s in beauty.sequences)


def test_beauty_first_users_keep_their_ids(beauty, tmp_path):
    head = tmp_path / "Beauty_head.txt"
    lines = real_file("amazon_beauty/Beauty.txt").read_text(encoding="utf-8").splitlines()[:300]
    head.write_text("\n".join(lines) + "\n", encoding="utf-8")
    data = load_s3rec(head)
    assert data.n_users == 300
    assert data.sequences == beauty.sequences[:300]
    assert data.item_keys == beauty.item_keys[: data.n_items]


def test_scientific_text_for_every_item():
    data = load_lcrec(real_file("amazon2018_scientific/Scientific.inter.json"),
                      real_file("amazon2018_scientific/Scientific.item.json"))
    assert all(data.item_text)
    assert data.item_keys[:3] == ["0", "1", "2"]
