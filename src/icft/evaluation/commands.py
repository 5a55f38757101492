"""`icft eval`: evaluate a base model or a training run's adapter on data files.

Bad input (a missing or malformed data file, a run directory without its config or adapter, a model
that cannot be loaded) is reported as ``error: <message>`` on stderr with exit code 2, never as a
traceback. The data is read before the model is loaded, so a typo in a path fails in a second.
"""

from __future__ import annotations

import os
import re
import sys
import time
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
    base: bool = False,
    show: int = 0,
    max_length: int | None = None,
) -> int:
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
        if not data:
            raise _BadInput("no data files given (--data PATH ...)")
        if run_dir and model:
            raise _BadInput("give either a run directory (--run) or a model (--model), not both")
        if base and not run_dir:
            raise _BadInput("--base compares a run with its untrained base model: give --run RUN_DIR "
                            "(for a base model alone, --model NAME is the evaluation)")  # fmt: skip
        if show < 0:
            raise _BadInput(f"--show must be >= 0, got {show}")
        if max_length is not None and max_length < 16:
            raise _BadInput(f"--max-length must be >= 16 tokens, got {max_length}")
        if run_dir:
            from ..runs import run_config

            run_config(run_dir)  # not a run folder: the one message every command gives, before anything else
        if run_dir and json_path is None and output_dir is None and os.access(run_dir, os.W_OK):
            output_dir = run_dir  # a run's results live with the run (the model card reads them there)
            json_path = str(Path(run_dir) / f"eval-{_data_label(data)}.json")
        _check_options(json_path, output_dir, max_examples, batch_size)
        datasets = _load_data(data, max_examples)
        _phase(f"loading {'run ' + run_dir if run_dir else 'model ' + (model or _default_model())}", loading=True)
        loaded = load_for_eval(run_dir, model, memory=retrieve > 0)
        untrained = None
        if base:
            base_name = loaded.config["model"]["name"]
            _phase(f"loading the untrained base model {base_name}", loading=True)
            untrained = load_for_eval(None, base_name)
        retrieved: dict[str, list] = {}
        if retrieve or knowledge:
            from .retrieval import retrieve_for_eval

            datasets, retrieved = retrieve_for_eval(datasets, loaded.model, loaded.format, run_dir, knowledge,
                                                    retrieve, loaded.memory)  # fmt: skip
    except (_BadInput, ValueError, FileNotFoundError) as error:  # ValueError: nothing to retrieve from, etc.
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT

    from ..memory import Embedder
    from ..models import context_limit
    from .baselines import trivial_baselines
    from .evaluate import count_cut, evaluate_examples, is_open_ended, print_table

    fmt = loaded.format
    length = max_length or (fmt.max_length if run_dir else DEFAULT_BASE_MAX_LENGTH)
    why = "--max-length" if max_length else ("the run's model.max_length" if run_dir else "the default for --model")
    if context_limit(loaded.model, length) < length:
        length, why = context_limit(loaded.model, length), "the model's position limit"
    cut = {name: count_cut(fmt, examples, length) for name, examples in datasets.items()}
    # The sentence embedder is only needed to compare generated answers to references.
    embedder = None
    if any(is_open_ended(ex) for exs in datasets.values() for ex in exs):
        _phase("loading the sentence embedder (to compare generated answers with the references)")
        embedder = Embedder()
    models = [("model", loaded.model)] + ([("base", untrained.model)] if untrained else [])
    results: dict[str, dict[str, Any]] = {who: {} for who, _ in models}
    for name, examples in datasets.items():
        for who, net in models:
            _phase(f"{name}: {len(examples)} items, {'the untrained base model' if who == 'base' else who}")
            started = time.perf_counter()
            results[who][name] = evaluate_examples(net, loaded.tokenizer, examples, embedder=embedder,
                                                   batch_size=batch_size, fmt=fmt, max_length=length)  # fmt: skip
            _phase(f"{name}: done in {time.perf_counter() - started:.0f}s")
    floors = {}
    for name, examples in datasets.items():
        _phase(f"{name}: trivial baselines on the same items")
        floors[name] = trivial_baselines(examples)
    for result in results["model"].values():
        for error in result.errors:
            if error["id"] in retrieved:
                error["retrieved"] = retrieved[error["id"]]
    sys.stderr.flush()  # every progress bar is closed and cleared: the table starts on a line of its own
    print_table(results["model"], examples=datasets, baselines=floors)
    paired = _print_paired(results["model"], results["base"], floors) if untrained else {}
    _print_floor(results, floors)
    _print_cut(cut, length, why)
    _print_breakdowns(results["model"])
    if show:
        _print_answers(results, datasets, show)
    _write_outputs(results, json_path, output_dir, datasets, floors, paired, length, cut)
    return 0


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
    from .paired import LOWER_IS_BETTER, group_rows

    rows = [row for name in ours for row in group_rows(name, theirs[name], ours[name], floors[name])]
    width = max([len("file"), *(len(r.group) for r in rows)])
    header = (f"{'file':<{width}}  {'metric':<25} {'n':>4}  {'base':>7}  {'run':>7}  {'change [95% interval]':<25}  "
              "best trivial baseline")  # fmt: skip
    print("\nthe run against its untrained base model, same items (95% paired bootstrap interval over items):")
    print(header)
    print("-" * len(header))
    for r in rows:
        interval = f"{r.change:+.3f} [{r.low:+.3f}, {r.high:+.3f}]" if r.low is not None else f"{r.change:+.3f}"
        floor = f"{r.baseline:.3f} ({r.baseline_name})" if r.baseline is not None else "-"
        metric = r.metric + (" (lower=better)" if r.metric in LOWER_IS_BETTER else "")
        print(f"{r.group:<{width}}  {metric:<25} {r.n:>4}  {r.untrained:>7.3f}  {r.trained:>7.3f}  {interval:<25}  "
              f"{floor}")  # fmt: skip
    return {
        name: {r.metric: {"base": r.untrained, "run": r.trained, "change": r.change, "low": r.low, "high": r.high}
               for r in rows if r.group == name}
        for name in ours
    }  # fmt: skip


