"""The noise sweep's specification (the `sweep` mapping of noise_sweep.yaml) and its list of runs.

Per seed: one SFT run, then for every (corruption kind, rate) cell uniform GRPO at each `grpo_lambdas`,
AdaGRPO at each `adagrpo_lambdas`, and two controls matched to AdaGRPO at `match_lambda` in the same cell:
`random` (a gate that admits each sample with probability equal to AdaGRPO's measured mean admission rate,
at the same lambda) and `grpo_scaled` (uniform GRPO with lambda = match_lambda x that admission rate).
The controls run only at the rates listed in `control_rates`.
Rate 0 has no corruption, so it is one cell, kind `clean`, whatever `kinds` contains. The `validity`
control runs once per seed and lambda. It is uniform GRPO whose reward is 1 for every valid, unseen item
and 0 for an invalid SID or an already-seen item, so it learns nothing from the ranker.
"""

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from config import ConfigError, config_from_dict, parse_override

log = logging.getLogger("sweep_plan")

KINDS = ("popularity", "gaussian", "flip")
CHECKPOINTS = ("best", "final")

# reward.shaping=topk with K above any catalogue size gives every valid, unseen rollout reward 1, and
# reward.invalid=penalty with penalty 0 gives the rest 0: a reward that carries validity only.
VALIDITY_REWARD = {"corruption.rate": 0.0, "reward.shaping": "topk", "reward.topk": 1_000_000_000,
                   "reward.invalid": "penalty", "reward.invalid_penalty": 0.0, "reward.hit_bonus": 0.0}


@dataclass
class Sweep:
    seeds: list = field(default_factory=lambda: [0, 1, 2])   # training seed; world.seed is set to the same
    kinds: list = field(default_factory=lambda: ["popularity", "gaussian"])
    rates: list = field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    grpo_lambdas: list = field(default_factory=lambda: [0.25, 1.0, 4.0])
    adagrpo_lambdas: list = field(default_factory=lambda: [1.0, 4.0])
    match_lambda: float = 1.0          # the AdaGRPO lambda whose admission rate the controls match
    random_gate: bool = True           # run the `random` control
    scaled_grpo: bool = True           # run the `grpo_scaled` control
    control_rates: list = field(default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])   # where they run
    validity_lambdas: list = field(default_factory=lambda: [0.25, 1.0, 4.0])   # [] skips the control
    strata_seed: int = 0               # the seed of the stratified analysis
    strata_kind: str = "popularity"    # the corruption kind of its corrupted ranker
    strata_rates: list = field(default_factory=lambda: [0.0, 0.8])
    strata_checkpoint: str = "final"   # best | final: which RL checkpoint the analysis compares


def _number_list(name: str, value, integer: bool = False) -> list:
    kind = int if integer else (int, float)
    if not isinstance(value, list) or any(isinstance(v, bool) or not isinstance(v, kind) for v in value):
        raise ConfigError(f"sweep.{name}={value!r}: expected a list of {'integers' if integer else 'numbers'}")
    return value if integer else [float(v) for v in value]


def make_sweep(values: dict) -> Sweep:
    """Build and validate a Sweep from the YAML mapping. Unknown keys and invalid values raise ConfigError."""
    if not isinstance(values, dict):
        raise ConfigError(f"sweep: expected a mapping, got {values!r}")
    known = {f.name: f for f in dataclasses.fields(Sweep)}
    sweep = Sweep()
    for name, value in values.items():
        if name not in known:
            raise ConfigError(f"unknown config key 'sweep.{name}'; known keys: {', '.join(sorted(known))}")
        default = getattr(sweep, name)
        if isinstance(default, list) and name != "kinds":             # kinds is checked in validate_sweep
            value = _number_list(name, value, integer=name == "seeds")
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"sweep.{name}={value!r}: expected true or false")
        elif isinstance(default, int) and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"sweep.{name}={value!r}: expected an integer")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"sweep.{name}={value!r}: expected a number")
            value = float(value)
        setattr(sweep, name, value)
    validate_sweep(sweep)
    return sweep


