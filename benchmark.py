"""The noise sweep: SFT once per seed, then GRPO, AdaGRPO and their controls from that SFT checkpoint.

    python benchmark.py --config noise_sweep.yaml [--quick] [--workers N] [--out DIR] [dotted.key=value ...]

The config contains `base` (a train.py config) and `sweep` (seeds, corruption kinds and rates, lambdas,
controls; see sweep_plan.py). `--quick` applies the config's `quick` overrides. Command-line overrides go
to `base`, or to `sweep` when they start with `sweep.`. Outputs in DIR: one folder per run, runs.csv (one
row per finished run; a rerun skips the runs listed there), summary.csv (mean and 95% CI over seeds),
plots, the stratified analysis of one seed (strata_rate<r>.csv, heatmap_rate<r>.png) and benchmarks.md.
"""

import argparse
import copy
import csv
import dataclasses
import json
import logging
import math
import multiprocessing
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from checkpoint import load_checkpoint, seed_everything
from config import Config, ConfigError, config_from_dict
from analysis import analyze
from data.build import build_run_data
from data.public import DataError
from plots import plot_all
from report import make_benchmarks_page
from summary import ORACLE_KEYS, append_row, read_rows, write_summary
from sweep_plan import RunSpec, Sweep, fmt, load_sweep_config, matched_overrides, merge, nested, plan_runs
from rl import build_reward, train_rl
from train import (MetricsLog, TrainingError, evaluate_policy, make_policy, pick_device, prepare_run_folder,
                   train_sft)

log = logging.getLogger("benchmark")
QUIET_LOGGERS = ("train", "rl", "data", "reward", "evaluate", "generate", "model")   # silenced unless --verbose

__all__ = ["main", "make_benchmarks_page", "run_sweep"]



def seed_config(base: dict, seed: int, out_dir: Path, overrides: dict | None = None) -> Config:
    """Build the config of one run: the base config, seed and world.seed = `seed`, then dotted overrides."""
    values = merge(base, nested({"seed": seed, "world.seed": seed, "out_dir": str(out_dir), **(overrides or {})}))
    return config_from_dict(values)


# ----------------------------------------------------------------------------- runs.csv rows

