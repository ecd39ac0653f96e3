"""End to end: train.main on a tiny synthetic world (SFT, ranker, AdaGRPO, evaluation) in a temporary folder."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from checkpoint import load_checkpoint  # noqa: E402
from config import load_config, to_dict  # noqa: E402
from data.build import build_run_data  # noqa: E402
from evaluate import metrics_from_predictions  # noqa: E402

# About 6 s on one CPU thread. Ten SFT epochs are enough to beat the popularity baseline clearly
# on this world (HR@10 about 0.34 against 0.09).
TINY = ["world.n_items=200", "world.n_users=300", "model.d_model=32", "sft.epochs=10", "sft.eval_every=5",
        "ranker.epochs=3", "ranker.exposures=20", "rl.steps=4", "rl.batch_size=16", "rl.eval_every=2",
        "eval.beam_size=10", "device=cpu"]
SPLIT_METRICS = ("hr@5", "hr@10", "ndcg@5", "ndcg@10", "hallucination")
RL_KEYS = ("reward/mean", "reward/std", "reward/zero_std_groups", "gate/admission_rate", "gate/fail_policy",
           "gate/fail_reward", "kl", "clip_fraction", "nll", "oracle/precision")



def train_args(out_dir, *extra):
    return ["--config", str(ROOT / "small.yaml"), *TINY, f"out_dir={out_dir}", *extra]


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def reported_metrics(results):
    """Every reported metric of eval.json, without the wall time."""
    return {key: value for key, value in results.items() if key != "wall_time_s"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("pipeline") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    status = train.main(train_args(out))
    torch.set_num_threads(threads)
    assert status == 0
    return out


@pytest.fixture(scope="module")
def results(run_dir):
    return json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))


def test_pipeline_config_saved(run_dir):
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    expected = to_dict(load_config(str(ROOT / "small.yaml"), TINY + [f"out_dir={run_dir}"]))
    assert saved == expected


def test_pipeline_checkpoints_written(run_dir):
    for name in ("sft_best.pt", "sft_last.pt", "ranker.pt", "rl_last.pt", "adagrpo_best.pt", "adagrpo_final.pt"):
        assert (run_dir / name).is_file(), name


def test_pipeline_rl_metric_lines(run_dir):
    lines = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["stage"] == "rl"]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]
    for record in lines:
        for key in RL_KEYS:
            assert key in record, (record["step"], key)


def test_pipeline_rl_metric_values(run_dir):
    lines = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["stage"] == "rl"]
    for record in lines:
        assert 0.0 <= record["gate/admission_rate"] <= 1.0
        assert 0.0 <= record["reward/zero_std_groups"] <= 1.0
        assert math.isfinite(record["nll"])
        assert math.isfinite(record["reward/mean"])


def test_pipeline_sft_metric_lines(run_dir):
    lines = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["stage"] == "sft"]
    assert [r["epoch"] for r in lines] == list(range(1, 11))
    assert [r["epoch"] for r in lines if "valid/hr@10" in r] == [5, 10]


def test_pipeline_eval_shape(results):
    assert set(results) >= {"sft", "adagrpo"}
    assert set(results["sft"]) >= {"valid", "test"}
    assert set(results["adagrpo"]) >= {"valid", "test", "final"}
    assert set(results["adagrpo"]["final"]) >= {"valid", "test"}


def test_pipeline_eval_split_metrics(results):
    splits = {
        "sft valid": results["sft"]["valid"],
        "sft test": results["sft"]["test"],
        "adagrpo best valid": results["adagrpo"]["valid"],
        "adagrpo best test": results["adagrpo"]["test"],
        "adagrpo final valid": results["adagrpo"]["final"]["valid"],
        "adagrpo final test": results["adagrpo"]["final"]["test"],
    }
    for name, metrics in splits.items():
        for key in SPLIT_METRICS:
            assert 0.0 <= metrics[key] <= 1.0, (name, key)
        assert metrics["users"] == 300, name


def test_pipeline_constrained_no_hallucination(results):
    assert results["sft"]["test_constrained"]["hallucination"] == 0.0


def test_pipeline_final_step(results):
    assert results["adagrpo"]["final"]["step"] == 4


def popularity_hr10(run):
    """HR@10 on the test targets of ranking by training counts, excluding each user's history items."""
    counts = run.item_counts.astype(np.float64)
    hits = 0
    for user in range(run.split.n_users):
        scores = counts.copy()
        scores[run.split.history(user, "test")] = -np.inf
        top = np.argsort(-scores, kind="stable")[:10]
        hits += int(run.split.test_target[user] in top)
    return hits / run.split.n_users


def test_pipeline_sft_beats_popularity(results):
    run = build_run_data(load_config(str(ROOT / "small.yaml"), TINY))
    assert results["sft"]["test"]["hr@10"] > popularity_hr10(run) + 0.05


def test_pipeline_rl_changes_policy(run_dir):
    sft = load_checkpoint(run_dir / "sft_best.pt")["policy"]
    final = load_checkpoint(run_dir / "adagrpo_final.pt")["policy"]
    changed = [name for name in sft if not torch.equal(sft[name], final[name])]
    assert changed


def test_pipeline_evaluate_cli(run_dir, results, tmp_path):
    predictions = tmp_path / "test.jsonl"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "--checkpoint", str(run_dir / "sft_best.pt"), "--split", "test",
         "--predictions", str(predictions)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    printed = json.loads(completed.stdout)
    recomputed = metrics_from_predictions(str(predictions))
    assert recomputed == printed
    assert printed == results["sft"]["test"]


def test_pipeline_resume_same_command(run_dir, results, capsys):
    metrics_lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    sft_last = (run_dir / "sft_last.pt").read_bytes()
    assert train.main(train_args(run_dir)) == 0
    again = json.loads((run_dir / "eval.json").read_text(encoding="utf-8"))
    new_lines = (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()[len(metrics_lines):]
    new_stages = [json.loads(line)["stage"] for line in new_lines]
    assert "sft" not in new_stages
    assert "rl" not in new_stages
    assert (run_dir / "sft_last.pt").read_bytes() == sft_last
    assert reported_metrics(again) == reported_metrics(results)


def test_pipeline_other_config_rejected(run_dir, capsys):
    before = sorted(path.name for path in run_dir.iterdir())
    status = train.main(train_args(run_dir, "rl.lambda=0.5"))
    error = capsys.readouterr().err
    assert status == 2
    assert "different config" in error
    assert str(run_dir) in error
    assert sorted(path.name for path in run_dir.iterdir()) == before


def test_pipeline_same_seed_same_metrics(results, tmp_path):
    other = tmp_path / "run"
    assert train.main(train_args(other)) == 0
    again = json.loads((other / "eval.json").read_text(encoding="utf-8"))
    assert reported_metrics(again) == reported_metrics(results)
