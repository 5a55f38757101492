"""`icft export`: a run as a folder other tools load without icft.

- ``--merge``: the adapter merged into the base weights (peft ``merge_and_unload``), saved as a plain
  Hugging Face model folder: ``AutoModelForCausalLM.from_pretrained(folder)`` loads it, and so does vLLM
  where it supports the architecture.
- without ``--merge``: the adapter folder as peft saved it, with the base model's name in
  ``icft_export.json`` and the model card, for ``PeftModel.from_pretrained`` or ``vllm serve --enable-lora``.

Both carry the run's prompt format (``prompt_format.json``: ``--model FOLDER`` loads it, so the model is asked
in the format it was trained in), its long-term memory (``memory/``, for retrieval) and a model card
(``README.md``). The folder is written next to its destination and renamed into place, so a crash never leaves
half an export.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..io import atomic_path, check_output_dir, remove_leftovers
from ..runs import PROMPT_FORMAT_FILE
from .generate import InputError

MARKER = "icft_export.json"


def export(run: str | Path, output: str | Path, merge: bool = False) -> Path:
    """Write the export folder; returns its path. Raises InputError for a bad run or output folder."""
    run, output = Path(run), Path(output)
    config = _run_config(run)
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / MARKER).exists())):
        raise InputError(f"{output}: exists and is not an earlier icft export; choose a new folder")
    try:
        check_output_dir(output, "--output")  # before the model loads
    except ConfigError as error:
        raise InputError(str(error)) from None
    remove_leftovers(output.parent, [output.name])  # what a killed export left next to its destination
    full = (run / "model").is_dir()
    if not full and not (run / "adapter").is_dir():
        raise InputError(f"{run / 'adapter'}: adapter not found (did the run finish?)")
    with atomic_path(output, is_dir=True) as tmp:
        if merge or full:
            _save_merged(run, tmp)
        else:
            shutil.copytree(run / "adapter", tmp, dirs_exist_ok=True)
        fmt = _prompt_format(run, tmp)
        (tmp / PROMPT_FORMAT_FILE).write_text(json.dumps(fmt, indent=2) + "\n", encoding="utf-8")
        if (run / "memory").is_dir():
            shutil.copytree(run / "memory", tmp / "memory")
        kind = "merged" if (merge or full) else "adapter"
        meta = {"format": kind, "base_model": config["model"]["name"], "run": str(run.resolve())}
        (tmp / MARKER).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (tmp / "README.md").write_text(model_card(run, config, kind), encoding="utf-8")
    print(f"wrote {output} ({kind} model, prompt format {fmt['template']}, memory, model card)")
    return output


def _run_config(run: Path) -> dict[str, Any]:
    from ..config import read_yaml

    path = run / "config.yaml"
    if not path.is_file():
        raise InputError(f"{path}: not found (is {run} a training run directory?)")
    try:
        config = read_yaml(path)
    except ConfigError as error:
        raise InputError(str(error)) from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or not config["model"].get("name"):
        raise InputError(f"{path}: field 'model.name' missing (the adapter's base model)")
    return config


def _prompt_format(run: Path, exported: Path) -> dict[str, Any]:
    """The run's prompt format (prompt_format.json, or for an older run the one its config resolves to), checked
    against the exported folder's tokenizer."""
    from transformers import AutoTokenizer

    from ..runs import load_prompt_format

    try:
        return load_prompt_format(run, AutoTokenizer.from_pretrained(exported)).to_json()
    except ConfigError as error:
        raise InputError(str(error)) from None


