"""Train a generative recommender: SFT (NLL on every next item), then RL with a ranker reward.

    python train.py --config small.yaml [dotted.key=value ...]

writes one run folder (`out_dir`): config.yaml, metrics.jsonl, checkpoints and eval.json with validation
and test metrics per stage. Rerunning the same command resumes an interrupted run; a folder holding a
run with a different config is never overwritten. Config errors exit with status 2 before any work.
"""

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from checkpoint import StopRequest, load_checkpoint, rng_state, save_checkpoint, seed_everything
from config import Config, ConfigError, load_config, to_dict
from data.build import RunData, build_run_data
from data.public import DataError
from evaluate import evaluate_split, format_table
from model import Policy, encode_histories

log = logging.getLogger("train")


class TrainingError(RuntimeError):
    """Training cannot go on (for example a non-finite loss); the last good checkpoint is kept."""


def pick_device(name: str) -> torch.device:
    """`auto` takes CUDA when available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' but no CUDA device is available; use device=auto or device=cpu")
    return torch.device(name)


class MetricsLog:
    """Appends one JSON object per logged step to metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        """Append `record`; NaN and infinite floats are written as null so the file stays strict JSON."""
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(clean) + "\n")


def check_finite(value: torch.Tensor, what: str, stage: str, step: int) -> None:
    """Raise TrainingError if a loss or gradient norm is NaN or infinite."""
    if not torch.isfinite(value).all():
        raise TrainingError(f"{stage}: {what} is {value.item()} at step {step}; training stopped and the "
                            f"last good checkpoint is kept. Lower the learning rate or check the data")


def make_policy(cfg: Config, run: RunData, device) -> Policy:
    torch.manual_seed(cfg.seed)
    return Policy(cfg.model, run.sids.vocab_size, run.sids.offsets, run.sids.level_sizes).to(device)


# ----------------------------------------------------------------------------- SFT

def sft_windows(train: list[list[int]], max_history: int) -> list[list[int]]:
    """Cut each training prefix into windows of at most max_history + 1 items.

    Within a window every item after the first is a target, and consecutive windows overlap by one
    item, so every item after a user's first is a target exactly once. Prefixes of one item have no
    target and are skipped.
    """
    windows = []
    for items in train:
        start = 0
        while start + 1 < len(items):
            windows.append(items[start:start + max_history + 1])
            start += max_history
    return windows


