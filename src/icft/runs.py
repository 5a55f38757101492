"""A training run folder, as `icft train` writes it, and the one way to load the model it produced.

runs/<name>/
  config.yaml        the resolved run config
  adapter/ | model/  LoRA adapter (on top of config's model.name) | the whole model (full fine-tuning)
  memory/            the long-term memory (memory.jsonl + tensors.pt)
  metrics.jsonl, stage_eval.json, summary.json, checkpoints/, TensorBoard logs
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.yaml as a dict; a clear error when the folder is not a finished run."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: run directory not found")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (is {run_dir} a folder written by icft train?)")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    name = (config.get("model") or {}).get("name") if isinstance(config, dict) else None
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: field 'model.name' missing (the adapter's base model)")
    return config


def load_run(run_dir: str | Path, device: str | None = None):
    """(model, tokenizer) of a finished run: base model + adapter/, or model/ for full fine-tuning."""
    from .models import load_model

    run_dir = Path(run_dir)
    config = run_config(run_dir)
    if (run_dir / "model").is_dir():
        model, tokenizer = _load(load_model, str(run_dir / "model"))
    else:
        adapter = run_dir / "adapter"
        if not adapter.is_dir():
            raise FileNotFoundError(f"{adapter}: adapter not found (did the run finish? resume it with "
                                    f"icft train --resume {run_dir})")  # fmt: skip
        model, tokenizer = _load(load_model, config["model"]["name"])
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter))
        except (OSError, ValueError, KeyError) as error:
            raise FileNotFoundError(f"{adapter}: could not load the adapter onto "
                                    f"'{config['model']['name']}': {error}") from None  # fmt: skip
    return model.to(device or _best_device()), tokenizer


def load_base(name: str, device: str | None = None):
    """(model, tokenizer) of an untrained model, with the same clear error as a run's."""
    from .models import load_model

    model, tokenizer = _load(load_model, name)
    return model.to(device or _best_device()), tokenizer


def _load(load_model, name: str):
    try:
        return load_model(name)
    except (OSError, ValueError) as error:  # transformers reports a bad model folder or id as either
        raise FileNotFoundError(f"could not load model '{name}': {error}") from None


def _best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
