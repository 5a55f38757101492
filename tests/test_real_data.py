"""benchmarks/real_data.py splits the shared public data so that no test item is trained on."""

from __future__ import annotations

from pathlib import Path

import pytest
from _benchmark_script import load_benchmark

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def real_data():
    return load_benchmark("real_data")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not beside this checkout")
def test_real_data_test_items_share_no_id_question_or_focus_with_training(real_data):
    split = real_data.build(SHARED, max_medquad=1500, max_length_words=120)
    assert {len(split["test"][name]) > 50 for name in ("pubmedqa", "mmlu_medical", "medquad")} == {True}
    assert real_data.disjointness(split) == {"ids": 0, "questions": 0, "medquad_foci": 0}
    # the check is not vacuous: a training item moved into the test set is found
    split["test"]["mmlu_medical"].append(split["train"]["mmlu_medical"][0])
    assert real_data.disjointness(split)["ids"] == 1 and real_data.disjointness(split)["questions"] == 1


def test_paired_table_pairs_runs_by_seed_and_marks_only_clear_gaps(real_data):
    def row(forgetting: float, accuracy: float, general_nll: float) -> dict:
        return {"forgetting": forgetting, "pubmedqa/accuracy": accuracy, "train_s": 1.0,
                "stage_eval": {"stages": ["general", "clinical"], "nll_matrix": [[5.0, 6.0], [general_nll, 4.0]]}}

    rows = {"base": [{"pubmedqa/accuracy": 0.3}],
            "icft": [row(0.10, 0.50, 5.0), row(0.12, 0.40, 5.1), row(0.11, 0.60, 5.2)],
            "lora-sequential": [row(0.30, 0.45, 6.0), row(0.31, 0.55, 6.1), row(0.29, 0.50, 6.2)]}  # fmt: skip
    lines = real_data.paired_table(rows, seeds=[0, 1, 2])
    table = [line.strip("|").split(" | ") for line in lines if line.startswith("| ") and "[" in line]
    cells = {row[0].strip(): row[1].strip() for row in table}
    assert set(cells) == {"forgetting", "pubmedqa/accuracy", "final NLL, general", "final NLL, clinical"}
    assert cells["forgetting"].startswith("**-0.190 [")  # lower in every seed by about the same: marked
    assert cells["final NLL, general"] == "**-1.000 [-1.000, -1.000]**"
    assert not cells["pubmedqa/accuracy"].startswith("**")  # +0.05, -0.15, +0.10: noise, not marked
    assert real_data.paired_table(rows, seeds=[0]) == []  # one seed: no interval to show
