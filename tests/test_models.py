"""Loading any causal LM from a local folder, the embedded models, and LoRA targets per architecture.

SmolLM2 (the default, converted from its GGUF) has its own module: tests/test_smollm2.py."""

from __future__ import annotations

import pytest
import torch

from icft.models import MINILM_DECODER, count_parameters, extra_trainable_modules, load_model, lora_target_modules


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_gpt2_dir"])
def test_load_local_causal_lm(fixture, request):
    path = request.getfixturevalue(fixture)
    model, tokenizer = load_model(str(path))
    assert tokenizer.pad_token is not None and tokenizer.eos_token is not None
    batch = tokenizer(["a short test"], return_tensors="pt", add_special_tokens=False)
    logits = model(input_ids=batch["input_ids"]).logits
    assert logits.shape == (1, batch["input_ids"].shape[1], len(tokenizer))


def test_lora_targets_per_architecture(tiny_llama_dir, tiny_gpt2_dir):
    from peft import LoraConfig, get_peft_model

    expected = {tiny_llama_dir: ["q_proj", "v_proj"], tiny_gpt2_dir: ["c_attn"]}
    for path, targets in expected.items():
        model, _ = load_model(str(path))
        assert lora_target_modules(model) == targets
        peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=targets, task_type="CAUSAL_LM"))
        trainable, total = count_parameters(peft_model)
        assert 0 < trainable < total


def test_minilm_decoder_is_a_deterministic_warm_started_decoder():
    model, tokenizer = load_model(MINILM_DECODER)
    again, _ = load_model(MINILM_DECODER)
    assert model.config.is_decoder and model.config.model_type == "bert"
    # LM head tied to the pretrained word embeddings
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    # Every load is the same model (the head transform is not left to random init)
    a, b = model.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert lora_target_modules(model) == ["query", "value"] and extra_trainable_modules(model) == ["transform"]
    # Causal: the logits at position 0 do not depend on later tokens
    ids = tokenizer(["the heart pumps blood", "the heart is a muscle"], return_tensors="pt", padding=True,
                    add_special_tokens=False)["input_ids"]  # fmt: skip
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert torch.allclose(logits[0, :2], logits[1, :2], atol=1e-4)
    # Pretrained: 22M parameters
    assert 20e6 < count_parameters(model)[1] < 25e6


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_model("some-org/some-model-that-is-not-here")


# ------------------------------------------------------------------------------- LoRA targets, checkpointing


def test_resolve_target_modules(tiny_llama_dir):
    from icft.models import resolve_target_modules

    model, _ = load_model(str(tiny_llama_dir))
    assert resolve_target_modules(model, "attention") == resolve_target_modules(model, None) == ["q_proj", "v_proj"]
    assert resolve_target_modules(model, "all-linear") == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]  # fmt: skip
    assert resolve_target_modules(model, ["q_proj", "o_proj"]) == ["q_proj", "o_proj"]
    with pytest.raises(ValueError, match=r"peft.target_modules: no module named qproj .*linear layers: .*q_proj"):
        resolve_target_modules(model, ["qproj"])
    with pytest.raises(ValueError, match="peft.target_modules"):
        resolve_target_modules(model, "everything")


def test_all_linear_on_minilm_decoder_spares_the_trained_head():
    # BERT's "dense" names both MLP layers and the LM head's transform, which is trained in full instead.
    from peft import LoraConfig, get_peft_model

    from icft.models import resolve_target_modules

    model, _ = load_model(MINILM_DECODER)
    targets = resolve_target_modules(model, "all-linear")
    assert isinstance(targets, str)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=targets, modules_to_save=["transform"],
                                                  task_type="CAUSAL_LM"))  # fmt: skip
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    assert len(adapted) == 6 * 6  # query, key, value, attention.output.dense, intermediate.dense, output.dense
    assert not any("transform" in n or "cls." in n for n in adapted)


def test_gradient_checkpointing_gives_the_same_lora_gradients(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model

    from icft.models import enable_gradient_checkpointing

    grads = []
    for checkpointing in (False, True):
        model, _ = load_model(str(tiny_llama_dir))
        torch.manual_seed(0)
        model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                                                 task_type="CAUSAL_LM"))  # fmt: skip
        if checkpointing:
            enable_gradient_checkpointing(model)
            base = model.get_base_model()
            assert getattr(base, "is_activation_checkpointing", None) or base.is_gradient_checkpointing
        model.train()
        ids = torch.arange(1000, 1016).unsqueeze(0)
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and all(grads[1][n].abs().sum() > 0 for n in grads[1])
    assert all(torch.allclose(grads[0][n], grads[1][n], atol=1e-6) for n in grads[0])


def test_qlora_without_bitsandbytes_or_gpu_names_the_key(monkeypatch):
    import importlib.util

    from icft.models import quantization_config

    assert quantization_config(None) is None and quantization_config("none") is None
    with pytest.raises(ValueError, match="peft.quantization must be one of none, 4bit"):
        quantization_config("8bit")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name))
    with pytest.raises(ValueError, match="peft.quantization=4bit needs the bitsandbytes package"):
        quantization_config("4bit")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="peft.quantization=4bit needs a CUDA GPU"):
        quantization_config("4bit")
    with pytest.raises(ValueError, match="peft.quantization"):
        load_model(MINILM_DECODER, quantization="4bit")
