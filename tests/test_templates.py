"""Prompt templates: plain (unchanged) and the model's own chat template, down to which tokens are labelled."""

from __future__ import annotations

import pytest
import torch

from icft.data.formatting import candidates, chat_messages, end_of_turn, prompt_and_target, reference, resolve_template
from icft.data.prompt_format import PromptFormat
from icft.data.schema import Example
from icft.data.tokenize import IGNORE_INDEX, encode_pair

QA = Example(id="q", kind="qa", source="t", context="Fever and rash.", question="Which is likely?",
             options=["measles", "gout"], answer=0)  # fmt: skip
OPEN_QA = Example(id="o", kind="qa", source="t", question="What lowers fever?", answer="Paracetamol.")
PREF = Example(id="p", kind="preference", source="t", prompt="Chest pain?", chosen="Call an ambulance.",
               rejected="Sleep it off.")  # fmt: skip
DIALOGUE = Example(id="d", kind="dialogue", source="t", turns=[
    {"role": "user", "content": "I cough."}, {"role": "assistant", "content": "Since when?"},
    {"role": "user", "content": "Two weeks."}, {"role": "assistant", "content": "See a doctor soon."}])  # fmt: skip
TEXT = Example(id="t", kind="text", source="t", text="The heart pumps blood.")


def ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def labelled(pair) -> list[int]:
    return [x for x in pair.labels if x != IGNORE_INDEX]


# ------------------------------------------------------------------------------------------------ plain


def test_plain_pairs_are_unchanged():
    # The exact strings of the plain template, pinned: runs and caches from before chat support stay valid.
    assert prompt_and_target(QA) == (
        "Context: Fever and rash.\nQuestion: Which is likely?\nOptions: (A) measles (B) gout\nAnswer:", " measles"
    )
    assert prompt_and_target(OPEN_QA) == ("Question: What lowers fever?\nAnswer:", " Paracetamol.")
    assert prompt_and_target(PREF) == ("Question: Chest pain?\nAnswer:", " Call an ambulance.")
    assert prompt_and_target(PREF, answer="rejected") == ("Question: Chest pain?\nAnswer:", " Sleep it off.")
    assert prompt_and_target(DIALOGUE) == (
        "Patient: I cough.\nDoctor: Since when?\nPatient: Two weeks.\nDoctor:", " See a doctor soon."
    )
    assert prompt_and_target(TEXT) == ("", "The heart pumps blood.")
    assert candidates(QA) == (prompt_and_target(QA)[0], [" measles", " gout"], 0)
    assert candidates(PREF) == ("Question: Chest pain?\nAnswer:", [" Call an ambulance.", " Sleep it off."], 0)
    assert reference(DIALOGUE) == "See a doctor soon."
    with pytest.raises(ValueError, match="no candidates"):
        candidates(OPEN_QA)


def test_plain_encoding_adds_bos_and_eos(chat_tokenizer):
    # A tokenizer with a chat template still encodes plain pairs the plain way when told to.
    tok = chat_tokenizer
    prompt, target = prompt_and_target(QA)
    pair = encode_pair(tok, prompt, target, 256)
    assert pair.input_ids == [tok.bos_token_id] + ids(tok, prompt) + ids(tok, target) + [tok.eos_token_id]
    assert labelled(pair) == ids(tok, target) + [tok.eos_token_id]
    assert encode_pair(tok, prompt, target, 256, add_eos=False).input_ids == pair.input_ids[:-1]


# ------------------------------------------------------------------------------------------------- chat


def test_resolve_template(chat_tokenizer, bert_tokenizer):
    assert resolve_template(chat_tokenizer, "auto") == "chat"
    assert resolve_template(bert_tokenizer, "auto") == "plain"
    assert resolve_template(chat_tokenizer, "plain") == "plain"
    assert resolve_template(None, "auto") == "plain"
    with pytest.raises(ValueError, match="no chat template"):
        resolve_template(bert_tokenizer, "chat")
    with pytest.raises(ValueError, match="data.template"):
        resolve_template(chat_tokenizer, "llama")


