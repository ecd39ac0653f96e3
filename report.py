"""The noise sweep's markdown section: tables generated from summary.csv and the strata CSVs, plots linked.

Every number on the page is read from the sweep's output files, so the page is rebuilt, never edited:

    python -c "from benchmark import make_benchmarks_page; make_benchmarks_page('runs/noise_sweep')"
"""

import json
import math
from pathlib import Path

import yaml

from summary import read_csv, sort_key, to_float

LABELS = {"sft": "SFT", "grpo": "GRPO", "adagrpo": "AdaGRPO", "random": "random gate (matched share)",
          "grpo_scaled": "GRPO, lambda x AdaGRPO admission", "grpo_valtuned": "GRPO, validation-tuned lambda",
          "validity": "validity-only reward"}


def cell(row: dict | None, metric: str) -> str:
    """'mean +- CI' (CI over seeds), or the mean alone for a single seed. Gains carry their sign."""
    if row is None:
        return ""
    mean, ci = to_float(row[f"{metric}_mean"]), to_float(row[f"{metric}_ci95"])
    if math.isnan(mean):
        return ""
    text = f"{mean:+.4f}" if metric.endswith("_gain") else f"{mean:.4f}"
    return text if math.isnan(ci) else f"{text} ± {ci:.4f}"


def series_name(row: dict) -> str:
    lam = row["lambda_nominal"]
    if row["method"] in ("sft", "grpo_valtuned"):
        return LABELS[row["method"]]
    if row["method"] in ("random", "grpo_scaled"):
        return f"{LABELS[row['method']]}, AdaGRPO lambda={lam}"
    return f"{LABELS.get(row['method'], row['method'])} lambda={lam}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines + [""]


def rate_table(summary: list[dict], kind: str, checkpoint: str, metric: str) -> list[str]:
    """Rows = method and lambda, columns = corruption rate; rate 0 comes from the clean-ranker runs."""
    rows = [r for r in summary if r["kind"] in (kind, "clean") and r["checkpoint"] == checkpoint
            and r["method"] not in ("sft", "validity")]
    rates = sorted({to_float(r["rate"]) for r in rows})
    by_series: dict[str, dict[float, dict]] = {}
    for row in sorted(rows, key=sort_key):
        by_series.setdefault(series_name(row), {})[to_float(row["rate"])] = row
    body = [[name] + [cell(points.get(rate), metric) for rate in rates] for name, points in by_series.items()]
    return markdown_table(["method"] + [f"rate {rate:g}" for rate in rates], body)


def corruption_kinds(summary: list[dict]) -> list[str]:
    return sorted({r["kind"] for r in summary} - {"clean", "none"}) or ["clean"]


def reference_table(summary: list[dict]) -> list[str]:
    """SFT and the validity-only control: they do not depend on the ranker, so they have no rate."""
    rows = [r for r in sorted(summary, key=sort_key) if r["method"] in ("sft", "validity")]
    body = [[series_name(r), r["checkpoint"], r["n_seeds"], cell(r, "test_hr@10"), cell(r, "test_ndcg@10"),
             cell(r, "test_hallucination")] for r in rows]
    return markdown_table(["run", "checkpoint", "seeds", "test HR@10", "test NDCG@10", "test hallucination@10"],
                          body)


def gate_table(summary: list[dict]) -> list[str]:
    """AdaGRPO's gate statistics per kind and rate, means over seeds and RL steps."""
    rows = [r for r in sorted(summary, key=sort_key) if r["method"] == "adagrpo" and r["checkpoint"] == "final"]
    names = ("admission_rate", "oracle_precision", "oracle_trustworthy_rate", "oracle_recall",
             "oracle_corrupted_pairs_admitted", "oracle_corrupted_pairs_all")
    body = [[r["kind"], r["rate"], r["lambda_nominal"]] + [f"{to_float(r[f'{n}_mean']):.3f}" for n in names]
            for r in rows]
    return markdown_table(["kind", "rate", "lambda", "admission", "oracle precision", "trustworthy share",
                           "oracle recall", "corrupted pairs, admitted", "corrupted pairs, all"], body)


def paired_section(rows: list[dict]) -> list[str]:
    """Build the table of run-by-run test HR@10 differences between AdaGRPO and its controls (paired.csv)."""
    if not rows:
        return []
    body = [[r["kind"], r["checkpoint"], r["method"], r["versus"], r["rates"], r["pairs"],
             f"{to_float(r['test_hr@10_diff_mean']):+.4f} ± {to_float(r['test_hr@10_diff_ci95']):.4f}"]
            for r in rows]
    return ["### AdaGRPO against its controls, run by run", "",
            "Test HR@10 of the first method minus the second in the same seed, corruption kind and rate, averaged "
            "over every (seed, rate > 0) pair with a 95% t interval. Each AdaGRPO lambda meets its matched "
            "controls and the uniform GRPO lambda nearest to its effective strength (lambda x mean admission). "
            "Pairs of one seed share its SFT policy, so the interval is a rough guide.", ""] + markdown_table(
        ["kind", "checkpoint", "method", "versus", "rates", "pairs", "HR@10 difference"], body)


