"""`icft eval`: evaluate a base model or a training run's adapter on data files.

Bad input (a missing or malformed data file, a run directory without its config or adapter, a model
that cannot be loaded) is reported as ``error: <message>`` on stderr with exit code 2, never as a
traceback. The data is read before the model is loaded, so a typo in a path fails in a second.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.schema import DataError, Example

if TYPE_CHECKING:
    from ..runs import Run

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
        _check_options(json_path, output_dir, max_examples, batch_size)
        datasets = _load_data(data, max_examples)
        loaded = load_for_eval(run_dir, model, memory=retrieve > 0)
        retrieved: dict[str, list] = {}
        if retrieve or knowledge:
            from .retrieval import retrieve_for_eval

            datasets, retrieved = retrieve_for_eval(datasets, loaded.model, loaded.format, run_dir, knowledge,
                                                    retrieve, loaded.memory)  # fmt: skip
    except (_BadInput, ValueError, FileNotFoundError) as error:  # ValueError: nothing to retrieve from, etc.
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from ..memory import Embedder
    from .evaluate import evaluate_examples, is_open_ended, print_table

    # The sentence embedder is only needed to compare generated answers to references.
    embedder = Embedder() if any(is_open_ended(ex) for exs in datasets.values() for ex in exs) else None
    results = {
        name: evaluate_examples(
            loaded.model, loaded.tokenizer, examples, embedder=embedder, batch_size=batch_size, fmt=loaded.format
        )
        for name, examples in datasets.items()
    }
    for result in results.values():
        for error in result.errors:
            if error["id"] in retrieved:
                error["retrieved"] = retrieved[error["id"]]
    print_table(results, examples=datasets)
    _print_breakdowns(results)
    _write_outputs(results, json_path, output_dir, datasets)
    return 0


def _check_options(json_path: str | None, output_dir: str | None, max_examples: int | None, batch_size: int) -> None:
    """Before any work: numbers in range, and output paths icft can write (a folder given as --json is not one)."""
    from ..io import check_output_dir, check_output_file

    if batch_size < 1:
        raise _BadInput(f"--batch-size must be >= 1, got {batch_size}")
    if max_examples is not None and max_examples < 1:
        raise _BadInput(f"--max-examples must be >= 1, got {max_examples}")
    if json_path is not None:
        check_output_file(json_path, "--json")
    if output_dir is not None:
        check_output_dir(output_dir, "--output-dir")


def load_for_eval(run_dir: str | None, model: str | None, memory: bool = False) -> Run:
    """A run (`Run`: model, tokenizer, the prompt format it trained in, with `memory` its long-term memory)
    or a base model as one (prompt format auto)."""
    from ..models import EMBEDDED_DEFAULT
    from ..runs import Run

    return Run.from_pretrained(run_dir, memory=memory) if run_dir else Run.from_base(model or EMBEDDED_DEFAULT)


def _load_data(paths: list[str], max_examples: int | None) -> dict[str, list[Example]]:
    from .evaluate import load_files

    try:
        return load_files(paths, max_examples)
    except (DataError, OSError) as error:
        raise _BadInput(str(error)) from None


def _print_breakdowns(results: dict[str, Any]) -> None:
    for name, result in results.items():
        if result.accuracy_by:
            groups = "  ".join(f"{key}: {value:.4f}" for key, value in result.accuracy_by.items())
            print(f"{name} accuracy by group: {groups}")


def _write_outputs(results: dict[str, Any], json_path: str | None, output_dir: str | None,
                   datasets: dict[str, list[Example]]) -> None:
    """{file: {metric: value, "baselines": {baseline: {metric: value}}}}: the trivial baselines the printed
    table shows (random, majority / constant answer, best option position) on the same items, so that a
    score read from the JSON can be read against its floor too."""
    from ..io import write_json, write_jsonl
    from .baselines import trivial_baselines

    if json_path is None and output_dir is None:
        return
    stem = Path(json_path).stem if json_path else "eval"
    if json_path is None:
        json_path = str(Path(output_dir) / f"{stem}.json")
    write_json(json_path, {name: {**r.to_json(), "baselines": trivial_baselines(datasets[name])}
                           for name, r in results.items()})  # fmt: skip
    errors_dir = Path(output_dir) if output_dir else Path(json_path).parent
    errors_path = errors_dir / f"{stem}.errors.jsonl"
    write_jsonl(errors_path, ({"file": name, **e} for name, r in results.items() for e in r.errors))
    print(f"wrote {json_path} and {errors_path}")
