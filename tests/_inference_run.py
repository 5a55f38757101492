"""One tiny trained run shared by the tests/test_inference_*.py modules (trained once per session).

A session fixture in one test module is not visible to the others without conftest.py, so the run is cached
here, in a module every inference test imports: the first caller trains it, the rest reuse the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

_RUN: dict[str, Path] = {}

QUESTIONS = [
    {"id": "kb-france", "kind": "qa", "source": "kb", "question": "What is the capital of France?", "answer": "Paris"},
    {"id": "kb-insulin", "kind": "text", "source": "kb",
     "text": "Insulin is a hormone made by the pancreas that lowers blood glucose."},
    {"id": "kb-aspirin", "kind": "qa", "source": "kb", "question": "Which drug is acetylsalicylic acid?",
     "answer": "Aspirin"},
]  # fmt: skip


def tiny_settings(model_dir: Path, data: tuple[Path, Path], **overrides) -> dict:
    """`--set` pairs of a 6-step run on the tiny model and the staged fixture data, with `overrides`."""
    train, val = data
    pairs = {
        "model.name": str(model_dir), "model.max_length": 48, "data.train": f"[{train}]",
        "data.validation": f"[{val}]", "train.max_steps": 6, "train.batch_size": 4, "train.log_every": 1,
        "train.save_every": 100, "train.eval_max_examples": 4, "memory.ltm_capacity": 6,
        "memory.stm_capacity": 8, "train.lr": 0.01,
    }  # fmt: skip
    return {**pairs, **overrides}


def trained_run(tmp_path_factory: pytest.TempPathFactory, model_dir: Path, data: tuple[Path, Path]) -> Path:
    """`icft train` on the tiny Llama and the staged fixture data, 6 steps: adapter, memory/, stage_eval.json."""
    if "run" in _RUN:
        return _RUN["run"]
    from icft.cli import main

    root = tmp_path_factory.mktemp("inference-run")
    pairs = tiny_settings(model_dir, data, **{"train.log_every": 3, "train.save_every": 6, "memory.ltm_capacity": 12})
    args = [x for k, v in pairs.items() for x in ("--set", f"{k}={v}")]
    assert main(["train", *args, "--output-dir", str(root / "run")]) == 0
    _RUN["run"] = root / "run"
    return _RUN["run"]


def knowledge_file(folder: Path) -> Path:
    path = folder / "knowledge.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in QUESTIONS))
    return path


def train_plain_run_on_chat_model(root: Path, chat_tokenizer, staged_data, max_length: int) -> Path:
    """A 3-step run trained with data.template=plain on a tiny Llama whose tokenizer has a chat template (so
    `auto` would give chat): the case where a run's saved format, not the tokenizer, must decide."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from icft.cli import main

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(chat_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=chat_tokenizer.pad_token_id, tie_word_embeddings=True)  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(root / "model")
    chat_tokenizer.save_pretrained(root / "model")
    train, val = staged_data
    pairs = {"model.name": str(root / "model"), "model.max_length": max_length, "data.template": "plain",
             "data.train": f"[{train}]", "data.validation": f"[{val}]", "train.max_steps": 3,
             "train.batch_size": 4, "train.save_every": 3, "train.eval_max_examples": 2,
             "memory.ltm_capacity": 6, "memory.stm_capacity": 4}  # fmt: skip
    args = [x for k, v in pairs.items() for x in ("--set", f"{k}={v}")]
    assert main(["train", *args, "--output-dir", str(root / "run")]) == 0
    return root / "run"
