"""Run configuration: plain dataclasses, loaded from YAML, overridden by `dotted.key=value`.

Every key of every section is a dataclass field, so a mistyped key is an error that names it.
`validate` checks types, choices and ranges before any work starts. The resolved config is saved
in the run folder and in every checkpoint.
"""

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from data.synthetic import SyntheticConfig
from model import ModelConfig


class ConfigError(ValueError):
    """An invalid config file, key or value. The message names the key and what is allowed."""


@dataclass
class DataConfig:
    source: str = "synthetic"       # synthetic | s3rec | lcrec | amazon_raw | csv
    path: str = ""                  # interactions file (not used by `synthetic`)
    item_path: str = ""             # optional item metadata file (attributes, titles)
    max_history: int = 20           # histories are truncated to the last N items
    min_length: int = 3             # users with fewer interactions are dropped (leave-one-out needs 3)
    core: int = 5                   # k-core filter for `amazon_raw`
    item_vectors: str = "content"   # content | collaborative | both: what semantic IDs cluster


@dataclass
class SidConfig:
    levels: int = 2                 # residual k-means levels, before the disambiguation level
    codebook_size: int = 32         # codes per level
    kmeans_iters: int = 25


@dataclass
class SFTConfig:
    epochs: int = 30
    batch_size: int = 64            # users per step; every next item in a user's prefix is a target
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float = 1.0
    eval_every: int = 5             # epochs between validation evaluations
    eval_users: int = 500           # validation users used for checkpoint selection (0 = all)
    checkpoint: str = ""            # reuse this sft_best.pt (same data and model config) instead of training


@dataclass
class RankerConfig:
    dim: int = 32
    epochs: int = 5
    batch_size: int = 512
    lr: float = 1e-2
    weight_decay: float = 0.0
    exposures: int = 20             # items shown per training context in the simulated logs
    exposure_bias: float = 1.0      # alpha: items are shown with probability ~ popularity^alpha


@dataclass
class CorruptionConfig:
    rate: float = 0.0               # share of contexts (unit=sample) or pairs (unit=pair) corrupted
    unit: str = "sample"            # sample | pair
    kind: str = "popularity"        # popularity | gaussian | flip
    noise_std: float = 2.0          # gaussian noise, in units of the ranker's score std
    exposure_coupled: bool = False  # rarely exposed contexts or items are corrupted more often
    seed: int = 1234


@dataclass
class RewardConfig:
    shaping: str = "raw"            # raw | rank | topk
    topk: int = 50                  # for shaping=topk: reward 1 if the item is in the ranker's top-K
    invalid: str = "min_valid"      # min_valid | penalty: reward of invalid or already-seen items
    invalid_penalty: float = -1.0   # used when invalid=penalty (after shaping)
    hit_bonus: float = 0.0          # added when a rollout is the ground-truth item


@dataclass
class GateConfig:
    policy: str = "gt_rank"         # gt_rank | gt_logprob | entropy | none
    policy_threshold: float = 1.0   # gt_rank: pass if rank > t; gt_logprob: pass if p < t; entropy: pass if H >= t
    reward: str = "auc"             # gt_rank | auc | margin | none
    reward_threshold: float = 0.5   # gt_rank: pass if rank <= t; auc: pass if AUC >= t; margin: pass if margin >= t
    graded: bool = False            # weight = policy pass x share of negatives the ground truth beats
    random_rate: float = 0.5        # admission probability of rl.method=random (a control)


@dataclass
class RLConfig:
    method: str = "adagrpo"         # adagrpo | grpo | random | none
    lambda_: float = 1.0            # weight of the GRPO term (YAML key `lambda`)
    steps: int = 200
    batch_size: int = 64            # users (groups) per step
    group_size: int = 8             # G rollouts per user
    rollout: str = "beam"           # beam | sample
    temperature: float = 1.0        # for rollout=sample
    lr: float = 2e-4
    grad_clip: float = 1.0
    update_epochs: int = 1          # policy updates per rollout batch (ratio clipping matters when > 1)
    clip_eps: float = 0.2
    kl_beta: float = 0.0            # k3 KL to the frozen SFT policy
    adv_eps: float = 1e-6
    eval_every: int = 50            # steps between validation evaluations


