import csv
import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import benchmark  # noqa: E402
from config import ConfigError  # noqa: E402
from summary import mean_ci95, paired_differences, summarize, t_quantile_975  # noqa: E402
from sweep_plan import make_sweep, plan_runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SWEEP_YAML = str(ROOT / "noise_sweep.yaml")

# --quick made smaller still: one seed, one corruption kind, one lambda per method, two RL steps.
TINY = ["device=cpu", "rl.steps=2", "rl.eval_every=2", "sweep.seeds=[0]", "sweep.kinds=[popularity]",
        "sweep.rates=[0,0.8]", "sweep.grpo_lambdas=[1.0]", "sweep.adagrpo_lambdas=[1.0]",
        "sweep.validity_lambdas=[1.0]", "sweep.strata_rates=[0.8]"]
EXPECTED_RUNS = {"seed0/sft", "seed0/validity/validity_lam1"} | {
    f"seed0/{cell}/{method}_lam1" for cell in ("clean/rate0", "popularity/rate0.8")
    for method in ("adagrpo", "grpo", "random", "grpo_scaled")}



def read_runs(out: Path) -> list[dict]:
    with open(out / "runs.csv", newline="", encoding="utf-8") as lines:
        return list(csv.DictReader(lines))


@pytest.fixture(scope="module")
def sweep_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    code = benchmark.main(["--config", SWEEP_YAML, "--quick", "--out", str(out)] + TINY)
    torch.set_num_threads(threads)
    assert code == 0
    return out


def test_sweep_writes_one_row_per_run(sweep_out):
    ids = [row["run_id"] for row in read_runs(sweep_out)]
    assert sorted(ids) == sorted(EXPECTED_RUNS)


def test_sweep_rows_have_test_metrics(sweep_out):
    for row in read_runs(sweep_out):
        for checkpoint in ("best", "final") if row["method"] != "sft" else ("best",):
            value = float(row[f"{checkpoint}_test_hr@10"])
            assert 0.0 <= value <= 1.0, (row["run_id"], checkpoint, value)
            assert 0.0 <= float(row[f"{checkpoint}_test_hallucination"]) <= 1.0, (row["run_id"], checkpoint)


def test_controls_match_adagrpo_admission(sweep_out):
    rows = {row["run_id"]: row for row in read_runs(sweep_out)}
    for cell in ("clean/rate0", "popularity/rate0.8"):
        admission = round(float(rows[f"seed0/{cell}/adagrpo_lam1"]["admission_rate"]), 4)
        assert float(rows[f"seed0/{cell}/random_lam1"]["random_rate"]) == admission
        assert float(rows[f"seed0/{cell}/grpo_scaled_lam1"]["lambda"]) == pytest.approx(admission)


def test_oracle_columns_filled_for_adagrpo(sweep_out):
    row = {r["run_id"]: r for r in read_runs(sweep_out)}["seed0/popularity/rate0.8/adagrpo_lam1"]
    for name in ("oracle_trustworthy_rate", "oracle_recall", "oracle_corrupted_pairs_all"):
        assert math.isfinite(float(row[name])), name


def test_validity_reward_ignores_the_ranker(sweep_out):
    """Every valid, unseen rollout gets 1 and the rest 0, so mean reward = 1 - invalid share - seen share."""
    metrics = sweep_out / "seed0/validity/validity_lam1/metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [r for r in records if r["stage"] == "rl"]
    assert steps
    for record in steps:
        expected = 1.0 - record["rollout/invalid"] - record["rollout/seen"]
        assert abs(record["reward/mean"] - expected) < 1e-9


def test_summary_has_every_method(sweep_out):
    with open(sweep_out / "summary.csv", newline="", encoding="utf-8") as lines:
        rows = list(csv.DictReader(lines))
    methods = {row["method"] for row in rows}
    assert methods == {"sft", "adagrpo", "grpo", "random", "grpo_scaled", "validity", "grpo_valtuned"}
    assert all(row["n_seeds"] == "1" for row in rows)


