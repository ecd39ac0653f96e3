"""Failure handling: non-finite losses, atomic checkpoints, kill -9 and resume, degenerate batches."""

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import checkpoint  # noqa: E402
import rl  # noqa: E402
import train  # noqa: E402
from checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from config import RewardConfig, load_config  # noqa: E402
from data.build import build_run_data  # noqa: E402
from loss import adagrpo_loss, group_advantages, grpo_term  # noqa: E402
from model import Policy, encode_histories  # noqa: E402
from rl import build_reward, rl_step, shape_rewards  # noqa: E402

# 157 SFT windows / 64 per batch = 3 steps per epoch. Checkpoints follow every epoch and every RL step.
TINY = ["world.n_items=150", "world.n_users=150", "model.d_model=32", "sft.epochs=2", "sft.eval_every=1",
        "sft.eval_users=50", "ranker.epochs=2", "ranker.exposures=20", "rl.steps=3", "rl.batch_size=16",
        "rl.eval_every=1", "eval.beam_size=10", "eval.constrained_reference=false", "device=cpu"]



def tiny_config(out_dir, *extra):
    return load_config(str(ROOT / "small.yaml"), TINY + [f"out_dir={out_dir}", *extra])


# ----------------------------------------------------------------------------- non-finite losses

def test_sft_nan_loss_stops(monkeypatch, tmp_path):
    # sft_last.pt is written after step 3 (the first epoch), and the fifth call, step 4, returns NaN.
    monkeypatch.setattr(Policy, "nll_sequence", nan_after(Policy.nll_sequence, good_calls=4))
    cfg = tiny_config(tmp_path / "run")
    with pytest.raises(train.TrainingError, match="SFT: the NLL loss is nan at step 4"):
        train.run_training(cfg)

    state = load_checkpoint(tmp_path / "run" / "sft_last.pt")
    assert state["step"] == 3
    for name, value in state["policy"].items():
        assert torch.isfinite(value).all(), name


def test_sft_nan_checkpoint_loads(monkeypatch, tmp_path):
    monkeypatch.setattr(Policy, "nll_sequence", nan_after(Policy.nll_sequence, good_calls=4))
    cfg = tiny_config(tmp_path / "run")
    with pytest.raises(train.TrainingError):
        train.run_training(cfg)
    run = build_run_data(cfg)
    policy = Policy(cfg.model, run.sids.vocab_size, run.sids.offsets, run.sids.level_sizes)
    policy.load_state_dict(load_checkpoint(tmp_path / "run" / "sft_best.pt")["policy"])


def nan_after(function, good_calls):
    """Wrap a (tensor, ...) -> tuple function so that every call after the first `good_calls` returns NaN."""
    calls = []

    def wrapped(*args):
        first, *rest = function(*args)
        calls.append(1)
        if len(calls) > good_calls:
            first = first * math.nan
        return (first, *rest)

    return wrapped


def test_sft_huge_lr_stops(tmp_path, capsys):
    # 1.0e+30, not 1e30: PyYAML reads 1e30 as a string.
    status = train.main(["--config", str(ROOT / "small.yaml"), *TINY, f"out_dir={tmp_path / 'run'}",
                         "sft.lr=1.0e+30"])
    error = capsys.readouterr().err
    assert status == 1
    assert "SFT:" in error
    assert "at step" in error


def test_rl_nan_loss_stops(monkeypatch, tmp_path):
    calls = []

    def nan_at_step_2(nll, grpo, weights, lam):
        calls.append(1)
        loss = adagrpo_loss(nll, grpo, weights, lam)
        return loss * math.nan if len(calls) == 3 else loss

    monkeypatch.setattr(rl, "adagrpo_loss", nan_at_step_2)
    cfg = tiny_config(tmp_path / "run")
    with pytest.raises(train.TrainingError, match="RL: the loss is nan at step 2"):
        train.run_training(cfg)

    state = load_checkpoint(tmp_path / "run" / "rl_last.pt")
    assert state["step"] == 2
    for name, value in state["policy"].items():
        assert torch.isfinite(value).all(), name
    assert not (tmp_path / "run" / "adagrpo_final.pt").exists()


