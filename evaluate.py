"""Evaluation: beam-search top-K lists, HR@K, NDCG@K and hallucination; a CLI for one checkpoint.

For each user the policy runs beam search of width `eval.beam_size`; the top K beams by log-prob form
the list. HR@K = 1 if the target's SID is in the list; NDCG@K = 1 / log2(1 + rank) for its 1-based
rank, else 0; hallucination = share of SIDs in the top-10 lists that map to no item. Invalid SIDs stay
in the list as misses. Example:

    python evaluate.py --checkpoint runs/small/adagrpo_best.pt --split test --predictions test.jsonl
"""

import argparse
import json
import logging
import math
import pickle
import sys

import numpy as np
import torch

from generate import SidTrie, beam_search
from model import encode_histories

log = logging.getLogger(__name__)
KS = (5, 10, 20)


def ranked_list_metrics(items: np.ndarray, logprobs: np.ndarray, targets: np.ndarray,
                        ks=KS) -> dict:
    """HR@K, NDCG@K and hallucination@K from ranked lists.

    items: (N, W) item id of each beam, best first, -1 for a SID that maps to no item;
    logprobs: (N, W), -inf for an unfilled beam (constrained decoding with too few real items), which
    is neither a hit nor a hallucination; targets: (N,). K larger than W is skipped.
    `hallucination` without a suffix is hallucination@10.
    """
    n, width = items.shape
    filled = np.isfinite(logprobs)
    hit_at = (items == targets[:, None]) & filled                           # (N, W)
    rank = np.where(hit_at.any(1), hit_at.argmax(1) + 1, width + 1)        # 1-based, W+1 = absent
    metrics = {"users": int(n)}
    for k in ks:
        if k > width:
            continue
        hit = rank <= k
        metrics[f"hr@{k}"] = float(hit.mean()) if n else 0.0
        metrics[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(1.0 + rank), 0.0).mean()) if n else 0.0
        invalid = ((items[:, :k] < 0) & filled[:, :k]).sum()
        metrics[f"hallucination@{k}"] = float(invalid / max(filled[:, :k].sum(), 1))
    metrics["hallucination"] = metrics.get("hallucination@10", float("nan"))
    return metrics


@torch.no_grad()
def generate_lists(policy, sid_tokens: torch.Tensor, sids, histories: list[list[int]], beam_size: int,
                   batch_size: int, max_history: int, device, constrained: bool = False
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Beam search for every history -> (sids (N, W, L) tokens, logprobs (N, W), items (N, W))."""
    policy.eval()
    trie = SidTrie(sid_tokens, sids.offsets, sids.level_sizes).to(device) if constrained else None
    all_sids, all_logprobs = [], []
    for start in range(0, len(histories), batch_size):
        prefix, mask = encode_histories(histories[start:start + batch_size], sid_tokens, max_history)
        out_sids, out_logprobs = beam_search(policy, prefix.to(device), mask.to(device), beam_size, trie=trie)
        all_sids.append(out_sids.cpu())
        all_logprobs.append(out_logprobs.cpu())
    out_sids = torch.cat(all_sids)
    items = sids.lookup_items(out_sids)
    return out_sids.numpy(), torch.cat(all_logprobs).double().numpy(), items.numpy()


def evaluate_split(policy, run, split: str, cfg, device, constrained: bool = False, max_users: int = 0,
                   return_lists: bool = False):
    """Metrics of `policy` on the validation or test targets (optionally on the first `max_users`)."""
    users = list(range(run.split.n_users))
    if max_users:
        users = users[:max_users]
    histories = [run.split.history(u, split) for u in users]
    targets = np.asarray([run.target(u, split) for u in users])
    sid_tokens = torch.as_tensor(run.sids.tokens())
    out_sids, logprobs, items = generate_lists(policy, sid_tokens, run.sids, histories, cfg.eval.beam_size,
                                               cfg.eval.batch_size, cfg.data.max_history, device, constrained)
    metrics = ranked_list_metrics(items, logprobs, targets)
    if return_lists:
        return metrics, (users, targets, out_sids, logprobs, items)
    return metrics


def write_predictions(path: str, run, lists) -> None:
    """Write one JSON object per user: user, target, sids, items (null = no item), logprobs."""
    users, targets, out_sids, logprobs, items = lists
    with open(path, "w", encoding="utf-8") as out:
        for row, user in enumerate(users):
            record = {
                "user": run.user_key(user),
                "target": int(targets[row]),
                "sids": out_sids[row].tolist(),
                "items": [int(i) if i >= 0 else None for i in items[row]],
                "logprobs": [float(x) if math.isfinite(x) else None for x in logprobs[row]],
            }
            out.write(json.dumps(record) + "\n")


def metrics_from_predictions(path: str) -> dict:
    """Recompute the metrics from a predictions file (the inverse of `write_predictions`)."""
    items, logprobs, targets = [], [], []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            record = json.loads(line)
            items.append([-1 if i is None else i for i in record["items"]])
            logprobs.append([-math.inf if x is None else x for x in record["logprobs"]])
            targets.append(record["target"])
    return ranked_list_metrics(np.asarray(items), np.asarray(logprobs, dtype=np.float64), np.asarray(targets))


def format_table(rows: dict[str, dict], columns=("hr@10", "ndcg@10", "hallucination")) -> str:
    """Format the metrics as a fixed-width text table, one row per name."""
    header = f"{'':<24}" + "".join(f"{c:>15}" for c in columns)
    lines = [header]
    for name, metrics in rows.items():
        cells = "".join(f"{metrics.get(c, float('nan')):>15.4f}" for c in columns)
        lines.append(f"{name:<24}{cells}")
    return "\n".join(lines)


def main(argv=None) -> int:
    from checkpoint import load_checkpoint
    from config import ConfigError, config_from_dict
    from data.build import build_run_data
    from model import Policy
    from train import pick_device

    parser = argparse.ArgumentParser(description="Evaluate a policy checkpoint with beam search (HR@K, "
                                     "NDCG@K, hallucination) on the validation or test targets.")
    parser.add_argument("--checkpoint", required=True, help="a .pt file written by train.py")
    parser.add_argument("--split", choices=["valid", "test"], default="test", help="which targets to score")
    parser.add_argument("--predictions", help="write each user's ranked list to this JSON-lines file")
    parser.add_argument("--constrained", action="store_true",
                        help="decode with the prefix trie, so only SIDs of real items are generated")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto, cpu or cuda (default: auto)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    try:
        device = pick_device(args.device)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        # torch.load raises RuntimeError for a truncated file, UnpicklingError for a file of another kind.
        state = load_checkpoint(args.checkpoint)
        cfg = config_from_dict(state["config"])
    except (OSError, KeyError, ConfigError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        print(f"error: cannot read checkpoint {args.checkpoint!r}: {err}", file=sys.stderr)
        return 2
    if "policy" not in state:
        print(f"error: checkpoint {args.checkpoint!r} holds no policy weights; pass sft_best.pt or a "
              f"<method>_best.pt or <method>_final.pt file of a run", file=sys.stderr)
        return 2
    run = build_run_data(cfg)
    policy = Policy(cfg.model, run.sids.vocab_size, run.sids.offsets, run.sids.level_sizes).to(device)
    policy.load_state_dict(state["policy"])

    metrics, lists = evaluate_split(policy, run, args.split, cfg, device, constrained=args.constrained,
                                    return_lists=True)
    if args.predictions:
        write_predictions(args.predictions, run, lists)
        log.info("wrote %d ranked lists to %s", len(lists[0]), args.predictions)
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