def floor_lines(results: dict[str, dict[str, Any]], floors: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    """One line per metric on which a model ("model", "base") is not above the best trivial baseline
    (`floors`: each file's `trivial_baselines`), by compare's rule (report.floor_misses: accuracy, macro-F1,
    preference accuracy, ROUGE-L). What each baseline is, the table's legend says (`print_table`)."""
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


def _print_answers(results: dict[str, dict[str, Any]], datasets: dict[str, list[Example]], n: int) -> None:
    """The first `n` generated answers of each file beside their references."""
    from ..data.formatting import reference
    from ..data.kinds import kind_of
    from .evaluate import is_open_ended

    for name, examples in datasets.items():
        shown = [(i, ex) for i, ex in enumerate(examples) if is_open_ended(ex)][:n]
        if not shown:
            print(f"\n{name}: no generated answers to show (its items are scored by choice; wrong choices are in "
                  "the errors file)")  # fmt: skip
            continue
        print(f"\n{name}: {len(shown)} generated answers beside their references")
        for k, (i, ex) in enumerate(shown, start=1):
            print(f"[{k}] {ex.id}: {_short(kind_of(ex).query(ex))}")
            item = results["model"][name].items[i]
            print(f"    model:     {_short(item.get('answer', ''))}   (ROUGE-L {item.get('rougeL', 0):.3f})")
            if "base" in results:
                other = results["base"][name].items[i]
                print(f"    base:      {_short(other.get('answer', ''))}   (ROUGE-L {other.get('rougeL', 0):.3f})")
            print(f"    reference: {_short(reference(ex))}")


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _write_outputs(results: dict[str, dict[str, Any]], json_path: str | None, output_dir: str | None,
                   datasets: dict[str, list[Example]], floors: dict[str, dict], paired: dict, length: int,
                   cut: dict[str, tuple[int, int]]) -> None:  # fmt: skip
    """{file: {metric: value, "baselines": {baseline: {metric: value}}, "base"?: {...}, "paired"?: {...}}}: the
    trivial baselines the printed table shows (random, majority / constant answer, best option position) on
    the same items, so that a score read from the JSON can be read against its floor too; with --base the
    untrained model's metrics and the paired changes."""
    from ..data.formatting import reference
    from ..io import write_json, write_jsonl

    if json_path is None and output_dir is None:
        return
    stem = Path(json_path).stem if json_path else "eval"
    if json_path is None:
        json_path = str(Path(output_dir) / f"{stem}.json")
    ours = results["model"]
    record = {}
    for name, r in ours.items():
        # how the inputs were cut sits apart from the metrics, so that a loop over the metrics meets none of it
        record[name] = {**r.to_json(), "baselines": floors[name],
                        "settings": {"max_length": length, "n_cut": cut[name][0]}}  # fmt: skip
        if "base" in results:
            record[name]["base"] = results["base"][name].to_json()
            record[name]["paired"] = paired.get(name, {})
    write_json(json_path, record)
    errors_dir = Path(output_dir) if output_dir else Path(json_path).parent
    errors_path = errors_dir / f"{stem}.errors.jsonl"
    items_path = errors_dir / f"{stem}.items.jsonl"
    write_jsonl(errors_path, ({"file": name, **e} for name, r in ours.items() for e in r.errors))

    def item_rows():
        for name, r in ours.items():
            for i, (ex, item) in enumerate(zip(datasets[name], r.items)):
                row = {"file": name, **item}
                if "answer" in item:
                    row["reference"] = reference(ex)
                if "base" in results:
                    other = results["base"][name].items[i]
                    row["base"] = {k: v for k, v in other.items() if k not in ("id", "kind")}
                yield row

    write_jsonl(items_path, item_rows())
    print(f"\nwrote {json_path}, {errors_path} (wrong choices) and {items_path} (every item's answer and scores)")
