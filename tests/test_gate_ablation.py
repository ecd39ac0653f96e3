import csv
import math
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gate_ablation  # noqa: E402
from summary import RUN_COLUMNS, append_row  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def fake_run(variant_dir: Path, seed: int, kind: str, rate: float, valid: float, test: float) -> None:
    append_row(variant_dir / "runs.csv", {
        "run_id": f"seed{seed}/{kind}/rate{rate:g}/adagrpo_lam4", "seed": seed, "kind": kind, "rate": f"{rate:g}",
        "method": "adagrpo", "final_valid_hr@10": valid, "final_test_hr@10": test, "admission_rate": 0.3,
        "oracle_precision": "" if kind == "clean" else 0.5})


@pytest.fixture
def two_variants(monkeypatch, tmp_path):
    monkeypatch.setattr(gate_ablation, "VARIANTS", {"default": [], "strict": ["gate.reward_threshold=0.9"]})
    for name, shift in (("default", 0.0), ("strict", 0.01)):
        folder = tmp_path / name
        folder.mkdir()
        append_row(folder / "runs.csv", {"run_id": "seed0/sft", "seed": 0, "kind": "none", "method": "sft"})
        for seed in (0, 1):
            fake_run(folder, seed, "clean", 0.0, 0.30 + shift, 0.50 - shift)
            fake_run(folder, seed, "popularity", 0.8, 0.20 + shift + 0.02 * seed, 0.50 - shift)
    return tmp_path


def test_table_averages_each_cell_over_seeds(two_variants):
    rows = {(r["variant"], r["kind"]): r for r in gate_ablation.table(two_variants)}
    assert rows[("default", "popularity")]["final_valid_hr@10"] == pytest.approx(0.21)
    assert rows[("default", "popularity")]["seeds"] == 2
    assert rows[("default", "all")]["final_valid_hr@10"] == pytest.approx((0.30 * 2 + 0.20 + 0.22) / 4)
    assert math.isnan(rows[("default", "clean")]["oracle_precision"])
    assert ("default", "none") not in rows                               # the SFT row is not a gate variant


def test_choice_uses_validation_not_test(two_variants):
    # `strict` is better on validation and worse on test in every cell: validation decides.
    chosen = gate_ablation.write_outputs(two_variants, gate_ablation.table(two_variants))
    assert chosen == "strict"
    page = (two_variants / "gate_ablation.md").read_text()
    assert "strict (chosen)" in page
    assert "default (chosen)" not in page
    with open(two_variants / "gate_ablation.csv", newline="") as lines:
        assert len(list(csv.DictReader(lines))) == 2 * 3


def test_quick_ablation_end_to_end(monkeypatch, tmp_path):
    monkeypatch.setattr(gate_ablation, "VARIANTS", {"default": [], "no_policy_test": ["gate.policy=none"]})
    tiny = ["device=cpu", "rl.steps=2", "rl.eval_every=2", "sweep.seeds=[0]", "sweep.kinds=[popularity]",
            "sweep.strata_rates=[]"]
    assert gate_ablation.main(["--quick", "--out", str(tmp_path)] + tiny) == 0
    for name in ("default", "no_policy_test"):
        with open(tmp_path / name / "runs.csv", newline="") as lines:
            methods = sorted(row["method"] for row in csv.DictReader(lines))
        assert methods == ["adagrpo"] * 3 + ["sft"]                    # rates 0, 0.4 and 0.8
    saved = yaml.safe_load((tmp_path / "no_policy_test/seed0/popularity/rate0.8/adagrpo_lam1/config.yaml").read_text())
    assert saved["gate"]["policy"] == "none"
    assert saved["rl"]["method"] == "adagrpo"
    assert "gate.policy=none" in (tmp_path / "gate_ablation.md").read_text()


def test_bad_key_stops_before_any_run(tmp_path, capsys):
    assert gate_ablation.main(["--quick", "--out", str(tmp_path), "rl.stepz=3"]) == 2
    err = capsys.readouterr().err
    assert "rl.stepz" in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_failing_variant_names_its_folder(tmp_path, capsys):
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "sweep.yaml").write_text("base: {seed: 5}\n")     # another sweep's folder
    assert gate_ablation.main(["--quick", "--out", str(tmp_path)]) == 2
    assert "gate variant 'default' failed" in capsys.readouterr().err