def validate_sweep(sweep: Sweep) -> None:
    """Raise ConfigError naming the first sweep key whose value is invalid."""
    def require(ok: bool, key: str, allowed: str):
        if not ok:
            raise ConfigError(f"sweep.{key}={getattr(sweep, key)!r} is invalid: {allowed}")

    def unique(key: str) -> bool:
        return len(set(getattr(sweep, key))) == len(getattr(sweep, key))

    require(len(sweep.seeds) > 0 and unique("seeds"), "seeds", "list at least one seed, each once")
    require(isinstance(sweep.kinds, list) and len(sweep.kinds) > 0 and all(k in KINDS for k in sweep.kinds)
            and unique("kinds"), "kinds", f"a non-empty list of {', '.join(KINDS)}, each once")
    require(len(sweep.rates) > 0 and all(0.0 <= r <= 1.0 for r in sweep.rates) and unique("rates"), "rates",
            "a non-empty list of corruption rates in [0, 1], each once")
    require(all(0.0 <= r <= 1.0 for r in sweep.control_rates), "control_rates", "rates must be in [0, 1]")
    for key in ("grpo_lambdas", "adagrpo_lambdas", "validity_lambdas"):
        require(all(v >= 0 for v in getattr(sweep, key)) and unique(key), key, "lambdas must be >= 0, each once")
    require(sweep.strata_seed in sweep.seeds, "strata_seed", "must be one of sweep.seeds")
    require(sweep.match_lambda in sweep.adagrpo_lambdas, "match_lambda", "must be one of sweep.adagrpo_lambdas")
    require(sweep.strata_kind in KINDS, "strata_kind", f"choose one of {', '.join(KINDS)}")
    require(all(0.0 <= r <= 1.0 for r in sweep.strata_rates), "strata_rates", "rates must be in [0, 1]")
    require(sweep.strata_checkpoint in CHECKPOINTS, "strata_checkpoint", "choose best or final")


def merge(into: dict, values: dict) -> dict:
    """Deep-merge `values` into a copy of `into` (nested mappings merge, other values replace)."""
    out = copy.deepcopy(into)
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def nested(dotted: dict) -> dict:
    """{'a.b': 1} -> {'a': {'b': 1}}."""
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = value
    return out


def load_sweep_config(path: str, quick: bool, overrides: list[str]) -> tuple[dict, Sweep]:
    """Load (base config mapping, Sweep) from the YAML file, its `quick` section and command-line overrides."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"sweep config {path!r} not found; pass an existing YAML file, e.g. noise_sweep.yaml")
    values = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    unknown = set(values) - {"base", "sweep", "quick"}
    if unknown:
        raise ConfigError(f"unknown top-level key(s) {sorted(unknown)} in {path!r}; expected base, sweep, quick")
    base, sweep = values.get("base") or {}, values.get("sweep") or {}
    if quick:
        shrink = values.get("quick") or {}
        base = merge(base, shrink.get("base") or {})
        sweep = merge(sweep, shrink.get("sweep") or {})
    for text in overrides:
        keys, value = parse_override(text)
        if keys == ["sweep"]:
            raise ConfigError(f"override {text!r}: name a sweep key, e.g. sweep.seeds=[0,1]")
        if keys[0] == "sweep":
            sweep = merge(sweep, nested({".".join(keys[1:]): value}))
        else:
            base = merge(base, nested({".".join(keys): value}))
    config_from_dict(base)                                   # a bad base key fails before any work
    return base, make_sweep(sweep)


@dataclass
class RunSpec:
    """One run of the sweep. `overrides` are dotted config keys set on top of the seed's base config."""
    run_id: str                 # folder relative to the output folder, also the run's key in runs.csv
    seed: int
    kind: str                   # clean (rate 0), a corruption kind, or none (SFT, validity control)
    rate: float | None          # None where no ranker is involved
    method: str                 # sft | grpo | adagrpo | random | grpo_scaled | validity
    lambda_nominal: float | None
    overrides: dict = field(default_factory=dict)
    match_run: str | None = None   # run_id of the AdaGRPO run whose admission rate this control matches