def gate_section(summary: list[dict], image_prefix: str) -> list[str]:
    """Build the gate section: the admission and oracle table and its plot.

    The corruption is injected by the reward model, so which rewards are corrupted is known on real data too.
    """
    lines = ["### AdaGRPO's gate against the oracle", "",
             "Precision = share of admitted samples whose ground-truth score is not corrupted, to compare with "
             "the trustworthy share of all samples; recall = admitted share of the trustworthy samples; "
             "corrupted pairs = share of corrupted (user, item) scores among valid rollouts.", ""]
    return lines + gate_table(summary) + [f"![gate vs rate]({image_prefix}gate_vs_rate.png)", ""]


def strata_section(path: Path, image: str) -> list[str]:
    rows = read_csv(path)
    if not rows:
        return []
    methods = [key[:-len("_gain")] for key in rows[0] if key.endswith("_gain")]
    header = ["SFT rank", "ranker rank", "users", "GT corrupted", "SFT HR@10"]
    header += [f"{m} HR@10 (gain ± SE)" for m in methods]
    body = []
    for row in rows:
        if int(row["count"]) == 0:
            continue
        cells = [row["sft_rank"], row["ranker_rank"], row["count"], f"{to_float(row['gt_corrupted']):.2f}",
                 f"{to_float(row['sft_hr@10']):.3f}"]
        for m in methods:
            se = to_float(row[f"{m}_gain_se"])
            cells.append(f"{to_float(row[f'{m}_hr@10']):.3f} ({to_float(row[f'{m}_gain']):+.3f}"
                         + ("" if math.isnan(se) else f" ± {se:.3f}") + ")")
        body.append(cells)
    return [f"![{path.stem}]({image})", ""] + markdown_table(header, body)


def rate_of(path: Path) -> tuple:
    """Sort key of strata_rate<r>.csv files: by the rate as a number, names that are no number last."""
    try:
        return (float(path.stem[len("strata_rate"):]), "")
    except ValueError:
        return (math.inf, path.stem)


def commands_line(calls: list[dict], spec: dict) -> str:
    """Name the command(s) that wrote the folder: every distinct call in invocations.csv, else sweep.yaml's."""
    commands = list(dict.fromkeys(c["command"] for c in calls))
    if not commands:
        commands = [spec.get("command", "python benchmark.py --config noise_sweep.yaml")]
    label = "Command" if len(commands) == 1 else "Commands, in order"
    return f"{label}: " + "; ".join(f"`{c}`" for c in commands)


def wall_time_line(calls: list[dict]) -> str:
    """Describe the sweep's measured wall time from invocations.csv (one row per benchmark.py call)."""
    if not calls:
        return ""
    minutes = sum(to_float(c["wall_s"]) for c in calls) / 60
    workers = sorted({c["workers"] for c in calls}, key=int)
    return (f"Wall time {minutes:.1f} min in {len(calls)} call(s) of benchmark.py with --workers "
            f"{', '.join(workers)}, from start to the written plots.")


