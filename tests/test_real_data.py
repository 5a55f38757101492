"""benchmarks/real_data.py splits the shared public data so that no test item is trained on."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "real_data.py"


@pytest.fixture(scope="module")
def real_data():
    spec = importlib.util.spec_from_file_location("real_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is not beside this checkout")
def test_real_data_test_items_share_no_id_question_or_focus_with_training(real_data):
    split = real_data.build(SHARED, max_medquad=1500, max_length_words=120)
    assert {len(split["test"][name]) > 50 for name in ("pubmedqa", "mmlu_medical", "medquad")} == {True}
    assert real_data.disjointness(split) == {"ids": 0, "questions": 0, "medquad_foci": 0}
    # the check is not vacuous: a training item moved into the test set is found
    split["test"]["mmlu_medical"].append(split["train"]["mmlu_medical"][0])
    assert real_data.disjointness(split)["ids"] == 1 and real_data.disjointness(split)["questions"] == 1
