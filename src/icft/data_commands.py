"""`icft data validate` and `icft data stats`: check data files and describe what is in them (above the data
layer: `stats --score` uses the curriculum's scorers, and data must not import the curriculum).

Both take files and folders; a folder stands for every data file under it (.jsonl, .json, .xml, .csv,
.parquet, .arrow; README.md and other files are left alone). A folder of MedQuAD XML files and a folder
saved with `datasets.save_to_disk` are read as one data set each. Bad data is reported as
``error: <file:line: field 'x': message>`` on stderr with exit code 2, never as a traceback.
"""

from __future__ import annotations

import math
import os
import sys
from collections import Counter
from pathlib import Path

from .data.formatting import prompt_and_target
from .data.loaders import LoadResult, is_saved_dataset, load_examples
from .data.schema import DataError, Example

DATA_SUFFIXES = (".jsonl", ".json", ".xml", ".csv", ".parquet", ".arrow")
SKIPPED_REASONS_SHOWN = 3
ERRORS_SHOWN = 20  # bad records listed per file by `data validate` (the count of the rest follows)
SOURCES_SHOWN = 10  # sources named per file by `data validate` (the count of the rest follows)
BRIEF_ABOVE = 10  # more files than this: `data validate` lists each in one line
BAR_WIDTH = 40


def validate(paths: list[str]) -> int:
    """Load every data file under `paths`; print what each holds and every bad record (up to
    ERRORS_SHOWN a file), each as one `error: file:line: field 'f': ...` line. A path that does not exist
    is the first line printed. Returns 0, or 2 when any record or path is bad."""
    units, missing = _expand(paths)
    for error in missing:  # first, not under a listing of every other file
        print(f"error: {error}", file=sys.stderr, flush=True)
    n_examples = n_skipped = n_errors = 0
    brief = len(units) > BRIEF_ABOVE  # many files (a folder): one line each
    for unit in units:
        try:
            result = load_examples(unit, strict=False)
        except (DataError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            n_errors += 1
            continue
        _print_result(unit, result, brief)
        for error in result.invalid[:ERRORS_SHOWN]:
            print(f"error: {error}", file=sys.stderr)
        if len(result.invalid) > ERRORS_SHOWN:
            print(f"error: {unit}: ... and {len(result.invalid) - ERRORS_SHOWN} more bad records", file=sys.stderr)
        n_errors += len(result.invalid)
        n_examples += len(result.examples)
        n_skipped += len(result.skipped) - len(result.invalid)
    n_errors += len(missing)
    print(f"total: {len(units)} files, {n_examples} examples, {n_skipped} skipped, {n_errors} errors")
    return 2 if n_errors else 0


def stats(paths: list[str], score: bool = False) -> int:
    """Counts, text lengths and difficulty of the examples under `paths`. Returns 0, or 2 on bad data.

    With `score`, examples without a difficulty get one from the curriculum's text scorers (length and
    word rarity, as the default training config uses).
    """
    units, errors = _expand(paths)
    examples: list[Example] = []
    for unit in units:
        try:
            examples.extend(load_examples(unit).examples)
        except (DataError, OSError) as error:
            errors.append(str(error))
    if errors:
        for error in errors:
            print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(examples)} examples in {len(units)} files\n")
    if not examples:
        return 0
    for title, values in (("kind", [e.kind for e in examples]), ("source", [e.source for e in examples]),
                          ("stage", [e.stage or "-" for e in examples])):  # fmt: skip
        _print_counts(title, Counter(values))
    _print_lengths(examples)
    from .data.templated import print_template_measures

    print_template_measures(examples)  # boilerplate a model would learn to say (per file)
    if score:
        from .curriculum import attach_difficulty, difficulty_scores

        examples = attach_difficulty(examples, difficulty_scores(examples, {"length": 1.0, "rarity": 1.0}))
    difficulties = [e.difficulty for e in examples if e.difficulty is not None]
    if difficulties:
        _print_histogram(difficulties, len(examples))
    return 0


# ----------------------------------------------------------------------------------------------------------
# Which files to read


