"""Retrieval from long-term memory and knowledge files: search, the Context block, fitting, `icft eval --retrieve`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _inference_run import knowledge_file, trained_run

from icft.data.formatting import prompt_and_target, qa_prompt
from icft.data.prompt_format import PromptFormat
from icft.data.schema import DataError, Example
from icft.data.tokenize import encode_pair
from icft.memory import Embedder, LongTermMemory
from icft.memory.retrieval import (
    Retriever,
    add_retrieved_context,
    fact_text,
    fit_facts,
    training_contexts,
    with_context,
)


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama_dir, staged_data):
    return trained_run(tmp_path_factory, tiny_llama_dir, staged_data)


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def qa(id_: str, question: str, options: list[str] | None = None, answer: int | str = 0) -> Example:
    return Example(id=id_, kind="qa", source="t", question=question, options=options, answer=answer)


def test_fact_text_per_kind():
    assert fact_text(qa("a", "Which colour?", ["red", "blue"], 1)) == "Which colour? blue"
    assert fact_text(qa("b", "What is  the\ncapital?", answer="Paris")) == "What is the capital? Paris"
    assert fact_text(Example(id="c", kind="text", source="t", text="Water\nboils.")) == "Water boils."
    pref = Example(id="d", kind="preference", source="t", prompt="Treat?", chosen="Test first.", rejected="No.")
    assert fact_text(pref) == "Treat? Test first."


def test_knowledge_file_is_searched_by_meaning_and_faiss_agrees(tmp_path, embedder):
    path = knowledge_file(tmp_path)
    exact = Retriever.from_sources(knowledge=[str(path)], embedder=embedder)
    indexed = Retriever.from_sources(knowledge=[str(path)], embedder=embedder, faiss_threshold=1)
    assert exact.index is None and indexed.index is not None
    queries = ["Which city is the French capital?", "What hormone lowers blood sugar?"]
    a, b = exact.search(queries, 2), indexed.search(queries, 2)
    assert [h.id for h in a[0]][0] == "kb-france" and [h.id for h in a[1]][0] == "kb-insulin"
    assert a[0][0].text == "What is the capital of France? Paris" and a[0][0].source == "knowledge"
    assert [[h.id for h in row] for row in a] == [[h.id for h in row] for row in b]
    assert np.allclose([h.score for row in a for h in row], [h.score for row in b for h in row], atol=1e-5)
    assert a[0][0].score > a[0][1].score and 0.5 < a[0][0].score <= 1.0 + 1e-6
    # an example never retrieves itself
    assert "kb-france" not in [h.id for h in exact.search(queries[:1], 2, exclude=["kb-france"])[0]]


def test_run_memory_keys_are_the_stored_embeddings(run, embedder):
    retriever = Retriever.from_sources(run / "memory", embedder=embedder)
    ltm = LongTermMemory.load(run / "memory")
    assert len(retriever) == len(ltm) > 0
    item = ltm.items()[0]
    assert np.allclose(retriever.keys[0], item.embedding / np.linalg.norm(item.embedding), atol=1e-6)
    assert all(f.source == "memory" for f in retriever.facts)


def test_knowledge_must_be_text_or_qa(tmp_path, embedder):
    path = tmp_path / "k.jsonl"
    path.write_text(json.dumps({"id": "p", "kind": "preference", "source": "s", "prompt": "a", "chosen": "b",
                                "rejected": "c"}) + "\n")  # fmt: skip
    with pytest.raises(DataError, match="want text or qa"):
        Retriever.from_sources(knowledge=[str(path)], embedder=embedder)


def test_context_block_format_per_kind():
    ex = qa("q", "Is it hot?", ["yes", "no"], 0)
    assert qa_prompt(with_context(ex, ["Fire is hot.", "Ice is cold."])) == (
        "Context: Fire is hot.\nIce is cold.\nQuestion: Is it hot?\nOptions: (A) yes (B) no\nAnswer:"
    )
    with_abstract = qa("q2", "Works?", answer="yes")
    with_abstract.context = "An abstract."
    assert qa_prompt(with_context(with_abstract, ["A fact."])).startswith("Context: A fact.\nAn abstract.\nQuestion:")
    dialogue = Example(id="d", kind="dialogue", source="t", turns=[
        {"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "I cough."}, {"role": "assistant", "content": "See a doctor."}])  # fmt: skip
    prompt = prompt_and_target(with_context(dialogue, ["Coughs pass."]))[0]
    assert prompt == "Patient: Hi.\nDoctor: Hello.\nPatient: Context: Coughs pass.\nI cough.\nDoctor:"
    assert dialogue.turns[2]["content"] == "I cough."  # the original is not modified
    text = Example(id="t", kind="text", source="t", text="Plain.")
    assert with_context(text, ["x"]) is text


def test_fit_facts_cuts_context_never_the_question(bert_tokenizer):
    def count(text: str) -> int:
        return len(bert_tokenizer(text, add_special_tokens=False)["input_ids"])

    ex = qa("q", "Which organ makes insulin in the human body?", ["pancreas", "liver"], 0)
    facts = ["The pancreas makes insulin and glucagon, two hormones that control blood glucose levels.",
             "The liver stores glycogen.", "The kidneys filter blood."]  # fmt: skip

    def render(fs: list[str]) -> str:
        return qa_prompt(with_context(ex, fs))

    bare = count(render([]))
    assert fit_facts(facts, render, count, 10_000) == facts
    assert fit_facts(facts, render, count, bare) == []  # no room: no context, the question stays whole
    cut = fit_facts(facts, render, count, bare + 12)
    assert len(cut) == 1 and facts[0].startswith(cut[0]) and cut[0] != facts[0]
    assert count(render(cut)) <= bare + 12


def test_retrieved_context_respects_max_length(run, bert_tokenizer, embedder):
    retriever = Retriever.from_sources(run / "memory", embedder=embedder)
    ex = qa("q", "Which is item 5 of the knowledge stage?", ["red", "green", "blue", "white"], 1)
    (wide,), (wide_hits,) = add_retrieved_context([ex], retriever, 3, PromptFormat(bert_tokenizer), max_length=512)
    assert len(wide_hits) == 3 and wide.context.split("\n") == [h.text for h in wide_hits]
    (tight,), (tight_hits,) = add_retrieved_context([ex], retriever, 3, PromptFormat(bert_tokenizer), max_length=40)
    assert len(tight_hits) < 3
    prompt, target = prompt_and_target(tight)
    pair = encode_pair(bert_tokenizer, prompt, target, 40, add_eos=False)
    question = bert_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert len(pair.input_ids) <= 40 and pair.input_ids[: len(question)] == question  # nothing of the prompt cut
    assert prompt.endswith("Question: Which is item 5 of the knowledge stage?\nOptions: (A) red (B) green "
                           "(C) blue (D) white\nAnswer:")  # fmt: skip


def test_eval_with_retrieval_reports_ids_and_scores(run, staged_data, tiny_llama_dir, tmp_path, capsys):
    from icft.evaluation.commands import EvalRequest, eval_command

    out = tmp_path / "eval.json"
    code = eval_command(EvalRequest([str(staged_data[0])], run_dir=str(run), json_path=str(out), max_examples=16,
                                    retrieve=2, knowledge=[str(knowledge_file(tmp_path))]))
    assert code == 0
    errors = [json.loads(line) for line in (tmp_path / "eval.errors.jsonl").read_text().splitlines()]
    assert errors, "a tiny random model gets some of these wrong"
    for error in errors:
        assert 1 <= len(error["retrieved"]) <= 2
        assert all({"id", "score", "source"} <= set(hit) and -1 <= hit["score"] <= 1 for hit in error["retrieved"])
        assert error["id"] not in [hit["id"] for hit in error["retrieved"]]
    assert eval_command(EvalRequest([str(staged_data[1])], model=str(tiny_llama_dir), retrieve=2)) == 2
    assert "--retrieve needs" in capsys.readouterr().err


def test_training_contexts_come_from_other_examples_and_never_cut_the_answer(bert_tokenizer, embedder):
    from icft.recipes.train import TokenCache

    def text(id_: str, body: str) -> Example:
        return Example(id=id_, kind="text", source="t", text=body)

    examples = [
        text("t-insulin", "The pancreas makes insulin, the hormone that lowers blood glucose."),
        text("t-kidney", "The kidneys filter the blood and make urine."),
        qa("q-insulin", "Which organ makes insulin?", ["pancreas", "kidney", "liver", "heart"], 0),
        qa("q-kidney", "Which organ filters the blood and makes urine?", ["liver", "kidney", "lung", "skin"], 1),
        Example(id="p-insulin", kind="preference", source="t", prompt="Which organ makes insulin?",
                chosen="The pancreas makes insulin.", rejected="The heart makes insulin, mostly at night."),
    ]  # fmt: skip
    wide = training_contexts(examples, 1, PromptFormat(bert_tokenizer, "plain", 256), embedder=embedder)
    assert set(wide) == {"q-insulin", "q-kidney", "p-insulin"}  # text asks nothing: no context
    assert wide["q-kidney"].context == fact_text(examples[1])  # the taught fact is the nearest other example
    for ex in examples:
        if ex.id in wide:  # an example never sees its own answer as context
            assert fact_text(ex) not in prompt_and_target(wide[ex.id])[0]

    roomy = training_contexts(examples, 2, PromptFormat(bert_tokenizer, "plain", 256), embedder=embedder)
    tight = training_contexts(examples, 2, PromptFormat(bert_tokenizer, "plain", 60), embedder=embedder)
    assert len(tight["q-insulin"].context) < len(roomy["q-insulin"].context)  # the context is what gets cut
    cache = TokenCache(PromptFormat(bert_tokenizer, "plain", 60), tight)
    for ex in examples:
        for side in ("chosen", "rejected") if ex.kind == "preference" else ("chosen",):
            prompt, target = prompt_and_target(tight.get(ex.id, ex), bert_tokenizer, "plain", side)
            whole = encode_pair(bert_tokenizer, prompt, target, 10_000)
            pair = cache.encode(ex, side)
            assert pair.input_ids == whole.input_ids and len(pair.input_ids) <= 60  # nothing cut, context included
    assert all("context" in bert_tokenizer.decode(cache.encode(examples[i]).input_ids) for i in (2, 3, 4))