def test_rl_nan_exit_status(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(rl, "adagrpo_loss", lambda nll, grpo, weights, lam: nll.mean() * math.nan)
    status = train.main(["--config", str(ROOT / "small.yaml"), *TINY, f"out_dir={tmp_path / 'run'}",
                         "sft.epochs=1"])
    error = capsys.readouterr().err
    assert status == 1
    assert "RL: the loss is nan at step 0" in error


def test_sft_interrupt_after_update_resumes(tmp_path):
    uninterrupted = tiny_config(tmp_path / "uninterrupted", "rl.method=none")
    train.run_training(uninterrupted)

    calls = []

    def interrupt_after_third_update(optimizer, args, kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGINT)          # Ctrl-C right after an update

    interrupted = tiny_config(tmp_path / "interrupted", "rl.method=none")
    handle = register_optimizer_step_post_hook(interrupt_after_third_update)
    try:
        with pytest.raises(KeyboardInterrupt):
            train.run_training(interrupted)
    finally:
        handle.remove()
    train.run_training(interrupted)

    expected = load_checkpoint(tmp_path / "uninterrupted" / "sft_last.pt")["policy"]
    resumed = load_checkpoint(tmp_path / "interrupted" / "sft_last.pt")["policy"]
    for name in expected:
        assert torch.equal(resumed[name], expected[name]), name


# ----------------------------------------------------------------------------- atomic checkpoints

def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"step": 3, "weights": torch.arange(4.0)})
    state = load_checkpoint(path)
    assert state["step"] == 3
    assert torch.equal(state["weights"], torch.arange(4.0))


def test_checkpoint_written_via_temp_file(monkeypatch, tmp_path):
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"step": 1})
    replaced = []
    real_replace = os.replace
    real_save = torch.save

    def save_and_look(state, out):
        real_save(state, out)
        # While the new state is written, the target still contains the old one.
        replaced.append(load_checkpoint(path)["step"])

    def record_replace(source, target):
        replaced.append((Path(source).name, Path(target).name))
        real_replace(source, target)

    monkeypatch.setattr(checkpoint.torch, "save", save_and_look)
    monkeypatch.setattr(checkpoint.os, "replace", record_replace)
    save_checkpoint(path, {"step": 2})
    assert replaced == [1, ("state.pt.tmp", "state.pt")]
    assert load_checkpoint(path)["step"] == 2


def test_checkpoint_crash_keeps_old(monkeypatch, tmp_path):
    path = tmp_path / "state.pt"
    save_checkpoint(path, {"step": 1, "weights": torch.ones(3)})

    def crash_midway(state, out):
        out.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", crash_midway)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, {"step": 2, "weights": torch.zeros(3)})
    state = load_checkpoint(path)
    assert state["step"] == 1
    assert torch.equal(state["weights"], torch.ones(3))


def test_checkpoint_crash_first_save_no_file(monkeypatch, tmp_path):
    def crash(state, out):
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path / "state.pt", {"step": 1})
    assert not (tmp_path / "state.pt").exists()


def test_checkpoint_missing_file_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


# ----------------------------------------------------------------------------- kill -9 and resume

# SFT runs 4 epochs of 3 steps with a checkpoint after each. RL runs 6 steps with a checkpoint every 2.
KILL = ["world.n_items=150", "world.n_users=150", "model.d_model=32", "sft.epochs=4", "sft.eval_every=2",
        "sft.eval_users=50", "ranker.epochs=2", "ranker.exposures=20", "rl.steps=6", "rl.batch_size=16",
        "rl.eval_every=2", "eval.beam_size=10", "eval.constrained_reference=false", "device=cpu"]


def train_command(out_dir):
    return [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "small.yaml"), *KILL,
            f"out_dir={out_dir}"]