@pytest.mark.parametrize("name", ["hr10_vs_rate_best.png", "hr10_vs_rate_final.png", "hr10_gain_vs_rate_final.png",
                                  "frontier_best.png", "frontier_final.png", "gate_vs_rate.png",
                                  "heatmap_rate0.8.png", "strata_rate0.8.csv", "benchmarks.md"])
def test_sweep_writes_output_file(sweep_out, name):
    path = sweep_out / name
    assert path.is_file()
    assert path.stat().st_size > 0


def test_strata_counts_cover_all_test_users(sweep_out):
    with open(sweep_out / "strata_rate0.8.csv", newline="", encoding="utf-8") as lines:
        rows = list(csv.DictReader(lines))
    total = [r for r in rows if r["sft_rank"] == "all" and r["ranker_rank"] == "all"][0]
    cells = [r for r in rows if "all" not in (r["sft_rank"], r["ranker_rank"])]
    assert sum(int(r["count"]) for r in cells) == int(total["count"])
    assert int(total["count"]) == int(read_runs(sweep_out)[0]["test_users"])


def test_page_reports_paired_gain_and_wall_time(sweep_out):
    with open(sweep_out / "summary.csv", newline="", encoding="utf-8") as lines:
        summary = list(csv.DictReader(lines))
    runs = {row["run_id"]: row for row in read_runs(sweep_out)}
    ada = [r for r in summary if r["method"] == "adagrpo" and r["checkpoint"] == "final" and r["rate"] == "0.8"][0]
    expected = (float(runs["seed0/popularity/rate0.8/adagrpo_lam1"]["final_test_hr@10"])
                - float(runs["seed0/sft"]["best_test_hr@10"]))
    assert float(ada["test_hr@10_gain_mean"]) == pytest.approx(expected)
    page = (sweep_out / "benchmarks.md").read_text()
    assert f"{expected:+.4f}" in page
    assert "Wall time" in page
    with open(sweep_out / "invocations.csv", newline="", encoding="utf-8") as lines:
        calls = list(csv.DictReader(lines))
    assert float(calls[0]["wall_s"]) > 0


def test_quick_sweep_pairs_adagrpo_with_its_controls(sweep_out):
    with open(sweep_out / "paired.csv", newline="", encoding="utf-8") as lines:
        rows = [r for r in csv.DictReader(lines) if r["checkpoint"] == "final"]
    versus = {r["versus"] for r in rows if r["method"] == "adagrpo lambda=1"}
    assert versus == {"random lambda=1", "grpo_scaled lambda=1", "grpo lambda=1"}
    assert all(r["rates"] == "0.8" for r in rows)


def test_page_reports_summary_numbers(sweep_out):
    page = (sweep_out / "benchmarks.md").read_text()
    with open(sweep_out / "summary.csv", newline="", encoding="utf-8") as lines:
        ada = [r for r in csv.DictReader(lines) if r["method"] == "adagrpo" and r["checkpoint"] == "best"
               and r["rate"] == "0.8"][0]
    assert f"{float(ada['test_hr@10_mean']):.4f}" in page


def test_rerun_skips_finished_runs(sweep_out):
    before = read_runs(sweep_out)
    checkpoint = sweep_out / "seed0/popularity/rate0.8/adagrpo_lam1/adagrpo_final.pt"
    stamp = checkpoint.stat().st_mtime_ns
    assert benchmark.main(["--config", SWEEP_YAML, "--quick", "--out", str(sweep_out)] + TINY) == 0
    assert read_runs(sweep_out) == before
    assert checkpoint.stat().st_mtime_ns == stamp


def test_rerun_with_other_base_config_fails(sweep_out):
    code = benchmark.main(["--config", SWEEP_YAML, "--quick", "--out", str(sweep_out)] + TINY + ["rl.steps=3"])
    assert code == 2


