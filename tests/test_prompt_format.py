"""One prompt format: every path that turns an example or a conversation into tokens gives the same prompt.

For one example of each kind, with a chat-template tokenizer (in both templates) and a plain one, the prompt
tokens are compared across training (`TokenCache`), stage evaluation (`stage_row`), `icft eval` / `icft
compare` (`evaluate_examples`: scoring, generation, answer NLL), `icft generate --data`, and the chat and
serve engine (`Engine.chat_prompt`, `icft chat`'s fitted prompt) for the same question as a conversation.
Then a run trained plain on a chat tokenizer saves its format, loads it back through `Run.from_pretrained`,
and is served plain.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from _inference_run import train_plain_run_on_chat_model
from transformers import GenerationConfig

import icft.likelihood
from icft.data.formatting import chat_messages
from icft.data.kinds import is_choice, kind_of
from icft.data.prompt_format import PromptFormat
from icft.data.schema import Example
from icft.data.tokenize import TokenizedPair
from icft.evaluation.evaluate import evaluate_examples
from icft.evaluation.stage_eval import stage_row
from icft.inference.chat import _fitting_prompt
from icft.inference.generate import Engine
from icft.recipes.train import TokenCache
from icft.runs import PROMPT_FORMAT_FILE, Run, load_prompt_format

MC = Example(id="mc", kind="qa", source="t", context="Fever and rash.", question="Which is likely?",
             options=["measles", "gout"], answer=0)  # fmt: skip
OPEN = Example(id="open", kind="qa", source="t", question="What lowers fever?", answer="Paracetamol.")
PREF = Example(id="pref", kind="preference", source="t", prompt="Chest pain?", chosen="Call an ambulance.",
               rejected="Sleep it off.")  # fmt: skip
DIALOGUE = Example(id="dialogue", kind="dialogue", source="t", turns=[
    {"role": "user", "content": "I cough."}, {"role": "assistant", "content": "Since when?"},
    {"role": "user", "content": "Two weeks."}, {"role": "assistant", "content": "See a doctor soon."}])  # fmt: skip
TEXT = Example(id="text", kind="text", source="t", text="The heart pumps blood.")
ASKING = [MC, OPEN, PREF, DIALOGUE]


class Recorder(torch.nn.Module):
    """Stands in for a model: keeps the prompt ids `generate` is given and answers with EOS at once."""

    def __init__(self, tokenizer):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(max_position_embeddings=4096)
        self.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id)
        self.prompts: list[list[int]] = []

    def generate(self, input_ids, attention_mask, eos_token_id, **kwargs):
        for row, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            self.prompts.append([t for t, m in zip(row, mask) if m])  # left padding off
        stop = ([eos_token_id] if isinstance(eos_token_id, int) else eos_token_id or [0])[0]  # [0]: no EOS at all
        return torch.cat([input_ids, torch.full((len(input_ids), 1), stop)], dim=1)


@pytest.fixture
def scored(monkeypatch) -> list[TokenizedPair]:
    """Every sequence scoring and answer NLL put through the model (likelihood.score_sequences)."""
    seen: list[TokenizedPair] = []

    def record(model, sequences, pad_id, settings=None, share_prompts=True, desc="scoring"):
        seen.extend(sequences)
        return [0.0] * len(sequences)

    monkeypatch.setattr(icft.likelihood, "score_sequences", record)
    return seen


def prompt_part(seq: TokenizedPair) -> list[int]:
    return seq.input_ids[: len(seq.input_ids) - seq.n_target]


def question(ex: Example) -> list[dict[str, str]]:
    """The example asked as a conversation: its chat messages but the answer."""
    return chat_messages(ex)[:-1]


FORMATS = [("chat_tokenizer", "chat"), ("chat_tokenizer", "plain"), ("bert_tokenizer", "plain")]


@pytest.mark.parametrize("which,template", FORMATS, ids=[f"{t}-{w.split('_')[0]}" for w, t in FORMATS])
def test_every_path_builds_the_same_prompt(which, template, request, scored):
    tokenizer = request.getfixturevalue(which)
    fmt = PromptFormat(tokenizer, template, max_length=256)
    model = Recorder(tokenizer)

    # training: the masked part of each supervised sequence
    cache = TokenCache(fmt)
    trained = {ex.id: prompt_part(cache.encode(ex)) for ex in [*ASKING, TEXT]}
    assert all(len(trained[ex.id]) > 5 for ex in ASKING)

    # stage evaluation (training's after-stage rows: choice scoring, answer NLL), and `icft eval` / `icft
    # compare` (evaluate_examples: choice scoring, generation of open answers, answer NLL), one example each
    for ex in [*ASKING, TEXT]:
        scored.clear()
        stage_row(model, fmt, [[ex]], max_examples=0)
        n_candidates = len(kind_of(ex).candidates(ex)[0]) if is_choice(ex) else 0
        assert len(scored) == n_candidates + 1  # each candidate, then the answer's NLL
        if kind_of(ex).asks:  # a text record asks nothing, so there is no prompt to compare
            model.prompts.clear()
            evaluate_examples(model, fmt, [ex])
            assert len(scored) == 2 * (n_candidates + 1)
            assert model.prompts == ([trained[ex.id]] if kind_of(ex).is_open(ex) else []), ex.id
        assert all(prompt_part(seq) == trained[ex.id] for seq in scored), ex.id

    # icft generate --data, and the conversation through icft chat and icft serve's /v1/chat/completions
    engine = Engine(model, tokenizer, "recorder", fmt=fmt)
    for ex in ASKING:
        assert engine.example_prompt(ex).ids == trained[ex.id], ex.id
        conversation = [engine.chat_prompt(question(ex), 8).ids, _fitting_prompt(engine, question(ex), 8).ids]
        if template == "chat" or kind_of(ex).name == "dialogue":
            assert conversation == [trained[ex.id]] * 2, ex.id
        else:
            # plain conversations are Patient/Doctor lines (what dialogue trains); a plain qa or preference
            # prompt is served as a completion (/v1/completions) of its own text
            assert engine.completion_prompt(fmt.prompt(ex), 8).ids == trained[ex.id], ex.id
    if tokenizer.bos_token_id is not None:  # a text example's prompt is its BOS, as an empty completion's
        assert engine.completion_prompt("", 8).ids == trained["text"] == [tokenizer.bos_token_id]


def test_conversation_rendering(chat_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, *question(DIALOGUE)]
    plain = PromptFormat(chat_tokenizer, "plain")
    lines = "Be brief.\nPatient: I cough.\nDoctor: Since when?\nPatient: Two weeks.\nDoctor:"
    assert plain.conversation(messages) == lines
    chat = PromptFormat(chat_tokenizer, "chat")
    assert chat.conversation(messages).startswith("[CLS]<|system|>Be brief.<|end|><|user|>I cough.")
    assert chat.conversation_ids(messages)[0] == chat_tokenizer.bos_token_id  # the template's own BOS, once
    assert plain.conversation_ids(messages)[0] == chat_tokenizer.bos_token_id  # plain adds it
    end = chat_tokenizer.convert_tokens_to_ids("<|end|>")
    assert chat.stop_ids() == [chat_tokenizer.eos_token_id, end] and plain.stop_ids() == [chat_tokenizer.eos_token_id]


def test_one_resolve_rule_and_json_round_trip(chat_tokenizer, bert_tokenizer):
    config = {"data": {"template": "auto"}, "model": {"name": "x", "max_length": 64}}
    assert PromptFormat.from_config(chat_tokenizer, config) == PromptFormat(chat_tokenizer, "chat", 64)
    assert PromptFormat.from_config(bert_tokenizer, config) == PromptFormat(bert_tokenizer, "plain", 64)
    assert PromptFormat.from_config(chat_tokenizer, {"data": {"template": "plain"}}).template == "plain"
    fmt = PromptFormat.resolve(chat_tokenizer, "chat", 96)
    assert fmt.to_json() == {"template": "chat", "max_length": 96}
    assert PromptFormat.from_json(chat_tokenizer, fmt.to_json()) == fmt
    with pytest.raises(ValueError, match="no chat template"):
        PromptFormat.from_json(bert_tokenizer, fmt.to_json())
    with pytest.raises(ValueError, match="template is plain or chat"):
        PromptFormat.from_json(bert_tokenizer, {"template": "auto", "max_length": 8})
    with pytest.raises(ValueError, match="needs a template and a max_length"):
        PromptFormat.from_json(bert_tokenizer, {"template": "plain"})


# ------------------------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def plain_run_on_chat_model(tmp_path_factory, chat_tokenizer, staged_data):
    """A run trained with data.template=plain on a model whose tokenizer has a chat template."""
    return train_plain_run_on_chat_model(tmp_path_factory.mktemp("plain-on-chat"), chat_tokenizer, staged_data,
                                         max_length=48)  # fmt: skip


def test_a_run_saves_its_format_and_loads_it_back(plain_run_on_chat_model):
    run_dir = plain_run_on_chat_model
    assert json.loads((run_dir / PROMPT_FORMAT_FILE).read_text()) == {"template": "plain", "max_length": 48}
    run = Run.from_pretrained(run_dir)
    assert run.format == PromptFormat(run.tokenizer, "plain", 48)
    assert run.tokenizer.chat_template  # the tokenizer could render chat; the run was trained plain
    assert run.config["data"]["template"] == "plain" and run.path == run_dir
    assert run.memory is not None and len(run.memory) > 0

    # a folder from before prompt_format.json: the format config.yaml resolves to, the same one
    saved = (run_dir / PROMPT_FORMAT_FILE).read_text()
    (run_dir / PROMPT_FORMAT_FILE).unlink()
    try:
        assert load_prompt_format(run_dir, run.tokenizer) == run.format
    finally:
        (run_dir / PROMPT_FORMAT_FILE).write_text(saved)


def test_a_run_trained_plain_on_a_chat_tokenizer_is_served_plain(plain_run_on_chat_model):
    from icft.evaluation.commands import load_for_eval

    engine = Engine.load(run=str(plain_run_on_chat_model))
    tok = engine.tokenizer
    assert engine.format.template == "plain"
    messages = [{"role": "user", "content": "I have had a cough for two weeks."}]
    expected = [tok.bos_token_id, *tok("Patient: I have had a cough for two weeks.\nDoctor:",
                                       add_special_tokens=False)["input_ids"]]  # fmt: skip
    assert engine.chat_prompt(messages, 8).ids == expected
    assert engine.chat_prompt(messages, 8).ids != PromptFormat(tok, "chat").conversation_ids(messages)
    assert load_for_eval(str(plain_run_on_chat_model), None).format.template == "plain"
    assert Engine.load(model=str(plain_run_on_chat_model.parent / "model")).format.template == "chat"  # base: auto