def test_chat_qa_labels_exactly_the_assistant_turn(chat_tokenizer):
    tok = chat_tokenizer
    prompt, target = prompt_and_target(QA, tok, "chat")
    assert prompt == ("[CLS]<|user|>Context: Fever and rash.\nQuestion: Which is likely?\n"
                      "Options: (A) measles (B) gout<|end|><|assistant|>")  # fmt: skip
    assert target == "measles<|end|>"
    pair = encode_pair(tok, prompt, target, 256, template="chat")  # add_eos=True, as in training: no EOS
    end, assistant = tok.convert_tokens_to_ids(["<|end|>", "<|assistant|>"])
    assert pair.input_ids.count(tok.bos_token_id) == 1 and pair.input_ids[0] == tok.bos_token_id
    assert tok.eos_token_id not in pair.input_ids
    # Token by token: everything up to and including <|assistant|> is masked, then the answer and <|end|>.
    first = pair.input_ids.index(assistant) + 1
    assert all(x == IGNORE_INDEX for x in pair.labels[:first])
    assert pair.labels[first:] == pair.input_ids[first:] == ids(tok, "measles") + [end]
    # The pair is the full rendering, cut in two.
    assert prompt + target == tok.apply_chat_template(chat_messages(QA), tokenize=False)


def test_chat_dialogue_labels_only_the_last_assistant_turn(chat_tokenizer):
    tok = chat_tokenizer
    prompt, target = prompt_and_target(DIALOGUE, tok, "chat")
    assert prompt == "[CLS]<|user|>I cough.<|end|><|assistant|>Since when?<|end|><|user|>Two weeks.<|end|><|assistant|>"
    pair = encode_pair(tok, prompt, target, 256, template="chat")
    assert labelled(pair) == ids(tok, "See a doctor soon.") + tok.convert_tokens_to_ids(["<|end|>"])
    # the earlier assistant turn is context, not a target
    since = ids(tok, "Since when?")
    start = next(i for i in range(len(pair.input_ids)) if pair.input_ids[i : i + len(since)] == since)
    assert all(x == IGNORE_INDEX for x in pair.labels[start : start + len(since)])


def test_chat_preference_and_truncation_keep_the_answer(chat_tokenizer):
    tok = chat_tokenizer
    assert prompt_and_target(PREF, tok, "chat") == ("[CLS]<|user|>Chest pain?<|end|><|assistant|>",
                                                    "Call an ambulance.<|end|>")  # fmt: skip
    prompt, target = prompt_and_target(PREF, tok, "chat", answer="rejected")
    assert target == "Sleep it off.<|end|>"
    short = encode_pair(tok, prompt, target, 8, template="chat")  # the prompt loses its start
    assert len(short.input_ids) == 8 and labelled(short) == ids(tok, target)


def test_chat_text_examples_stay_plain(chat_tokenizer):
    tok = chat_tokenizer
    plain = encode_pair(tok, *prompt_and_target(TEXT), 64)
    chat = encode_pair(tok, *prompt_and_target(TEXT, tok, "chat"), 64, template="chat")
    assert chat.input_ids == plain.input_ids and chat.labels == plain.labels


def test_chat_candidates_are_bare_answers(chat_tokenizer):
    tok = chat_tokenizer
    prompt, cands, gold = candidates(QA, tok, "chat")
    assert prompt == prompt_and_target(QA, tok, "chat")[0] and cands == ["measles", "gout"] and gold == 0
    pair = encode_pair(tok, prompt, cands[1], 256, add_eos=False, template="chat")
    assert labelled(pair) == ids(tok, "gout")  # no end-of-turn, no EOS: exactly the answer tokens
    assert end_of_turn(tok) == "<|end|>"


def test_reference_is_the_bare_answer_in_any_template(chat_tokenizer):
    assert reference(OPEN_QA) == "Paracetamol."