# ----------------------------------------------------------------------------- no training

def t_quantile_numeric(df: int) -> float:
    """t(0.975, df) by bisection on the CDF, integrating the density with Simpson's rule."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf_above_zero(x):
        n = 4000
        h = x / n
        total = 0.0
        for i in range(n + 1):
            t = i * h
            if i in (0, n):
                weight = 1
            elif i % 2:
                weight = 4
            else:
                weight = 2
            total += weight * math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))
        return total * h / 3

    low, high = 0.0, 20.0
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf_above_zero(mid) < 0.475 else (low, mid)
    return (low + high) / 2


@pytest.mark.parametrize("df", [1, 2, 4, 10, 30])
def test_t_quantile_matches_numeric(df):
    assert t_quantile_975(df) == pytest.approx(t_quantile_numeric(df), abs=2e-3)


def test_t_quantile_beyond_table_near_numeric():
    assert t_quantile_975(60) == pytest.approx(t_quantile_numeric(60), abs=2e-3)


def test_mean_ci95_two_values():
    mean, half_width = mean_ci95([1.0, 3.0])
    assert mean == 2.0
    assert half_width == pytest.approx(12.706 * math.sqrt(2.0 / 2))


def test_mean_ci95_one_value_has_no_interval():
    assert math.isnan(mean_ci95([0.5])[1])


def test_validation_tuned_picks_best_valid_lambda():
    runs = []
    for seed, (valid_small, valid_large) in enumerate([(0.3, 0.2), (0.1, 0.4)]):
        for lam, valid, test in ((0.25, valid_small, 0.5), (4.0, valid_large, 0.1)):
            runs.append({"seed": str(seed), "kind": "clean", "rate": "0", "method": "grpo",
                         "lambda_nominal": f"{lam:g}", "lambda": str(lam), "best_valid_hr@10": str(valid),
                         "best_test_hr@10": str(test), "best_test_ndcg@10": "0", "best_test_hallucination": "0"})
    tuned = [r for r in summarize(runs) if r["method"] == "grpo_valtuned"][0]
    assert tuned["test_hr@10_mean"] == pytest.approx((0.5 + 0.1) / 2)


def test_full_sweep_plan_size():
    base, sweep = benchmark.load_sweep_config(SWEEP_YAML, quick=False, overrides=[])
    # SFT; rate 0 once plus 2 kinds x 5 rates = 11 cells x (3 GRPO + 2 AdaGRPO); controls (2 runs) in the
    # 7 cells at rates 0, 0.4, 0.8 and 1; 1 validity run
    per_seed = 1 + (1 + 2 * 5) * (3 + 2) + (1 + 2 * 3) * 2 + 1
    assert len(plan_runs(sweep)) == 3 * per_seed


def test_controls_run_only_at_control_rates():
    plan = plan_runs(make_sweep({"seeds": [0], "rates": [0.0, 0.4, 0.8], "control_rates": [0.8]}))
    control_rates = {spec.rate for spec in plan if spec.method in ("random", "grpo_scaled")}
    assert control_rates == {0.8}
    assert {spec.rate for spec in plan if spec.method == "adagrpo"} == {0.0, 0.4, 0.8}


def test_groups_keep_controls_after_their_adagrpo():
    plan = plan_runs(make_sweep({"seeds": [0, 1], "rates": [0.0, 0.4]}))
    groups = benchmark.group_runs(plan)
    assert sum(len(group) for group in groups) == len(plan)
    for group in groups:
        ids = [spec.run_id for spec in group]
        for spec in group[1:]:
            assert spec.match_run == ids[0]                    # only controls share a group, after their run
        assert len(group) == 1 or group[0].method == "adagrpo"
    controls = [spec for spec in plan if spec.match_run is not None]
    assert len(groups) == len(plan) - len(controls)


def test_control_rate_outside_rates_is_reported(caplog):
    plan_runs(make_sweep({"seeds": [0], "rates": [0.0, 0.8], "control_rates": [0.4, 0.8]}))
    assert "0.4 not in sweep.rates" in caplog.text


def test_other_base_config_names_the_key(tmp_path):
    base, sweep = benchmark.load_sweep_config(SWEEP_YAML, quick=True, overrides=[])
    benchmark.check_output_folder(tmp_path, base, sweep, "first")
    changed, _ = benchmark.load_sweep_config(SWEEP_YAML, quick=True, overrides=["rl.steps=3", "sft.lr=0.1"])
    with pytest.raises(ConfigError, match="differs in rl.steps, sft.lr"):
        benchmark.check_output_folder(tmp_path, changed, sweep, "second")


def test_two_workers_give_the_same_runs_as_one(sweep_out, tmp_path):
    """Each run's result depends on its seed and config only, not on which process ran it."""
    assert benchmark.main(["--config", SWEEP_YAML, "--quick", "--out", str(tmp_path), "--workers", "2"]
                          + TINY) == 0
    columns = [name for name in read_runs(sweep_out)[0] if name not in ("wall_time_s",)]
    serial = {row["run_id"]: [row[name] for name in columns] for row in read_runs(sweep_out)}
    parallel = {row["run_id"]: [row[name] for name in columns] for row in read_runs(tmp_path)}
    assert parallel == serial


