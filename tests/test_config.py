import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from config import Config, ConfigError, config_from_dict, load_config, parse_override, to_dict, validate  # noqa: E402


def test_defaults_validate():
    validate(Config())


def test_small_yaml_loads():
    loaded = to_dict(load_config(str(ROOT / "small.yaml")))
    written = yaml.safe_load((ROOT / "small.yaml").read_text(encoding="utf-8"))
    for section, values in written.items():
        if not isinstance(values, dict):
            assert loaded[section] == values, section
            continue
        for key, value in values.items():
            assert loaded[section][key] == value, f"{section}.{key}"


def test_to_dict_round_trip():
    cfg = load_config(str(ROOT / "small.yaml"), ["rl.lambda=0.25", "gate.graded=true"])
    again = config_from_dict(yaml.safe_load(yaml.safe_dump(to_dict(cfg))))
    assert to_dict(again) == to_dict(cfg)


def test_to_dict_uses_yaml_names():
    values = to_dict(Config())
    assert "lambda" in values["rl"]
    assert "lambda_" not in values["rl"]


# ----------------------------------------------------------------------------- overrides

def test_override_float_lambda():
    cfg = load_config(None, ["rl.lambda=0.5"])
    assert cfg.rl.lambda_ == 0.5


def test_override_int():
    cfg = load_config(None, ["eval.beam_size=20"])
    assert cfg.eval.beam_size == 20
    assert isinstance(cfg.eval.beam_size, int)


def test_override_int_for_float():
    cfg = load_config(None, ["rl.lr=1"])
    assert cfg.rl.lr == 1.0
    assert isinstance(cfg.rl.lr, float)


def test_override_decimal_exponent():
    cfg = load_config(None, ["sft.lr=1.0e-3"])
    assert cfg.sft.lr == 1e-3


def test_override_scientific_notation():
    cfg = load_config(None, ["sft.lr=1e-3"])
    assert cfg.sft.lr == 1e-3


def test_file_scientific_notation(tmp_path):
    path = tmp_path / "lr.yaml"
    path.write_text("rl:\n  lr: 5e-4\n", encoding="utf-8")
    assert load_config(str(path)).rl.lr == 5e-4


@pytest.mark.parametrize("text, expected", [("true", True), ("false", False), ("True", True)])
def test_override_boolean(text, expected):
    cfg = load_config(None, [f"gate.graded={text}"])
    assert cfg.gate.graded is expected


def test_override_string():
    cfg = load_config(None, ["rl.method=grpo", "out_dir=/tmp/some run"])
    assert cfg.rl.method == "grpo"
    assert cfg.out_dir == "/tmp/some run"


def test_override_applies_after_file():
    cfg = load_config(str(ROOT / "small.yaml"), ["corruption.rate=0.1", "corruption.rate=0.2"])
    assert cfg.corruption.rate == 0.2


def test_override_without_equals_rejected():
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        parse_override("rl.lambda")


def test_override_invalid_yaml_rejected():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_override("rl.lambda=[1,")


# ----------------------------------------------------------------------------- unknown keys and types

def test_unknown_top_key_rejected():
    with pytest.raises(ConfigError, match="'bogus'") as error:
        load_config(None, ["bogus=1"])
    assert "unknown config key" in str(error.value)


def test_mistyped_nested_key_names_full_key():
    with pytest.raises(ConfigError, match="'rl.lamda'"):
        load_config(None, ["rl.lamda=0.5"])


def test_unknown_nested_section_rejected():
    with pytest.raises(ConfigError, match="'rl.bogus'"):
        load_config(None, ["rl.bogus.x=1"])


def test_mistyped_nested_key_lists_known():
    with pytest.raises(ConfigError, match="lambda") as error:
        load_config(None, ["rl.lamda=0.5"])
    assert "group_size" in str(error.value)


def test_unknown_key_in_file_rejected(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sft:\n  epochs: 3\n  eval_evry: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="'sft.eval_evry'"):
        load_config(str(path))


def test_python_field_name_rejected():
    # The YAML key is `lambda`, and the Python attribute name `lambda_` is not a config key.
    with pytest.raises(ConfigError, match="'rl.lambda_'"):
        load_config(None, ["rl.lambda_=0.5"])


@pytest.mark.parametrize("override, key", [
    ("eval.beam_size=abc", "eval.beam_size='abc'"),
    ("eval.beam_size=12.5", "eval.beam_size=12.5"),
    ("rl.lambda=true", "rl.lambda=True"),
    ("gate.graded=1", "gate.graded=1"),
    ("rl.method=3", "rl.method=3"),
    ("sft.epochs=true", "sft.epochs=True"),
])
def test_wrong_type_rejected(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, [override])


