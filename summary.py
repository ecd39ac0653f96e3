"""The noise sweep's runs.csv (one row per finished run) and its aggregate over seeds, summary.csv.

One runs.csv row is one finished run (the SFT stage of a seed, or one RL run). summary.csv gets one row
per (kind, rate, method, nominal lambda, checkpoint) with the number of seeds, the mean and the half-width
of the 95% confidence interval of the test metrics. The interval is mean +- t(0.975, n - 1) * s / sqrt(n),
with s the sample standard deviation over seeds, so it needs at least two seeds (NaN otherwise).

Seeds also change the synthetic world, so HR@10 varies more between seeds than between methods. The
`_gain` columns therefore compare each run with its own seed's SFT policy first (a paired difference),
then average that over seeds.

The derived method `grpo_valtuned` is a control for AdaGRPO: uniform GRPO at a validation-tuned lambda.
Per seed, kind, rate and checkpoint it picks the uniform GRPO lambda with the highest validation HR@10
(ties go to the smaller lambda), then aggregates the test metrics of the chosen runs.
"""

import csv
import math
from pathlib import Path

from config import ConfigError

CHECKPOINTS = ("best", "final")
METRICS = ("test_hr@10", "test_ndcg@10", "test_hallucination", "valid_hr@10", "test_constrained_hr@10")
GAINS = ("test_hr@10_gain", "test_ndcg@10_gain")     # change from the same seed's SFT policy (paired)
RUN_MEANS = ("admission_rate", "oracle_precision", "oracle_recall", "oracle_trustworthy_rate",
             "oracle_corrupted_pairs_admitted", "oracle_corrupted_pairs_all")
GROUP_KEYS = ("kind", "rate", "method", "lambda_nominal")
ORACLE_KEYS = ("precision", "recall", "trustworthy_rate", "corrupted_pairs_admitted", "corrupted_pairs_all")

# runs.csv: the run's identity, per checkpoint its step and metrics, then run-level means over RL steps.
RUN_COLUMNS = (["run_id", "seed", "kind", "rate", "method", "lambda_nominal", "lambda", "random_rate", "test_users"]
               + [f"{checkpoint}_{name}" for checkpoint in CHECKPOINTS
                  for name in ("step", "valid_hr@10") + METRICS[:3] + ("test_constrained_hr@10",)]
               + ["admission_rate"] + [f"oracle_{k}" for k in ORACLE_KEYS] + ["wall_time_s", "device"])

# Two-sided 95% quantiles t(0.975, df) of Student's t distribution for df = 1..30, to three decimals
# (the values printed in standard statistical tables).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z_975 = 1.959964


def t_quantile_975(df: int) -> float:
    """Return t(0.975, df) from the table for df <= 30, beyond that from the expansion z + (z^3 + z) / (4 df)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    return Z_975 + (Z_975 ** 3 + Z_975) / (4 * df)


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Return (mean, half-width of the 95% t interval) of the finite values, NaN where too few exist."""
    finite = [v for v in values if math.isfinite(v)]
    n = len(finite)
    if n == 0:
        return math.nan, math.nan
    mean = sum(finite) / n
    if n < 2:
        return mean, math.nan
    variance = sum((v - mean) ** 2 for v in finite) / (n - 1)
    return mean, t_quantile_975(n - 1) * math.sqrt(variance / n)


def read_rows(path: Path) -> dict[str, dict]:
    """runs.csv rows keyed by run_id ({} when the file does not exist yet)."""
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as lines:
        reader = csv.DictReader(lines)
        if reader.fieldnames != RUN_COLUMNS:
            raise ConfigError(f"{path} has columns {reader.fieldnames}, not those this script writes; move it "
                              f"away or pass another --out")
        return {row["run_id"]: row for row in reader}


