"""Loaders for public sequential-recommendation datasets.

Every loader returns `Interactions` with items renumbered densely 0..n_items-1 in order of
first appearance in the interaction file (users in file order, each user oldest first).
The original ids stay in `item_keys` and `user_keys`. Loaders only read: they write nothing.
Invalid input raises `DataError`, whose message starts with "FILE:LINE:" and ends with the fix.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from functools import partial
from pathlib import Path

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Invalid dataset file. `path` and `line` (1-based, None for the whole file) locate it."""

    def __init__(self, path: str | Path, line: int | None, problem: str, fix: str):
        self.path = str(path)
        self.line = line
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {problem}. {fix}.")


@dataclass
class Interactions:
    """User sequences with dense 0-based item ids, plus optional item side information."""

    sequences: list[list[int]]  # per user, oldest first, dense item ids
    item_keys: list[str]  # per dense item: the id or ASIN used in the interaction file
    user_keys: list[str]  # per user: the id used in the interaction file
    item_text: list[str] | None = None  # per dense item: title, brand and categories ("" if none)
    item_attributes: list[list[str]] | None = None  # per dense item: tokens such as "brand:OPI"

    @property
    def n_items(self) -> int:
        return len(self.item_keys)

    @property
    def n_users(self) -> int:
        return len(self.sequences)

    @property
    def n_interactions(self) -> int:
        return sum(len(s) for s in self.sequences)


_INTEGER = re.compile(r"[0-9]+")