def oracle_means(metrics_path: Path) -> dict:
    """Average the gate's admission rate and the oracle measures over RL steps, skipping NaN values.

    A resumed run can log a step twice, so only the last record of each step counts.
    """
    steps = {}
    with open(metrics_path, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            if record.get("stage") == "rl":
                steps[record["step"]] = record
    out = {}
    for name, key in [("admission_rate", "gate/admission_rate")] + [(f"oracle_{k}", f"oracle/{k}")
                                                                      for k in ORACLE_KEYS]:
        values = [r[key] for r in steps.values() if key in r and r[key] is not None and math.isfinite(r[key])]
        out[name] = sum(values) / len(values) if values else math.nan
    return out


def checkpoint_fields(prefix: str, entry: dict) -> dict:
    return {f"{prefix}_step": entry.get("step", ""), f"{prefix}_valid_hr@10": entry["valid"]["hr@10"],
            f"{prefix}_test_hr@10": entry["test"]["hr@10"], f"{prefix}_test_ndcg@10": entry["test"]["ndcg@10"],
            f"{prefix}_test_hallucination": entry["test"]["hallucination"],
            f"{prefix}_test_constrained_hr@10": entry.get("test_constrained", {}).get("hr@10", "")}


# ----------------------------------------------------------------------------- one seed

class SeedRuns:
    """Shared state of one seed's runs: the run data, the SFT policy and its metrics, the trained ranker."""

    def __init__(self, base: dict, seed: int, out: Path, device: torch.device):
        self.base, self.seed, self.out, self.device = base, seed, out, device
        self.folder = out / f"seed{seed}"
        cfg = seed_config(base, seed, self.folder / "sft", {"rl.method": "none"})
        self.run = build_run_data(cfg)
        self.sft_policy, self.sft_eval = self._sft(cfg)
        self.ranker_path = self._ranker(cfg)

    def _sft(self, cfg: Config) -> tuple[dict, dict]:
        eval_path = self.folder / "sft" / "eval.json"
        if eval_path.is_file():
            state = load_checkpoint(self.folder / "sft" / "sft_best.pt")["policy"]
            return state, json.loads(eval_path.read_text(encoding="utf-8"))["sft"]
        started = time.time()
        seed_everything(cfg.seed)
        folder = prepare_run_folder(cfg)
        policy = make_policy(cfg, self.run, self.device)
        train_sft(cfg, self.run, policy, folder, MetricsLog(folder / "metrics.jsonl"), self.device)
        result = evaluate_policy(policy, self.run, cfg, self.device)
        result["wall_time_s"] = round(time.time() - started, 1)
        eval_path.write_text(json.dumps({"sft": result}, indent=2), encoding="utf-8")
        return copy.deepcopy(policy.state_dict()), result

    def _ranker(self, cfg: Config) -> Path:
        """Train the seed's ranker once. It depends on the seed, the data and `ranker`, not on the corruption."""
        path = self.folder / "ranker.pt"
        if not path.is_file():
            build_reward(cfg, self.run, self.folder, self.device)      # writes ranker.pt into that folder
        return path

    def sft_row(self) -> dict:
        row = {"run_id": f"seed{self.seed}/sft", "seed": self.seed, "kind": "none", "method": "sft",
               "test_users": self.sft_eval["test"]["users"],
               "wall_time_s": self.sft_eval.get("wall_time_s", "")}
        row.update(checkpoint_fields("best", self.sft_eval))
        return row

    def train(self, spec: RunSpec, overrides: dict) -> tuple[Config, dict]:
        """Run or resume one RL run from the SFT policy. Returns its config and its eval.json content."""
        cfg = seed_config(self.base, self.seed, self.out / spec.run_id, {**spec.overrides, **overrides})
        folder = Path(cfg.out_dir)
        if (folder / "eval.json").is_file():
            return cfg, json.loads((folder / "eval.json").read_text(encoding="utf-8"))
        started = time.time()
        prepare_run_folder(cfg)
        if not (folder / "ranker.pt").is_file():
            shutil.copyfile(self.ranker_path, folder / "ranker.pt")
        seed_everything(cfg.seed)
        policy = make_policy(cfg, self.run, self.device)
        policy.load_state_dict(self.sft_policy)
        summary = train_rl(cfg, self.run, policy, folder, MetricsLog(folder / "metrics.jsonl"), self.device)
        method, results, entries = cfg.rl.method, {"sft": self.sft_eval}, {}
        for name in ("best", "final"):
            step = summary[f"{name}_step"]
            if step not in entries:                    # the best checkpoint is often the final one
                policy.load_state_dict(load_checkpoint(folder / f"{method}_{name}.pt")["policy"])
                entries[step] = evaluate_policy(policy, self.run, cfg, self.device)
            entry = {**copy.deepcopy(entries[step]), "step": step, "admission_rate": summary["admission_rate"]}
            if name == "best":
                results[method] = entry
            else:
                results[method]["final"] = entry
        results["wall_time_s"] = round(time.time() - started, 1)
        (folder / "eval.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        return cfg, results


def rl_row(spec: RunSpec, cfg: Config, results: dict, device: str) -> dict:
    entry = results[cfg.rl.method]
    row = {"run_id": spec.run_id, "seed": spec.seed, "kind": spec.kind,
           "rate": "" if spec.rate is None else fmt(spec.rate), "method": spec.method,
           "lambda_nominal": fmt(spec.lambda_nominal), "lambda": cfg.rl.lambda_,
           "random_rate": cfg.gate.random_rate if cfg.rl.method == "random" else "",
           "test_users": entry["test"]["users"], "wall_time_s": results.get("wall_time_s", ""), "device": device}
    row.update(checkpoint_fields("best", entry))
    row.update(checkpoint_fields("final", entry["final"]))
    row.update(oracle_means(Path(cfg.out_dir) / "metrics.jsonl"))
    return row


def describe_row(row: dict) -> str:
    """Format one log line: test HR@10 and hallucination per checkpoint, admission rate, wall time."""
    parts = []
    for checkpoint in ("best", "final"):
        if f"{checkpoint}_test_hr@10" in row:
            parts.append(f"{checkpoint}: test HR@10 {row[f'{checkpoint}_test_hr@10']:.4f}, "
                         f"hallucination {row[f'{checkpoint}_test_hallucination']:.4f}")
    if "admission_rate" in row:
        parts.append(f"admission {row['admission_rate']:.3f}")
    parts.append(f"{row['wall_time_s']} s")
    return "; ".join(parts)


def device_label(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


# ----------------------------------------------------------------------------- the sweep

_CACHE: dict = {}        # per process: the SeedRuns of the seed this process used last


def seed_runs(base: dict, seed: int, out: Path, device: torch.device) -> SeedRuns:
    """Return this process's SeedRuns for (base config, seed, output folder), building it on a change.

    The previous one is freed first, so a process keeps one seed's data and policy at a time.
    """
    cached = _CACHE.get("runs")
    if cached is None or (cached.base, cached.seed, cached.out) != (base, seed, out):
        _CACHE.clear()
        _CACHE["runs"] = SeedRuns(base, seed, out, device)
    return _CACHE["runs"]


def run_group(base: dict, out: Path, specs: list[RunSpec], admissions: dict, match_lambda: float) -> list[dict]:
    """Run one group of runs of one seed in order and return their runs.csv rows.

    `admissions` maps run ids to the AdaGRPO admission rates that matched controls copy; runs of this group
    add theirs. Each finished run leaves an eval.json, so an interrupted group loses no finished run.
    """
    cfg = config_from_dict(base)
    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    shared = seed_runs(base, specs[0].seed, out, device)
    rows = []
    for spec in specs:
        if spec.method == "sft":
            row = {**shared.sft_row(), "device": device_label(device)}
        else:
            overrides = {}
            if spec.match_run is not None:
                overrides = matched_overrides(spec, admissions[spec.match_run], match_lambda)
            run_cfg, results = shared.train(spec, overrides)
            row = rl_row(spec, run_cfg, results, device_label(device))
            admissions[spec.run_id] = row["admission_rate"]
        log.info("%s: %s", spec.run_id, describe_row(row))
        rows.append(row)
    return rows


def group_runs(specs: list[RunSpec]) -> list[list[RunSpec]]:
    """Split runs into groups that one process runs in order.

    A matched control runs in the group of the AdaGRPO run whose admission rate it copies, after it. Every
    other run is a group of its own, so runs.csv and the progress bar advance run by run.
    """
    groups: dict = {}
    for spec in specs:
        groups.setdefault(spec.match_run or spec.run_id, []).append(spec)
    return list(groups.values())


def _init_worker(levels: dict) -> None:
    """Configure logging in a worker process as in the parent."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _run_task(task: tuple) -> list[dict]:
    return run_group(*task)


def run_sweep(base: dict, sweep: Sweep, out: Path, workers: int = 1) -> None:
    """Run every pending run of the sweep in `workers` processes, appending one runs.csv row per run.

    First every seed with pending runs gets its SFT policy and ranker (one task per seed), then the runs
    follow as independent tasks (group_runs). The parent process alone writes runs.csv.
    """
    runs_csv = out / "runs.csv"
    done = read_rows(runs_csv)
    plan = plan_runs(sweep)
    pending = [spec for spec in plan if spec.run_id not in done]
    log.info("%d runs in the sweep, %d finished, %d to run, %d worker process(es)", len(plan),
             len(plan) - len(pending), len(pending), workers)
    seeds = sorted({spec.seed for spec in pending})
    sft = [[spec] for spec in plan if spec.method == "sft" and spec.seed in seeds]
    cells = group_runs([spec for spec in pending if spec.method != "sft"])
    admissions = {run_id: float(row["admission_rate"]) for run_id, row in done.items()
                  if row.get("admission_rate") not in (None, "")}
    levels = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    pool = multiprocessing.get_context("spawn").Pool(workers, _init_worker, (levels,)) if workers > 1 else None
    try:
        with logging_redirect_tqdm(), tqdm(total=len(plan), initial=len(plan) - len(pending), unit="run") as bar:
            for phase in (sft, cells):
                tasks = [(base, out, specs, admissions, sweep.match_lambda) for specs in phase]
                results = pool.imap_unordered(_run_task, tasks) if pool else map(_run_task, tasks)
                for rows in results:
                    for row in rows:
                        if row["run_id"] not in done:
                            append_row(runs_csv, row)
                            done[row["run_id"]] = row
                            bar.update()
    finally:
        if pool:
            pool.terminate()
            pool.join()


def run_strata(base: dict, sweep: Sweep, out: Path) -> None:
    """Run the stratified analysis of one seed at each `strata_rates` rate, GRPO vs AdaGRPO at match_lambda."""
    device = pick_device(config_from_dict(base).device)
    grpo_lambda = min(sweep.grpo_lambdas, key=lambda lam: abs(lam - sweep.match_lambda), default=None)
    seed, shared = sweep.strata_seed, None
    for rate in sweep.strata_rates:
        kind = "clean" if rate == 0.0 else sweep.strata_kind
        csv_path = out / f"strata_rate{fmt(rate)}.csv"
        if csv_path.is_file():
            continue
        runs = {"adagrpo": out / f"seed{seed}/{kind}/rate{fmt(rate)}/adagrpo_lam{fmt(sweep.match_lambda)}"}
        if grpo_lambda is not None:
            runs["grpo"] = out / f"seed{seed}/{kind}/rate{fmt(rate)}/grpo_lam{fmt(grpo_lambda)}"
        if not all((folder / "eval.json").is_file() for folder in runs.values()):
            log.warning("stratified analysis at rate %s skipped: the runs %s are not all in the sweep",
                        fmt(rate), ", ".join(str(f) for f in runs.values()))
            continue
        if shared is None:
            shared = SeedRuns(base, seed, out, device)
        policies = {}
        for method, folder in runs.items():
            lam = sweep.match_lambda if method == "adagrpo" else grpo_lambda
            policies[f"{method}_lam{fmt(lam)}"] = load_checkpoint(
                folder / f"{method}_{sweep.strata_checkpoint}.pt")["policy"]
        # Both runs share the cell's corruption, so the AdaGRPO run's config and ranker define the reward.
        cfg = config_from_dict(yaml.safe_load((runs["adagrpo"] / "config.yaml").read_text(encoding="utf-8")))
        reward = build_reward(cfg, shared.run, runs["adagrpo"], device)
        analyze(cfg, shared.run, shared.sft_policy, reward, policies, device, out, f"rate{fmt(rate)}")


# ----------------------------------------------------------------------------- CLI

def differing_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """List the dotted keys whose values differ between two nested config mappings."""
    keys = []
    for name in sorted(set(old) | set(new), key=str):
        a, b = old.get(name), new.get(name)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += differing_keys(a, b, f"{prefix}{name}.")
        elif a != b:
            keys.append(f"{prefix}{name}")
    return keys


def check_output_folder(out: Path, base: dict, sweep: Sweep, command: str) -> None:
    """Reject an output folder whose runs used another base config, then record this sweep in sweep.yaml.

    The sweep lists (seeds, rates, lambdas) may change between invocations: new runs are added, finished
    ones are kept.
    """
    saved = out / "sweep.yaml"
    if saved.is_file():
        previous = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        if previous.get("base") != base:
            keys = differing_keys(previous.get("base") or {}, base)
            raise ConfigError(f"{out} contains a sweep with a different base config (differs in "
                              f"{', '.join(keys[:5])}{', ...' if len(keys) > 5 else ''}); pass another --out "
                              f"or delete that folder")
    out.mkdir(parents=True, exist_ok=True)
    record = {"command": command, "base": base, "sweep": dataclasses.asdict(sweep)}
    saved.write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")


def record_invocation(out: Path, started: float, workers: int, command: str) -> None:
    """Append this call's wall time to invocations.csv, which the results page sums."""
    path = out / "invocations.csv"
    new = not path.is_file()
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["started", "wall_s", "workers", "command"])
        writer.writerow([time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
                         round(time.time() - started, 1), workers, command])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Run the noise sweep (SFT once per seed; GRPO, AdaGRPO and controls at each corruption "
                    "rate), then write runs.csv, summary.csv, plots, the stratified analysis and benchmarks.md.")
    parser.add_argument("--config", required=True, help="sweep YAML with `base` and `sweep`, e.g. noise_sweep.yaml")
    parser.add_argument("--quick", action="store_true",
                        help="apply the config's `quick` overrides: a tiny world, few seeds and steps")
    parser.add_argument("--out", help="output folder (default: runs/noise_sweep, or runs/noise_sweep_quick)")
    parser.add_argument("--workers", type=int, default=1,
                        help="run this many runs at once, each in its own process with `threads` torch threads "
                             "(default 1); about one per CPU core")
    parser.add_argument("--verbose", action="store_true", help="also log every training step summary")
    parser.add_argument("overrides", nargs="*", metavar="dotted.key=value",
                        help="override a base key (rl.steps=50) or a sweep key (sweep.seeds=[0,1])")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    if not args.verbose:
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)

    out = Path(args.out or ("runs/noise_sweep_quick" if args.quick else "runs/noise_sweep"))
    command = " ".join(["python benchmark.py"] + (argv if argv is not None else sys.argv[1:]))
    started = time.time()
    try:
        if args.workers < 1:
            raise ConfigError(f"--workers {args.workers}: expected at least 1 process")
        base, sweep = load_sweep_config(args.config, args.quick, args.overrides)
        check_output_folder(out, base, sweep, command)
        run_sweep(base, sweep, out, args.workers)
        run_strata(base, sweep, out)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if out.is_dir():
            record_invocation(out, started, args.workers, command + "  (interrupted)")
        print(f"interrupted: rerun the same command to resume; a run that finished but is not yet in "
              f"{out / 'runs.csv'} is read back from its folder, not trained again", file=sys.stderr)
        return 130

    write_summary(out)
    plot_all(out)
    record_invocation(out, started, args.workers, command)
    page = make_benchmarks_page(out)
    log.info("summary in %s, page in %s", out / "summary.csv", page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
