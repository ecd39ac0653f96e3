"""The eval.json table used on the results page."""

import json

from report import eval_table


def write_eval(folder, hr10, method="adagrpo"):
    split = {"hr@5": 0.1, "hr@10": hr10, "ndcg@5": 0.05, "ndcg@10": 0.07, "hallucination": 0.01}
    results = {"sft": {"valid": split, "test": split},
               method: {"valid": split, "test": split, "step": 0, "admission_rate": 0.3,
                        "final": {"valid": split, "test": {**split, "hr@10": hr10 + 0.1}, "step": 50}},
               "wall_time_s": 1.0}
    folder.mkdir()
    (folder / "eval.json").write_text(json.dumps(results), encoding="utf-8")


def test_eval_table_rows(tmp_path):
    write_eval(tmp_path / "a", 0.2)
    lines = eval_table([str(tmp_path / "a")])
    assert lines[0] == "| model | hr@5 | hr@10 | ndcg@5 | ndcg@10 | hallucination |"
    assert lines[2].startswith("| SFT | 0.1000 | 0.2000 |")
    assert "best (step 0)" in lines[3]
    assert "| 0.3000 |" in lines[4]


def test_eval_table_lists_shared_sft_once(tmp_path):
    write_eval(tmp_path / "a", 0.2)
    write_eval(tmp_path / "b", 0.2, method="grpo")
    lines = eval_table([str(tmp_path / "a"), str(tmp_path / "b")])
    assert sum(line.startswith("| SFT |") for line in lines) == 1
    assert len(lines) == 2 + 1 + 4 + 1           # header, SFT, two rows per run, blank line
