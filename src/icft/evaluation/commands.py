"""`icft eval`: evaluate a base model or a training run's adapter on data files.

Bad input (a missing or malformed data file, a run directory without its config or adapter, a model
that cannot be loaded) is reported as ``error: <message>`` on stderr with exit code 2, never as a
traceback. The data is read before the model is loaded, so a typo in a path fails in a second.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data.schema import DataError, Example

if TYPE_CHECKING:
    from ..data.prompt_format import PromptFormat
    from ..runs import Run
    from .evaluate import EvalResult

# torch, transformers and peft are imported inside the functions that need them, so that importing this
# module (as the CLI does for every command) stays fast.

EXIT_BAD_INPUT = 2


class _BadInput(Exception):
    """An input problem to report in one line."""


@dataclass(frozen=True)
class EvalRequest:
    """What `icft eval` is asked, option by option (see `eval_command`): the `data` files; the model, a run
    folder (`run_dir`) or a base model by name or folder (`model`); where results go (`json_path`,
    `output_dir`); and how it evaluates."""

    data: list[str]
    run_dir: str | None = None
    model: str | None = None
    json_path: str | None = None
    output_dir: str | None = None
    max_examples: int | None = None
    batch_size: int = 32
    retrieve: int = 0
    knowledge: list[str] | None = None
    base: bool = False
    show: int = 0
    max_length: int | None = None


@dataclass
class _Evaluation:
    """What one `icft eval` measured, for the printout and the output files."""

    datasets: dict[str, list[Example]]  # file name -> its examples, as evaluated (with retrieved facts)
    results: dict[str, dict[str, EvalResult]]  # "model" (and, with --base, "base") -> file name -> result
    floors: dict[str, dict[str, dict[str, float]]]  # file name -> its trivial baselines
    length: int  # the tokens inputs were cut to
    cut: dict[str, tuple[int, int]]  # file name -> (items longer than `length`, items)
    paired: dict[str, dict] = field(default_factory=dict)  # file name -> the run against its base, per metric


def eval_command(request: EvalRequest) -> int:
    """Evaluate `--run RUN_DIR` or `--model NAME_OR_PATH` (default: the embedded model) on `--data` files.

    Prints a table of metrics with the trivial baselines on the same items, then one line per metric on which
    the model is not above the best of them. `base` also evaluates the run's untrained base model (in the
    run's prompt format, at its length) and prints each change with a 95% paired bootstrap interval over the
    items; `show` prints that many generated answers beside their references.

    Inputs are cut to `max_length` tokens (default: the run's model.max_length, DEFAULT_BASE_MAX_LENGTH for
    `--model`), said once in the output with how many items were longer; batches hold at most
    `likelihood.token_budget` tokens, so memory stays bounded whatever the length of the answers.

    `--json FILE` writes {file name: {metric: value, "baselines", "base"?, "paired"?}}; wrong choices go to
    `<json stem>.errors.jsonl` next to it and every item's answer and scores to `<json stem>.items.jsonl`.
    Without `--json`, a run's results go into its folder (`eval-<data>.json`, which `icft export`'s model card
    reads); `output_dir` works as a folder for them. `retrieve` > 0 puts that many facts retrieved from the
    run's long-term memory and `knowledge` files in each prompt (icft.memory.retrieval); each wrong answer then
    lists the retrieved ids and similarity scores. Returns 0, or 2 on bad input.
    """
    try:
        request = _checked(request)
        datasets = _load_data(request.data, request.max_examples)
        loaded, untrained = _load_models(request)
        retrieved: dict[str, list] = {}
        if request.retrieve or request.knowledge:
            from .retrieval import retrieve_for_eval

            datasets, retrieved = retrieve_for_eval(datasets, loaded, request.knowledge, request.retrieve)
    except (_BadInput, ValueError, FileNotFoundError) as error:  # ValueError: nothing to retrieve from, etc.
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from .evaluate import count_cut, print_table

    fmt, why = _format_at_length(loaded, request)
    cut = {name: count_cut(fmt, examples, fmt.max_length) for name, examples in datasets.items()}
    models = {"model": loaded.model, **({"base": untrained.model} if untrained else {})}
    results = _evaluate_all(models, fmt, datasets, request.batch_size)
    floors = _trivial_baselines(datasets)
    for result in results["model"].values():
        for error in result.errors:
            if error["id"] in retrieved:
                error["retrieved"] = retrieved[error["id"]]
    done = _Evaluation(datasets, results, floors, fmt.max_length, cut)
    sys.stderr.flush()  # every progress bar is closed and cleared: the table starts on a line of its own
    print_table(results["model"], examples=datasets, baselines=floors)
    if untrained:
        done.paired = _print_paired(results["model"], results["base"], floors)
    _print_floor(results, floors)
    _print_cut(cut, fmt.max_length, why)
    _print_breakdowns(results["model"])
    if request.show:
        _print_answers(done, request.show)
    _write_outputs(done, request.json_path, request.output_dir)
    return 0


def _trivial_baselines(datasets: dict[str, list[Example]]) -> dict[str, dict[str, dict[str, float]]]:
    from .baselines import trivial_baselines

    floors = {}
    for name, examples in datasets.items():
        _phase(f"{name}: trivial baselines on the same items")
        floors[name] = trivial_baselines(examples)
    return floors


def _checked(request: EvalRequest) -> EvalRequest:
    """The request, with a run's own folder as its output where none is given; _BadInput for options out of
    range or that do not go together, and for a run folder that is not one, before anything is loaded."""
    if not request.data:
        raise _BadInput("no data files given (--data PATH ...)")
    if request.run_dir and request.model:
        raise _BadInput("give either a run directory (--run) or a model (--model), not both")
    if request.base and not request.run_dir:
        raise _BadInput("--base compares a run with its untrained base model: give --run RUN_DIR "
                        "(for a base model alone, --model NAME is the evaluation)")  # fmt: skip
    if request.show < 0:
        raise _BadInput(f"--show must be >= 0, got {request.show}")
    if request.max_length is not None and request.max_length < 16:
        raise _BadInput(f"--max-length must be >= 16 tokens, got {request.max_length}")
    run_dir = request.run_dir
    if run_dir:
        from ..runs import run_config

        run_config(run_dir)  # not a run folder: the one message every command gives, before anything else
        if request.json_path is None and request.output_dir is None and os.access(run_dir, os.W_OK):
            # a run's results live with the run (the model card reads them there)
            json_path = str(Path(run_dir) / f"eval-{_data_label(request.data)}.json")
            request = dataclasses.replace(request, output_dir=run_dir, json_path=json_path)
    _check_options(request)
    return request


def _load_models(request: EvalRequest) -> tuple[Run, Run | None]:
    """The model evaluated (a run, or a base model as one) and, with --base, the run's untrained base model."""
    what = f"run {request.run_dir}" if request.run_dir else f"model {request.model or _default_model()}"
    _phase(f"loading {what}", loading=True)
    loaded = load_for_eval(request.run_dir, request.model, memory=request.retrieve > 0)
    if not request.base:
        return loaded, None
    base_name = loaded.config["model"]["name"]
    _phase(f"loading the untrained base model {base_name}", loading=True)
    return loaded, load_for_eval(None, base_name)


