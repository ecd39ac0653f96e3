"""Plots of the noise sweep, drawn from summary.csv (means over seeds with 95% CI error bars).

hr10_vs_rate_<checkpoint>.png  test HR@10 vs corruption rate, one panel per corruption kind, SFT as a
                               horizontal line (shaded CI) and the validity-only control as dashed lines;
frontier_<checkpoint>.png      test HR@10 vs hallucination per (kind, rate), means only (the CIs are in
                               summary.csv): SFT and uniform GRPO at increasing lambda connected by a
                               line, AdaGRPO and the controls as points on that plane;
gate_vs_rate.png               AdaGRPO's mean admission rate, oracle precision and recall, and the share of
                               corrupted pairs among admitted vs all samples, vs corruption rate.
Rate-0 runs (kind `clean`) appear in every kind's panel at rate 0.
"""

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from summary import read_csv, to_float  # noqa: E402

NAMES = {"sft": "SFT", "grpo": "GRPO", "adagrpo": "AdaGRPO", "random": "random gate",
         "grpo_scaled": "GRPO, lambda x admission", "grpo_valtuned": "GRPO, validation-tuned lambda",
         "validity": "validity-only reward"}
CONTROL_STYLE = {"random": ("tab:gray", "s"), "grpo_scaled": ("tab:green", "D"),
                 "grpo_valtuned": ("tab:purple", "v")}


def label(method: str, lam: str) -> str:
    if method in ("sft", "grpo_valtuned"):
        return NAMES[method]
    if method in ("random", "grpo_scaled"):
        return f"{NAMES[method]} (matched to AdaGRPO lambda={lam})"
    return f"{NAMES.get(method, method)} lambda={lam}"


def style(method: str, lam: str, lambdas: dict[str, list[str]]) -> tuple[str, str]:
    """(colour, marker): blues for GRPO and reds for AdaGRPO, darker for a larger lambda."""
    if method in ("grpo", "adagrpo", "validity"):
        ordered = lambdas.get(method, [lam])
        shade = 0.45 + 0.5 * (ordered.index(lam) / max(len(ordered) - 1, 1) if lam in ordered else 1.0)
        cmap = {"grpo": plt.cm.Blues, "adagrpo": plt.cm.Reds, "validity": plt.cm.copper_r}[method]
        return matplotlib.colors.to_hex(cmap(shade)), {"grpo": "o", "adagrpo": "^", "validity": "x"}[method]
    return CONTROL_STYLE.get(method, ("black", "o"))


def load_summary(out_dir: Path) -> list[dict]:
    rows = read_csv(out_dir / "summary.csv")
    for row in rows:
        row["rate_value"] = to_float(row["rate"])
        for key in list(row):
            if key.endswith("_mean") or key.endswith("_ci95"):
                row[key] = to_float(row[key])
    return rows


def lambda_orders(rows: list[dict]) -> dict[str, list[str]]:
    """Nominal lambdas per method, smallest first."""
    found: dict[str, set] = {}
    for row in rows:
        if row["lambda_nominal"] not in ("", "tuned"):
            found.setdefault(row["method"], set()).add(row["lambda_nominal"])
    return {method: sorted(values, key=float) for method, values in found.items()}


def corruption_kinds(rows: list[dict]) -> list[str]:
    kinds = sorted({row["kind"] for row in rows} - {"clean", "none"})
    return kinds or ["clean"]


def cell_rows(rows: list[dict], kind: str, checkpoint: str) -> list[dict]:
    """Select the rows of one kind (rate-0 `clean` rows included) at one checkpoint, ranker-based methods only."""
    return [r for r in rows if r["kind"] in (kind, "clean") and r["checkpoint"] == checkpoint
            and r["method"] not in ("sft", "validity")]


def errors(values: list[float]) -> list[float]:
    return [0.0 if math.isnan(v) else v for v in values]