def make_benchmarks_page(out_dir, image_prefix: str = "") -> Path:
    """Write <out_dir>/benchmarks.md from summary.csv, runs.csv, sweep.yaml and the strata files.

    Image links are `image_prefix` + file name, so a page assembled elsewhere can point at out_dir.
    """
    out = Path(out_dir)
    summary = read_csv(out / "summary.csv")
    runs = read_csv(out / "runs.csv")
    calls = read_csv(out / "invocations.csv")
    spec = yaml.safe_load((out / "sweep.yaml").read_text(encoding="utf-8")) if (out / "sweep.yaml").is_file() else {}
    seconds = sum(to_float(r["wall_time_s"]) for r in runs if math.isfinite(to_float(r["wall_time_s"])))
    run_time = f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"
    seeds = sorted({r["seed"] for r in runs}, key=int)
    users = sorted({r["test_users"] for r in runs if r["test_users"]})
    devices = sorted({r["device"] for r in runs if r["device"]})
    data = (spec.get("base") or {}).get("data") or {}
    if data.get("source", "synthetic") == "synthetic":
        where = "each seed also sets the synthetic world's seed"
    else:
        where = f"data: {Path(str(data.get('path', '?'))).name}"

    lines = ["## Noise sweep", "",
             commands_line(calls, spec), "",
             f"{len(runs)} runs (SFT and RL) over seeds {', '.join(seeds)} ({where}), "
             f"{', '.join(users)} test users per seed, on {', '.join(devices) or 'unknown'}; "
             f"{run_time} of run time summed over runs, data building excluded. Means over seeds ± the half-width "
             f"of the 95% t interval; one seed shows the mean alone. {wall_time_line(calls)}", "",
             "On the synthetic world each seed also draws its own world, so HR@10 differs more between seeds "
             "than between methods. The first tables therefore show each run's change from its own seed's SFT "
             "policy (paired), averaged over seeds.", "",
             "`best` is the checkpoint with the highest validation HR@10 (the SFT starting point competes), "
             "`final` the last one. The random gate admits each sample with the probability equal to AdaGRPO's "
             "mean admission rate in the same seed and cell, at AdaGRPO's lambda; the scaled GRPO control uses "
             "lambda x that rate. The validity-only control rewards a valid, unseen item with 1 and anything "
             "else with 0, so it learns nothing from the ranker. `GRPO, validation-tuned lambda` takes, per seed and "
             "cell, the uniform GRPO run whose lambda has the highest validation HR@10, and reports its test "
             "metrics.", ""]
    for checkpoint in ("final", "best"):
        for kind in corruption_kinds(summary):
            lines += [f"### Test HR@10 change from SFT, corruption `{kind}`, {checkpoint} checkpoint", ""]
            lines += rate_table(summary, kind, checkpoint, "test_hr@10_gain")
        lines += [f"![HR@10 change from SFT vs corruption rate, {checkpoint}]"
                  f"({image_prefix}hr10_gain_vs_rate_{checkpoint}.png)", ""]
    lines += ["### Absolute values", ""]
    for checkpoint in ("best", "final"):
        for kind in corruption_kinds(summary):
            lines += [f"### Test HR@10, corruption `{kind}`, {checkpoint} checkpoint", ""]
            lines += rate_table(summary, kind, checkpoint, "test_hr@10")
        lines += [f"![HR@10 vs corruption rate, {checkpoint}]({image_prefix}hr10_vs_rate_{checkpoint}.png)", ""]
    for kind in corruption_kinds(summary):
        lines += [f"### Test hallucination@10, corruption `{kind}`, final checkpoint", ""]
        lines += rate_table(summary, kind, "final", "test_hallucination")
        lines += [f"### Test NDCG@10, corruption `{kind}`, best checkpoint", ""]
        lines += rate_table(summary, kind, "best", "test_ndcg@10")
    lines += paired_section(read_csv(out / "paired.csv"))
    lines += ["### SFT and the validity-only control", ""] + reference_table(summary)
    lines += ["### HR@10 vs hallucination", "",
              f"![frontier, best]({image_prefix}frontier_best.png)",
              f"![frontier, final]({image_prefix}frontier_final.png)", ""]
    lines += gate_section(summary, image_prefix)
    strata = sorted(out.glob("strata_rate*.csv"), key=rate_of)
    if strata:
        lines += ["### Stratified analysis", "",
                  f"Seed {spec.get('sweep', {}).get('strata_seed', '?')}, "
                  f"{spec.get('sweep', {}).get('strata_checkpoint', '?')} checkpoints. Test users binned by the "
                  "SFT beam rank of the ground truth and by the ranker's rank of it among the beam's valid "
                  "items; gain = HR@10 change over SFT with its paired standard error.", ""]
        for path in strata:
            tag = path.stem[len("strata_"):]
            lines += [f"#### {tag}", ""] + strata_section(path, f"{image_prefix}heatmap_{tag}.png")
    page = out / "benchmarks.md"
    page.write_text("\n".join(lines), encoding="utf-8")
    return page


def eval_table(run_dirs: list[str], split: str = "test") -> list[str]:
    """Markdown rows of HR@5/10, NDCG@5/10 and hallucination per stage of train.py runs (their eval.json).

    Each run gives its RL method's best and final checkpoints; SFT is listed once per distinct SFT result.
    """
    columns = ["hr@5", "hr@10", "ndcg@5", "ndcg@10", "hallucination"]
    rows, seen_sft = [], set()
    for folder in run_dirs:
        results = json.loads((Path(folder) / "eval.json").read_text(encoding="utf-8"))
        sft = results["sft"][split]
        key = tuple(sft[c] for c in columns)
        if key not in seen_sft:
            seen_sft.add(key)
            rows.append(["SFT"] + [f"{sft[c]:.4f}" for c in columns])
        for method, entry in results.items():
            if method in ("sft", "wall_time_s"):
                continue
            label = f"{LABELS.get(method, method)} (admission {entry['admission_rate']:.2f})"
            rows.append([f"{label}, best (step {entry['step']})"] + [f"{entry[split][c]:.4f}" for c in columns])
            final = entry["final"]
            rows.append([f"{label}, final (step {final['step']})"] + [f"{final[split][c]:.4f}" for c in columns])
    return markdown_table(["model", *columns], rows)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Print a markdown table of the metrics in train.py run "
                                     "folders (their eval.json), for results pages.")
    parser.add_argument("run_dirs", nargs="+", help="run folders written by train.py")
    parser.add_argument("--split", choices=["valid", "test"], default="test", help="which targets to show")
    args = parser.parse_args()
    print("\n".join(eval_table(args.run_dirs, args.split)))