def _expand(paths: list[str]) -> tuple[list[str], list[str]]:
    """The data sets to read (files, XML folders, saved datasets) and errors for paths that do not exist."""
    units: list[str] = []
    errors: list[str] = []
    for path in paths:
        if path.startswith("hf:") or Path(path).is_file():
            units.append(path)
        elif Path(path).is_dir():
            found = _data_under(Path(path))
            units.extend(found)
            if not found:
                errors.append(f"{path}: no data files ({', '.join(DATA_SUFFIXES)}) under this folder")
        else:
            errors.append(f"{path}: no such file or directory")
    return units, errors


def _data_under(folder: Path) -> list[str]:
    if is_saved_dataset(folder):
        return [str(folder)]
    units = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(root)
        if is_saved_dataset(here):
            units.append(str(here))
            dirs[:] = []
            continue
        data = sorted(f for f in files if f.endswith(DATA_SUFFIXES) and not f.startswith("."))
        if any(f.endswith(".xml") for f in data):
            # MedQuAD keeps one document per XML file, thousands per folder: read a folder as one set
            units.append(str(here))
            data = [f for f in data if not f.endswith(".xml")]
        units.extend(str(here / f) for f in data)
    return units


# ----------------------------------------------------------------------------------------------------------
# Printing


def _print_result(unit: str, result: LoadResult, brief: bool = False) -> None:
    examples = result.examples
    n_bad = len(result.invalid)
    bad = f", {n_bad} bad" if n_bad else ""
    print(f"{unit}: format {result.format}, {len(examples)} examples, {len(result.skipped) - n_bad} skipped{bad}")
    for note in result.notes:
        print(f"  note: {note}")
    if brief:
        return
    print(f"  kinds:   {_inline(Counter(e.kind for e in examples))}")
    print(f"  sources: {_inline(Counter(e.source for e in examples), SOURCES_SHOWN)}")
    invalid = {str(error) for error in result.invalid}
    skipped = [reason for _, reason in result.skipped if reason not in invalid]  # bad records: listed as errors
    for reason in skipped[:SKIPPED_REASONS_SHOWN]:
        print(f"  skipped: {reason}")
    if len(skipped) > SKIPPED_REASONS_SHOWN:
        print(f"  skipped: ... and {len(skipped) - SKIPPED_REASONS_SHOWN} more")
    duplicates = [i for i, n in Counter(e.id for e in examples).items() if n > 1]
    if duplicates:  # not an error: training does not need unique ids, but joins on them would be wrong
        print(f"  warning: {len(duplicates)} ids occur more than once (first: {duplicates[0]})")


def _inline(counts: Counter, limit: int | None = None) -> str:
    shown = counts.most_common(limit)
    more = f", ... ({len(counts) - len(shown)} more)" if len(shown) < len(counts) else ""
    return (", ".join(f"{name} {n}" for name, n in shown) or "-") + more


def _print_counts(title: str, counts: Counter) -> None:
    total = sum(counts.values())
    width = max(len(title), *(len(str(name)) for name in counts))
    print(f"{title:<{width}}  {'count':>8}  {'share':>6}")
    for name, n in counts.most_common():
        print(f"{name:<{width}}  {n:>8}  {n / total:>6.1%}")
    print()


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with at least p% of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _print_lengths(examples: list[Example]) -> None:
    texts = ["".join(prompt_and_target(e)) for e in examples]
    rows = (("characters", [len(t) for t in texts]), ("words", [len(t.split()) for t in texts]))
    print("length of prompt + target")
    print(f"{'':<12}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for name, values in rows:
        cells = "".join(f"{percentile(values, p):>9}" for p in (50, 90, 99, 100))
        print(f"{name:<12}{cells}")
    print()


def _print_histogram(difficulties: list[float], n_examples: int) -> None:
    bins = Counter(min(int(d * 10), 9) for d in difficulties)  # 1.0 belongs in the last bin
    most = max(bins.values())
    print(f"difficulty ({len(difficulties)} of {n_examples} examples have one)")
    for i in range(10):
        low, high = i / 10, (i + 1) / 10
        bar = "#" * round(BAR_WIDTH * bins[i] / most)
        print(f"[{low:.1f}, {high:.1f}{']' if i == 9 else ')'}  {bins[i]:>8}  {bar}")