def run_to_end(out_dir):
    completed = subprocess.run(train_command(out_dir), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    results = json.loads((out_dir / "eval.json").read_text(encoding="utf-8"))
    results.pop("wall_time_s")
    return results


def kill_when(out_dir, file_name):
    """Start a training run, SIGKILL it as soon as `file_name` appears in out_dir, and wait for it."""
    process = subprocess.Popen(train_command(out_dir), cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    try:
        while not (out_dir / file_name).exists():
            assert process.poll() is None, f"the run ended before {file_name} appeared"
            assert time.monotonic() < deadline, f"{file_name} did not appear within 300 s"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return run_to_end(tmp_path_factory.mktemp("uninterrupted") / "run")


def logged_steps(out_dir, stage):
    lines = (out_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["step"] for line in lines if json.loads(line)["stage"] == stage]


def test_kill_during_sft_resumes(uninterrupted, tmp_path):
    out_dir = tmp_path / "run"
    kill_when(out_dir, "sft_last.pt")
    assert not (out_dir / "eval.json").exists()
    assert load_checkpoint(out_dir / "sft_last.pt")["step"] < 12
    assert run_to_end(out_dir) == uninterrupted
    assert logged_steps(out_dir, "sft").count(3) == 1          # the first epoch was not trained again


def test_kill_during_rl_resumes(uninterrupted, tmp_path):
    out_dir = tmp_path / "run"
    kill_when(out_dir, "rl_last.pt")
    assert not (out_dir / "adagrpo_final.pt").exists()
    assert load_checkpoint(out_dir / "rl_last.pt")["step"] < 6
    assert run_to_end(out_dir) == uninterrupted
    assert logged_steps(out_dir, "sft").count(12) == 1         # SFT was not trained again
    assert logged_steps(out_dir, "rl").count(1) == 1           # nor were the first RL steps


# ----------------------------------------------------------------------------- degenerate batches

@pytest.mark.parametrize("shaping", ["raw", "rank", "topk"])
@pytest.mark.parametrize("invalid", ["min_valid", "penalty"])
def test_all_invalid_rollouts_finite(shaping, invalid):
    scores = np.full((3, 4), np.nan)
    valid = np.zeros((3, 4), dtype=bool)
    is_target = np.zeros((3, 4), dtype=bool)
    topk_hit = np.zeros((3, 4), dtype=bool)
    rewards = shape_rewards(scores, valid, is_target, topk_hit, RewardConfig(shaping=shaping, invalid=invalid))
    advantages = group_advantages(torch.as_tensor(rewards, dtype=torch.float32))
    assert np.isfinite(rewards).all()
    assert torch.equal(advantages, torch.zeros(3, 4))


@pytest.mark.parametrize("shaping", ["raw", "rank", "topk"])
def test_invalid_get_lowest_valid_reward(shaping):
    scores = np.array([[2.0, np.nan, -1.0, 0.5]])
    valid = ~np.isnan(scores)
    topk_hit = np.array([[True, False, False, True]])
    rewards = shape_rewards(scores, valid, np.zeros_like(valid), topk_hit, RewardConfig(shaping=shaping))
    assert rewards[0, 1] == rewards[0, valid[0]].min()


def test_rank_shaping_scale():
    scores = np.array([[2.0, np.nan, -1.0, 0.5]])
    valid = ~np.isnan(scores)
    rewards = shape_rewards(scores, valid, np.zeros_like(valid), None, RewardConfig(shaping="rank"))
    assert rewards.tolist() == [[1.0, 0.0, 0.0, 0.5]]


def test_equal_rewards_finite_loss():
    rewards = torch.full((2, 4), 0.7)
    advantages = group_advantages(rewards, eps=0.0)
    logp = torch.full((2, 4, 3), -1.0, requires_grad=True)
    grpo, _ = grpo_term(logp, logp.detach(), advantages, 0.2)
    loss = adagrpo_loss(torch.ones(2), grpo, torch.ones(2), lam=1.0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.equal(logp.grad, torch.zeros_like(logp))


@pytest.fixture(scope="module")
def rl_setup(tmp_path_factory):
    """Run data, an SFT-initialised (untrained) policy and a corrupted reward model for direct rl_step calls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("rl_step")
    cfg = tiny_config(out, "corruption.rate=0.4", "rl.group_size=4")
    run = build_run_data(cfg)
    reward = build_reward(cfg, run, out, torch.device("cpu"))
    torch.set_num_threads(threads)
    return cfg, run, reward


def fresh_policy(cfg, run):
    policy = train.make_policy(cfg, run, torch.device("cpu"))
    return policy, torch.optim.AdamW(policy.parameters(), lr=cfg.rl.lr)


@pytest.mark.parametrize("rollout", ["beam", "sample"])
def test_rl_step_short_histories(rl_setup, rollout):
    cfg, run, reward = rl_setup
    cfg = copy.deepcopy(cfg)
    cfg.rl.rollout = rollout
    train_items = run.split.train
    batch = [(0, train_items[0][:1], train_items[0][1]),          # one-item history
             (1, train_items[1][:1], train_items[1][1]),
             (2, train_items[2][:-1], train_items[2][-1])]
    policy, optimizer = fresh_policy(cfg, run)
    record = rl_step(cfg, run, policy, None, reward, optimizer, batch, step=0, device=torch.device("cpu"))
    assert math.isfinite(record["loss"])
    assert math.isfinite(record["nll"])


def test_sft_one_item_history():
    cfg = tiny_config("unused")
    run = build_run_data(cfg)
    policy, _ = fresh_policy(cfg, run)
    tokens, mask = encode_histories([[4, 9], [1, 2, 3]], torch.as_tensor(run.sids.tokens()), cfg.data.max_history + 1)
    nll, n_targets = policy.nll_sequence(tokens, mask)
    assert n_targets.tolist() == [1, 2]
    assert torch.isfinite(nll).all()


def non_item_sid(run):
    """Tokens of an in-range SID that maps to no item."""
    sizes = run.sids.level_sizes
    for code in range(sizes[-1]):
        for first in range(sizes[0]):
            codes = [first] + [0] * (len(sizes) - 2) + [sizes[-1] - 1 - code]
            tokens = torch.tensor(codes) + torch.tensor(run.sids.offsets)
            if run.sids.item_of(tokens) is None:
                return tokens
    raise AssertionError("every in-range SID maps to an item")


def test_rl_step_all_invalid_rollouts(rl_setup, monkeypatch):
    cfg, run, reward = rl_setup
    bad = non_item_sid(run)

    def invalid_beams(policy, prefix, mask, width, trie=None):
        sids = bad.expand(prefix.shape[0], width, len(bad)).clone()
        return sids, torch.zeros(prefix.shape[0], width)

    monkeypatch.setattr(rl, "beam_search", invalid_beams)
    batch = [(u, items[:-1], items[-1]) for u, items in enumerate(run.split.train[:8])]
    policy, optimizer = fresh_policy(cfg, run)
    record = rl_step(cfg, run, policy, None, reward, optimizer, batch, step=0, device=torch.device("cpu"))
    assert record["rollout/invalid"] == 1.0
    assert record["reward/zero_std_groups"] == 1.0
    assert record["gate/admission_rate"] == 0.0
    assert math.isfinite(record["loss"])


@pytest.mark.parametrize("options", [
    {"method": "grpo"},
    {"method": "random"},
    {"method": "adagrpo", "graded": True},
    {"method": "adagrpo", "shaping": "rank", "invalid": "penalty"},
    {"method": "adagrpo", "shaping": "topk", "hit_bonus": 1.0},
    {"method": "grpo", "kl_beta": 0.1, "update_epochs": 2},
], ids=["grpo", "random", "graded", "rank_penalty", "topk_bonus", "kl_two_epochs"])
def test_rl_step_options_finite(rl_setup, options):
    cfg, run, reward = rl_setup
    cfg = copy.deepcopy(cfg)
    cfg.rl.method = options["method"]
    cfg.rl.kl_beta = options.get("kl_beta", 0.0)
    cfg.rl.update_epochs = options.get("update_epochs", 1)
    cfg.gate.graded = options.get("graded", False)
    cfg.reward.shaping = options.get("shaping", "raw")
    cfg.reward.invalid = options.get("invalid", "min_valid")
    cfg.reward.hit_bonus = options.get("hit_bonus", 0.0)
    batch = [(u, items[:-1], items[-1]) for u, items in enumerate(run.split.train[:8])]
    policy, optimizer = fresh_policy(cfg, run)
    reference = copy.deepcopy(policy).eval() if cfg.rl.kl_beta > 0 else None
    record = rl_step(cfg, run, policy, reference, reward, optimizer, batch, step=0, device=torch.device("cpu"))
    for key, value in record.items():
        if key == "stage" or key.startswith("oracle/"):
            continue                                    # oracle precision and recall are NaN when nothing is admitted
        assert math.isfinite(value), key


def test_rl_step_one_update_no_clipping(rl_setup):
    cfg, run, reward = rl_setup
    batch = [(u, items[:-1], items[-1]) for u, items in enumerate(run.split.train[:8])]
    policy, optimizer = fresh_policy(cfg, run)
    record = rl_step(cfg, run, policy, None, reward, optimizer, batch, step=0, device=torch.device("cpu"))
    assert record["clip_fraction"] == 0.0
