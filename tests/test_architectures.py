"""The architectures icft supports, each as a tiny random-weight model built from its config (no hub).

For every one: LoRA targets are found (attention and all-linear), a LoRA forward/backward trains the
adapter, `generate` runs, merging the adapter keeps the logits, and `icft train` completes with memory on.
Qwen2 gets a ChatML byte-level BPE tokenizer of its own (transformers 5 loads any qwen2 folder's tokenizer as
`Qwen2Tokenizer`, whatever class was saved), so the matrix also trains one model through its chat template.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from icft.models import MINILM_DECODER, extra_trainable_modules, load_model, resolve_target_modules

# name -> (config class, extra config fields, LoRA layers per block with attention, with all-linear)
TINY = {
    "llama": ("LlamaConfig", {}, 2, 7),
    "qwen2": ("Qwen2Config", {}, 2, 7),
    "mistral": ("MistralConfig", {"sliding_window": None}, 2, 7),
    "gemma": ("GemmaConfig", {"head_dim": 16}, 2, 7),
    "gpt2": ("GPT2Config", {}, 1, 4),  # c_attn; + attn.c_proj, mlp.c_fc, mlp.c_proj
}
ARCHITECTURES = [*TINY, "minilm-decoder"]
BERT_PER_BLOCK = (2, 6)  # query, value; + key, attention.output.dense, intermediate.dense, output.dense


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chatml_tokenizer():
    """A 400-token byte-level BPE learned from the fixture records, with Qwen's ChatML markers."""
    from conftest import staged_records
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    texts = [" ".join(v for v in r.values() if isinstance(v, str)) for r in staged_records()]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, bert_tokenizer) -> dict[str, str]:
    """Each architecture saved like a hub model (2 blocks, width 32) with a tokenizer."""
    import transformers

    dirs = {MINILM_DECODER: MINILM_DECODER}
    for name, (config_cls, extra, _, _) in TINY.items():
        tokenizer = chatml_tokenizer() if name == "qwen2" else bert_tokenizer
        common = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id}
        if name == "gpt2":
            sizes = {"n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 256}
        else:
            sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "max_position_embeddings": 256}  # fmt: skip
        config = getattr(transformers, config_cls)(**common, **sizes, **extra)
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(f"tiny-{name}")
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[name] = str(path)
    return dirs


def per_block(name: str) -> tuple[int, int]:
    return BERT_PER_BLOCK if name == MINILM_DECODER else TINY[name][2:]


def lora_model(path: str, targets: str = "attention"):
    """The model with a LoRA adapter whose B matrices are not zero, so the adapter changes the outputs."""
    from peft import LoraConfig, get_peft_model

    model, tokenizer = load_model(path, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=resolve_target_modules(model, targets),
                        modules_to_save=extra_trainable_modules(model) or None, init_lora_weights=False,
                        task_type="CAUSAL_LM")  # fmt: skip
    torch.manual_seed(0)
    return get_peft_model(model, config), tokenizer


def adapted_modules(model) -> set[str]:
    return {n.split(".lora_A.")[0] for n, _ in model.named_parameters() if ".lora_A." in n}


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_lora_targets_are_found(name, model_dirs):
    blocks = 6 if name == MINILM_DECODER else 2
    for targets, expected in zip(("attention", "all-linear"), per_block(name)):
        model, _ = lora_model(model_dirs[name], targets)
        adapted = adapted_modules(model)
        assert len(adapted) == blocks * expected, (targets, sorted(adapted))
        assert not any(n.endswith(("lm_head", "transform.dense")) for n in adapted)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_lora_backward_generate_and_merge(name, model_dirs):
    model, tokenizer = lora_model(model_dirs[name], "all-linear")
    ids = tokenizer(["Refer to a doctor and test first."], return_tensors="pt", add_special_tokens=False)
    input_ids = ids["input_ids"]

    model.train()
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None and torch.isfinite(g).all() for g in lora_grads)
    assert all(g.abs().sum() > 0 for g in lora_grads)
    assert all(p.grad is None for n, p in model.named_parameters() if not p.requires_grad)

    model.eval()
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=4,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    assert out.shape[0] == 1 and input_ids.shape[1] < out.shape[1] <= input_ids.shape[1] + 4

    with torch.no_grad():
        adapted = model(input_ids=input_ids).logits
        base = model.get_base_model()
        with model.disable_adapter():
            plain = model(input_ids=input_ids).logits
        merged = model.merge_and_unload()
        assert merged is base or not hasattr(merged, "peft_config")
        after = merged(input_ids=input_ids).logits
    assert (adapted - plain).abs().max() > 1e-3  # the adapter matters, so the merge is tested
    assert (adapted - after).abs().max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_icft_train_with_memory(name, model_dirs, staged_data, tmp_path, monkeypatch, capsys):
    from icft.cli import main

    train, val = staged_data
    pairs = {
        "model.name": model_dirs[name], "model.max_length": 48, "data.train": f"[{train}]",
        "data.validation": f"[{val}]", "train.max_steps": 4, "train.batch_size": 4, "train.log_every": 1,
        "train.save_every": 2, "train.eval_max_examples": 4, "memory.enabled": "true", "memory.ltm_capacity": 8,
        "memory.stm_capacity": 8, "peft.target_modules": "all-linear",
    }  # fmt: skip
    run = tmp_path / "run"
    args = [x for k, v in pairs.items() for x in ("--set", f"{k}={v}")]
    assert main(["train", *args, "--output-dir", str(run)]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss_total"])) for r in records)
    assert any(r["loss_consistency"] > 0 or r["loss_finetune"] > 0 for r in records)  # memory replay ran
    adapter = json.loads(Path(run / "adapter" / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA"
    template = "chat" if name == "qwen2" else "plain"
    assert f"prompt template {template}" in capsys.readouterr().out

    # Killed after step 2 (its last checkpoint), resumed: the same adapter as the run that went straight on.
    import shutil

    from safetensors.torch import load_file

    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-000004")
    shutil.rmtree(resumed / "adapter")
    assert main(["train", "--resume", str(resumed)]) == 0
    a, b = (load_file(r / "adapter" / "adapter_model.safetensors") for r in (run, resumed))
    assert a.keys() == b.keys() and max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5

    # icft eval on the run: base model + adapter, the run's prompt template, the trivial baselines beside it.
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--data", str(val), "--max-examples", "8"]) == 0
    assert "[position-prior]" in capsys.readouterr().out
