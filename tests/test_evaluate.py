import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import evaluate  # noqa: E402
from checkpoint import save_checkpoint  # noqa: E402
from config import Config, to_dict  # noqa: E402
from evaluate import format_table, metrics_from_predictions, ranked_list_metrics, write_predictions  # noqa: E402

INF = math.inf



def one_list(items, logprobs=None):
    """Return (1, W) items and log-probs. The default log-probs are finite and decreasing."""
    items = np.asarray([items], dtype=np.int64)
    if logprobs is None:
        logprobs = -np.arange(items.shape[1], dtype=np.float64)[None, :]
    return items, np.asarray(logprobs, dtype=np.float64).reshape(items.shape)


def test_metrics_target_rank_one():
    items, logprobs = one_list(list(range(100, 110)))
    metrics = ranked_list_metrics(items, logprobs, np.array([100]), ks=(5, 10))
    assert metrics["hr@5"] == 1.0
    assert metrics["hr@10"] == 1.0
    assert metrics["ndcg@5"] == 1.0
    assert metrics["ndcg@10"] == 1.0


@pytest.mark.parametrize("k", [5, 10])
def test_metrics_target_rank_k(k):
    items, logprobs = one_list(list(range(100, 110)))
    target = items[0, k - 1]
    metrics = ranked_list_metrics(items, logprobs, np.array([target]), ks=(k,))
    assert metrics[f"hr@{k}"] == 1.0
    assert math.isclose(metrics[f"ndcg@{k}"], 1.0 / math.log2(1 + k), rel_tol=1e-12)


def test_metrics_rank_just_beyond_k():
    items, logprobs = one_list(list(range(100, 110)))
    metrics = ranked_list_metrics(items, logprobs, np.array([105]), ks=(5, 10))   # rank 6
    assert metrics["hr@5"] == 0.0
    assert metrics["ndcg@5"] == 0.0
    assert metrics["hr@10"] == 1.0
    assert math.isclose(metrics["ndcg@10"], 1.0 / math.log2(7), rel_tol=1e-12)


def test_metrics_target_absent():
    items, logprobs = one_list(list(range(100, 110)))
    metrics = ranked_list_metrics(items, logprobs, np.array([7]), ks=(5, 10))
    assert metrics["hr@10"] == 0.0
    assert metrics["ndcg@10"] == 0.0
    assert metrics["hallucination"] == 0.0


def test_metrics_invalid_sids_hallucinate_and_miss():
    # Two of the top 5 and three of the top 10 SIDs map to no item, and the target is at rank 4.
    items, logprobs = one_list([-1, 11, 12, 13, -1, 15, 16, -1, 18, 19])
    metrics = ranked_list_metrics(items, logprobs, np.array([13]), ks=(5, 10))
    assert metrics["hallucination@5"] == 2 / 5
    assert metrics["hallucination@10"] == 3 / 10
    assert metrics["hallucination"] == 3 / 10
    assert math.isclose(metrics["ndcg@5"], 1.0 / math.log2(5), rel_tol=1e-12)   # invalid SIDs keep their rank


def test_metrics_all_invalid_misses():
    items, logprobs = one_list([-1] * 10)
    metrics = ranked_list_metrics(items, logprobs, np.array([3]), ks=(10,))
    assert metrics["hr@10"] == 0.0
    assert metrics["hallucination"] == 1.0


def test_metrics_unfilled_beams_neither():
    # Constrained decoding filled 6 beams. The other 4 have log-prob -inf and item -1 (PAD tokens).
    logprobs = [-0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -INF, -INF, -INF, -INF]
    items, logprobs = one_list([1, 2, 3, 4, 5, 6, -1, -1, -1, -1], logprobs)
    metrics = ranked_list_metrics(items, logprobs, np.array([8]), ks=(5, 10))
    assert metrics["hallucination@10"] == 0.0
    assert metrics["hr@10"] == 0.0