def _format_at_length(loaded: Run, request: EvalRequest) -> tuple[PromptFormat, str]:
    """The prompt format the models are asked in, at the length inputs are cut to, and why that length."""
    from ..models import context_limit

    fmt = loaded.format
    if request.max_length:
        length, why = request.max_length, "--max-length"
    elif request.run_dir:
        length, why = fmt.max_length, "the run's model.max_length"
    else:
        length, why = DEFAULT_BASE_MAX_LENGTH, "the default for --model"
    if context_limit(loaded.model, length) < length:
        length, why = context_limit(loaded.model, length), "the model's position limit"
    return dataclasses.replace(fmt, max_length=length), why


def _evaluate_all(models: dict[str, Any], fmt: PromptFormat, datasets: dict[str, list[Example]],
                  batch_size: int) -> dict[str, dict[str, EvalResult]]:  # fmt: skip
    """{"model" (and "base"): {file name: its EvalResult}}: every model on every file, in `fmt`."""
    from ..memory import Embedder
    from .evaluate import EvalSettings, evaluate_examples, is_open_ended

    # The sentence embedder is only needed to compare generated answers to references.
    embedder = None
    if any(is_open_ended(ex) for exs in datasets.values() for ex in exs):
        _phase("loading the sentence embedder (to compare generated answers with the references)")
        embedder = Embedder()
    settings = EvalSettings(batch_size=batch_size, progress=True)
    results: dict[str, dict[str, EvalResult]] = {who: {} for who in models}
    for name, examples in datasets.items():
        for who, net in models.items():
            _phase(f"{name}: {len(examples)} items, {'the untrained base model' if who == 'base' else who}")
            started = time.perf_counter()
            results[who][name] = evaluate_examples(net, fmt, examples, settings, embedder)
            _phase(f"{name}: done in {time.perf_counter() - started:.0f}s")
    return results


