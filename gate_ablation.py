"""Compare AdaGRPO gate settings on the noise sweep's world, choosing on validation HR@10.

    python gate_ablation.py [--config noise_sweep.yaml] [--out DIR] [--workers 2] [--quick]
                            [dotted.key=value ...]

Each variant is one benchmark.py sweep in its own folder under --out, with the variant's gate keys set on
top of the base config. It runs only AdaGRPO at the sweep's match_lambda, at corruption rates 0, 0.4 and
0.8 of every kind, for every seed. The comparison table (gate_ablation.csv and gate_ablation.md in
--out) lists per variant and cell the mean over seeds of validation and test HR@10 at the final checkpoint,
and the mean admission rate and oracle precision. The variant with the highest mean final validation
HR@10 over all cells is marked; test HR@10 plays no part in that choice.
"""

import argparse
import csv
import logging
import math
import sys
from pathlib import Path

import benchmark
from config import ConfigError
from summary import mean_ci95, read_rows, to_float
from sweep_plan import load_sweep_config

# name -> gate keys set on top of the base config. `default` is the gate of config.py.
VARIANTS = {
    "default": [],
    "reward_rank1": ["gate.reward=gt_rank", "gate.reward_threshold=1"],
    "reward_auc0.75": ["gate.reward_threshold=0.75"],
    "no_policy_test": ["gate.policy=none"],
}
SWEEP = ["sweep.rates=[0,0.4,0.8]", "sweep.grpo_lambdas=[]", "sweep.random_gate=false",
         "sweep.scaled_grpo=false", "sweep.validity_lambdas=[]", "sweep.strata_rates=[]"]
COLUMNS = ["variant", "kind", "rate", "seeds", "final_valid_hr@10", "final_test_hr@10", "admission_rate",
           "oracle_precision"]


def table(out: Path) -> list[dict]:
    """Average the AdaGRPO runs over seeds: one row per (variant, kind, rate), plus one `all` row per variant."""
    rows = []
    for name in VARIANTS:
        runs = [r for r in read_rows(out / name / "runs.csv").values() if r["method"] == "adagrpo"]
        cells = sorted({(r["kind"], float(r["rate"])) for r in runs}) + [("all", math.nan)]
        for kind, rate in cells:
            chosen = [r for r in runs if kind == "all" or (r["kind"] == kind and float(r["rate"]) == rate)]
            row = {"variant": name, "kind": kind, "rate": "" if kind == "all" else f"{rate:g}",
                   "seeds": len({r["seed"] for r in chosen})}
            for key in COLUMNS[4:]:
                row[key] = mean_ci95([to_float(r[key]) for r in chosen])[0]
            rows.append(row)
    return rows


def write_outputs(out: Path, rows: list[dict]) -> str:
    """Write gate_ablation.csv and gate_ablation.md; return the name of the variant chosen on validation."""
    overall = {r["variant"]: r["final_valid_hr@10"] for r in rows if r["kind"] == "all"}
    chosen = max(overall, key=lambda name: overall[name])
    with open(out / "gate_ablation.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["# Gate ablation", "",
             "AdaGRPO under each gate variant. Per cell: mean over seeds of the final checkpoint's validation and "
             "test HR@10, and of the run's admission rate and oracle precision (share of admitted samples whose "
             "reward is not corrupted). The chosen variant has the highest mean validation HR@10 over all cells.",
             "",
             "| variant | gate keys | cell | seeds | valid HR@10 (final) | test HR@10 (final) | admission | "
             "oracle precision |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cell = "all cells" if r["kind"] == "all" else f"{r['kind']} {r['rate']}"
        mark = " (chosen)" if r["kind"] == "all" and r["variant"] == chosen else ""
        keys = " ".join(VARIANTS[r["variant"]]) or "config defaults"
        lines.append(f"| {r['variant']}{mark} | {keys} | {cell} | {r['seeds']} | {r['final_valid_hr@10']:.4f} | "
                     f"{r['final_test_hr@10']:.4f} | {r['admission_rate']:.3f} | {r['oracle_precision']:.3f} |")
    (out / "gate_ablation.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return chosen


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Run AdaGRPO with several gate settings and compare them on "
                                                 "validation HR@10 (final checkpoint), averaged over seeds.")
    parser.add_argument("--config", default="noise_sweep.yaml", help="sweep YAML (default noise_sweep.yaml)")
    parser.add_argument("--out", help="output folder, one subfolder per variant (default: runs/gate_ablation, "
                                     "or runs/gate_ablation_quick with --quick)")
    parser.add_argument("--workers", type=int, default=1, help="processes per sweep (about one per CPU core)")
    parser.add_argument("--quick", action="store_true", help="use the config's tiny `quick` settings")
    parser.add_argument("overrides", nargs="*", metavar="dotted.key=value",
                        help="passed on to every sweep, e.g. sweep.seeds=[0,1] or rl.steps=30")
    args = parser.parse_args(argv)
    out = Path(args.out or ("runs/gate_ablation_quick" if args.quick else "runs/gate_ablation"))
    try:                                             # check every variant's config before any training
        if args.workers < 1:
            raise ConfigError(f"--workers {args.workers}: expected at least 1 process")
        for keys in VARIANTS.values():
            load_sweep_config(args.config, args.quick, SWEEP + args.overrides + keys)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    for name, keys in VARIANTS.items():
        extra = ["--quick"] if args.quick else []
        code = benchmark.main(["--config", args.config, "--out", str(out / name), "--workers", str(args.workers)]
                              + extra + SWEEP + args.overrides + keys)
        if code != 0:
            print(f"error: gate variant {name!r} failed with exit status {code} (see above); its runs are in "
                  f"{out / name}, and a rerun resumes", file=sys.stderr)
            return code
    chosen = write_outputs(out, table(out))
    logging.getLogger("gate_ablation").info("table in %s; highest mean validation HR@10: %s",
                                            out / "gate_ablation.md", chosen)
    print((out / "gate_ablation.md").read_text(encoding="utf-8"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
