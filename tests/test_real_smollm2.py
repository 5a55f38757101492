"""benchmarks/real_smollm2.py (issue 27): its held-out items are never trained on, and its table and plot
read the per-item scores the way they say."""

from __future__ import annotations

from pathlib import Path

import pytest
from _benchmark_script import load_benchmark

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("real_smollm2")


@pytest.mark.skipif(not (SHARED / "pubmedqa" / "train.jsonl").is_file(),
                    reason="../shared/data (the real medical sets) is not beside this checkout")  # fmt: skip
def test_held_out_items_share_no_id_question_focus_or_group_with_training(bench):
    sizes = bench.Sizes(train=0, test=0, validation=0)  # every item: the check covers all of them
    split = bench.build(SHARED, sizes)
    for name in bench.MEDICAL:
        assert split["test"][name] and split["validation"][name] and split["train"][name], name
    assert set(bench.disjointness(split).values()) == {0}

    def norm(examples, text):
        return {bench.normalise(text(ex)) for ex in examples}

    train, test = split["train"], split["test"]
    # checked here again without the module's helpers: ids, question texts, foci, MEDIQA questions
    all_train = [ex for group in train.values() for ex in group]
    all_held = [ex for part in ("test", "validation") for group in split[part].values() for ex in group]
    assert not {ex.id for ex in all_train} & {ex.id for ex in all_held}
    assert not norm(train["mmlu_medical"], lambda ex: ex.question) & norm(test["mmlu_medical"], lambda ex: ex.question)
    assert not norm(train["medquad"], lambda ex: ex.question) & norm(test["medquad"], lambda ex: ex.question)
    assert not norm(train["medquad"], lambda ex: ex.meta["focus"]) & norm(test["medquad"], lambda ex: ex.meta["focus"])
    assert not norm(train["mediqa"], lambda ex: ex.prompt) & norm(test["mediqa"], lambda ex: ex.prompt)
    assert not ({ex.meta["question_id"] for ex in train["mediqa"]}
                & {ex.meta["question_id"] for ex in test["mediqa"] + split["validation"]["mediqa"]})  # fmt: skip
    assert not norm(train["chatdoctor"], lambda ex: ex.turns[0]["content"]) & norm(
        test["chatdoctor"], lambda ex: ex.turns[0]["content"])  # fmt: skip
    # the general sets are not trained on, and the own-voice questions are not the accuracy questions
    general_ids = {ex.id for ex in test["mmlu_general"]}
    assert not general_ids & {ex.id for ex in all_train}
    assert not general_ids & {ex.id.removeprefix("voice/") for ex in test["voice_prompts"]}
    # the tuning tries' own-voice prompts are neither the test's own-voice prompts nor its accuracy items
    tuning_voice = {ex.id for ex in split["tuning"]["voice_prompts"]}
    assert len(tuning_voice) == sizes.voice
    assert not tuning_voice & {ex.id for ex in test["voice_prompts"]}
    assert not {i.removeprefix("voice/") for i in tuning_voice} & general_ids
    assert not norm(split["tuning"]["voice_prompts"], lambda ex: ex.question) & norm(
        test["voice_prompts"] + test["mmlu_general"], lambda ex: ex.question)  # fmt: skip
    # the check is not vacuous: a training item moved into the test set is found, by id, text and group
    split["test"]["medquad"].append(train["medquad"][0])
    found = bench.disjointness(split)
    assert found["ids"] == 1 and found["questions"] >= 1 and found["medquad_foci"] >= 1


def _record(seed: int, medical: float, voice: float, general_hits: list[int]) -> dict:
    """A synthetic eval.json: per-item scores on each set the table pools."""
    return {"seed": seed, "sets": {
        "pubmedqa": {"metrics": {"accuracy": 0.5}, "items": {f"p{i}": {"hit": i % 2} for i in range(10)}},
        "chatdoctor": {"metrics": {"answer_nll": medical}, "items": {f"c{i}": {"answer_nll": medical + 0.01 * i}
                                                                     for i in range(10)}},
        "mmlu_general": {"metrics": {"accuracy": sum(general_hits) / len(general_hits)},
                         "items": {f"g{i}": {"hit": h} for i, h in enumerate(general_hits)}},
        "own_voice": {"metrics": {"answer_nll": voice}, "items": {f"v{i}": {"answer_nll": voice} for i in range(10)}},
    }}  # fmt: skip