def reference_lines(ax, rows: list[dict], lambdas: dict, metric: str, checkpoint: str) -> None:
    """SFT (solid, shaded CI) and the validity-only runs at `checkpoint` (dashed) as horizontal lines.

    SFT has one checkpoint, sft_best.pt, so its line is the same in the best and the final figure.
    """
    for row in rows:
        if row["method"] == "sft":
            mean, ci = row[f"{metric}_mean"], row[f"{metric}_ci95"]
            ax.axhline(mean, color="black", lw=1.2, label="SFT")
            if not math.isnan(ci):
                ax.axhspan(mean - ci, mean + ci, color="black", alpha=0.08)
        elif row["method"] == "validity" and row["checkpoint"] == checkpoint:
            colour, _ = style("validity", row["lambda_nominal"], lambdas)
            ax.axhline(row[f"{metric}_mean"], color=colour, lw=1.0, ls="--",
                       label=label("validity", row["lambda_nominal"]))


def legend_right(fig, axes) -> None:
    """Draw one legend for the figure, right of the panels, with each label once."""
    unique = {}
    for ax in axes:
        handles, labels = ax.get_legend_handles_labels()
        unique.update(zip(labels, handles))
    fig.legend(unique.values(), unique.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))


def plot_hr_vs_rate(rows: list[dict], out_dir: Path, checkpoint: str, metric: str = "test_hr@10") -> Path:
    """Plot `metric` (test_hr@10, or test_hr@10_gain: the change from the same seed's SFT) against the rate."""
    kinds, lambdas = corruption_kinds(rows), lambda_orders(rows)
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.8), squeeze=False, sharey=True)
    for ax, kind in zip(axes[0], kinds):
        series: dict[tuple, list[dict]] = {}
        for row in cell_rows(rows, kind, checkpoint):
            series.setdefault((row["method"], row["lambda_nominal"]), []).append(row)
        ordered = sorted(series.items(), key=lambda item: label(*item[0]))
        for index, ((method, lam), points) in enumerate(ordered):
            points.sort(key=lambda r: r["rate_value"])
            colour, marker = style(method, lam, lambdas)
            dodge = 0.006 * (index - (len(ordered) - 1) / 2)          # keep overlapping error bars apart
            ax.errorbar([p["rate_value"] + dodge for p in points], [p[f"{metric}_mean"] for p in points],
                        yerr=errors([p[f"{metric}_ci95"] for p in points]), color=colour, marker=marker,
                        capsize=3, lw=1.3, label=label(method, lam))
        reference_lines(ax, [r for r in rows if r["method"] in ("sft", "validity")], lambdas, metric, checkpoint)
        ax.set_title(f"corruption kind: {kind}")
        ax.set_xlabel("corruption rate")
        ax.grid(alpha=0.3)
    gain = metric.endswith("_gain")
    quantity = "test HR@10 minus the seed's SFT HR@10" if gain else "test HR@10"
    axes[0][0].set_ylabel(f"{quantity} ({checkpoint} checkpoint),\nmean and 95% CI over seeds")
    legend_right(fig, axes[0])
    return save(fig, out_dir / f"hr10_{'gain_' if gain else ''}vs_rate_{checkpoint}.png")