def test_workers_below_one_is_refused(tmp_path, capsys):
    assert benchmark.main(["--config", SWEEP_YAML, "--quick", "--out", str(tmp_path), "--workers", "0"]) == 2
    assert "--workers 0" in capsys.readouterr().err


def test_plan_puts_adagrpo_before_its_controls():
    plan = plan_runs(make_sweep({"seeds": [0], "rates": [0.0, 0.4]}))
    position = {spec.run_id: i for i, spec in enumerate(plan)}
    for spec in plan:
        if spec.match_run is not None:
            assert position[spec.match_run] < position[spec.run_id], spec.run_id


def test_unknown_sweep_key_is_named():
    with pytest.raises(ConfigError, match="sweep.rate"):
        make_sweep({"rate": [0.1]})


def test_match_lambda_must_be_an_adagrpo_lambda():
    with pytest.raises(ConfigError, match="match_lambda"):
        make_sweep({"adagrpo_lambdas": [2.0], "match_lambda": 1.0})


def test_unknown_base_key_is_named():
    with pytest.raises(ConfigError, match="rl.stepz"):
        benchmark.load_sweep_config(SWEEP_YAML, quick=True, overrides=["rl.stepz=3"])


def test_paired_differences_match_runs_of_one_seed():
    def run(seed, kind, rate, method, lam, hr):
        return {"run_id": f"{seed}{kind}{rate}{method}{lam}", "seed": str(seed), "kind": kind, "rate": rate,
                "method": method, "lambda_nominal": lam, "lambda": lam, "final_test_hr@10": str(hr)}
    runs = [run(0, "popularity", "0.8", "adagrpo", "4", 0.30), run(0, "popularity", "0.8", "random", "4", 0.25),
            run(1, "popularity", "0.8", "adagrpo", "4", 0.50), run(1, "popularity", "0.8", "random", "4", 0.49),
            run(1, "popularity", "0.4", "adagrpo", "4", 0.40),                      # no partner: left out
            run(0, "clean", "0", "adagrpo", "4", 0.9), run(0, "clean", "0", "random", "4", 0.1)]   # rate 0: left out
    rows = [r for r in paired_differences(runs, pairs=((("adagrpo", "4"), ("random", "4")),))
            if r["checkpoint"] == "final"]
    assert len(rows) == 1
    assert rows[0]["kind"] == "popularity"
    assert rows[0]["pairs"] == 2
    assert rows[0]["rates"] == "0.8"
    assert rows[0]["test_hr@10_diff_mean"] == pytest.approx((0.05 + 0.01) / 2)