def fmt(value: float) -> str:
    """Format a number as folder names and CSV keys write it: 0.4, 1, 0.25."""
    return f"{value:g}"


def cells(sweep: Sweep) -> list[tuple[str, float]]:
    """List the (kind, rate) cells: one clean cell for rate 0, one cell per kind for every other rate."""
    out = []
    for rate in sweep.rates:
        if rate == 0.0:
            out.append(("clean", 0.0))
        else:
            out.extend((kind, rate) for kind in sweep.kinds)
    return out


def run_folder(seed: int, kind: str, rate: float, method: str, lam: float) -> str:
    return f"seed{seed}/{kind}/rate{fmt(rate)}/{method}_lam{fmt(lam)}"


def plan_runs(sweep: Sweep) -> list[RunSpec]:
    """List every run of the sweep in execution order. An AdaGRPO run always precedes its matched controls."""
    unused = [rate for rate in sweep.control_rates if rate not in sweep.rates]
    if unused and (sweep.random_gate or sweep.scaled_grpo):
        log.warning("sweep.control_rates %s: %s not in sweep.rates %s, so no control runs there",
                    sweep.control_rates, ", ".join(fmt(r) for r in unused), sweep.rates)
    plan = []
    for seed in sweep.seeds:
        plan.append(RunSpec(f"seed{seed}/sft", seed, "none", None, "sft", None))
        for kind, rate in cells(sweep):
            corruption = {"corruption.rate": rate,
                          "corruption.kind": kind if kind != "clean" else sweep.kinds[0]}
            for lam in sweep.adagrpo_lambdas:
                plan.append(RunSpec(run_folder(seed, kind, rate, "adagrpo", lam), seed, kind, rate, "adagrpo",
                                    lam, {**corruption, "rl.method": "adagrpo", "rl.lambda": lam}))
            for lam in sweep.grpo_lambdas:
                plan.append(RunSpec(run_folder(seed, kind, rate, "grpo", lam), seed, kind, rate, "grpo", lam,
                                    {**corruption, "rl.method": "grpo", "rl.lambda": lam}))
            match = run_folder(seed, kind, rate, "adagrpo", sweep.match_lambda)
            controls = rate in sweep.control_rates
            if sweep.random_gate and controls:
                plan.append(RunSpec(run_folder(seed, kind, rate, "random", sweep.match_lambda), seed, kind, rate,
                                    "random", sweep.match_lambda,
                                    {**corruption, "rl.method": "random", "rl.lambda": sweep.match_lambda},
                                    match_run=match))
            if sweep.scaled_grpo and controls:
                plan.append(RunSpec(run_folder(seed, kind, rate, "grpo_scaled", sweep.match_lambda), seed, kind,
                                    rate, "grpo_scaled", sweep.match_lambda, {**corruption, "rl.method": "grpo"},
                                    match_run=match))
        for lam in sweep.validity_lambdas:
            plan.append(RunSpec(f"seed{seed}/validity/validity_lam{fmt(lam)}", seed, "none", None, "validity",
                                lam, {**VALIDITY_REWARD, "rl.method": "grpo", "rl.lambda": lam}))
    return plan


def matched_overrides(spec: RunSpec, admission: float, match_lambda: float) -> dict:
    """Return the control's share-dependent config keys from the matched AdaGRPO run's mean admission rate.

    The rate is rounded to 4 decimals so the run's saved config reads cleanly, which changes the admitted
    share by at most 5e-5.
    """
    share = round(min(max(admission, 0.0), 1.0), 4)
    if spec.method == "random":
        return {"gate.random_rate": share}
    if spec.method == "grpo_scaled":
        return {"rl.lambda": round(match_lambda * share, 6)}
    return {}