def test_summary_table_and_plot_on_synthetic_numbers(bench, tmp_path):
    same = [1, 0] * 5
    evals = {
        "base": {0: _record(0, 2.0, 1.0, same)},
        # forgets: its own-voice NLL rises by 0.5 in both seeds; learns: medical NLL drops by 0.4
        "lora-sequential": {0: _record(0, 1.6, 1.5, same), 1: _record(1, 1.6, 1.5, same)},
        "icft": {0: _record(0, 1.7, 1.1, same), 1: _record(1, 1.7, 1.1, same)},
        "icft a=0.5": {0: _record(0, 1.9, 1.0, same), 1: _record(1, 1.9, 1.0, same)},
    }
    summary = bench.summarise(evals)
    seq = summary["vs_base"]["lora-sequential"]
    assert seq["medical_nll"]["mean"] == pytest.approx(0.4) and seq["medical_nll"]["significant"]
    assert seq["own_voice"]["mean"] == pytest.approx(-0.5) and seq["own_voice"]["significant"]
    assert seq["general_accuracy"]["mean"] == 0 and not seq["general_accuracy"]["significant"]
    assert seq["medical_accuracy"]["mean"] == 0  # pubmedqa hits equal to base's
    ours = summary["vs_reference"]["lora-sequential"]
    assert ours["medical_nll"]["mean"] == pytest.approx(-0.1)  # icft gains less medical NLL ...
    assert ours["own_voice"]["mean"] == pytest.approx(0.4)  # ... and keeps more of its voice
    assert "icft" not in summary["vs_reference"]

    table = bench.main_table(summary)
    rows = {line.split(" | ")[0].strip("| "): line for line in table[2:]}
    assert set(rows) == {"lora-sequential", "icft", "icft a=0.5"}
    assert "**-0.500 [-0.500, -0.500]**" in rows["lora-sequential"]  # forgetting, bold: it excludes 0
    assert rows["icft"].count("–") == 4  # no icft-minus-icft
    words = "\n".join(bench.plain_words(summary))
    assert "own-voice NLL drop: ahead" in words and "medical answer NLL drop: behind" in words
    assert "a=0.5" not in words

    path = tmp_path / "plot.png"
    bench.plot(summary, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
    text = bench.report(summary, evals, {"mmlu_general/accuracy": {"random": 0.25}}, ["setup"], ["note"])
    assert text.count("\n| method |") == 1 and "plot.png" in text and "0.250" in text


def test_every_method_gets_the_same_number_of_tries_and_each_try_is_its_own_run(bench):
    from icft.config import load_config

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "real-smollm2.yaml", [])
    assert {len(bench.tries(m)) for m in bench.TRIES} == {3}
    for method in bench.TRIES:
        configs = [bench.config_of(config, name, 0).to_dict() for name in bench.tries(method)]
        assert all(a != b for i, a in enumerate(configs) for b in configs[i + 1 :]), method
    assert bench.config_of(config, "icft@lr-x2", 0).train.lr == 2e-3  # a scale of the config's 1e-3
    assert bench.config_of(config, "lora-mixed@lr-x0.5", 0).train.lr == 5e-4
    assert bench.config_of(config, "lora-kl-base@kl3", 0).loss.kl_base == 3.0  # the try wins over the method
    assert bench.config_of(config, "lora-kl-base", 0).loss.kl_base == 1.0
    # an ablation takes ICFT's chosen try but keeps what it takes away
    ablation = bench.config_of(config, "icft-no-ltm@memory-x2", 0)
    assert ablation.memory.ltm_replay == 0.0 and ablation.loss.consistency == 2.0
    assert bench.run_dir(Path("w"), "icft@lr-x2", 1) == Path("w/icft@lr-x2/seed1")


def _validation(medical: float, voice: float) -> dict:
    """A synthetic validation.json: the medical items' and the own-voice prompts' answer NLL."""
    return {"lr": 1e-3, "sets": {"medquad": {"items": {f"m{i}": {"answer_nll": medical} for i in range(4)}},
                     "mediqa": {"items": {f"q{i}": {"hit": 1, "answer_nll": medical} for i in range(4)}},
                     "own_voice": {"items": {f"v{i}": {"answer_nll": voice} for i in range(4)}}}}  # fmt: skip


def test_the_chosen_try_has_the_best_validation_trade(bench, tmp_path):
    import json

    def put(name: str, record: dict) -> None:
        folder = bench.run_dir(tmp_path, name, 0)
        folder.mkdir(parents=True)
        (folder / "validation.json").write_text(json.dumps(record))

    assert bench.select(tmp_path, ["icft"]) == {}  # no base scored yet
    put("base", _validation(2.0, 1.0))
    put("icft", _validation(1.6, 1.3))  # gains 0.4, forgets 0.3: +0.1
    put("icft@lr-x2", _validation(1.2, 1.9))  # gains 0.8, forgets 0.9: -0.1 (the most medical gain)
    put("icft@memory-x2", _validation(1.7, 1.1))  # gains 0.3, forgets 0.1: +0.2
    put("lora-sequential", _validation(1.5, 1.2))  # its other tries are missing: not chosen yet
    found = bench.select(tmp_path, ["base", "icft", "lora-sequential"])
    assert set(found) == {"icft"} and found["icft"]["chosen"] == "icft@memory-x2"
    assert found["icft"]["tries"]["icft@lr-x2"]["medical_nll_drop"] == pytest.approx(0.8)
    assert found["icft"]["tries"]["icft"]["trade"] == pytest.approx(0.1)
    table = bench.tuning_table(found)
    assert len(table) == 5 and "| yes |" in table[-1] and "memory-x2" in table[-1]
    assert found["icft"]["tries"]["icft"]["open_answers_nll_drop"] == pytest.approx(0.4)  # medquad alone


BAD_INPUTS = [(["--set", "train.lr=-1"], "config key 'train.lr': must be >= 0.0, got -1.0"),
              (["--methods", "base,lora-nonsense"], "unknown method 'lora-nonsense'")]  # fmt: skip


@pytest.mark.parametrize("args, said", BAD_INPUTS)
def test_a_bad_value_or_method_is_one_line_and_exit_2_before_anything_loads(bench, tmp_path, monkeypatch, capsys,
                                                                            args, said):  # fmt: skip
    (tmp_path / "pubmedqa").mkdir()
    (tmp_path / "pubmedqa" / "train.jsonl").write_text("")  # the data check passes; nothing is read before the error
    monkeypatch.setattr("sys.argv", ["real_smollm2.py", "--data", str(tmp_path), "--work-dir", str(tmp_path / "w"),
                                     "--report-only", *args])  # fmt: skip
    assert bench.main() == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and said in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()