# The length `icft eval --model` cuts inputs to (a run uses its own model.max_length): a model's full context
# (8,192 tokens for SmolLM2) would make a batch of long answers take gigabytes.
DEFAULT_BASE_MAX_LENGTH = 1024


def _phase(text: str, loading: bool = False) -> None:
    """One line on stderr at the start of each phase that can take more than a few seconds. A `loading` line
    comes before the input is known to be good, so only on a terminal: a bad run folder or model name stays
    exactly one line (`error: ...`) in logs and pipes."""
    if not loading or sys.stderr.isatty():
        print(f"eval: {text}", file=sys.stderr, flush=True)


def _default_model() -> str:
    from ..models import EMBEDDED_DEFAULT

    return EMBEDDED_DEFAULT


def _data_label(paths: list[str]) -> str:
    """The data files' stems, for a results file name: eval-<stems>.json."""
    stems = [Path(str(p).split(":", 1)[1] if str(p).startswith("bundled:") else str(p)).stem for p in paths]
    label = re.sub(r"[^A-Za-z0-9_.-]+", "-", "+".join(stems)).strip("-.")
    return label[:60] or "data"


def _check_options(request: EvalRequest) -> None:
    """Before any work: numbers in range, and output paths icft can write (a folder given as --json is not one)."""
    from ..io import check_output_dir, check_output_file

    if request.batch_size < 1:
        raise _BadInput(f"--batch-size must be >= 1, got {request.batch_size}")
    if request.max_examples is not None and request.max_examples < 1:
        raise _BadInput(f"--max-examples must be >= 1, got {request.max_examples}")
    if request.json_path is not None:
        check_output_file(request.json_path, "--json")
    if request.output_dir is not None:
        check_output_dir(request.output_dir, "--output-dir")


def load_for_eval(run_dir: str | None, model: str | None, memory: bool = False) -> Run:
    """A run (`Run`: model, tokenizer, the prompt format it trained in, with `memory` its long-term memory)
    or a base model as one (prompt format auto)."""
    from ..models import EMBEDDED_DEFAULT
    from ..runs import Run

    return Run.from_pretrained(run_dir, memory=memory) if run_dir else Run.from_base(model or EMBEDDED_DEFAULT)


def _load_data(paths: list[str], max_examples: int | None) -> dict[str, list[Example]]:
    from .evaluate import load_files

    try:
        return load_files(paths, max_examples, quiet=False)
    except (DataError, OSError) as error:
        raise _BadInput(str(error)) from None


def _print_breakdowns(results: dict[str, Any]) -> None:
    for name, result in results.items():
        if result.accuracy_by:
            groups = "  ".join(f"{key}: {value:.4f}" for key, value in result.accuracy_by.items())
            print(f"{name} accuracy by group: {groups}")


def _print_paired(ours: dict[str, Any], theirs: dict[str, Any], floors: dict[str, dict]) -> dict:
    """The run against its untrained base model on the same items: each change with its 95% paired bootstrap
    interval over the items and the best trivial baseline beside it (the demo's rows: one comparison path)."""
    from .paired import group_rows, table

    rows = [row for name in ours for row in group_rows(name, theirs[name], ours[name], floors[name])]
    header = ["file", "metric", "n", "base", "run", "change [95% interval]", "best trivial baseline"]
    print("\nthe run against its untrained base model, same items (95% paired bootstrap interval over items):")
    print("\n".join(table(rows, header)))
    return {
        name: {r.metric: {"base": r.untrained, "run": r.trained, "change": r.change, "low": r.low, "high": r.high}
               for r in rows if r.group == name}
        for name in ours
    }  # fmt: skip


