"""Loading any causal LM from a local folder, the embedded default, and LoRA targets per architecture."""

from __future__ import annotations

import pytest
import torch

from icft.models import EMBEDDED_DEFAULT, count_parameters, extra_trainable_modules, load_model, lora_target_modules


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


def test_embedded_default_is_a_deterministic_warm_started_decoder():
    model, tokenizer = load_model(EMBEDDED_DEFAULT)
    again, _ = load_model(EMBEDDED_DEFAULT)
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
