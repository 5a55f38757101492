"""`icft eval`: evaluate a base model or a training run's adapter on data files.

Bad input (a missing or malformed data file, a run directory without its config or adapter, a model
that cannot be loaded) is reported as ``error: <message>`` on stderr with exit code 2, never as a
traceback. The data is read before the model is loaded, so a typo in a path fails in a second.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..data.schema import DataError, Example

# torch, transformers and peft are imported inside the functions that need them, so that importing this
# module (as the CLI does for every command) stays fast.

EXIT_BAD_INPUT = 2


class _BadInput(Exception):
    """An input problem to report in one line."""


def eval_command(
    run_dir: str | None,
    model: str | None,
    data: list[str],
    json_path: str | None,
    output_dir: str | None = None,
    max_examples: int | None = None,
    batch_size: int = 32,
    retrieve: int = 0,
    knowledge: list[str] | None = None,
) -> int:
    """Evaluate `--run RUN_DIR` or `--model NAME_OR_PATH` (default: the embedded model) on `--data` files.

    Prints a table of metrics. `--json FILE` writes {file name: {metric: value}}; wrong answers go to
    `<json stem>.errors.jsonl` next to it, or into `output_dir` (which also gets `eval.json` when no
    `--json` is given). `retrieve` > 0 puts that many facts retrieved from the run's long-term memory and
    `knowledge` files in each prompt (icft.inference.retrieval); each wrong answer then lists the retrieved
    ids and similarity scores. Returns 0, or 2 on bad input.
    """
    try:
        if not data:
            raise _BadInput("no data files given (--data PATH ...)")
        if run_dir and model:
            raise _BadInput("give either a run directory (--run) or a model (--model), not both")
        datasets = _load_data(data, max_examples)
        net, tokenizer = _load_run(Path(run_dir)) if run_dir else _load_base(model)
        retrieved: dict[str, list] = {}
        if retrieve or knowledge:
            from ..inference.commands import retrieve_for_eval

            datasets, retrieved = retrieve_for_eval(datasets, net, tokenizer, run_dir, knowledge, retrieve)
    except (_BadInput, ValueError) as error:  # ValueError: nothing to retrieve from, a bad knowledge file
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from .evaluate import evaluate_examples, is_open_ended, print_table

    # The sentence embedder is only needed to compare generated answers to references.
    embedder = _embedder() if any(is_open_ended(ex) for exs in datasets.values() for ex in exs) else None
    results = {
        name: evaluate_examples(net, tokenizer, examples, embedder=embedder, batch_size=batch_size)
        for name, examples in datasets.items()
    }
    for result in results.values():
        for error in result.errors:
            if error["id"] in retrieved:
                error["retrieved"] = retrieved[error["id"]]
    print_table(results)
    _print_breakdowns(results)
    _write_outputs(results, json_path, output_dir)
    return 0


def _load_data(paths: list[str], max_examples: int | None) -> dict[str, list[Example]]:
    from .evaluate import load_files

    try:
        return load_files(paths, max_examples)
    except (DataError, OSError) as error:
        raise _BadInput(str(error)) from None


def _load_base(name: str | None) -> tuple[Any, Any]:
    from ..models import EMBEDDED_DEFAULT, load_model

    name = name or EMBEDDED_DEFAULT
    try:
        model, tokenizer = load_model(name)
    except (OSError, ValueError) as error:  # transformers reports a bad model folder as either
        raise _BadInput(f"could not load model '{name}': {error}") from None
    return _to_best_device(model), tokenizer


def _load_run(run_dir: Path) -> tuple[Any, Any]:
    """The base model named in the run's config.yaml, with the run's adapter on top."""
    import yaml

    config_path, adapter = run_dir / "config.yaml", run_dir / "adapter"
    if not run_dir.is_dir():
        raise _BadInput(f"{run_dir}: run directory not found")
    if not config_path.is_file():
        raise _BadInput(f"{config_path}: not found (is {run_dir} a training run directory?)")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise _BadInput(f"{config_path}: invalid YAML: {error}") from None
    model_config = config.get("model") if isinstance(config, dict) else None
    name = model_config.get("name") if isinstance(model_config, dict) else None
    if not isinstance(name, str) or not name:
        raise _BadInput(f"{config_path}: field 'model.name' missing (the adapter's base model)")
    if (run_dir / "model").is_dir():  # a full fine-tuning run saves the whole model
        model, tokenizer = _load_base(str(run_dir / "model"))
        return _to_best_device(model), tokenizer
    if not adapter.is_dir():
        raise _BadInput(f"{adapter}: adapter not found (did the run finish?)")
    model, tokenizer = _load_base(name)

    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, str(adapter))
    except (OSError, ValueError, KeyError) as error:
        raise _BadInput(f"{adapter}: could not load the adapter onto '{name}': {error}") from None
    return _to_best_device(model), tokenizer


def _to_best_device(model: Any) -> Any:
    import torch

    return model.to("cuda") if torch.cuda.is_available() else model


def _embedder() -> Any:
    from sentence_transformers import SentenceTransformer

    from ..models import embedded_model_path

    return SentenceTransformer(str(embedded_model_path()), device="cpu")


def _print_breakdowns(results: dict[str, Any]) -> None:
    for name, result in results.items():
        if result.accuracy_by:
            groups = "  ".join(f"{key}: {value:.4f}" for key, value in result.accuracy_by.items())
            print(f"{name} accuracy by group: {groups}")


def _write_outputs(results: dict[str, Any], json_path: str | None, output_dir: str | None) -> None:
    from ..io import write_json, write_jsonl

    if json_path is None and output_dir is None:
        return
    stem = Path(json_path).stem if json_path else "eval"
    if json_path is None:
        json_path = str(Path(output_dir) / f"{stem}.json")
    write_json(json_path, {name: r.to_json() for name, r in results.items()})
    errors_dir = Path(output_dir) if output_dir else Path(json_path).parent
    errors_path = errors_dir / f"{stem}.errors.jsonl"
    write_jsonl(errors_path, ({"file": name, **e} for name, r in results.items() for e in r.errors))
    print(f"wrote {json_path} and {errors_path}")
