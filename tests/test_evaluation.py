"""Evaluation: metrics against hand-computed values, the scoring path against an oracle model, generation,
`evaluate_examples` per kind, and `icft eval`'s handling of good and bad input."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _tables import read_text
from conftest import write_jsonl
from transformers.modeling_outputs import CausalLMOutput
from transformers.modeling_utils import slice_logits_to_keep

from icft.data.formatting import candidates
from icft.data.kinds import choice_type, is_question, kind_of
from icft.data.prompt_format import PromptFormat
from icft.data.schema import Example
from icft.data.tokenize import encode_pair
from icft.evaluation import metrics as M
from icft.evaluation.commands import EvalRequest, eval_command
from icft.evaluation.evaluate import EvalSettings, evaluate_examples, format_table, perplexity
from icft.evaluation.generation import generate_answers
from icft.likelihood import ScoreSettings, eval_batches

nan = float("nan")


# ----------------------------------------------------------------------------------------------------------
# Metrics, on cases small enough to compute by hand


def test_accuracy_and_macro_f1():
    assert M.accuracy([1, 2, 3], [1, 0, 3]) == pytest.approx(2 / 3)
    assert math.isnan(M.accuracy([], []))
    golds = ["yes", "yes", "no", "maybe", "maybe", "maybe"]
    preds = ["yes", "no", "no", "maybe", "yes", "maybe"]
    # yes: TP 1, FP 1, FN 1 -> 2/4; no: TP 1, FP 1, FN 0 -> 2/3; maybe: TP 2, FP 0, FN 1 -> 4/5
    assert M.macro_f1(golds, preds, ["yes", "no", "maybe"]) == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)
    # a label nobody used has no F1: a perfect yes/no answerer is not marked down for 'maybe'
    assert M.macro_f1(["yes", "no"], ["yes", "no"], ["yes", "no", "maybe"]) == 1.0
    # a label only predicted (never gold) counts, with F1 0
    assert M.macro_f1(["yes", "yes"], ["yes", "maybe"], ["yes", "no", "maybe"]) == pytest.approx((2 / 3 + 0) / 2)
    with pytest.raises(ValueError):
        M.accuracy([1], [1, 2])


def test_bleu_and_rouge():
    assert M.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    # n-gram precisions 4/5, 3/4, 2/3, 1/2, equal lengths (no brevity penalty): 100 * 0.2 ** (1/4)
    assert M.bleu(["a b c d e"], ["a b c d f"]) == pytest.approx(100 * 0.2**0.25)
    scores = M.rouge(["the cat runs"], ["the cats are running"])
    # stemmed: the cat run | the cat ar run. Unigrams: P 3/3, R 3/4 -> F 6/7; bigrams: P 1/2, R 1/3 -> F 0.4;
    # the longest common subsequence is the unigram overlap here
    assert scores == pytest.approx({"rouge1": 6 / 7, "rouge2": 0.4, "rougeL": 6 / 7})
    assert M.rouge(["x y", "a"], ["x y", "b"])["rouge1"] == pytest.approx(0.5)  # mean over pairs


def test_distinct_n_mean_length_and_embedding_similarity():
    assert M.distinct_n(["a a b"], 1) == pytest.approx(2 / 3)
    assert M.distinct_n(["a a b", "a b"], 2) == pytest.approx(2 / 3)  # (a a), (a b), (a b)
    assert M.distinct_n(["", "a"], 2) == 0.0
    assert M.mean_length(["a b", "c"]) == 1.5

    class FakeEmbedder:
        vectors = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 1.0], "z": [0.0, 0.0]}

        def encode(self, sentences):
            return np.array([self.vectors[s] for s in sentences])

    # cos(a, a) = 1, cos(b, c) = 1/sqrt(2)
    assert M.embedding_similarity(["a", "b"], ["a", "c"], FakeEmbedder()) == pytest.approx((1 + 2**-0.5) / 2)
    assert M.embedding_similarity(["z"], ["a"], FakeEmbedder()) == 0.0


def test_continual_learning_metrics():
    R = [[0.9, nan], [0.6, 0.8]]
    assert M.average_accuracy(R) == pytest.approx(0.7)
    assert M.forgetting(R) == pytest.approx(0.3)
    assert M.backward_transfer(R) == pytest.approx(-0.3)
    # forgetting takes the best earlier accuracy (0.9 after stage 2), BWT the one just after training (0.6)
    R = [[0.6, nan, nan], [0.9, 0.8, nan], [0.5, 0.6, 0.9]]
    assert M.average_accuracy(R) == pytest.approx(2 / 3)
    assert M.forgetting(R) == pytest.approx(((0.9 - 0.5) + (0.8 - 0.6)) / 2)
    assert M.backward_transfer(R) == pytest.approx(((0.5 - 0.6) + (0.6 - 0.8)) / 2)
    assert (M.average_accuracy([[0.7]]), M.forgetting([[0.7]]), M.backward_transfer([[0.7]])) == (0.7, 0.0, 0.0)
    # lower-triangular rows, and a run stopped after 2 of 3 stages: future stages do not count
    assert M.forgetting([[0.9], [0.6, 0.8]]) == pytest.approx(0.3)
    assert M.average_accuracy([[0.9, 0.1, 0.2], [0.6, 0.8, 0.3]]) == pytest.approx(0.7)
    assert math.isnan(M.average_accuracy([]))


# ----------------------------------------------------------------------------------------------------------
# Models


@pytest.fixture(scope="module")
def minilm():
    from icft.models import MINILM_DECODER, load_model

    return load_model(MINILM_DECODER)


class OracleLM(torch.nn.Module):
    """A tiny random Llama whose logits are pushed (by +100) onto the next token of known token sequences.

    Given the gold (prompt, answer) sequences, it puts nearly all probability on every gold answer token
    and, once a candidate leaves the gold answer, on the gold token instead of the candidate's: so scoring
    must pick the gold candidate, raw or length-normalised, whatever the random weights do.
    """

    def __init__(self, base: torch.nn.Module, sequences: list[list[int]]):
        super().__init__()
        self.base, self.config = base, base.config
        self.sequences = [torch.tensor(s) for s in sequences]

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, **kwargs):
        logits = self.base(input_ids=input_ids, attention_mask=attention_mask).logits
        for row in range(input_ids.shape[0]):
            for seq in self.sequences:
                n = min(len(seq), input_ids.shape[1])
                follows = (input_ids[row, :n] == seq[:n]).long().cumprod(0)  # 1 while the row follows seq
                for t in range(n - 1):
                    if follows[t]:
                        logits[row, t, seq[t + 1]] += 100.0
        return CausalLMOutput(logits=slice_logits_to_keep(logits, logits_to_keep))


def gold_sequences(tokenizer, examples: list[Example]) -> list[list[int]]:
    seqs = []
    for ex in examples:
        if not kind_of(ex).asks:  # plain text: the whole text is the target
            seqs.append(encode_pair(tokenizer, "", ex.text, 512, add_eos=False).input_ids)
        else:
            prompt, cands, gold = candidates(ex)
            seqs.append(encode_pair(tokenizer, prompt, cands[gold], 512, add_eos=False).input_ids)
    return seqs


def choice_examples() -> list[Example]:
    """Multiple-choice, yes/no/maybe and preference examples in two tiers, gold answers spread out."""
    records = []
    for i in range(4):
        records.append({"id": f"mc{i}", "kind": "qa", "source": "quiz", "meta": {"tier": 1 + i % 2},
                        "question": f"Which organ is number {i} on the list?",
                        "options": ["the heart", "the left lung", "the liver and kidneys", "the skin"],
                        "answer": i})  # fmt: skip
    for i, label in enumerate(["yes", "no", "maybe", "no"]):
        records.append({"id": f"ynm{i}", "kind": "qa", "source": "pubmedqa", "meta": {"tier": 1 + i % 2},
                        "context": f"A study of {10 * (i + 1)} patients.", "question": f"Does drug {i} work?",
                        "options": ["yes", "no", "maybe"], "answer": label})  # fmt: skip
    for i in range(2):
        records.append({"id": f"pref{i}", "kind": "preference", "source": "pairs", "meta": {"tier": 1 + i % 2},
                        "prompt": f"What should patient {i} do about chest pain?",
                        "chosen": "Call emergency services now.", "rejected": "Wait and see."})  # fmt: skip
    return [Example.from_dict(r) for r in records]


def shuffled(ex: Example) -> Example:
    """The same example with a wrong answer marked as gold."""
    ex = copy.deepcopy(ex)
    if choice_type(ex) == "preference":
        ex.chosen, ex.rejected = ex.rejected, ex.chosen
    else:
        ex.answer = (ex.answer + 1) % len(ex.options)
    return ex


# ----------------------------------------------------------------------------------------------------------
# The scoring path against an oracle


def test_oracle_scores_everything_right_and_shuffled_answers_wrong(tiny_llama):
    model, tokenizer = tiny_llama
    examples = choice_examples()
    oracle = OracleLM(model, gold_sequences(tokenizer, examples))

    fmt = PromptFormat(tokenizer)
    right = evaluate_examples(oracle, fmt, examples)
    assert {k: right.metrics[k] for k in ("accuracy", "accuracy_norm", "macro_f1", "preference_accuracy")} == {
        "accuracy": 1.0, "accuracy_norm": 1.0, "macro_f1": 1.0, "preference_accuracy": 1.0}  # fmt: skip
    assert right.errors == []
    assert set(right.accuracy_by.values()) == {1.0}

    wrong = evaluate_examples(oracle, fmt, [shuffled(ex) for ex in examples])
    assert wrong.metrics["accuracy"] == 0.0 and wrong.metrics["accuracy_norm"] == 0.0
    assert wrong.metrics["preference_accuracy"] == 0.0
    assert len(wrong.errors) == len(examples)
    # each error names the (shuffled) gold and what the model picked: the original right answer
    for ex, error in zip(examples, wrong.errors):
        original = kind_of(ex).answer(ex)
        assert (error["id"], error["predicted"]) == (ex.id, original)
        assert error["gold"] != original and error["tier"] == ex.meta["tier"]

    # only tier 1 shuffled: the breakdown must tell the tiers apart
    half = [shuffled(ex) if ex.meta["tier"] == 1 else ex for ex in examples]
    mixed = evaluate_examples(oracle, fmt, half)
    assert mixed.accuracy_by["tier=1"] == 0.0 and mixed.accuracy_by["tier=2"] == 1.0
    assert mixed.accuracy_by["kind=qa"] == 0.5 and mixed.accuracy_by["source=pubmedqa"] == 0.5
    assert mixed.metrics["accuracy"] == 0.5


def test_scoring_keeps_a_prompt_that_fits(tiny_llama):
    from icft.likelihood import score_pairs

    model, tokenizer = tiny_llama
    prompt = " ".join(f"step {i}" for i in range(60))  # 120 varied tokens (the random model must see them)
    target = " yes"  # 121 tokens in all, well within max_length=200
    [score] = score_pairs(model, tokenizer, [(prompt, target)], ScoreSettings(max_length=200))
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([prompt_ids + target_ids])).logits.log_softmax(-1)[0]
    expected = sum(logp[len(prompt_ids) - 1 + k, t].item() for k, t in enumerate(target_ids))
    assert score == pytest.approx(expected, abs=1e-4)


def test_perplexity_is_one_for_text_the_model_knows(tiny_llama):
    model, tokenizer = tiny_llama
    texts = ["Aspirin thins the blood.", "Insulin lowers blood sugar in diabetes."]
    known = [Example.from_dict({"id": f"t{i}", "kind": "text", "source": "s", "text": t}) for i, t in enumerate(texts)]
    oracle = OracleLM(model, gold_sequences(tokenizer, known))
    assert perplexity(oracle, tokenizer, texts, batch_size=2) == pytest.approx(1.0, abs=1e-3)
    unknown = ["The spleen filters old red cells.", "Fever is a sign of infection."]
    assert perplexity(oracle, tokenizer, unknown, batch_size=2) > 100  # random weights, 30k-token vocabulary


def test_eval_batches_run_in_eval_mode_and_restore_the_mode_even_after_an_error():
    model = torch.nn.Dropout(0.5)
    seen = [(start, model.training) for start in eval_batches(model, 7, 3)]
    assert seen == [(0, False), (3, False), (6, False)] and model.training
    with pytest.raises(RuntimeError):
        for _ in eval_batches(model, 7, 3):
            raise RuntimeError("a batch failed")
    assert model.training
    model.eval()
    list(eval_batches(model, 2, 1))
    assert not model.training  # a model in eval mode stays there


# ----------------------------------------------------------------------------------------------------------
# Generation


PROMPTS = [
    "Question: What is aspirin used for?\nAnswer:",
    "Question: Is diabetes a chronic disease that affects many people all over the world?\nAnswer:",
    "Patient: I have a headache.\nDoctor:",
]


def test_generation_is_bounded_and_leaves_the_tokenizer_alone(tiny_llama):
    model, tokenizer = tiny_llama
    model.train()
    answers = generate_answers(model, PromptFormat(tokenizer), PROMPTS, max_new_tokens=5, batch_size=2)
    assert len(answers) == len(PROMPTS) and all(isinstance(a, str) for a in answers)
    assert all(len(a.split()) <= 5 for a in answers)
    assert tokenizer.padding_side == "right" and model.training
    model.eval()


@pytest.mark.parametrize("which", ["tiny_llama", "minilm"])
def test_batched_generation_matches_one_by_one(which, request):
    # Left padding must not shift positions: the BERT decoder's absolute position embeddings would show it.
    model, tokenizer = request.getfixturevalue(which)
    fmt = PromptFormat(tokenizer)
    batched = generate_answers(model, fmt, PROMPTS, max_new_tokens=6, batch_size=3)
    alone = [generate_answers(model, fmt, [p], max_new_tokens=6)[0] for p in PROMPTS]
    assert batched == alone
    assert any(batched)


def test_generation_stops_at_eos(minilm):
    model, tokenizer = minilm
    bias = model.cls.predictions.bias
    saved = bias.detach().clone()
    try:
        with torch.no_grad():
            bias[tokenizer.eos_token_id] = 1e4  # the model now always says [SEP] first
        assert generate_answers(model, PromptFormat(tokenizer), PROMPTS, max_new_tokens=5) == ["", "", ""]
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def test_long_prompt_is_cut_from_the_start(minilm):
    model, tokenizer = minilm  # 512 positions: without cutting, this would fail
    fmt = PromptFormat(tokenizer, max_length=4096)
    answers = generate_answers(model, fmt, ["word " * 600 + "\nAnswer:"], max_new_tokens=4)
    assert len(answers) == 1


# ----------------------------------------------------------------------------------------------------------
# evaluate_examples: which metrics each kind gives


class ConstantEmbedder:
    def encode(self, sentences):
        return np.ones((len(sentences), 3))


def test_metric_keys_per_kind(tiny_llama):
    from conftest import staged_records

    model, tokenizer = tiny_llama
    examples = [Example.from_dict(r) for r in staged_records(4)]  # every kind, three stages
    by_kind = {"text": [], "mc": [], "preference": [], "dialogue": []}
    for ex in examples:  # the staged records' qa items are all multiple choice
        by_kind["mc" if is_question(ex) else ex.kind].append(ex)
    ynm = Example.from_dict({"id": "y", "kind": "qa", "source": "pubmedqa", "question": "Does it work?",
                             "options": ["yes", "no", "maybe"], "answer": 0})  # fmt: skip
    open_qa = Example.from_dict({"id": "o", "kind": "qa", "source": "medquad", "question": "What is gout?",
                                 "answer": "A form of arthritis."})  # fmt: skip
    generated = {"bleu", "rouge1", "rouge2", "rougeL", "distinct1", "distinct2", "mean_length"}
    expected = {  # every item also gets the NLL of its reference answer
        "text": {"perplexity", "answer_nll"},
        "mc": {"accuracy", "accuracy_norm", "accuracy_by", "answer_nll"},
        "preference": {"preference_accuracy", "accuracy_by", "answer_nll"},
        "dialogue": generated | {"embedding_similarity", "answer_nll"},
    }
    fmt, settings, embedder = PromptFormat(tokenizer), EvalSettings(max_new_tokens=4), ConstantEmbedder()
    for kind, exs in by_kind.items():
        result = evaluate_examples(model, fmt, exs, settings, embedder)
        assert set(result.metrics) == expected[kind], kind
        assert result.n_examples == len(exs)
    # a yes/no/maybe item adds macro-F1 and the recall of each gold label present (here only "yes")
    ynm_metrics = evaluate_examples(model, fmt, [ynm], settings, embedder).metrics
    assert set(ynm_metrics) == expected["mc"] | {"macro_f1", "recall_yes"}
    result = evaluate_examples(model, fmt, [open_qa], settings)
    assert set(result.metrics) == generated | {"answer_nll"}  # no embedder, no embedding similarity
    everything = evaluate_examples(model, fmt, examples, settings, embedder)
    assert set(everything.metrics) == set().union(*expected.values())
    assert {"stage=general", "kind=qa", "kind=preference"} <= set(everything.accuracy_by)
    assert everything.metrics["embedding_similarity"] == pytest.approx(1.0)
    assert 0 <= everything.metrics["mean_length"] <= 4
    text_only = evaluate_examples(model, fmt, by_kind["text"])
    rows = read_text(format_table({"all.jsonl": everything, "text.jsonl": text_only}))
    assert list(rows[0])[:4] == ["file", "n", "accuracy", "accuracy_norm"]  # the registry's order
    assert [r["file"] for r in rows] == ["all.jsonl", "text.jsonl"]
    assert float(rows[0]["accuracy"]) == pytest.approx(everything.metrics["accuracy"], abs=5e-5)
    assert rows[1]["accuracy"] == "-"  # metrics a file lacks are shown as '-'
    assert float(rows[1]["perplexity"]) == pytest.approx(text_only.metrics["perplexity"], abs=5e-5)


def test_evaluate_files_reads_each_file(tiny_llama, tmp_path):
    from icft.evaluation.evaluate import evaluate_files

    model, tokenizer = tiny_llama
    (tmp_path / "a").mkdir()
    first = write_examples(tmp_path / "a" / "same.jsonl", choice_examples()[:3])
    second = write_examples(tmp_path / "other.jsonl", choice_examples()[8:])
    results = evaluate_files(model, PromptFormat(tokenizer), [first, second], max_examples=2)
    assert list(results) == ["same.jsonl", "other.jsonl"]
    assert results["same.jsonl"].n_examples == 2 and set(results["other.jsonl"].metrics) == {
        "preference_accuracy", "accuracy_by", "answer_nll"}  # fmt: skip


def test_items_are_the_per_example_results_the_metrics_average(tiny_llama):
    """One record per example, in order: what icft compare pairs methods on and icft eval aggregates."""
    from conftest import staged_records

    from icft.data.formatting import prompt_and_target
    from icft.likelihood import answer_nll

    model, tokenizer = tiny_llama
    examples = [Example.from_dict(r) for r in staged_records(4)]  # every kind
    result = evaluate_examples(model, PromptFormat(tokenizer), examples, EvalSettings(max_new_tokens=4))
    assert [r["id"] for r in result.items] == [ex.id for ex in examples]
    nll = answer_nll(model, tokenizer, [prompt_and_target(ex) for ex in examples], ScoreSettings(max_length=512))
    assert [r["answer_nll"] for r in result.items] == pytest.approx(nll)
    assert result.metrics["answer_nll"] == pytest.approx(sum(nll) / len(nll))
    hits = [r["hit"] for r in result.items if r["kind"] == "preference"]
    assert result.metrics["preference_accuracy"] == pytest.approx(sum(hits) / len(hits))
    missed = {r["id"] for r in result.items if r.get("hit") == 0}
    assert missed == {e["id"] for e in result.errors}
    open_items = [r for r in result.items if "rougeL" in r]
    assert {r["kind"] for r in open_items} == {"dialogue"} and all(isinstance(r["answer"], str) for r in open_items)
    assert result.metrics["rougeL"] == pytest.approx(sum(r["rougeL"] for r in open_items) / len(open_items))


def test_embedding_similarity_with_the_real_sentence_model():
    from sentence_transformers import SentenceTransformer

    from icft.models import embedded_model_path

    embedder = SentenceTransformer(str(embedded_model_path()), device="cpu")
    same = M.embedding_similarity(["Aspirin relieves pain."], ["Aspirin relieves pain."], embedder)
    close = M.embedding_similarity(["Aspirin relieves pain."], ["Aspirin is a painkiller."], embedder)
    far = M.embedding_similarity(["Aspirin relieves pain."], ["The train leaves at noon."], embedder)
    assert same == pytest.approx(1.0, abs=1e-5) and far < close < same


# ----------------------------------------------------------------------------------------------------------
# icft eval


def write_examples(path: Path, examples: list[Example]) -> Path:
    return write_jsonl(path, [ex.to_dict() for ex in examples])


def test_eval_command_rejects_bad_data(tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    assert eval_command(EvalRequest([str(missing)])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.jsonl" in err and "no such file" in err
    assert "Traceback" not in err

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "kind": "qa", "source": "s", "question": "Q?", "answer": "A"}\n{"id": "b", "kind"\n')
    assert eval_command(EvalRequest([str(bad)])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.jsonl:2" in err and "invalid JSON" in err
    assert "Traceback" not in err


def test_eval_command_rejects_bad_run_dir_and_model(tmp_path, capsys):
    data = str(write_examples(tmp_path / "d.jsonl", choice_examples()[:1]))
    assert eval_command(EvalRequest([data], run_dir=str(tmp_path / "no-run"))) == 2
    assert "not a run folder (no such folder)" in capsys.readouterr().err
    (tmp_path / "run").mkdir()
    assert eval_command(EvalRequest([data], run_dir=str(tmp_path / "run"))) == 2
    assert "config.yaml" in capsys.readouterr().err
    (tmp_path / "run" / "config.yaml").write_text("model:\n  name: x\n")
    assert eval_command(EvalRequest([data], run_dir=str(tmp_path / "run"))) == 2
    err = capsys.readouterr().err
    assert "adapter not found" in err and "Traceback" not in err
    assert eval_command(EvalRequest([data], model=str(tmp_path / "no-model"))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: could not load model") and "Traceback" not in err


def test_eval_command_on_a_run_writes_json_and_errors(tiny_llama_dir, tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from icft.models import load_model

    run = tmp_path / "run"
    base, _ = load_model(str(tiny_llama_dir))
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(base, lora).save_pretrained(run / "adapter")
    (run / "config.yaml").write_text(f"model:\n  name: {tiny_llama_dir}\n")
    turns = [{"role": "user", "content": "My knee hurts."}, {"role": "assistant", "content": "Rest it."}]
    dialogue = Example.from_dict({"id": "d", "kind": "dialogue", "source": "chat", "turns": turns})
    mc = write_examples(tmp_path / "mc.jsonl", [*choice_examples(), dialogue])
    out = tmp_path / "out" / "scores.json"

    assert eval_command(EvalRequest([str(mc)], run_dir=str(run), json_path=str(out), batch_size=8)) == 0
    printed = capsys.readouterr().out
    table = {row["file"]: row for row in read_text(printed)}
    assert list(table["mc.jsonl"])[:3] == ["file", "n", "accuracy"] and table["mc.jsonl"]["n"] == "11"
    scores = json.loads(out.read_text())
    assert set(scores) == {"mc.jsonl"}
    assert scores["mc.jsonl"]["n_examples"] == 11
    assert {"rougeL", "embedding_similarity"} <= set(scores["mc.jsonl"])  # generated through the adapter
    assert 0.0 <= scores["mc.jsonl"]["accuracy"] <= 1.0 and "tier=1" in scores["mc.jsonl"]["accuracy_by"]
    # the floors the printed table shows, on the same items: a uniform guess between two options is 0.5
    floors = scores["mc.jsonl"]["baselines"]
    assert set(floors) == {"random", "majority", "position-prior"}
    assert floors["random"]["preference_accuracy"] == pytest.approx(0.5)
    assert float(table["mc.jsonl"]["accuracy"]) == pytest.approx(scores["mc.jsonl"]["accuracy"], abs=5e-5)
    for name, values in floors.items():
        assert float(table[f"mc.jsonl [{name}]"]["accuracy"]) == pytest.approx(values["accuracy"], abs=5e-5)
    errors = [json.loads(x) for x in (out.parent / "scores.errors.jsonl").read_text().splitlines()]
    n_wrong = round(10 - 8 * scores["mc.jsonl"]["accuracy"] - 2 * scores["mc.jsonl"]["preference_accuracy"])
    assert len(errors) == n_wrong and all(e["file"] == "mc.jsonl" for e in errors)


def test_single_token_candidates_share_a_pass_and_score_the_same(tiny_llama):
    from icft.likelihood import score_pairs

    model, tokenizer = tiny_llama
    prompt = "Question: is the sky blue?\nAnswer:"
    pairs = [(prompt, " yes"), (prompt, " no"), (prompt, " maybe"), (prompt, " it depends on the weather")]
    settings = ScoreSettings(max_length=64)
    grouped = score_pairs(model, tokenizer, pairs, settings)
    one_by_one = [score_pairs(model, tokenizer, [pair], settings)[0] for pair in pairs]
    assert grouped == pytest.approx(one_by_one, abs=1e-5)
    assert len(set(round(x, 4) for x in grouped)) == 4