def plot_frontier(rows: list[dict], out_dir: Path, checkpoint: str) -> Path:
    kinds, lambdas = corruption_kinds(rows), lambda_orders(rows)
    rates = sorted({r["rate_value"] for r in rows if not math.isnan(r["rate_value"])})
    fig, axes = plt.subplots(len(kinds), len(rates), figsize=(3.6 * len(rates), 3.4 * len(kinds)),
                             squeeze=False, sharex=True, sharey=True)
    sft = [r for r in rows if r["method"] == "sft"]
    validity = [r for r in rows if r["method"] == "validity" and r["checkpoint"] == checkpoint]
    for i, kind in enumerate(kinds):
        for j, rate in enumerate(rates):
            ax = axes[i][j]
            cell = [r for r in cell_rows(rows, kind, checkpoint) if r["rate_value"] == rate]
            grpo = sorted((r for r in cell if r["method"] == "grpo"), key=lambda r: float(r["lambda_nominal"]))
            xs = [r["test_hallucination_mean"] for r in sft + grpo]
            ys = [r["test_hr@10_mean"] for r in sft + grpo]
            ax.plot(xs, ys, color="tab:blue", lw=1.0, zorder=1)
            for row in sft + grpo + validity + [r for r in cell if r["method"] != "grpo"]:
                colour, marker = ("black", "*") if row["method"] == "sft" else \
                    style(row["method"], row["lambda_nominal"], lambdas)
                ax.plot(row["test_hallucination_mean"], row["test_hr@10_mean"], color=colour, marker=marker,
                        ms=7, ls="none", zorder=2, label=label(row["method"], row["lambda_nominal"]))
            ax.set_title(f"{kind}, rate {rate:g}" if rate > 0 else "clean ranker, rate 0", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(kinds) - 1:
                ax.set_xlabel("test hallucination@10")
            if j == 0:
                ax.set_ylabel(f"test HR@10 ({checkpoint})")
    legend_right(fig, axes.ravel())
    return save(fig, out_dir / f"frontier_{checkpoint}.png")


def plot_gate(rows: list[dict], out_dir: Path) -> Path:
    """Plot run-level means, which are the same for both checkpoints, from the `final` rows."""
    kinds, lambdas = corruption_kinds(rows), lambda_orders(rows)
    panels = [("admission_rate_mean", "gate admission rate"), ("oracle_precision_mean", "oracle precision"),
              ("oracle_recall_mean", "oracle recall"), ("oracle_corrupted_pairs_admitted_mean",
                                                        "corrupted pairs among admitted samples")]
    fig, axes = plt.subplots(len(kinds), len(panels), figsize=(4.2 * len(panels), 3.6 * len(kinds)),
                             squeeze=False, sharex=True)
    for i, kind in enumerate(kinds):
        gated = [r for r in cell_rows(rows, kind, "final") if r["method"] in ("adagrpo", "random")]
        series: dict[tuple, list[dict]] = {}
        for row in gated:
            series.setdefault((row["method"], row["lambda_nominal"]), []).append(row)
        for j, (key, title) in enumerate(panels):
            ax = axes[i][j]
            for (method, lam), points in sorted(series.items()):
                points.sort(key=lambda r: r["rate_value"])
                colour, marker = style(method, lam, lambdas)
                ax.plot([p["rate_value"] for p in points], [p[key] for p in points], color=colour, marker=marker,
                        label=label(method, lam))
            base = {"oracle_precision_mean": ("oracle_trustworthy_rate_mean", "trustworthy share (all samples)",
                                              "--"),
                    "oracle_corrupted_pairs_admitted_mean": ("oracle_corrupted_pairs_all_mean",
                                                             "corrupted pairs among all samples", ":")}.get(key)
            if base and series:
                points = sorted(next(iter(series.values())), key=lambda r: r["rate_value"])
                ax.plot([p["rate_value"] for p in points], [p[base[0]] for p in points], color="black", ls=base[2],
                        label=base[1])
            ax.set_title(f"{title} ({kind})", fontsize=9)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if i == len(kinds) - 1:
                ax.set_xlabel("corruption rate")
    legend_right(fig, axes.ravel())
    return save(fig, out_dir / "gate_vs_rate.png")


def save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_all(out_dir: Path) -> list[Path]:
    """Draw every sweep plot from <out_dir>/summary.csv and return the written files."""
    rows = load_summary(Path(out_dir))
    if not rows:
        return []
    paths = []
    for checkpoint in ("best", "final"):
        paths.append(plot_hr_vs_rate(rows, Path(out_dir), checkpoint))
        paths.append(plot_hr_vs_rate(rows, Path(out_dir), checkpoint, "test_hr@10_gain"))
        paths.append(plot_frontier(rows, Path(out_dir), checkpoint))
    paths.append(plot_gate(rows, Path(out_dir)))
    return paths
