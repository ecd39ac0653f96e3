"""Stratified analysis: where on the test set does RL gain or lose HR@10 over the SFT policy?

Every test user falls into one stratum along two axes:
  SFT rank     1-based rank of the ground truth among the SFT policy's beam (width eval.beam_size):
               1, 2-5, 6-10, 11-20, >20 (only when the beam is wider than 20), or absent;
  ranker rank  1 + the number of negatives the ranker scores above the ground truth, where the negatives
               are the distinct valid, unseen items of that SFT beam other than the ground truth:
               1, 2-3, 4-10, >10. It is defined for every user, since the ground truth always has a score.
Per stratum: the user count, the share whose ground-truth score is corrupted, HR@10 of SFT and of each
method, and each method's gain over SFT with its paired standard error std(hit_m - hit_sft) / sqrt(n).
Rows with `all` on an axis are its margins. The two axes mirror the gate's diagnostics (policy-side
difficulty and reward discriminability), so the table shows which gate thresholds select strata that gain.

    python analysis.py --policy adagrpo=runs/small/adagrpo_final.pt [--policy NAME=CHECKPOINT ...]
"""

import argparse
import csv
import logging
import math
import sys
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evaluate import evaluate_split  # noqa: E402
from reward import pad_histories  # noqa: E402

log = logging.getLogger("analysis")

SFT_BINS = ((1, 1, "1"), (2, 5, "2-5"), (6, 10, "6-10"), (11, 20, "11-20"))
RANKER_BINS = ((1, 1, "1"), (2, 3, "2-3"), (4, 10, "4-10"), (11, math.inf, ">10"))


def bin_label(rank: int, bins) -> str:
    for low, high, name in bins:
        if low <= rank <= high:
            return name
    return ">20"


def sft_labels(beam_size: int) -> list[str]:
    return [name for _, _, name in SFT_BINS] + ([">20"] if beam_size > 20 else []) + ["absent"]