# ------------------------------------------------------------------------------- scoring and generation


@pytest.fixture(scope="module")
def chat_llama(chat_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(chat_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=chat_tokenizer.pad_token_id)  # fmt: skip
    return LlamaForCausalLM(config).eval()


def test_chat_scoring_scores_exactly_the_answer_tokens(chat_tokenizer, chat_llama):
    from icft.evaluation.scoring import score_choices

    tok = chat_tokenizer
    (scored,) = score_choices(chat_llama, PromptFormat(tok, "chat"), [QA])
    prompt, cands, _ = candidates(QA, tok, "chat")
    for cand, got in zip(cands, scored.logprobs):
        seq = ids(tok, prompt) + ids(tok, cand)
        with torch.no_grad():
            logp = chat_llama(input_ids=torch.tensor([seq])).logits[0].log_softmax(-1)
        n = len(ids(tok, cand))
        expected = sum(logp[len(seq) - n - 1 + i, seq[len(seq) - n + i]].item() for i in range(n))
        assert got == pytest.approx(expected, abs=1e-4)


def test_chat_generation_adds_no_bos_and_stops_at_end_of_turn(chat_tokenizer, chat_llama, monkeypatch):
    from icft.evaluation.generation import generate_answers

    tok = chat_tokenizer
    seen = {}
    real = chat_llama.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(chat_llama, "generate", spy)
    prompt = prompt_and_target(OPEN_QA, tok, "chat")[0]
    (answer,) = generate_answers(chat_llama, PromptFormat(tok, "chat"), [prompt], max_new_tokens=3)
    assert seen["input_ids"][0].tolist() == ids(tok, prompt)  # one BOS: the one the template wrote
    assert seen["eos_token_id"] == [tok.eos_token_id, tok.convert_tokens_to_ids("<|end|>")]
    assert isinstance(answer, str)
    generate_answers(chat_llama, PromptFormat(tok, "plain"), [prompt_and_target(OPEN_QA)[0]], max_new_tokens=1)
    assert seen["input_ids"][0, 0].item() == tok.bos_token_id and seen["eos_token_id"] == [tok.eos_token_id]


def test_compare_tests_a_chat_model_in_its_chat_format(chat_tokenizer, chat_llama, tmp_path):
    """`icft compare` scores a model in the format it was trained in, through the one evaluation path: its
    per-item results are those of `evaluate_examples` with the chat template, not the plain one (it once
    scored every model on plain prompts with half the answer budget)."""
    import json

    from icft.config import load_config
    from icft.evaluation.evaluate import evaluate_examples
    from icft.io import write_jsonl
    from icft.recipes import compare as C

    model_dir = tmp_path / "chat-model"
    chat_llama.save_pretrained(model_dir)
    chat_tokenizer.save_pretrained(model_dir)
    data = tmp_path / "test.jsonl"
    write_jsonl(data, [ex.to_dict() for ex in (QA, OPEN_QA, PREF, DIALOGUE)])
    config = load_config(None, [f"model.name={model_dir}", "model.max_length=128", f"compare.test=[{data}]"])
    C.evaluate_run(config, C.Point("base", 0, C.method_config(config, "base", 0)), tmp_path / "out")
    items = json.loads((tmp_path / "out" / "items.json").read_text())["test"]

    def per_item(template: str) -> dict:
        fmt = PromptFormat(chat_tokenizer, template, max_length=128)
        result = evaluate_examples(chat_llama, fmt, [QA, OPEN_QA, PREF, DIALOGUE])
        return C.file_summary(result)[1]

    chat, plain = per_item("chat"), per_item("plain")
    assert items["answer_nll"] == pytest.approx(chat["answer_nll"])
    assert items["rougeL"] == pytest.approx(chat["rougeL"])
    assert items["accuracy"] == chat["accuracy"]
    assert items["answer_nll"] != pytest.approx(plain["answer_nll"])