def lr_schedule(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine decay to 0.1 of the base rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_sft(cfg: Config, run: RunData, policy: Policy, out: Path, metrics: MetricsLog, device) -> None:
    """Supervised stage: minimise the NLL of every next item; keep the best validation HR@10 as sft_best.pt.

    Resumes from sft_last.pt when present. Batches depend only on (seed, epoch), so a resumed run
    repeats exactly what an uninterrupted one would do.
    """
    c = cfg.sft
    if c.checkpoint:
        state = load_checkpoint(c.checkpoint)
        policy.load_state_dict(state["policy"])            # raises if the model config differs
        save_checkpoint(out / "sft_best.pt", {**state, "config": to_dict(cfg)})
        log.info("SFT: loaded %s instead of training", c.checkpoint)
        return
    windows = sft_windows(run.split.train, cfg.data.max_history)
    if not windows:
        raise TrainingError("no training prefix has two or more items, so SFT has no target; use longer "
                            "sequences")
    sid_tokens = torch.as_tensor(run.sids.tokens())
    steps_per_epoch = math.ceil(len(windows) / c.batch_size)
    total = steps_per_epoch * c.epochs
    optimizer = torch.optim.AdamW(policy.parameters(), lr=c.lr, weight_decay=c.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_schedule(s, c.warmup_steps, total))
    step, best = 0, -1.0
    last_path, best_path = out / "sft_last.pt", out / "sft_best.pt"

    if last_path.is_file():
        state = load_checkpoint(last_path)
        policy.load_state_dict(state["policy"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step, best = state["step"], state["best"]
        log.info("SFT: resuming at step %d of %d", step, total)

    def save_last():
        save_checkpoint(last_path, {"stage": "sft", "policy": policy.state_dict(),
                                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                    "step": step, "best": best, "rng": rng_state(), "config": to_dict(cfg)})

    log.info("SFT: %d windows, %d steps per epoch, %d epochs", len(windows), steps_per_epoch, c.epochs)
    started = time.time()
    with StopRequest() as stop:
        while step < total:
            if stop.requested:
                save_last()
                raise KeyboardInterrupt
            epoch, index = divmod(step, steps_per_epoch)
            order = np.random.default_rng([cfg.seed, epoch]).permutation(len(windows))
            batch = [windows[i] for i in order[index * c.batch_size:(index + 1) * c.batch_size]]
            torch.manual_seed(cfg.seed * 1_000_003 + step)           # dropout noise depends on the step only

            policy.train()
            tokens, mask = encode_histories(batch, sid_tokens, cfg.data.max_history + 1)
            nll, n_targets = policy.nll_sequence(tokens.to(device), mask.to(device))
            loss = nll.sum() / n_targets.sum().clamp(min=1)
            check_finite(loss, "the NLL loss", "SFT", step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), c.grad_clip or float("inf"))
            check_finite(grad_norm, "the gradient norm", "SFT", step)
            optimizer.step()
            scheduler.step()
            step += 1

            if step % steps_per_epoch == 0 or step == total:
                epoch = math.ceil(step / steps_per_epoch)
                record = {"stage": "sft", "step": step, "epoch": epoch, "nll": loss.item(),
                          "lr": scheduler.get_last_lr()[0], "elapsed_s": round(time.time() - started, 1)}
                if epoch % c.eval_every == 0 or step == total:
                    valid = evaluate_split(policy, run, "valid", cfg, device, max_users=c.eval_users)
                    record["valid/hr@10"], record["valid/ndcg@10"] = valid["hr@10"], valid["ndcg@10"]
                    if valid["hr@10"] > best:
                        best = valid["hr@10"]
                        save_checkpoint(best_path, {"stage": "sft", "policy": policy.state_dict(),
                                                    "step": step, "config": to_dict(cfg)})
                metrics.write(record)
                log.info("SFT epoch %d/%d: NLL %.4f%s", epoch, c.epochs, loss.item(),
                         f", valid HR@10 {record['valid/hr@10']:.4f}" if "valid/hr@10" in record else "")
                save_last()
    if not best_path.is_file():                                       # sft.epochs = 0: the initial policy
        save_checkpoint(best_path, {"stage": "sft", "policy": policy.state_dict(), "step": step,
                                    "config": to_dict(cfg)})
    policy.load_state_dict(load_checkpoint(best_path)["policy"])


# ----------------------------------------------------------------------------- orchestration

def evaluate_policy(policy: Policy, run: RunData, cfg: Config, device) -> dict:
    """Validation and test metrics of one checkpoint, plus the trie-constrained test reference.

    With eval.max_users = N > 0, both splits use their first N users only.
    """
    users = cfg.eval.max_users
    result = {"valid": evaluate_split(policy, run, "valid", cfg, device, max_users=users),
              "test": evaluate_split(policy, run, "test", cfg, device, max_users=users)}
    if cfg.eval.constrained_reference:
        result["test_constrained"] = evaluate_split(policy, run, "test", cfg, device, constrained=True,
                                                    max_users=users)
    return result


def prepare_run_folder(cfg: Config) -> Path:
    """Create out_dir, or check that an existing one contains a run of this exact config (which then resumes)."""
    out = Path(cfg.out_dir)
    saved = out / "config.yaml"
    current = to_dict(cfg)
    if saved.is_file():
        previous = yaml.safe_load(saved.read_text(encoding="utf-8"))
        if previous != current:
            raise ConfigError(f"out_dir {str(out)!r} contains a run with a different config; pass a new "
                              f"out_dir=... or delete that folder to start fresh")
        log.info("resuming the run in %s", out)
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"out_dir {str(out)!r} exists, is not empty and has no config.yaml; pass a new "
                          f"out_dir=... or delete that folder")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(yaml.safe_dump(current, sort_keys=False), encoding="utf-8")
    return out


def run_training(cfg: Config) -> dict:
    """All stages of one run; returns the eval.json content."""
    from rl import train_rl                                            # the RL stage lives in rl.py

    device = pick_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    started = time.time()
    run = build_run_data(cfg)                       # data errors surface before the run folder exists
    out = prepare_run_folder(cfg)
    metrics = MetricsLog(out / "metrics.jsonl")

    policy = make_policy(cfg, run, device)
    train_sft(cfg, run, policy, out, metrics, device)
    results = {"sft": evaluate_policy(policy, run, cfg, device)}

    if cfg.rl.method != "none":
        summary = train_rl(cfg, run, policy, out, metrics, device)
        for name in ("best", "final"):
            policy.load_state_dict(load_checkpoint(out / f"{cfg.rl.method}_{name}.pt")["policy"])
            results.setdefault(cfg.rl.method, {})
            entry = evaluate_policy(policy, run, cfg, device)
            entry.update(step=summary[f"{name}_step"], admission_rate=summary["admission_rate"])
            if name == "best":
                results[cfg.rl.method].update(entry)
            else:
                results[cfg.rl.method]["final"] = entry

    results["wall_time_s"] = round(time.time() - started, 1)
    (out / "eval.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    return results


def summary_table(results: dict, method: str) -> str:
    rows = {}
    for split in ("valid", "test"):
        rows[f"sft {split}"] = results["sft"][split]
    if method in results:
        for split in ("valid", "test"):
            rows[f"{method} best {split}"] = results[method][split]
        for split in ("valid", "test"):
            rows[f"{method} final {split}"] = results[method]["final"][split]
    table = format_table(rows)
    if method in results:
        table += f"\n{method} gate admission rate (mean over RL steps): {results[method]['admission_rate']:.3f}"
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description="Train a semantic-ID generative recommender: SFT, then GRPO or AdaGRPO with a ranker "
                    "reward. Writes config.yaml, metrics.jsonl, checkpoints and eval.json to out_dir.")
    parser.add_argument("--config", required=True, help="YAML config file, e.g. small.yaml")
    parser.add_argument("overrides", nargs="*", metavar="dotted.key=value",
                        help="override any config key, e.g. rl.method=grpo corruption.rate=0.4")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    try:
        cfg = load_config(args.config, args.overrides)
        pick_device(cfg.device)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        results = run_training(cfg)
    except (ConfigError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: checkpoint saved in {cfg.out_dir}; rerun the same command to resume",
              file=sys.stderr)
        return 130
    print(summary_table(results, cfg.rl.method))
    print(f"wall time {results['wall_time_s']:.0f} s; outputs in {cfg.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
