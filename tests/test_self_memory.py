"""The stage-0 memory (issue 36): the untrained model's own answers kept in a protected LTM group with their own
teacher and weight, and consolidation by merging (WiSE-FT, alpha chosen on validation only)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from _inference_run import tiny_settings

from icft.data.schema import Example
from icft.memory import LongTermMemory, MemoryItem
from icft.memory.self_memory import SELF_STAGE, split_general
from icft.recipes.merge import MERGE_FILE, best_alpha, trades


def _item(i: int, stage: str = "") -> MemoryItem:
    ex = Example(id=f"{stage or 'x'}-{i}", kind="qa", source="t", question=f"q{i}", answer=f"a{i}")
    return MemoryItem(example=ex, embedding=np.eye(8, dtype=np.float32)[i % 8] + i * 0.01, stage=stage)


def test_stage0_group_is_never_evicted_by_consolidation(tmp_path):
    ltm = LongTermMemory(capacity=4)
    ltm.protect(SELF_STAGE, [_item(i) for i in range(5)])
    rng = random.Random(0)
    for stage in ("general", "knowledge", "clinical"):
        items = [_item(i, stage) for i in range(10)]
        ltm.consolidate(stage, items, np.stack([i.embedding for i in items]), rng)
        assert len(ltm.items(protected=True)) == 5  # whole, and outside capacity
        assert len(ltm.items(protected=False)) == 4
    assert {i.stage for i in ltm.items(protected=False)} == {"general", "knowledge", "clinical"}
    # sampling keeps the groups apart: LTM replay never draws stage-0 items, stage-0 replay only those
    assert all(i.stage != SELF_STAGE for i in ltm.sample(20, rng))
    assert all(i.stage == SELF_STAGE for i in ltm.sample(20, rng, protected=True))
    # and the protection survives a checkpoint and the saved memory
    again = LongTermMemory(1)
    again.load_state_dict(ltm.state_dict())
    ltm.save(tmp_path / "memory")
    for loaded in (again, LongTermMemory.load(tmp_path / "memory")):
        assert loaded.protected == {SELF_STAGE} and len(loaded.items(protected=True)) == 5


def test_memory_without_stage0_saves_what_it_always_did():
    ltm = LongTermMemory(4)
    items = [_item(i, "general") for i in range(6)]
    ltm.consolidate("general", items, np.stack([i.embedding for i in items]), random.Random(0))
    assert "protected" not in ltm.state_dict()


def test_probe_and_memory_prompts_are_disjoint_by_id_and_text():
    examples = [Example(id=f"p{i}", kind="qa", source="s", question=f"Write a poem about item {i % 30}.", answer="x")
                for i in range(60)]  # each text twice under two ids
    memory, probe = split_general(examples, size=20, probe=10)
    assert len(probe) == 10 and len(memory) == 20
    assert not {e.id for e in memory} & {e.id for e in probe}
    assert not {e.question for e in memory} & {e.question for e in probe}


def test_alpha_is_chosen_on_validation_only():
    # validation favours 0.5; a test set where 1.0 is better is planted beside it and must not be picked
    validation = {0.0: (2.0, 1.0), 0.25: (1.8, 1.05), 0.5: (1.6, 1.1), 0.75: (1.55, 1.3), 1.0: (1.5, 1.5)}
    test = {0.0: (2.0, 1.0), 0.25: (1.9, 1.0), 0.5: (1.8, 1.0), 0.75: (1.6, 1.0), 1.0: (1.2, 1.0)}
    grid = [0.25, 0.5, 0.75, 1.0]
    seen = []

    def measure(alpha):
        seen.append(alpha)
        return validation[alpha]

    chosen = best_alpha(trades(measure, grid))
    assert chosen == 0.5 and best_alpha(trades(test.__getitem__, grid)) == 1.0
    assert seen == [0.0, *grid]


# ------------------------------------------------------------------------------------------------------
# Through the recipe, on a tiny random Llama


@pytest.fixture
def general_file(tmp_path) -> Path:
    path = tmp_path / "general.jsonl"
    rows = [{"id": f"g{i}", "instruction": f"Name a colour for item {i}.", "input": "", "output": "Blue."}
            for i in range(16)]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _config(model_dir, data, general: Path | None, **extra):
    from icft.config import load_config

    pairs = tiny_settings(model_dir, data)
    if general is not None:
        pairs.update({"memory.general": f"[{general}]", "memory.general_size": 6, "memory.general_probe": 4,
                      "memory.general_new_tokens": 8})  # fmt: skip
    pairs.update(extra)
    return load_config(None, [f"{k}={v}" for k, v in pairs.items()])


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("ICFT_QUIET", "1")


def test_at_step0_the_stage0_kl_and_its_gradient_are_zero(tiny_llama_dir, staged_data, general_file):
    from icft.data.prompt_format import PromptFormat
    from icft.memory.self_memory import SELF_STAGE
    from icft.recipes.train import (
        MicroBatch,
        TokenCache,
        build_regularizers,
        build_self_memory,
        compute_losses,
        load_adapted_model,
    )

    torch.manual_seed(0)
    config = _config(tiny_llama_dir, staged_data, general_file, **{"train.merge_alpha": "auto"})
    model, tokenizer = load_adapted_model(config)
    cache = TokenCache(PromptFormat.from_config(tokenizer, config))
    ltm = LongTermMemory(6)
    built = build_self_memory(config, model, cache, ltm, "cpu", lambda *a: None)
    assert len(built.items) == 6 and len(built.probe) == 4 and ltm.protected == {SELF_STAGE}
    assert all(i.teacher_ids is not None for i in built.items)
    model.train()
    batch = MicroBatch([], self_items=built.items)
    out = compute_losses(model, cache, batch, config, "cpu", build_regularizers(config, model))
    kl = out.parts["self_consistency"]
    assert abs(kl.item()) < 1e-5
    kl.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and max(g.abs().max().item() for g in grads) < 1e-5
    # the stage-0 rows are not in the medical parts
    assert out.parts["consistency"].item() == 0.0 and out.parts["finetune"].item() == 0.0


def _read(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # trains tiny runs
def test_config_turns_each_part_on_and_without_it_nothing_changes(tiny_llama_dir, staged_data, general_file, tmp_path):
    from safetensors.torch import load_file

    from icft.recipes.train import train
    from icft.runs import load_run

    plain, unused, on = tmp_path / "plain", tmp_path / "unused", tmp_path / "on"
    train(_config(tiny_llama_dir, staged_data, None), plain)
    # memory.general given but every part off (no stage-0 group, no merging): the same run as without it
    train(_config(tiny_llama_dir, staged_data, general_file, **{"memory.general_size": 0}), unused)
    a, b = (load_file(r / "adapter" / "adapter_model.safetensors") for r in (plain, unused))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in _read(plain)] == \
           [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in _read(unused)]  # fmt: skip
    assert "loss_self_consistency" not in _read(plain)[0] and not (plain / "adapter" / MERGE_FILE).exists()

    train(_config(tiny_llama_dir, staged_data, general_file, **{"memory.general_ce": 0.5,
                                                                 "train.merge_alpha": "auto"}), on)  # fmt: skip
    records = _read(on)
    assert records[0]["loss_self_consistency"] < 1e-4  # the model starts equal to its stage-0 teacher
    assert all(r["loss_self_ce"] > 0 for r in records)  # logged at every step, from step 0
    for r in records:  # the stage-0 parts are in L_total with their weights
        total = r["loss_task"] + r["loss_consistency"] + r["loss_finetune"] + r["loss_self_consistency"]
        assert r["loss_total"] == pytest.approx(total + 0.5 * r["loss_self_ce"], rel=1e-4)
    stages = [json.loads(line)["stage"] for line in (on / "memory" / "memory.jsonl").read_text().splitlines()]
    assert stages.count(SELF_STAGE) == 6 and len(stages) - 6 <= 6
    merge = json.loads((on / "adapter" / MERGE_FILE).read_text())
    assert merge["alpha"] in (0.25, 0.5, 0.75, 1.0) and set(merge["grid"]) == {"0.25", "0.5", "0.75", "1.0"}
    assert json.loads((on / "summary.json").read_text())["merge_alpha"] == merge["alpha"]

    # loading the run applies the saved scale (what eval, export --merge, chat and serve load through)
    from peft.tuners.lora import LoraLayer

    model, _ = load_run(on, "cpu")
    scales = {m.scaling["default"] for m in model.modules() if isinstance(m, LoraLayer)}
    assert scales == {merge["alpha"] * 16 / 8}


@pytest.mark.slow  # trains tiny runs
def test_fixed_merge_alpha_is_saved_and_applied(tiny_llama_dir, staged_data, tmp_path):
    from peft.tuners.lora import LoraLayer

    from icft.recipes.train import train
    from icft.runs import load_run

    run = tmp_path / "run"
    train(_config(tiny_llama_dir, staged_data, None, **{"train.merge_alpha": 0.5, "train.max_steps": 3}), run)
    model, _ = load_run(run, "cpu")
    assert {m.scaling["default"] for m in model.modules() if isinstance(m, LoraLayer)} == {0.5 * 16 / 8}
    # export --merge merges what load_run gives: the merged weights answer as the scaled adapter does
    ids = torch.tensor([[5, 6, 7, 8]])
    model.eval()
    with torch.no_grad():
        scaled = model(input_ids=ids).logits
        merged = model.merge_and_unload()(input_ids=ids).logits
    assert torch.allclose(scaled, merged, atol=1e-5)


def test_merge_auto_needs_general_prompts():
    from icft.config import load_config
    from icft.errors import ConfigError

    with pytest.raises(ConfigError, match="memory.general"):
        load_config(None, ["train.merge_alpha=auto"])


def test_retrieval_floor_drops_unrelated_facts_and_the_stage0_memory_is_never_a_fact(tmp_path):
    from icft.memory.retrieval import Fact, Retriever, retrieval_floor

    class Embed:  # a fixed 2-d embedding: the query is along x
        def encode(self, texts):
            return np.array([[1.0, 0.0] for _ in texts], dtype=np.float32)

    facts = [Fact("near", "near fact", "memory"), Fact("far", "far fact", "memory")]
    keys = np.array([[0.9, 0.1], [0.2, 0.98]], dtype=np.float32)
    assert [h.id for h in Retriever(facts, keys, Embed()).search(["q"], 2)[0]] == ["near", "far"]
    assert [h.id for h in Retriever(facts, keys, Embed(), min_score=0.5).search(["q"], 2)[0]] == ["near"]

    (tmp_path / "config.yaml").write_text("model: {name: x}\nmemory: {retrieve_min_score: 0.4}\n")
    assert retrieval_floor(tmp_path) == 0.4 and retrieval_floor(None) is None

    ltm = LongTermMemory(4)
    ltm.protect(SELF_STAGE, [_item(0)])
    items = [_item(i, "general") for i in range(2)]
    ltm.consolidate("general", items, np.stack([i.embedding for i in items]), random.Random(0))
    retriever = Retriever.from_sources(ltm, embedder=Embed())
    assert {f.id for f in retriever.facts} == {"general-0", "general-1"}


def test_template_measures_tell_boilerplate_from_free_answers():
    from icft.data.templated import by_file

    def qa(i: int, answer: str, origin: str) -> Example:
        return Example(id=f"{origin}{i}", kind="qa", source="s", question="q?", answer=answer, origin=f"{origin}:{i}")

    stock = [qa(i, f"Based on your symptoms, it seems like you're suffering from condition {i}.", "stock.jsonl")
             for i in range(50)]  # fmt: skip
    free = [qa(i, f"{w} is described in chapter {i} of the book.", "free.jsonl")
            for i, w in enumerate(f"w{j} x{j} y{j}" for j in range(50))]  # fmt: skip
    measured = by_file(stock + free)
    assert measured["stock.jsonl"].opener_share == 1.0 and measured["stock.jsonl"].repeated_4gram_share > 0.8
    assert measured["free.jsonl"].opener_share == pytest.approx(0.2)
    assert measured["free.jsonl"].repeated_4gram_share < measured["stock.jsonl"].repeated_4gram_share


@pytest.mark.slow  # trains tiny runs
def test_a_resumed_run_with_the_stage0_memory_ends_with_the_same_adapter(tiny_llama_dir, staged_data, general_file,
                                                                          tmp_path):  # fmt: skip
    import shutil

    from safetensors.torch import load_file

    from icft.recipes.train import train

    config = _config(tiny_llama_dir, staged_data, general_file, **{"train.save_every": 3, "memory.general_ce": 0.5})
    run = tmp_path / "run"
    train(config, run)
    whole = load_file(run / "adapter" / "adapter_model.safetensors")
    shutil.rmtree(run / "checkpoints" / "step-000006")
    train(config, run, resume=True)
    resumed = load_file(run / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_compare_methods_for_issue_36():
    from icft.config import load_config
    from icft.errors import ConfigError
    from icft.recipes.compare import method_config, run_hash, seeds_of

    config = load_config(None, [])
    assert run_hash(method_config(config, "icft-paper", 0)) == run_hash(method_config(config, "icft", 0))
    with pytest.raises(ConfigError, match="memory.general"):
        method_config(config, "icft-self", 0)
    config.memory.general = ["general.jsonl"]
    ours = method_config(config, "icft-self", 0)
    assert ours.train.merge_alpha == "auto" and ours.memory.general_size > 0
    assert method_config(config, "icft-no-merge", 0).train.merge_alpha is None
    assert method_config(config, "icft-no-self-memory", 0).memory.general_size == 0
    assert method_config(config, "icft-paper", 0).memory.general == []
    config.compare.ablation_seeds = 1
    assert seeds_of(config, "icft-no-merge") == [0] and seeds_of(config, "icft-self") == [0, 1, 2]


@pytest.mark.parametrize("chat", [False, True])
def test_system_prompt_per_source_reaches_every_path(chat, bert_tokenizer, chat_tokenizer):
    from icft.data.prompt_format import PromptFormat

    tokenizer = chat_tokenizer if chat else bert_tokenizer
    template = "chat" if chat else "plain"
    system = {"chatdoctor": "Answer as a doctor in a chat.", "*": "Answer plainly."}
    fmt = PromptFormat.resolve(tokenizer, template, 128, system)
    none = PromptFormat.resolve(tokenizer, template, 128)
    qa = Example(id="a", kind="qa", source="chatdoctor", question="Why cough?", answer="Infection.")
    mc = Example(id="b", kind="qa", source="medquad", question="Pick", options=["x", "y"], answer=0)
    text = Example(id="c", kind="text", source="chatdoctor", text="A fact.")

    assert "Answer as a doctor" in fmt.pair(qa)[0] and fmt.pair(qa)[1] == none.pair(qa)[1]
    assert fmt.prompt(qa) == fmt.pair(qa)[0]  # generation and evaluation ask what training trained
    assert tokenizer.decode(fmt.encode(qa).input_ids).lower().count("answer as a doctor") == 1  # uncased BERT
    assert "Answer plainly." in fmt.candidates(mc)[0] and fmt.candidates(mc)[1:] == none.candidates(mc)[1:]
    assert fmt.pair(text) == none.pair(text)  # a text record asks nothing
    conversation = fmt.conversation([{"role": "user", "content": "Hello"}])
    assert "Answer plainly." in conversation and "Answer plainly." not in none.conversation(
        [{"role": "user", "content": "Hello"}])  # fmt: skip
    own = fmt.conversation([{"role": "system", "content": "Mine."}, {"role": "user", "content": "Hello"}])
    assert "Mine." in own and "Answer plainly." not in own
    # saved with the run and read back equal; a format without system prompts saves what it always did
    assert PromptFormat.from_json(tokenizer, fmt.to_json()) == fmt and "system_prompts" not in none.to_json()


@pytest.mark.slow  # trains tiny runs
def test_config_system_prompt_is_saved_with_the_run(tiny_llama_dir, staged_data, tmp_path):
    from icft.recipes.train import train
    from icft.runs import Run

    config = _config(tiny_llama_dir, staged_data, None, **{"train.max_steps": 3})
    config.data.system_prompt = {"fixture-general": "Be brief."}
    train(config, tmp_path / "run")
    run = Run.from_pretrained(tmp_path / "run", "cpu", memory=False)
    assert run.format.system_prompt("fixture-general") == "Be brief." and run.format.system_prompt(None) is None