@dataclass
class EvalConfig:
    beam_size: int = 20
    batch_size: int = 128
    constrained_reference: bool = True   # also report trie-constrained decoding
    max_users: int = 0              # evaluate valid and test on the first N users only (0 = all)


@dataclass
class Config:
    seed: int = 0
    out_dir: str = "runs/small"
    device: str = "auto"            # auto | cpu | cuda
    threads: int = 1                # torch CPU threads; 0 = torch's default (all cores)
    data: DataConfig = field(default_factory=DataConfig)
    world: SyntheticConfig = field(default_factory=SyntheticConfig)
    sid: SidConfig = field(default_factory=SidConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    ranker: RankerConfig = field(default_factory=RankerConfig)
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


CHOICES = {
    "device": ["auto", "cpu", "cuda"],
    "data.source": ["synthetic", "s3rec", "lcrec", "amazon_raw", "csv"],
    "data.item_vectors": ["content", "collaborative", "both"],
    "corruption.unit": ["sample", "pair"],
    "corruption.kind": ["popularity", "gaussian", "flip"],
    "reward.shaping": ["raw", "rank", "topk"],
    "reward.invalid": ["min_valid", "penalty"],
    "gate.policy": ["gt_rank", "gt_logprob", "entropy", "none"],
    "gate.reward": ["gt_rank", "auc", "margin", "none"],
    "rl.method": ["adagrpo", "grpo", "random", "none"],
    "rl.rollout": ["beam", "sample"],
}


def _key(f: dataclasses.Field) -> str:
    """YAML name of a field: `lambda_` is written `lambda` because `lambda` is a Python keyword."""
    return f.name.rstrip("_")


def _convert(value, kind, key: str):
    """Check one leaf value against its annotated type; ints are accepted where floats are expected."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        return value
    if kind is float:
        if isinstance(value, str):              # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r}: expected a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    if typing.get_origin(kind) is list:
        (item_kind,) = typing.get_args(kind)
        if not isinstance(value, list):
            raise ConfigError(f"{key}={value!r}: expected a list")
        return [_convert(v, item_kind, f"{key}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(f"{key}: unsupported field type {kind}")


def _fill(obj, values: dict, prefix: str) -> None:
    """Copy a nested dict into a dataclass tree, rejecting unknown keys by their full dotted name."""
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}")
    fields = {_key(f): f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    for name, value in values.items():
        key = prefix + str(name)
        if name not in fields:
            raise ConfigError(f"unknown config key {key!r}; known keys here: {', '.join(sorted(fields))}")
        f = fields[name]
        current = getattr(obj, f.name)
        if dataclasses.is_dataclass(current):
            _fill(current, value, key + ".")
        else:
            setattr(obj, f.name, _convert(value, hints[f.name], key))


def to_dict(cfg) -> dict:
    """Nested plain dict with YAML key names (inverse of `_fill`)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out[_key(f)] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def parse_override(text: str) -> tuple[list[str], object]:
    """Split `a.b=value` into its key path and a YAML-parsed value (so `1e-3`, `true`, `[5,10]` work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value, e.g. rl.lambda=0.5")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({err})") from None
    return key.strip().split("."), value


def load_config(path: str | None, overrides: list[str] = ()) -> Config:
    """Build the config: defaults, then the YAML file, then the overrides in order; then validate."""
    cfg = Config()
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file {path!r} not found; pass an existing YAML file, e.g. small.yaml")
        try:
            values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as err:
            raise ConfigError(f"config file {path!r} is not valid UTF-8 YAML: {err}") from None
        _fill(cfg, values, "")
    for text in overrides:
        keys, value = parse_override(text)
        nested = value
        for name in reversed(keys):
            nested = {name: nested}
        try:
            _fill(cfg, nested, "")
        except ConfigError as err:
            raise ConfigError(f"override {text!r}: {err}") from None
    validate(cfg)
    return cfg


def _require(ok: bool, key: str, value, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def validate(cfg: Config) -> None:
    """Reject values outside their allowed set or range, naming the key, the value and what is allowed."""
    flat = {}

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, prefix + _key(f) + ".")
            else:
                flat[prefix + _key(f)] = value

    walk(cfg, "")
    for key, choices in CHOICES.items():
        _require(flat[key] in choices, key, flat[key], f"choose one of {', '.join(choices)}")

    positive = ["data.max_history", "sid.levels", "sid.codebook_size", "sid.kmeans_iters",
                "sft.batch_size", "sft.lr", "sft.eval_every", "ranker.dim", "ranker.epochs",
                "ranker.batch_size", "ranker.lr", "ranker.exposures", "rl.batch_size", "rl.lr",
                "rl.update_epochs", "rl.temperature", "rl.eval_every", "rl.adv_eps",
                "eval.beam_size", "eval.batch_size", "reward.topk"]
    for key in positive:
        _require(flat[key] > 0, key, flat[key], "must be > 0")
    non_negative = ["sft.epochs", "sft.weight_decay", "sft.warmup_steps", "sft.grad_clip", "sft.eval_users",
                    "eval.max_users", "ranker.weight_decay", "ranker.exposure_bias", "corruption.noise_std",
                    "rl.lambda", "rl.steps", "rl.grad_clip", "rl.clip_eps", "rl.kl_beta"]
    for key in non_negative + ["threads"]:
        _require(flat[key] >= 0, key, flat[key], "must be >= 0")
    for key in ["corruption.rate", "gate.random_rate"]:
        _require(0.0 <= flat[key] <= 1.0, key, flat[key], "must be in [0, 1]")

    _require(flat["data.min_length"] >= 3, "data.min_length", flat["data.min_length"],
             "must be >= 3 (leave-one-out needs a training item, a validation and a test target)")
    _require(flat["rl.group_size"] >= 2, "rl.group_size", flat["rl.group_size"],
             "must be >= 2 (group-relative advantages need at least two rollouts)")
    _require(flat["eval.beam_size"] >= 10, "eval.beam_size", flat["eval.beam_size"],
             "must be >= 10, because HR@10 and NDCG@10 are read from the top 10 beams")
    for key in ["seed", "corruption.seed", "world.seed"]:
        _require(0 <= flat[key] < 2**32, key, flat[key], "must be in [0, 2^32)")
    _require(flat["model.d_model"] % max(flat["model.n_head"], 1) == 0 and flat["model.n_head"] > 0,
             "model.d_model", flat["model.d_model"], f"must be a multiple of model.n_head={flat['model.n_head']}")
    _require(flat["model.n_layer"] > 0, "model.n_layer", flat["model.n_layer"], "must be > 0")
    _require(0.0 <= flat["model.dropout"] < 1.0, "model.dropout", flat["model.dropout"], "must be in [0, 1)")
    _require(flat["model.max_history"] >= flat["data.max_history"], "model.max_history",
             flat["model.max_history"], f"must be >= data.max_history={flat['data.max_history']}, because the "
             "position table must fit the longest history")
    try:
        cfg.world.validate()
    except ValueError as err:
        raise ConfigError(re.sub(r"invalid (\w+)", r"invalid world.\1", str(err), count=1)) from None

    _require(not flat["sft.checkpoint"] or Path(flat["sft.checkpoint"]).is_file(), "sft.checkpoint",
             flat["sft.checkpoint"], "must be empty or name an existing sft_best.pt file")
    if flat["data.source"] != "synthetic":
        path = flat["data.path"]
        _require(bool(path) and Path(path).is_file(), "data.path", path,
                 "file not found; pass the interactions file, e.g. data.path=/path/to/Beauty.txt")
        item_path = flat["data.item_path"]
        _require(not item_path or Path(item_path).is_file(), "data.item_path", item_path,
                 "file not found; pass the item metadata file, or data.item_path='' with "
                 "data.item_vectors=collaborative")


def config_from_dict(values: dict) -> Config:
    """Rebuild a validated Config from `to_dict` output, e.g. the copy stored in a checkpoint."""
    cfg = Config()
    _fill(cfg, values, "")
    validate(cfg)
    return cfg