def test_section_as_value_rejected():
    with pytest.raises(ConfigError, match="rl: expected a mapping"):
        load_config(None, ["rl=5"])


def test_value_as_section_rejected():
    with pytest.raises(ConfigError, match="rl.lambda"):
        load_config(None, ["rl.lambda.x=1"])


def test_missing_config_file_rejected(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_invalid_yaml_file_rejected(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("sft: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid UTF-8 YAML"):
        load_config(str(path))


def test_empty_config_file_is_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    assert to_dict(load_config(str(path))) == to_dict(Config())


# ----------------------------------------------------------------------------- ranges and choices

@pytest.mark.parametrize("override, message", [
    ("corruption.rate=-0.1", "corruption.rate=-0.1 is invalid"),
    ("corruption.rate=1.5", "corruption.rate=1.5 is invalid"),
    ("gate.random_rate=-0.5", "gate.random_rate=-0.5 is invalid"),
    ("rl.lambda=-1", "rl.lambda=-1.0 is invalid"),
    ("rl.kl_beta=-0.1", "rl.kl_beta=-0.1 is invalid"),
    ("sft.lr=0", "sft.lr=0.0 is invalid"),
    ("eval.beam_size=5", "eval.beam_size=5 is invalid"),
    ("rl.group_size=1", "rl.group_size=1 is invalid"),
    ("data.min_length=2", "data.min_length=2 is invalid"),
    ("rl.method=ppo", "rl.method='ppo' is invalid"),
    ("corruption.kind=uniform", "corruption.kind='uniform' is invalid"),
])
def test_out_of_range_rejected(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, [override])


@pytest.mark.parametrize("override, key", [
    ("model.d_model=31", "model.d_model"),              # not divisible by model.n_head
    ("model.dropout=1.5", "model.dropout"),
    ("model.max_history=5", "model.max_history"),       # shorter than data.max_history = 20
    ("world.n_items=0", "world.n_items"),
    ("seed=-1", "seed"),                                # numpy seeds must be non-negative
    ("corruption.seed=-1", "corruption.seed"),          # hash_uniform casts the seed to uint64
])
def test_unchecked_ranges_rejected(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, [override])


def test_beam_size_ten_accepted():
    assert load_config(None, ["eval.beam_size=10"]).eval.beam_size == 10


def test_group_size_two_accepted():
    assert load_config(None, ["rl.group_size=2"]).rl.group_size == 2


def test_rate_bounds_accepted():
    assert load_config(None, ["corruption.rate=0"]).corruption.rate == 0.0
    assert load_config(None, ["corruption.rate=1"]).corruption.rate == 1.0


def test_choice_message_lists_options():
    with pytest.raises(ConfigError, match="adagrpo, grpo, random, none"):
        load_config(None, ["rl.method=ppo"])


def test_missing_data_file_rejected(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(ConfigError, match="data.path=") as error:
        load_config(None, ["data.source=s3rec", f"data.path={missing}"])
    assert str(missing) in str(error.value)


def test_empty_data_path_rejected():
    with pytest.raises(ConfigError, match="data.path=''"):
        load_config(None, ["data.source=csv"])


def test_missing_item_file_rejected(tmp_path):
    data = tmp_path / "interactions.csv"
    data.write_text("user,item,timestamp\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="data.item_path="):
        load_config(None, ["data.source=csv", f"data.path={data}", f"data.item_path={tmp_path / 'none.json'}"])


def test_existing_data_file_accepted(tmp_path):
    data = tmp_path / "interactions.csv"
    data.write_text("user,item,timestamp\n", encoding="utf-8")
    cfg = load_config(None, ["data.source=csv", f"data.path={data}"])
    assert cfg.data.path == str(data)


def test_config_from_dict_validates():
    values = to_dict(Config())
    values["rl"]["group_size"] = 1
    with pytest.raises(ConfigError, match="rl.group_size=1"):
        config_from_dict(values)


# ----------------------------------------------------------------------------- command line

def test_cli_unknown_key_exits_2(tmp_path):
    out_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "small.yaml"), f"out_dir={out_dir}",
         "bogus.key=1"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2
    assert len(error_lines) == 1
    assert error_lines[0].startswith("error:")
    assert "bogus" in error_lines[0]
    assert not out_dir.exists()


def test_cli_bad_value_exits_2(tmp_path):
    out_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "small.yaml"), f"out_dir={out_dir}",
         "corruption.rate=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "corruption.rate=2.0" in result.stderr
    assert not out_dir.exists()