def _read_text(path: str | Path) -> str:
    """Read a UTF-8 file, gunzipping it when it starts with the gzip magic bytes."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise DataError(path, None, f"invalid gzip data ({err})", "Download the file again") from None
    if not data.strip():
        raise DataError(path, None, "file is empty", "Pass a non-empty dataset file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(path, line, f"byte {data[err.start]:#04x} is not valid UTF-8",
                        "Re-encode the file as UTF-8") from None
    return text.removeprefix("\ufeff")


def _lines(text: str):
    """Yield (line number, line) for non-blank lines, accepting LF and CRLF endings."""
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            yield number, line


def _json_lines(path: str | Path):
    """Yield (line number, JSON object) for each non-blank line of a JSON-lines file."""
    for number, line in _lines(_read_text(path)):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(path, number, f"invalid JSON ({err.msg})",
                            "Write one JSON object per line") from None
        if not isinstance(row, dict):
            raise DataError(path, number, "line is not a JSON object", "Write one JSON object per line")
        yield number, row


class _DuplicateKey(Exception):
    def __init__(self, key: str):
        self.key = key


def _reject_duplicate_keys(pairs: list) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _line_of_key(text: str, key: str, last: bool = False) -> int | None:
    """Return the line of the first (or last) `"key":` in a JSON text, or None if absent."""
    matches = list(re.finditer('"' + re.escape(key) + r'"\s*:', text))
    if not matches:
        return None
    match = matches[-1] if last else matches[0]
    return text.count("\n", 0, match.start()) + 1


def _load_json_object(path: str | Path) -> tuple[dict, str]:
    """Parse a file that contains one JSON object. Return the object and the text, for line lookups."""
    text = _read_text(path)
    try:
        value = json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except json.JSONDecodeError as err:
        raise DataError(path, err.lineno, f"invalid JSON ({err.msg})", "Fix the JSON syntax") from None
    except _DuplicateKey as err:
        raise DataError(path, _line_of_key(text, err.key, last=True), f'key "{err.key}" appears twice',
                        "Keep one entry per key") from None
    if not isinstance(value, dict):
        raise DataError(path, 1, "top-level JSON value is not an object", "Use the {\"id\": ...} layout")
    return value, text


def _resolve(line) -> int | None:
    """Return a line number given as an int, None, or a callable that finds it (only on error)."""
    return line() if callable(line) else line


def _parse_id(path, line, key: str, minimum: int) -> int:
    if not _INTEGER.fullmatch(key) or int(key) < minimum:
        raise DataError(path, _resolve(line), f"id {key!r} is not an integer >= {minimum}",
                        "Write ids as decimal integers (S3-Rec ids start at 1, LC-Rec ids at 0)")
    return int(key)


def _int_list(path, line, value, what: str, minimum: int) -> list[int]:
    if not isinstance(value, list) or not all(type(v) is int and v >= minimum for v in value):
        raise DataError(path, _resolve(line), f"{what} is not a list of integers >= {minimum}",
                        "Write the value as a JSON list of ids")
    return value


def _unknown_item(path, line, key, interaction_path) -> DataError:
    return DataError(path, _resolve(line), f"item id {key} not found in {Path(interaction_path).name}",
                     "Pass the metadata file that belongs to this interaction file")


def _attribute_tokens(brand, categories: list[str]) -> list[str]:
    tokens = [f"brand:{brand.strip()}"] if isinstance(brand, str) and brand.strip() else []
    tokens += [f"category:{c.strip()}" for c in categories if c.strip()]
    return list(dict.fromkeys(tokens))


def _item_text(*fields) -> str:
    return " ".join(f.strip() for f in fields if isinstance(f, str) and f.strip())


def load_s3rec(sequence_path: str | Path, *item_paths: str | Path) -> Interactions:
    """Load S3-Rec text (`user item item ...`, 1-based ids) with optional item side information.

    Each item path is read by its suffix. A ".jsonl" file has one line per item with `item_id`
    and optional `brand`, `categories`, `title` and `description`, which give "brand:" and
    "category:" tokens and the item text. Any other file is an `*_item2attributes.json` object
    {"item id": [attribute id, ...]}, which gives "attr:ID" tokens. The tokens of several files
    are concatenated in the order given. At most one ".jsonl" file is allowed.
    """
    line_files = [p for p in item_paths if Path(p).suffix.lower() == ".jsonl"]
    if len(line_files) > 1:
        raise ValueError(f"got {len(line_files)} item metadata .jsonl files. Pass at most one")
    text = _read_text(sequence_path)
    item_index: dict[int, int] = {}
    user_line: dict[int, int] = {}
    sequences: list[list[int]] = []
    for number, line in _lines(text):
        fields = line.split()
        user = _parse_id(sequence_path, number, fields[0], 1)
        if user in user_line:
            raise DataError(sequence_path, number, f"duplicate user {user} (first on line {user_line[user]})",
                            "Merge the two lines into one sequence")
        if len(fields) < 2:
            raise DataError(sequence_path, number, f"user {user} has no items",
                            "Remove the line or add the user's items")
        user_line[user] = number
        items = [_parse_id(sequence_path, number, f, 1) for f in fields[1:]]
        sequences.append([item_index.setdefault(i, len(item_index)) for i in items])
    data = Interactions(sequences, [str(i) for i in item_index], [str(u) for u in user_line])

    for item_path in item_paths:
        if item_path in line_files:
            data.item_text, tokens = _read_item_meta_lines(item_path, item_index, sequence_path)
        else:
            tokens = _read_item2attributes(item_path, item_index, sequence_path)
        if data.item_attributes is None:
            data.item_attributes = tokens
        else:
            data.item_attributes = [a + b for a, b in zip(data.item_attributes, tokens)]
    return data


def _read_item2attributes(path, item_index: dict[int, int], sequence_path) -> list[list[str]]:
    """Read {"item id": [attribute id, ...]} into "attr:ID" tokens per dense item."""
    attributes: list[list[str]] = [[] for _ in item_index]
    table, text = _load_json_object(path)
    for key, value in table.items():
        line = partial(_line_of_key, text, key)
        item = _parse_id(path, line, key, 1)
        values = _int_list(path, line, value, f"attributes of item {key}", 0)
        if item not in item_index:
            raise _unknown_item(path, line, key, sequence_path)
        attributes[item_index[item]] = list(dict.fromkeys(f"attr:{v}" for v in values))
    return attributes


def _read_item_meta_lines(path, item_index: dict[int, int],
                          sequence_path) -> tuple[list[str], list[list[str]]]:
    """Read JSON lines keyed by `item_id` into (text, "brand:"/"category:" tokens) per dense item."""
    texts = [""] * len(item_index)
    attributes: list[list[str]] = [[] for _ in item_index]
    seen: dict[int, int] = {}
    for number, row in _json_lines(path):
        item = row.get("item_id")
        if type(item) is not int:
            raise DataError(path, number, "missing integer field item_id",
                            'Give every line an "item_id" from the interaction file')
        if item in seen:
            raise DataError(path, number, f"duplicate item_id {item} (first on line {seen[item]})",
                            "Keep one line per item")
        seen[item] = number
        if item not in item_index:
            raise _unknown_item(path, number, item, sequence_path)
        categories = row.get("categories") or []
        if isinstance(categories, str):
            categories = [categories]
        if not all(isinstance(c, str) for c in categories):
            raise DataError(path, number, "categories is not a list of strings",
                            'Write categories as ["Makeup", "Nails"]')
        dense = item_index[item]
        attributes[dense] = _attribute_tokens(row.get("brand"), categories)
        texts[dense] = _item_text(row.get("title"), row.get("brand"), *categories)
    return texts, attributes


def load_lcrec(inter_path: str | Path, item_path: str | Path | None = None) -> Interactions:
    """Load LC-Rec files: `*.inter.json` {"user": [item, ...]} with 0-based ids (0 is an item).

    `item_path` is `*.item.json` {"item id": {title, description, brand, categories}}, where
    categories is one comma-joined path. Attributes are the brand and every path prefix, so a
    comma inside a category name only adds one extra prefix. The text is title, brand and
    categories (the description is left out).
    """
    table, text = _load_json_object(inter_path)
    item_index: dict[int, int] = {}
    sequences: list[list[int]] = []
    for user, items in table.items():
        line = partial(_line_of_key, text, user)
        items = _int_list(inter_path, line, items, f"sequence of user {user}", 0)
        if not items:
            raise DataError(inter_path, line(), f"user {user} has no items", "Remove the user or add items")
        sequences.append([item_index.setdefault(i, len(item_index)) for i in items])
    data = Interactions(sequences, [str(i) for i in item_index], list(table))
    if item_path is None:
        return data

    meta, meta_text = _load_json_object(item_path)
    data.item_text = [""] * len(item_index)
    data.item_attributes = [[] for _ in item_index]
    for key, row in meta.items():
        line = partial(_line_of_key, meta_text, key)
        item = _parse_id(item_path, line, key, 0)
        if not isinstance(row, dict) or not all(isinstance(v, str) for v in row.values()):
            raise DataError(item_path, line(), f"item {key} is not an object of string fields",
                            "Write {\"title\": ..., \"brand\": ..., \"categories\": ...}")
        if item not in item_index:
            raise _unknown_item(item_path, line, key, inter_path)
        parts = [p.strip() for p in row.get("categories", "").split(",") if p.strip()]
        prefixes = [",".join(parts[: n + 1]) for n in range(len(parts))]
        dense = item_index[item]
        data.item_attributes[dense] = _attribute_tokens(row.get("brand"), prefixes)
        data.item_text[dense] = _item_text(row.get("title"), row.get("brand"), " ".join(parts))
    return data


def _from_events(path, events: list[tuple[str, str, float, object]], k_core: int) -> Interactions:
    """Build sequences from (user, item, time, tie-break) events.

    Users keep the order of their first event. Each user's items are sorted by (time, tie-break)
    and a repeated (user, item) pair keeps its first occurrence in that order. Then the k-core
    filter removes users and items with fewer than `k_core` interactions until none is left.
    """
    histories: dict[str, dict[str, tuple]] = {}
    for user, item, time, tie in events:
        history = histories.setdefault(user, {})
        if item not in history or (time, tie) < history[item]:
            history[item] = (time, tie)
    n_events = len(events)
    while k_core > 1:
        counts = Counter(item for history in histories.values() for item in history)
        rare = {item for item, count in counts.items() if count < k_core}
        for history in histories.values():
            for item in rare.intersection(history):
                del history[item]
        short = [user for user, history in histories.items() if len(history) < k_core]
        for user in short:
            del histories[user]
        if not rare and not short:
            break
    if not histories:
        raise DataError(path, None, f"no users are left after the {k_core}-core filter",
                        "Lower k_core or pass a larger file")
    item_index: dict[str, int] = {}
    sequences = []
    for history in histories.values():
        ordered = sorted(history, key=lambda item: history[item])
        sequences.append([item_index.setdefault(item, len(item_index)) for item in ordered])
    data = Interactions(sequences, list(item_index), list(histories))
    logger.info("%s: %d events -> %d users, %d items, %d interactions (k_core=%d)",
                path, n_events, data.n_users, data.n_items, data.n_interactions, k_core)
    return data


def load_amazon_raw(review_path: str | Path, k_core: int = 5) -> Interactions:
    """Load Amazon review JSON lines (plain or .gz) with reviewerID, asin and unixReviewTime.

    Ties in time are ordered by ASIN. See `_from_events` for de-duplication and the k-core filter.
    """
    events = []
    for number, row in _json_lines(review_path):
        user, item, time = row.get("reviewerID"), row.get("asin"), row.get("unixReviewTime")
        if not isinstance(user, str) or not isinstance(item, str) or type(time) is not int:
            raise DataError(review_path, number, "missing or invalid reviewerID, asin (strings) or "
                            "unixReviewTime (integer)", "Pass a review file of the Amazon 2014 or 2018 release")
        events.append((user, item, time, item))
    return _from_events(review_path, events, k_core)


def load_csv(path: str | Path, k_core: int = 0) -> Interactions:
    """Load a CSV file whose header names the columns user, item and timestamp (others are ignored).

    Ties in time keep file order. See `_from_events` for de-duplication and the k-core filter.
    """
    reader = csv.reader(io.StringIO(_read_text(path), newline=""))
    header = [name.strip() for name in next(reader)]
    missing = [name for name in ("user", "item", "timestamp") if name not in header]
    if missing:
        raise DataError(path, 1, f"header is missing the column(s) {', '.join(missing)}",
                        "Start the file with a header such as user,item,timestamp")
    columns = [header.index(name) for name in ("user", "item", "timestamp")]
    events = []
    for row in reader:
        if not any(field.strip() for field in row):
            continue
        if len(row) != len(header):
            raise DataError(path, reader.line_num, f"{len(row)} fields, expected {len(header)}",
                            "Give every row one value per header column")
        user, item, stamp = (row[c].strip() for c in columns)
        try:
            time = float(stamp)
        except ValueError:
            time = math.nan
        if not math.isfinite(time):
            raise DataError(path, reader.line_num, f"timestamp {stamp!r} is not a finite number",
                            "Write timestamps as numbers, such as Unix seconds")
        if not user or not item:
            raise DataError(path, reader.line_num, "empty user or item", "Fill in both columns")
        events.append((user, item, time, len(events)))
    if not events:
        raise DataError(path, None, "file has a header but no rows", "Add interaction rows")
    return _from_events(path, events, k_core)


LOADERS = {"s3rec": load_s3rec, "lcrec": load_lcrec, "amazon_raw": load_amazon_raw, "csv": load_csv}


def load_dataset(format: str, *paths: str | Path, **options) -> Interactions:
    """Call the loader of `format` (a key of LOADERS) with the given paths and keyword options."""
    if format not in LOADERS:
        raise ValueError(f"unknown dataset format {format!r}. Use one of {sorted(LOADERS)}")
    return LOADERS[format](*paths, **options)
