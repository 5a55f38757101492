"""Batched generation (left padding) on the embedded BERT decoder, tiny Llama and GPT-2, and `icft generate`."""

from __future__ import annotations

import json

import pytest
from _inference_run import trained_run

from icft.cli import main
from icft.data.prompt_format import PromptFormat
from icft.inference.generate import Engine, InputError, cut_at_stop
from icft.models import load_model

PROMPTS = ["Question: What is asthma?\nAnswer:", "Hi", "Patient: I have had a cough for three weeks now.\nDoctor:"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama_dir, staged_data):
    return trained_run(tmp_path_factory, tiny_llama_dir, staged_data)


@pytest.mark.parametrize("which", [pytest.param("minilm-decoder", marks=pytest.mark.slow), "llama", "gpt2"])
def test_batched_greedy_equals_one_by_one(which, tiny_llama_dir, tiny_gpt2_dir):
    name = {"minilm-decoder": "minilm-decoder", "llama": str(tiny_llama_dir), "gpt2": str(tiny_gpt2_dir)}[which]
    engine = Engine(*load_model(name), name=which)
    prompts = [engine.completion_prompt(p, 8) for p in PROMPTS]
    assert len({len(p.ids) for p in prompts}) == 3  # different lengths: the batch needs padding
    batched = engine.generate(prompts, max_new_tokens=8)
    single = [engine.generate([p], max_new_tokens=8)[0] for p in prompts]
    assert [c.text for c in batched] == [c.text for c in single]
    for c in batched:
        assert c.completion_tokens <= 8 and c.finish_reason in ("stop", "length")
        assert c.finish_reason == "stop" or c.completion_tokens == 8
    if which == "minilm-decoder":  # [SEP] is its end of sequence
        assert engine.eos_ids[0] == engine.tokenizer.sep_token_id


def test_sampling_and_stop_strings(tiny_gpt2_dir):
    import torch

    engine = Engine(*load_model(str(tiny_gpt2_dir)), name="gpt2")
    prompt = engine.completion_prompt("Once upon a time", 12)
    torch.manual_seed(1)
    a = engine.generate([prompt], 12, temperature=1.0)[0]
    torch.manual_seed(1)
    b = engine.generate([prompt], 12, temperature=1.0)[0]
    assert a.text == b.text and a.completion_tokens == 12  # a random model rarely says EOS
    greedy = engine.generate([prompt], 12)[0].text
    word = greedy.split()[1]
    stopped = engine.generate([prompt], 12, stop=[word])[0]
    assert stopped.finish_reason == "stop" and word not in stopped.text and greedy.startswith(stopped.text)
    assert cut_at_stop("a b c", ["c", "b"]) == ("a ", True) and cut_at_stop("abc", None) == ("abc", False)


def test_chat_prompt_uses_the_template_or_patient_doctor(tiny_llama_dir):
    model, tokenizer = load_model(str(tiny_llama_dir))
    engine = Engine(model, tokenizer, name="llama")
    messages = [{"role": "user", "content": "I cough."}, {"role": "assistant", "content": "Since when?"},
                {"role": "user", "content": "A week."}]  # fmt: skip
    assert engine.chat_text(messages) == "Patient: I cough.\nDoctor: Since when?\nPatient: A week.\nDoctor:"
    tokenizer.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}<assistant>"
    chat = Engine(model, tokenizer, name="llama")  # a base model is asked as its tokenizer calls for (auto)
    assert chat.chat_text(messages) == "<user>I cough.<assistant>Since when?<user>A week.<assistant>"
    plain = Engine(model, tokenizer, name="llama", fmt=PromptFormat(tokenizer, "plain"))  # e.g. a run trained plain
    assert plain.chat_text(messages) == engine.chat_text(messages)


def test_prompt_too_long_is_refused_or_cut(tiny_llama_dir):
    engine = Engine(*load_model(str(tiny_llama_dir)), name="llama")  # 256 positions
    prompt = engine.completion_prompt("word " * 300, 16)
    with pytest.raises(InputError, match="maximum context length is 256"):
        engine.check_room(prompt, 16)
    cut = engine.truncate(prompt, 16)
    assert len(cut.ids) == 240 and cut.ids[-1] == prompt.ids[-1]
    assert engine.generate([cut], 16)[0].prompt_tokens == 240


def test_generate_command_writes_answers_with_retrieved_ids(run, staged_data, tmp_path, capsys):
    out = tmp_path / "answers.json"
    args = ["generate", "--run", str(run), "--data", str(staged_data[0]), "--retrieve", "2",
            "--max-new-tokens", "6", "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    result = json.loads(out.read_text())
    answers = result["answers"]
    assert result["settings"]["retrieve"] == 2 and result["model"] == run.name
    assert len(answers) == 27  # the 36 fixture records less the 9 text ones
    for a in answers:
        assert {"id", "prompt", "answer", "reference", "retrieved", "finish_reason"} <= set(a)
        assert len(a["retrieved"]) == 2 and a["completion_tokens"] <= 6
        assert all(-1 <= h["score"] <= 1 and h["id"] != a["id"] for h in a["retrieved"])
        # the Context block opens the prompt, or the question / patient field where the template has a label
        assert a["prompt"].split("Context: ")[0] in ("", "Question: ", "Patient: ")
    assert "retrieved:" in capsys.readouterr().out


def test_generate_prompt_and_bad_input(tiny_gpt2_dir, tmp_path, capsys):
    assert main(["generate", "--model", str(tiny_gpt2_dir), "--prompt", "Hello", "--prompt", "Bye",
                 "--max-new-tokens", "3"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "[prompt-0]" in out and "[prompt-1]" in out
    assert main(["generate", "--run", str(tmp_path / "none"), "--prompt", "x"]) == 2
    assert "not a run folder (no such folder)" in capsys.readouterr().err
    assert main(["generate", "--model", str(tiny_gpt2_dir), "--prompt", "x", "--retrieve", "2"]) == 2
    assert "--retrieve needs" in capsys.readouterr().err