def _save_merged(run: Path, folder: Path) -> None:
    from ..runs import load_run

    model, tokenizer = load_run(run, device="cpu")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    # A standalone model should stop where icft's generation stops: at the tokenizer's EOS ([SEP] for BERT).
    if model.generation_config.eos_token_id is None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def model_card(run: Path, config: dict[str, Any], kind: str) -> str:
    """Markdown: what the model is, what it was trained on, how it scored, and what it must not be used for."""
    base = config["model"]["name"]
    data = config.get("data", {})
    how = (
        "merged weights (load with `AutoModelForCausalLM.from_pretrained`)"
        if kind == "merged"
        else "peft adapter (load with `PeftModel.from_pretrained(base, this folder)`)"
    )
    lines = [
        f"# {run.resolve().name}: ICFT fine-tune of {base}",
        "",
        "Fine-tuned with icft (Incremental Curriculum-Based Fine-Tuning: curriculum stages, short- and long-term "
        "memory replay, LoRA).",
        "",
        "## Model",
        "",
        f"- Base model: `{base}`",
        f"- Format: {how}",
        "- Long-term memory for retrieval: `memory/` (`icft.memory.LongTermMemory.load`)",
        "",
        "## Training data",
        "",
        *_data_lines(data),
        *_summary_lines(run),
        "",
        "## Curriculum results (validation)",
        "",
        *_stage_lines(run),
        "",
    ]
    evals = _eval_lines(run)
    if evals:
        lines += ["## Evaluation", "", *evals, ""]
    lines += [
        "## Intended use and limits",
        "",
        "For research on continual fine-tuning of language models for medical text. **Not a source of medical "
        "advice**, not a medical device, and not validated for any clinical use: it can state false things "
        "fluently, its knowledge is limited to its training data, and its answers were not reviewed by "
        "clinicians. The bundled icft curriculum is synthetic educational data. Do not use it to diagnose, treat "
        "or triage people.",
        "",
        "## Run configuration",
        "",
        "```yaml",
        yaml.safe_dump(config, sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _data_lines(data: dict[str, Any]) -> list[str]:
    from collections import Counter

    from ..data.sources import load_data

    lines = []
    for split in ("train", "validation"):
        specs = data.get(split) or []
        if not specs:
            continue
        lines.append(f"- {split}: {', '.join(f'`{s}`' for s in specs)}")
        try:
            examples = load_data(list(specs), quiet=True)
        except Exception as error:  # a moved file must not stop the export; say why counts are missing
            lines.append(f"  - counts unavailable ({type(error).__name__}: {error})")
            continue
        by_source = Counter(ex.source for ex in examples)
        by_kind = Counter(ex.kind for ex in examples)
        lines.append(
            f"  - {len(examples)} examples; by source: "
            + ", ".join(f"{k} {v}" for k, v in by_source.most_common())
            + "; by kind: "
            + ", ".join(f"{k} {v}" for k, v in by_kind.most_common())
        )
    return lines or ["- (not recorded in the run's config)"]


def _summary_lines(run: Path) -> list[str]:
    path = run / "summary.json"
    if not path.is_file():
        return []
    summary = json.loads(path.read_text(encoding="utf-8"))
    return [
        f"- training: {summary.get('steps')} steps, {summary.get('tokens')} tokens, "
        f"{summary.get('trainable_params')} trainable of {summary.get('total_params')} parameters"
    ]


def _stage_lines(run: Path) -> list[str]:
    path = run / "stage_eval.json"
    if not path.is_file():
        return ["(no stage_eval.json in the run)"]
    stage_eval = json.loads(path.read_text(encoding="utf-8"))
    stages, matrix = stage_eval.get("stages", []), stage_eval.get("accuracy_matrix") or []
    lines = [
        "Accuracy on each stage's validation data (columns) after training each stage (rows):",
        "",
        "| after \\ on | " + " | ".join(stages) + " |",
        "|---" * (len(stages) + 1) + "|",
    ]
    for name, row in zip(stages, matrix):
        lines.append(f"| {name} | " + " | ".join(_fmt(v) for v in row) + " |")
    lines.append("")
    for key in ("average_accuracy", "forgetting", "backward_transfer"):
        lines.append(f"- {key.replace('_', ' ')}: {_fmt(stage_eval.get(key))}")
    return lines


def _eval_lines(run: Path) -> list[str]:
    """Figures from `icft eval --json` files saved in the run folder (eval*.json), if any."""
    lines = []
    for path in sorted(run.glob("eval*.json")):
        try:
            results = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        for name, metrics in results.items() if isinstance(results, dict) else []:
            if isinstance(metrics, dict):
                figures = ", ".join(f"{k} {_fmt(v)}" for k, v in metrics.items() if isinstance(v, (int, float)))
                lines.append(f"- `{path.name}` / {name}: {figures}")
    return lines


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)
