"""Issue 27's real-data benchmark as an `icft compare` config: benchmarks/real_smollm2.py's held-out files are
never trained on, and `icft compare --config configs/real-smollm2.yaml` (reduced) writes the main table, the
composites, the tuning table and the trade-off plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _benchmark_script import load_benchmark

from icft.data.schema import Example
from icft.data.sources import heldout_split

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "pubmedqa" / "train.jsonl").is_file(),
                                  reason="../shared/data (the medical sets) is not beside this checkout")  # fmt: skip


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("real_smollm2")


def test_heldout_split_keeps_groups_together_and_is_the_same_every_time():
    examples = [Example(id=f"q{i}", kind="qa", source="t", question=f"q{i}", answer="a", meta={"topic": f"t{i % 10}"})
                for i in range(200)]  # fmt: skip
    kept, held = heldout_split(examples, lambda ex: ex.meta["topic"], 0.3)
    assert len(kept) + len(held) == 200 and held and kept
    assert not {ex.meta["topic"] for ex in kept} & {ex.meta["topic"] for ex in held}  # a group on one side
    assert (kept, held) == heldout_split(examples, lambda ex: ex.meta["topic"], 0.3)
    assert [ex.id for ex in kept] == sorted((ex.id for ex in kept), key=lambda i: int(i[1:]))  # input order
    assert heldout_split(examples, lambda ex: ex.id, 0.0) == (examples, [])
    assert heldout_split(examples, lambda ex: ex.id, 1.0) == ([], examples)


@needs_shared
def test_held_out_files_share_no_id_question_focus_or_group_with_training(bench):
    sizes = {**bench.SIZES, "train": 0, "test": 0, "validation": 0}  # every item: the check covers all of them
    files = bench.build(SHARED, sizes)
    train, held = files["train"], [ex for stem, exs in files.items() if stem != "train" for ex in exs]
    for name in bench.MEDICAL:
        assert files[f"test-{name}"], name
    assert not {ex.id for ex in train} & {ex.id for ex in held}
    asked = {bench.normalise(ex.question or ex.prompt) for ex in train} - {""}
    assert not asked & {bench.normalise(ex.question or ex.prompt) for ex in held}
    foci = [{ex.meta["focus"] for ex in exs if ex.meta.get("focus")} for exs in (train, held)]
    assert foci[0] and not foci[0] & foci[1]
    mediqa = [{ex.meta["question_id"] for ex in exs if "question_id" in ex.meta} for exs in (train, held)]
    assert mediqa[0] and not mediqa[0] & mediqa[1]
    for name in bench.MEDICAL:  # test and validation groups of a source are disjoint too
        test = {bench.group_of(name, ex) for ex in files[f"test-{name}"]}
        assert test and not test & {bench.group_of(name, ex) for ex in files["validation"]}
    # the own-voice prompts are neither the accuracy items nor each other's
    general = {ex.id for ex in files["test-mmlu_general"]}
    voices = [{ex.id.removeprefix("voice/") for ex in files[f"voice-{part}"]} for part in ("test", "validation")]
    assert len(voices[0]) == len(voices[1]) == sizes["voice"] and not voices[0] & voices[1]
    assert not (voices[0] | voices[1]) & general


def markdown_table(text: str, header: str) -> dict[str, list[dict[str, str]]]:
    """The markdown table whose header line starts with `header`, parsed: {first cell: [{column: cell}]}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        block.append([c.strip() for c in line.strip().removeprefix("|").removesuffix("|").split(" | ")])
    out: dict[str, list[dict[str, str]]] = {}
    for row in block[2:]:
        out.setdefault(row[0], []).append(dict(zip(block[0][1:], row[1:])))
    return out


@needs_shared
@pytest.mark.slow
def test_compare_runs_the_real_benchmark_reduced(bench, tiny_llama_dir, tmp_path, monkeypatch):
    """The benchmark's own config with a tiny model, 2 steps and a few items: every part of the report."""
    monkeypatch.setenv("ICFT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # the config's relative data folder (runs/real-smollm2/data) lands here
    sets = [f"model.name={tiny_llama_dir}", "model.max_length=64", "compare.methods=[base, lora-sequential]",
            "compare.seeds=[0]", "compare.jobs=1", "train.max_steps=3", "train.batch_size=2", "train.save_every=3",
            "train.log_every=1", "train.eval_max_examples=2", "memory.ltm_capacity=4", "memory.stm_capacity=4",
            "compare.wise_alphas=[0.5]", "compare.tries={lora-sequential: {lr-x2: {lr_scale: 2.0}}}",
            "compare.validation=[{path: runs/real-smollm2/data/validation.jsonl, "
            "answers: 0, content: true}, {path: runs/real-smollm2/data/voice-validation.jsonl, label: own_voice, "
            "answers: 4, own_voice: true}]"]  # fmt: skip
    sizes = ["train=6", "test=3", "validation=2", "rouge=2", "general=3", "voice=3"]
    argv = ["--config", str(ROOT / "configs" / "real-smollm2.yaml"), "--output-dir", "cmp"]
    argv += [a for s in sets for a in ("--set", s)] + [a for s in sizes for a in ("--size", s)]
    monkeypatch.setattr("sys.argv", ["real_smollm2.py", *argv])
    bench.main()
    out = tmp_path / "cmp"
    report = (out / "report.md").read_text()
    main = markdown_table(report, "| metric |")
    assert [list(row.values())[:2] for row in main["seeds (n)"]] == [["1", "1"]]
    assert {"answer NLL/token (chatdoctor)", "answer NLL/token (own_voice)", "ROUGE-L (chatdoctor_gen)",
            "MC accuracy (pubmedqa)", "preference accuracy (mediqa)"} <= set(main)  # fmt: skip
    assert "ROUGE-L (chatdoctor)" not in main  # answers 0: scored by likelihood alone
    composites = markdown_table(report, "| method | seeds |")
    assert set(composites) == {"lora-sequential", "lora-sequential a=0.5"}
    tuning = markdown_table(report, "| method | try |")["lora-sequential"]
    assert [row["try"] for row in tuning] == ["defaults", "lr-x2"]
    assert sum(row["chosen"] == "yes" for row in tuning) == 1
    results = json.loads((out / "results.json").read_text())
    chosen = results["tuning"]["lora-sequential"]
    figures = chosen["tries"][chosen["chosen"]]
    assert figures["trade"] == pytest.approx(figures["content_nll_drop"] + figures["own_voice_drop"])
    assert figures["trade"] == max(t["trade"] for t in chosen["tries"].values())
    seq = results["composites"]["vs_base"]["lora-sequential"]
    base, trained = (results["per_seed"][m]["0"] for m in ("base", "lora-sequential"))
    assert seq["own_voice"]["mean"] == pytest.approx(base["own_voice/answer_nll"] - trained["own_voice/answer_nll"])
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "own_voice").glob("*.jsonl"))) == 2  # test and validation prompts, answered once