def test_metrics_unfilled_beam_not_a_hit():
    # An unfilled beam that carries a real item id (not expected, but possible in a file) is no hit.
    items, logprobs = one_list([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [-0.1] * 9 + [-INF])
    metrics = ranked_list_metrics(items, logprobs, np.array([10]), ks=(10,))
    assert metrics["hr@10"] == 0.0


def test_metrics_hallucination_over_filled_only():
    logprobs = [-0.1] * 5 + [-INF] * 5
    items, logprobs = one_list([-1, 2, 3, 4, 5, -1, -1, -1, -1, -1], logprobs)
    metrics = ranked_list_metrics(items, logprobs, np.array([2]), ks=(10,))
    assert metrics["hallucination@10"] == 1 / 5


def test_metrics_k_above_width_skipped():
    items, logprobs = one_list(list(range(10)))
    metrics = ranked_list_metrics(items, logprobs, np.array([0]))
    assert "hr@20" not in metrics
    assert "ndcg@20" not in metrics
    assert "hr@10" in metrics


def test_metrics_narrow_list_no_hallucination_at_10():
    items, logprobs = one_list(list(range(5)))
    metrics = ranked_list_metrics(items, logprobs, np.array([0]))
    assert "hr@10" not in metrics
    assert math.isnan(metrics["hallucination"])


def test_metrics_average_over_users():
    items = np.array([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15]])
    logprobs = np.zeros(items.shape)
    metrics = ranked_list_metrics(items, logprobs, np.array([1, 7, 99]), ks=(5,))
    assert metrics["users"] == 3
    assert math.isclose(metrics["hr@5"], 2 / 3, rel_tol=1e-12)
    assert math.isclose(metrics["ndcg@5"], (1.0 + 1.0 / math.log2(3)) / 3, rel_tol=1e-12)


def test_metrics_no_users():
    metrics = ranked_list_metrics(np.zeros((0, 10), dtype=np.int64), np.zeros((0, 10)), np.zeros(0, dtype=np.int64))
    assert metrics["users"] == 0
    assert metrics["hr@10"] == 0.0


class KeyedRun:
    """The part of RunData that write_predictions uses: the source id of each user."""

    def user_key(self, user):
        return f"user-{user}"


def prediction_lists():
    users = [0, 1, 2]
    targets = np.array([5, 9, 4])
    sids = np.arange(3 * 10 * 3).reshape(3, 10, 3)
    items = np.array([[5, 1, 2, -1, 3, 6, 7, 8, 0, 10],
                      [-1, -1, 9, 2, 3, 4, 6, 7, 8, 11],
                      [1, 2, 3, 6, -1, -1, -1, -1, -1, -1]])
    logprobs = -np.tile(np.arange(10, dtype=np.float64), (3, 1)) * 0.37
    logprobs[2, 4:] = -INF
    return users, targets, sids, logprobs, items


def test_predictions_round_trip(tmp_path):
    lists = prediction_lists()
    _, targets, _, logprobs, items = lists
    path = tmp_path / "predictions.jsonl"
    write_predictions(str(path), KeyedRun(), lists)
    assert metrics_from_predictions(str(path)) == ranked_list_metrics(items, logprobs, targets)


def test_predictions_file_format(tmp_path):
    lists = prediction_lists()
    path = tmp_path / "predictions.jsonl"
    write_predictions(str(path), KeyedRun(), lists)
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [r["user"] for r in records] == ["user-0", "user-1", "user-2"]
    assert records[1]["items"][:3] == [None, None, 9]
    assert records[2]["logprobs"][4:] == [None] * 6
    assert records[0]["sids"][1] == [3, 4, 5]
    assert records[0]["target"] == 5


def test_format_table_rows():
    table = format_table({"sft test": {"hr@10": 0.25, "ndcg@10": 0.125, "hallucination": 0.0}})
    lines = table.splitlines()
    assert len(lines) == 2
    assert lines[1].split() == ["sft", "test", "0.2500", "0.1250", "0.0000"]


# ----------------------------------------------------------------------------- command line errors

def test_cli_missing_checkpoint_exits_2(tmp_path, capsys):
    status = evaluate.main(["--checkpoint", str(tmp_path / "missing.pt")])
    error = capsys.readouterr().err
    assert status == 2
    assert "missing.pt" in error
    assert "not found" in error


def test_cli_truncated_checkpoint_exits_2(tmp_path, capsys):
    path = tmp_path / "sft_best.pt"
    save_checkpoint(path, {"policy": {"w": torch.zeros(100)}, "config": to_dict(Config())})
    path.write_bytes(path.read_bytes()[:200])
    status = evaluate.main(["--checkpoint", str(path)])
    assert status == 2
    assert "cannot read checkpoint" in capsys.readouterr().err


def test_cli_checkpoint_without_policy_exits_2(tmp_path, capsys):
    path = tmp_path / "ranker.pt"
    save_checkpoint(path, {"ranker": {}, "config": to_dict(Config())})
    status = evaluate.main(["--checkpoint", str(path)])
    assert status == 2
    assert "holds no policy weights" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cli_cuda_without_gpu_exits_2(tmp_path, capsys):
    status = evaluate.main(["--checkpoint", str(tmp_path / "missing.pt"), "--device", "cuda"])
    error = capsys.readouterr().err
    assert status == 2
    assert "no CUDA device" in error
