"""Shared fixtures: tiny random-weight models saved to disk, and a small staged data set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# The icft home the tests start from: the embedded model's one conversion is kept there and shared.
_HOME = Path(os.environ.get("ICFT_HOME") or Path.home() / ".cache" / "icft")


@pytest.fixture(autouse=True)
def icft_home(tmp_path_factory, monkeypatch) -> Path:
    """Each test gets an ICFT_HOME of its own, so a difficulty score cached by one test never answers another;
    its models/ links to the shared one, so SmolLM2's GGUF is converted once, not per test."""
    home = tmp_path_factory.mktemp("icft-home")  # not in tmp_path: tests list what they write there
    (_HOME / "models").mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(_HOME / "models", target_is_directory=True)
    monkeypatch.setenv("ICFT_HOME", str(home))
    return home


def write_jsonl(path: Path, records: list) -> Path:
    """Records as JSON lines, the folder made if need be (tests import it: `from conftest import write_jsonl`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def bert_tokenizer():
    from transformers import AutoTokenizer

    from icft.models import embedded_model_path

    return AutoTokenizer.from_pretrained(embedded_model_path())


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, bert_tokenizer) -> Path:
    """A random-weight Llama (2 layers, width 32) with the embedded default's tokenizer, saved like a hub model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(bert_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=bert_tokenizer.pad_token_id, tie_word_embeddings=True)  # fmt: skip
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    bert_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    """(model, tokenizer) of tiny_llama_dir, loaded once per test module (tests may change its mode)."""
    from icft.models import load_model

    return load_model(str(tiny_llama_dir))


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory, bert_tokenizer) -> Path:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(bert_tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=256)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    GPT2LMHeadModel(config).save_pretrained(path)
    bert_tokenizer.save_pretrained(path)
    return path


def staged_records(n_per_stage: int = 12) -> list[dict]:
    """Examples of every kind in three stages, made up so that the tests need no bundled data."""
    records = []
    for stage in ("general", "knowledge", "clinical"):
        for i in range(n_per_stage):
            base = {"source": f"fixture-{stage}", "stage": stage}
            k = i % 4
            if k == 0:
                records.append({**base, "id": f"{stage}-{i}", "kind": "text",
                                "text": f"Fact {i} of the {stage} stage: water boils at one hundred degrees."})
            elif k == 1:
                records.append({**base, "id": f"{stage}-{i}", "kind": "qa", "question": f"Which is item {i}?",
                                "options": ["red", "green", "blue", "white"], "answer": i % 4})
            elif k == 2:
                records.append({**base, "id": f"{stage}-{i}", "kind": "preference", "prompt": f"Treat case {i}?",
                                "chosen": "Refer to a doctor and test first.", "rejected": "Ignore it."})
            else:
                records.append({**base, "id": f"{stage}-{i}", "kind": "dialogue", "turns": [
                    {"role": "user", "content": f"I have had a cough for {i} days."},
                    {"role": "assistant", "content": "See your doctor if it lasts over three weeks."}]})
    return records  # fmt: skip


@pytest.fixture(scope="session")
def staged_data(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("staged-data")
    records = staged_records()
    train, val = folder / "train.jsonl", folder / "validation.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in records))
    val.write_text("".join(json.dumps({**r, "id": r["id"] + "-val"}) + "\n" for r in records[::2]))
    return train, val


# A chat template with its own turn markers and BOS, on the embedded tokenizer (test_templates, test_kinds).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="session")
def chat_tokenizer(tmp_path_factory, bert_tokenizer):
    """The embedded tokenizer with turn markers, a BOS and a chat template, saved and loaded like a hub one."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bert_tokenizer.name_or_path)
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|end|>"]})
    tok.bos_token, tok.eos_token = "[CLS]", "[SEP]"
    tok.chat_template = CHAT_TEMPLATE
    path = tmp_path_factory.mktemp("chat-tokenizer")
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)