def append_row(path: Path, row: dict) -> None:
    """Append one run to runs.csv, writing the header first when the file is new."""
    new = not path.is_file()
    with open(path, "a", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=RUN_COLUMNS)
        if new:
            writer.writeheader()
        writer.writerow({key: row.get(key, "") for key in RUN_COLUMNS})


def to_float(text) -> float:
    """Parse a CSV cell as a float, NaN for an empty cell."""
    if text is None or text == "":
        return math.nan
    return float(text)


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as lines:
        return list(csv.DictReader(lines))


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def long_rows(runs: list[dict]) -> list[dict]:
    """Split each run into one row per checkpoint, with that checkpoint's metrics under plain names.

    The SFT rows of runs.csv have only a `best` checkpoint (sft_best.pt), so they give one row.
    """
    rows = []
    for run in runs:
        for checkpoint in CHECKPOINTS:
            if not math.isfinite(to_float(run.get(f"{checkpoint}_test_hr@10"))):
                continue
            row = {key: run[key] for key in GROUP_KEYS + ("seed",)}
            row["checkpoint"] = checkpoint
            row["lambda"] = to_float(run.get("lambda"))
            for metric in METRICS:
                row[metric] = to_float(run.get(f"{checkpoint}_{metric}"))
            for name in RUN_MEANS:
                row[name] = to_float(run.get(name))
            rows.append(row)
    add_gains(rows)
    return rows


def add_gains(rows: list[dict]) -> None:
    """Set each row's `<metric>_gain` = its metric minus the metric of its seed's SFT row (NaN without one)."""
    sft = {row["seed"]: row for row in rows if row["method"] == "sft"}
    for row in rows:
        for gain in GAINS:
            metric = gain[:-len("_gain")]
            row[gain] = row[metric] - sft[row["seed"]][metric] if row["seed"] in sft else math.nan


def validation_tuned(rows: list[dict]) -> list[dict]:
    """Pick, per (seed, kind, rate, checkpoint), the uniform GRPO row with the best validation HR@10."""
    chosen = {}
    for row in rows:
        if row["method"] != "grpo":
            continue
        key = (row["seed"], row["kind"], row["rate"], row["checkpoint"])
        score = (row["valid_hr@10"], -row["lambda"])
        if key not in chosen or score > chosen[key][0]:
            chosen[key] = (score, row)
    return [dict(row, method="grpo_valtuned", lambda_nominal="tuned") for _, row in chosen.values()]


def summarize(runs: list[dict]) -> list[dict]:
    """Aggregate runs over seeds: per configuration and checkpoint, the seed count, mean lambda, mean and CI."""
    rows = long_rows(runs)
    rows += validation_tuned(rows)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in GROUP_KEYS + ("checkpoint",)), []).append(row)

    summary = []
    for key, members in groups.items():
        out = dict(zip(GROUP_KEYS + ("checkpoint",), key))
        out["n_seeds"] = len(members)
        out["lambda_mean"] = mean_ci95([m["lambda"] for m in members])[0]
        for metric in METRICS + GAINS:
            out[f"{metric}_mean"], out[f"{metric}_ci95"] = mean_ci95([m[metric] for m in members])
        for name in RUN_MEANS:
            out[f"{name}_mean"] = mean_ci95([m[name] for m in members])[0]
        summary.append(out)
    summary.sort(key=sort_key)
    return summary


METHOD_ORDER = ("sft", "grpo", "grpo_valtuned", "adagrpo", "random", "grpo_scaled", "validity")


def sort_key(row: dict) -> tuple:
    """Order rows by kind, rate, method (in METHOD_ORDER), lambda and checkpoint."""
    rate = to_float(row["rate"])
    lam = to_float(row["lambda_nominal"]) if row["lambda_nominal"] not in ("", "tuned") else -1.0
    method = METHOD_ORDER.index(row["method"]) if row["method"] in METHOD_ORDER else len(METHOD_ORDER)
    return (row["kind"], -1.0 if math.isnan(rate) else rate, method, lam, row["checkpoint"])