def floor_lines(results: dict[str, dict[str, Any]], floors: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """One line per metric on which a model ("model", "base") is not above the best trivial baseline
    (`floors`: each file's `trivial_baselines`), by compare's rule (report.floor_misses, on the registry's
    floor metrics). What each baseline is, the table's legend says (`print_table`)."""
    from .report import floor_misses

    keys = {name: name.replace("/", "\u2215") for name in floors}  # report keys are "<file>/<metric>"
    summary: dict[str, Any] = {"methods": {}, "baselines": {}}
    for who, per_file in results.items():
        summary["methods"][who] = {f"{keys[n]}/{m}": {"mean": v} for n, r in per_file.items()
                                   for m, v in r.scalars().items()}  # fmt: skip
    for name, per_file in floors.items():
        for baseline, values in per_file.items():
            summary["baselines"].setdefault(baseline, {}).update({f"{keys[name]}/{m}": v for m, v in values.items()})
    named = {"model": "the model", "base": "the untrained base model"}
    lines = []
    for who, misses in floor_misses(summary).items():
        for miss in misses:
            for name, key in keys.items():
                miss = miss.replace(f"({key})", f"({name})")
            lines.append(f"{named.get(who, who)} is NOT above the best trivial baseline on {miss}")
    return lines


def _print_floor(results: dict[str, dict[str, Any]], floors: dict[str, dict]) -> None:
    lines = floor_lines(results, floors)
    if lines:
        print("")
        print("\n".join(lines))


def _print_cut(cut: dict[str, tuple[int, int]], length: int, why: str) -> None:
    n_cut = sum(c for c, _ in cut.values())
    n_all = sum(n for _, n in cut.values())
    said = f"{n_cut} of {n_all} items are longer and were cut" if n_cut else "no item is longer"
    print(f"\ninputs are cut to {length} tokens ({why}; the prompt loses its start, the answer its end): {said}")


def _print_answers(done: _Evaluation, n: int) -> None:
    """The first `n` generated answers of each file beside their references."""
    from ..data.formatting import reference
    from ..data.kinds import kind_of
    from .evaluate import is_open_ended

    for name, examples in done.datasets.items():
        shown = [(i, ex) for i, ex in enumerate(examples) if is_open_ended(ex)][:n]
        if not shown:
            print(f"\n{name}: no generated answers to show (its items are scored by choice; wrong choices are in "
                  "the errors file)")  # fmt: skip
            continue
        print(f"\n{name}: {len(shown)} generated answers beside their references")
        for k, (i, ex) in enumerate(shown, start=1):
            print(f"[{k}] {ex.id}: {_short(kind_of(ex).query(ex))}")
            for who, label in (("model", "model:    "), ("base", "base:     ")):
                if who in done.results:
                    item = done.results[who][name].items[i]
                    print(f"    {label} {_short(item.get('answer', ''))}   (ROUGE-L {item.get('rougeL', 0):.3f})")
            print(f"    reference: {_short(reference(ex))}")


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _write_outputs(done: _Evaluation, json_path: str | None, output_dir: str | None) -> None:
    """{file: {metric: value, "baselines": {baseline: {metric: value}}, "base"?: {...}, "paired"?: {...}}}: the
    trivial baselines the printed table shows (random, majority / constant answer, best option position) on
    the same items, so that a score read from the JSON can be read against its floor too; with --base the
    untrained model's metrics and the paired changes. Then the wrong choices and every item's record."""
    from ..io import write_json, write_jsonl

    if json_path is None and output_dir is None:
        return
    stem = Path(json_path).stem if json_path else "eval"
    if json_path is None:
        json_path = str(Path(output_dir) / f"{stem}.json")
    ours = done.results["model"]
    record = {}
    for name, r in ours.items():
        # how the inputs were cut sits apart from the metrics, so that a loop over the metrics meets none of it
        record[name] = {**r.to_json(), "baselines": done.floors[name],
                        "settings": {"max_length": done.length, "n_cut": done.cut[name][0]}}  # fmt: skip
        if "base" in done.results:
            record[name]["base"] = done.results["base"][name].to_json()
            record[name]["paired"] = done.paired.get(name, {})
    write_json(json_path, record)
    errors_dir = Path(output_dir) if output_dir else Path(json_path).parent
    errors_path = errors_dir / f"{stem}.errors.jsonl"
    items_path = errors_dir / f"{stem}.items.jsonl"
    write_jsonl(errors_path, ({"file": name, **e} for name, r in ours.items() for e in r.errors))
    write_jsonl(items_path, _item_rows(done))
    print(f"\nwrote {json_path}, {errors_path} (wrong choices) and {items_path} (every item's answer and scores)")


def _item_rows(done: _Evaluation):
    """One row per evaluated item: its file, its record, the reference of a generated answer and, with --base,
    the base model's record of the same item."""
    from ..data.formatting import reference

    for name, r in done.results["model"].items():
        for i, (ex, item) in enumerate(zip(done.datasets[name], r.items)):
            row = {"file": name, **item}
            if "answer" in item:
                row["reference"] = reference(ex)
            if "base" in done.results:
                other = done.results["base"][name].items[i]
                row["base"] = {k: v for k, v in other.items() if k not in ("id", "kind")}
            yield row