def ranker_ranks(reward, users: list[int], histories: list[list[int]], targets: np.ndarray,
                 items: np.ndarray, max_history: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Rank the ground truth by ranker score among itself and the beam's other valid, unseen items.

    Returns (ranks (N,), ground-truth score corrupted (N,)). Beam SIDs are distinct and every item has
    one SID, so those items are distinct too.
    """
    ranks, corrupted = [], []
    for start in range(0, len(users), chunk):
        stop = start + chunk
        hist = histories[start:stop]
        beam = items[start:stop]
        seen_sets = [set(h) for h in hist]
        seen = np.asarray([[item in s for item in row] for row, s in zip(beam.tolist(), seen_sets)], dtype=bool)
        negatives = (beam >= 0) & ~seen & (beam != targets[start:stop, None])
        user_ids = np.asarray(users[start:stop])
        positions = np.asarray([len(h) for h in hist])
        padded = pad_histories(hist, max_history)
        scores, _ = reward.score(user_ids, positions, padded, torch.as_tensor(np.where(negatives, beam, -1)))
        gt_scores, gt_flags = reward.score(user_ids, positions, padded,
                                           torch.as_tensor(targets[start:stop, None]))
        above = (np.nan_to_num(scores, nan=-np.inf) > gt_scores) & negatives
        ranks.append(1 + above.sum(1))
        corrupted.append(gt_flags[:, 0])
    return np.concatenate(ranks), np.concatenate(corrupted)


def hits_at_10(items: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return (items[:, :10] == targets[:, None]).any(1)


def stratify(cfg, run, sft_policy, reward, policies: dict, device) -> dict:
    """Compute per test user the SFT stratum, ranker stratum, corruption flag and HR@10 of each policy.

    sft_policy and the values of `policies` are torch modules (a Policy) already on `device`.
    """
    _, (users, targets, _, _, sft_items) = evaluate_split(sft_policy, run, "test", cfg, device, return_lists=True)
    hit_at = sft_items == targets[:, None]
    sft_rank = np.where(hit_at.any(1), hit_at.argmax(1) + 1, 0)                   # 0 = absent
    histories = [run.split.history(u, "test") for u in users]
    ranks, corrupted = ranker_ranks(reward, users, histories, targets, sft_items, cfg.data.max_history)
    hits = {"sft": hits_at_10(sft_items, targets)}
    for name, policy in policies.items():
        _, (_, _, _, _, items) = evaluate_split(policy, run, "test", cfg, device, return_lists=True)
        hits[name] = hits_at_10(items, targets)
    return {"sft_stratum": np.asarray([bin_label(r, SFT_BINS) if r else "absent" for r in sft_rank]),
            "ranker_stratum": np.asarray([bin_label(r, RANKER_BINS) for r in ranks]),
            "gt_corrupted": corrupted, "hits": hits, "beam_size": cfg.eval.beam_size}


def strata_table(per_user: dict) -> list[dict]:
    """Build one row per (SFT stratum, ranker stratum), plus the margins (`all`) and the total."""
    methods = [m for m in per_user["hits"] if m != "sft"]
    sft_axis = sft_labels(per_user["beam_size"]) + ["all"]
    ranker_axis = [name for _, _, name in RANKER_BINS] + ["all"]
    rows = []
    for sft_name in sft_axis:
        for ranker_name in ranker_axis:
            select = np.ones(len(per_user["sft_stratum"]), dtype=bool)
            if sft_name != "all":
                select &= per_user["sft_stratum"] == sft_name
            if ranker_name != "all":
                select &= per_user["ranker_stratum"] == ranker_name
            n = int(select.sum())
            base = per_user["hits"]["sft"][select].astype(float)
            row = {"sft_rank": sft_name, "ranker_rank": ranker_name, "count": n,
                   "gt_corrupted": float(per_user["gt_corrupted"][select].mean()) if n else math.nan,
                   "sft_hr@10": float(base.mean()) if n else math.nan}
            for method in methods:
                diff = per_user["hits"][method][select].astype(float) - base
                row[f"{method}_hr@10"] = float(per_user["hits"][method][select].mean()) if n else math.nan
                row[f"{method}_gain"] = float(diff.mean()) if n else math.nan
                row[f"{method}_gain_se"] = float(diff.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
            rows.append(row)
    return rows


def table_methods(table: list[dict]) -> list[str]:
    return [key[:-len("_gain")] for key in table[0] if key.endswith("_gain")]


def write_table(path: Path, table: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def plot_heatmap(table: list[dict], path: Path, title: str = "") -> Path:
    """Draw one panel per method: the HR@10 gain over SFT per stratum, annotated with the user count."""
    methods = table_methods(table)
    sft_axis = [s for s in dict.fromkeys(r["sft_rank"] for r in table) if s != "all"]
    ranker_axis = [s for s in dict.fromkeys(r["ranker_rank"] for r in table) if s != "all"]
    cells = {(r["sft_rank"], r["ranker_rank"]): r for r in table}
    gains = {m: np.array([[cells[s, k][f"{m}_gain"] for k in ranker_axis] for s in sft_axis]) for m in methods}
    finite = [abs(v) for g in gains.values() for v in g.ravel() if math.isfinite(v)]
    limit = max(finite + [0.01])
    fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), 4.4), squeeze=False)
    for ax, method in zip(axes[0], methods):
        image = ax.imshow(np.ma.masked_invalid(gains[method]), cmap="RdBu", vmin=-limit, vmax=limit)
        for i, s in enumerate(sft_axis):
            for j, k in enumerate(ranker_axis):
                cell = cells[s, k]
                text = f"n={cell['count']}" if cell["count"] == 0 else \
                    f"{cell[f'{method}_gain']:+.3f}\nn={cell['count']}"
                ax.text(j, i, text, ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(ranker_axis)), ranker_axis)
        ax.set_yticks(range(len(sft_axis)), sft_axis)
        ax.set_xlabel("ranker rank of the ground truth\n(among it and the SFT beam's valid items)", fontsize=8)
        ax.set_ylabel("SFT beam rank of the ground truth", fontsize=8)
        ax.set_title(f"{method}: HR@10 gain over SFT", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def describe_strata(table: list[dict], min_count: int = 20, z: float = 2.0) -> str:
    """List, per method, the strata (with at least `min_count` users) that gain or lose HR@10 over SFT.

    A stratum counts as a gain or a loss when |gain| > z standard errors; the rest show no clear change.
    """
    lines = []
    for method in table_methods(table):
        lines.append(f"{method} vs SFT (strata with >= {min_count} users; clear = |gain| > {z:g} SE):")
        rows = [r for r in table if r["count"] >= min_count and "all" not in (r["sft_rank"], r["ranker_rank"])]
        for verdict in ("gains", "loses", "no clear change"):
            picked = []
            for row in sorted(rows, key=lambda r: -r[f"{method}_gain"]):
                gain, se = row[f"{method}_gain"], row[f"{method}_gain_se"]
                clear = math.isfinite(se) and abs(gain) > z * se
                if not clear:
                    kind = "no clear change"
                elif gain > 0:
                    kind = "gains"
                else:
                    kind = "loses"
                if kind == verdict:
                    picked.append(f"SFT rank {row['sft_rank']}, ranker rank {row['ranker_rank']}: n={row['count']}, "
                                  f"HR@10 {row['sft_hr@10']:.3f} -> {row[f'{method}_hr@10']:.3f} "
                                  f"({gain:+.3f} +- {se:.3f} SE)")
            lines.append(f"  {verdict}:" + ("" if picked else " none"))
            lines.extend(f"    {text}" for text in picked)
    return "\n".join(lines)


def analyze(cfg, run, sft_state: dict, reward, policy_states: dict, device, out_dir: Path, tag: str) -> list[dict]:
    """Stratify the test users, write strata_<tag>.csv and heatmap_<tag>.png into out_dir, log the verdicts."""
    from train import make_policy
    sft = make_policy(cfg, run, device)
    sft.load_state_dict(sft_state)
    policies = {}
    for name, state in policy_states.items():
        policies[name] = make_policy(cfg, run, device)
        policies[name].load_state_dict(state)
    table = strata_table(stratify(cfg, run, sft, reward, policies, device))
    write_table(Path(out_dir) / f"strata_{tag}.csv", table)
    plot_heatmap(table, Path(out_dir) / f"heatmap_{tag}.png", f"test users by stratum, {tag}")
    log.info("stratified analysis %s:\n%s", tag, describe_strata(table))
    return table


def main(argv=None) -> int:
    from checkpoint import load_checkpoint
    from config import config_from_dict
    from data.build import build_run_data
    from rl import build_reward
    from train import pick_device

    parser = argparse.ArgumentParser(description="Stratified HR@10 analysis: RL checkpoints vs the SFT policy, "
                                     "by the SFT beam rank and the ranker rank of the ground truth.")
    parser.add_argument("--policy", action="append", required=True, metavar="NAME=CHECKPOINT",
                        help="an RL checkpoint to compare, e.g. adagrpo=runs/small/adagrpo_final.pt (repeat for "
                             "several); the first one's config and its folder's ranker.pt define the reward")
    parser.add_argument("--sft", help="SFT checkpoint (default: sft_best.pt beside the first --policy)")
    parser.add_argument("--out", help="folder for strata_<tag>.csv and heatmap_<tag>.png (default: the first "
                                      "--policy's folder)")
    parser.add_argument("--tag", default="analysis", help="file name suffix (default: analysis)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    paths = {}
    for text in args.policy:
        name, sep, path = text.partition("=")
        if not sep or not name or not Path(path).is_file():
            print(f"error: --policy {text!r}: expected NAME=CHECKPOINT with an existing checkpoint file",
                  file=sys.stderr)
            return 2
        paths[name] = Path(path)
    first = next(iter(paths.values()))
    cfg = config_from_dict(load_checkpoint(first)["config"])
    device = pick_device(args.device)
    run = build_run_data(cfg)
    reward = build_reward(cfg, run, first.parent, device)
    policies = {name: load_checkpoint(path)["policy"] for name, path in paths.items()}
    sft = load_checkpoint(args.sft or first.parent / "sft_best.pt")["policy"]
    table = analyze(cfg, run, sft, reward, policies, device, Path(args.out or first.parent), args.tag)
    print(describe_strata(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