def summary_columns() -> list[str]:
    columns = list(GROUP_KEYS) + ["checkpoint", "n_seeds", "lambda_mean"]
    for metric in METRICS + GAINS:
        columns += [f"{metric}_mean", f"{metric}_ci95"]
    return columns + [f"{name}_mean" for name in RUN_MEANS]


PAIRED_COLUMNS = ["kind", "checkpoint", "method", "versus", "pairs", "rates", "test_hr@10_diff_mean",
                  "test_hr@10_diff_ci95"]


def control_pairs(rows: list[dict]) -> list[tuple]:
    """List the ((method, lambda), (method, lambda)) pairs to compare run by run.

    Each AdaGRPO lambda is compared with its matched controls at that lambda, where they ran, and with the
    uniform GRPO lambda nearest to its effective strength: lambda x its mean admission rate.
    """
    admissions: dict[str, list[float]] = {}
    for row in rows:
        if row["method"] == "adagrpo":
            admissions.setdefault(row["lambda_nominal"], []).append(row["admission_rate"])
    present = {(row["method"], row["lambda_nominal"]) for row in rows}
    grpo = sorted({to_float(lam) for method, lam in present if method == "grpo"})
    pairs = []
    for lam in sorted(admissions, key=float):
        pairs += [(("adagrpo", lam), (control, lam)) for control in ("random", "grpo_scaled")
                  if (control, lam) in present]
        effective = float(lam) * mean_ci95(admissions[lam])[0]
        if grpo and math.isfinite(effective):
            nearest = min(grpo, key=lambda value: abs(value - effective))
            pairs.append((("adagrpo", lam), ("grpo", f"{nearest:g}")))
    return pairs


def paired_differences(runs: list[dict], pairs=None) -> list[dict]:
    """Compare two methods run by run: test HR@10 of A minus B in the same seed, kind and rate (rate > 0).

    Per corruption kind and checkpoint, the differences of all (seed, rate) pairs are averaged with a 95% t
    interval. Pairs of one seed share its SFT policy and world, so the interval is only a rough guide.
    `pairs` defaults to control_pairs().
    """
    rows = long_rows(runs)
    pairs = control_pairs(rows) if pairs is None else pairs
    index = {(r["seed"], r["kind"], r["rate"], r["checkpoint"], r["method"], r["lambda_nominal"]): r
             for r in rows}
    out = []
    for kind in sorted({r["kind"] for r in rows} - {"clean", "none"}):
        for checkpoint in CHECKPOINTS:
            for a, b in pairs:
                diffs, rates = [], set()
                for row in rows:
                    if (row["kind"], row["checkpoint"], row["method"], row["lambda_nominal"]) != (kind, checkpoint) + a:
                        continue
                    other = index.get((row["seed"], kind, row["rate"], checkpoint) + b)
                    if other is not None:
                        diffs.append(row["test_hr@10"] - other["test_hr@10"])
                        rates.add(row["rate"])
                if diffs:
                    mean, ci = mean_ci95(diffs)
                    out.append({"kind": kind, "checkpoint": checkpoint, "method": f"{a[0]} lambda={a[1]}",
                                "versus": f"{b[0]} lambda={b[1]}", "pairs": len(diffs),
                                "rates": " ".join(sorted(rates, key=float)), "test_hr@10_diff_mean": mean,
                                "test_hr@10_diff_ci95": ci})
    return out


def write_summary(out_dir: Path) -> list[dict]:
    """Read <out_dir>/runs.csv, write <out_dir>/summary.csv and paired.csv, and return the summary rows."""
    runs = read_csv(out_dir / "runs.csv")
    summary = summarize(runs)
    write_csv(out_dir / "summary.csv", summary, summary_columns())
    write_csv(out_dir / "paired.csv", paired_differences(runs), PAIRED_COLUMNS)
    return summary
