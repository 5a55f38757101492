"""The README and the docs name only things that exist, and their `icft` commands parse.

- every dotted name `icft.x.y` is a module, or an attribute of one;
- every repository path (`src/...`, `configs/...`, `benchmarks/...`, `docs/...`, `tests/...`, `tools/...`) and
  every relative Markdown link or image is on disk;
- every `icft ...` line in a bash code block (and every `$ icft ...` line in another block) names a subcommand
  whose `--help` works, is accepted whole by the real argument parser (`icft.cli.build_parser`, nothing is
  run), and its `--set key=value` overrides are valid config keys and values.

Each checker returns a list of problems; the tests also run them on planted bad references, so they can fail.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from pathlib import Path

import pytest

from icft.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "configs").rglob("README.md"))]

FILE_SUFFIXES = {"yaml", "yml", "json", "jsonl", "md", "txt", "py", "toml", "png", "html"}
DOTTED = re.compile(r"(?<![\w./-])icft(?:\.[A-Za-z_]\w*)+")
REPO_PATH = re.compile(r"(?<![\w./-])(?:src|configs|benchmarks|docs|tests|tools)/[\w./*{},-]*")
MD_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
OUTPUT_OPTION = re.compile(r"--(?:out|output|output-dir|work-dir|json)[ =]$")  # paths a command writes
SHELL_LANGS = {"bash", "sh", "shell", "console"}
SEPARATORS = {"|", "||", "&&", ";", "&", ">", ">>", "<"}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# ------------------------------------------------------------------------------------------- dotted names


def dotted_exists(name: str) -> bool:
    """`icft.a.b.C.d`: the longest importable module prefix, then attributes down the rest."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
                continue  # no such module: try a shorter prefix, the rest are attributes
            raise  # a module that exists but fails to import is a bug of its own
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


def dotted_problems(text: str, where: str) -> list[str]:
    problems = []
    for name in sorted(set(DOTTED.findall(text))):
        if name.rsplit(".", 1)[-1] in FILE_SUFFIXES:  # a file name such as icft.yaml
            continue
        if not dotted_exists(name):
            problems.append(f"{where}: `{name}` is neither a module nor a module attribute")
    return problems


# ------------------------------------------------------------------------------------------------ paths


def _expand_braces(path: str) -> list[str]:
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    head, tail = path[: match.start()], path[match.end() :]
    return [x for alt in match.group(1).split(",") for x in _expand_braces(head + alt + tail)]


def _exists(path: str, base: Path) -> bool:
    return any((any(base.glob(p)) if any(c in p for c in "*?[") else (base / p).exists()) for p in _expand_braces(path))


def path_problems(text: str, where: str, doc_dir: Path = ROOT) -> list[str]:
    problems = []
    for match in REPO_PATH.finditer(text):
        path = match.group(0).rstrip(".,:;")
        if OUTPUT_OPTION.search(text[max(0, match.start() - 16) : match.start()]):
            continue  # a folder the command writes, e.g. --out benchmarks/results/new-run
        if not _exists(path, ROOT):
            problems.append(f"{where}: path `{path}` does not exist")
    for match in MD_LINK.finditer(text):
        target = match.group(1).split("#")[0]
        if not target or re.match(r"[a-z]+:", target):  # an anchor, or http:, mailto:
            continue
        if not _exists(target, doc_dir):
            problems.append(f"{where}: link target `{target}` does not exist (relative to {_rel(doc_dir)})")
    return problems


# ------------------------------------------------------------------------------------------ icft commands


def command_lines(text: str) -> list[str]:
    """Shell lines of the Markdown's code blocks that run icft (continuations joined, `$ ` prompts removed)."""
    lines, lang, pending = [], None, ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("```"):
            lang = None if lang is not None else (stripped[3:].strip().lower() or "")
            pending = ""
            continue
        if lang is None:
            continue
        if lang not in SHELL_LANGS and not (pending or stripped.startswith("$ ")):
            continue
        line = pending + " " + stripped if pending else stripped
        if line.endswith("\\"):
            pending = line[:-1].rstrip()
            continue
        pending = ""
        if line.startswith("$ "):
            line = line[2:]
        if re.search(r"(^|[\s|;&])(icft|-m icft)\s", line + " "):
            lines.append(line)
    return lines


def icft_args(line: str) -> list[str] | None:
    """The arguments given to icft on a shell line (`icft ...`, `X=y icft ...`, `... -m icft ...`)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token not in SEPARATORS:
            segment.append(token)
            continue
        words = segment
        segment = []
        while words and re.match(r"^[A-Za-z_]\w*=", words[0]):  # environment assignments
            words = words[1:]
        if words[:1] == ["icft"]:
            return words[1:]
        for i in range(len(words) - 1):
            if words[i] == "-m" and words[i + 1] == "icft":
                return words[i + 2 :]
    return None


def _subcommand_path(args: list[str]) -> list[str]:
    parser: argparse.ArgumentParser = build_parser()
    path = []
    for token in args:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or token not in subs[0].choices:
            break
        path.append(token)
        parser = subs[0].choices[token]
    return path


def _run_quietly(fn, *args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            result = fn(*args)
        except SystemExit as exit_:
            return exit_.code, err.getvalue().strip()
    return result, err.getvalue().strip()


def _set_problems(args: list[str]) -> str | None:
    from icft.config import load_config
    from icft.errors import ConfigError

    sets = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--set"]
    sets += [a.split("=", 1)[1] for a in args if a.startswith("--set=")]
    if not sets:
        return None
    config = None
    if "--config" in args:
        named = args[args.index("--config") + 1]
        config = ROOT / named if (ROOT / named).is_file() else None  # a placeholder (my.yaml): the defaults
    try:
        load_config(config, sets)
    except ConfigError as err:
        return str(err)
    return None


def command_problems(line: str, where: str) -> list[str]:
    args = icft_args(line)
    if args is None:
        return [f"{where}: no icft command found in `{line}`"]
    path = _subcommand_path(args)
    if not path:
        return [f"{where}: `icft {' '.join(args[:1])}` is not an icft subcommand (line: {line})"]
    code, _ = _run_quietly(main, [*path, "--help"])
    if code != 0:
        return [f"{where}: `icft {' '.join(path)} --help` exited {code}"]
    code, err = _run_quietly(lambda a: build_parser().parse_args(a), args)
    if code is not None and not isinstance(code, argparse.Namespace):
        return [f"{where}: `icft {' '.join(args)}` does not parse: {err.splitlines()[-1] if err else code}"]
    problem = _set_problems(args)
    return [f"{where}: `icft {' '.join(args)}`: {problem}"] if problem else []


def inline_commands(text: str) -> list[str]:
    """`icft ...` in inline code spans of the prose (fenced blocks left out); a span may wrap a line."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    spans = (" ".join(m.split()) for m in re.findall(r"`([^`]+)`", prose))
    return [x for x in spans if re.search(r"(^|[\s|])(icft|-m icft) [a-z]", x)]


def inline_problems(span: str, where: str) -> list[str]:
    """A span may be a fragment (`icft eval --run`), so required options are not asked for: the subcommand
    must exist and every option it names must be one of that subcommand's, and `--set` overrides valid."""
    args = icft_args(span)
    path = _subcommand_path(args or [])
    if not path:
        return [f"{where}: `{span}` names no icft subcommand"]
    parser = build_parser()
    for name in path:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    unknown = [a for a in args if a.startswith("--") and a.split("=")[0] not in parser._option_string_actions]
    if unknown:
        return [f"{where}: `{span}`: icft {' '.join(path)} has no option {', '.join(unknown)}"]
    problem = _set_problems(args)
    return [f"{where}: `{span}`: {problem}"] if problem else []


def script_lines(text: str) -> list[str]:
    """`python benchmarks/x.py ...` lines of the code blocks and of inline code spans."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.DOTALL | re.MULTILINE)
    found = [" ".join(m.split()) for m in re.findall(r"`([^`]+)`", prose)]
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    found += [line for block in blocks for line in re.sub(r"\\\n\s*", " ", block).splitlines()]
    return [x.strip() for x in found if re.search(r"(^|\s)python3? benchmarks/\w+\.py", x)]


def script_problems(line: str, where: str) -> list[str]:
    """The script exists and declares every option the line gives it (read from its add_argument calls)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    start = next(i for i, t in enumerate(tokens) if re.fullmatch(r"benchmarks/\w+\.py", t))
    script = ROOT / tokens[start]
    if not script.is_file():
        return [f"{where}: {tokens[start]} does not exist"]
    source = script.read_text(encoding="utf-8")
    args = []
    for token in tokens[start + 1 :]:
        if token in SEPARATORS:
            break
        args.append(token)
    unknown = [a for a in args if a.startswith("--") and f'"{a.split("=")[0]}"' not in source]
    return [f"{where}: `{line}`: {tokens[start]} has no option {', '.join(unknown)}"] if unknown else []


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_named_modules_and_paths_exist(doc: Path):
    text = doc.read_text(encoding="utf-8")
    problems = dotted_problems(text, _rel(doc)) + path_problems(text, _rel(doc), doc.parent)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_documented_icft_commands_parse(doc: Path):
    text = doc.read_text(encoding="utf-8")
    problems = [p for line in command_lines(text) for p in command_problems(line, _rel(doc))]
    problems += [p for span in inline_commands(text) for p in inline_problems(span, _rel(doc))]
    problems += [p for line in script_lines(text) for p in script_problems(line, _rel(doc))]
    assert not problems, "\n".join(problems)


def test_every_subcommand_is_documented_in_the_readme():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    documented = {tuple(_subcommand_path(icft_args(line) or [])[:1]) for line in command_lines(text)}
    subs = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = sorted(name for name in subs.choices if (name,) not in documented)
    assert not missing, f"README's command block lacks: {missing}"


def test_the_checkers_catch_planted_bad_references():
    good = "see `icft.likelihood.target_logits`, `icft.runs.Run.from_pretrained` and `src/icft/losses.py`"
    assert dotted_problems(good, "good") == [] and path_problems(good, "good") == []
    bad = "see `icft.data.tokenize.target_logits`, `icft.inference.retrieval` and `src/icft/nowhere.py`"
    assert len(dotted_problems(bad, "bad")) == 2
    assert len(path_problems(bad, "bad")) == 1
    assert path_problems("![plot](no/such/plot.png)", "bad") != []
    assert path_problems("--out benchmarks/results/not-yet-run", "good") == []  # an output folder

    block = "```bash\n{}\n```\n"
    assert command_problems("icft train --config configs/demo.yaml --set train.max_steps=5", "good") == []
    assert command_problems("ICFT_API_KEY=k icft serve --run runs/d --host 0.0.0.0", "good") == []
    assert command_problems("printf 'x\\n' | icft chat --run runs/d --retrieve 3", "good") == []
    assert command_problems("accelerate launch --config_file f.yaml -m icft train --config ...", "good") == []
    lines = command_lines(block.format("icft eval --run runs/d \\\n    --data x.jsonl   # a comment"))
    assert lines == ["icft eval --run runs/d --data x.jsonl   # a comment"]
    assert command_problems(lines[0], "good") == []
    assert inline_commands("run `icft eval --run\nruns/d --retrieve 3` or ```\n`icft x`\n```") == [
        "icft eval --run runs/d --retrieve 3"
    ]
    assert inline_problems("icft eval --run", "good") == []  # a fragment: required options not asked for
    assert inline_problems("icft eval --run D --no-such-option", "bad")
    assert inline_problems("icft frobnicate", "bad")
    good_script = "python benchmarks/forgetting_curves.py --config configs/benchmark-cpu.yaml --every 50"
    assert script_lines(f"run `{good_script}`") == [good_script] and script_problems(good_script, "good") == []
    assert script_problems("python benchmarks/forgetting_curves.py --no-such-option 1", "bad")
    assert script_problems("python benchmarks/no_such_script.py", "bad")
    for bad_line in (
        "icft frobnicate --run runs/d",  # no such subcommand
        "icft train --config my.yaml --no-such-option",  # an option the parser does not know
        "icft eval --run runs/d",  # a required option missing
        "icft train --config my.yaml --set train.no_such_key=1",  # not a config key
        "icft train --config configs/demo.yaml --set train.max_steps=-3",  # out of range
    ):
        assert command_problems(bad_line, "bad"), bad_line


def test_readme_shape():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    head = "\n".join(lines[:20])
    for command in ("make demo", "make test", "source .venv/bin/activate"):
        assert command in head, f"{command!r} is not in the README's first 20 lines"
    layout = "\n".join(lines[next(i for i, x in enumerate(lines) if x.startswith("## Layout")) :])
    listed = [p for p in [*(ROOT / "configs").rglob("*"), *(ROOT / "docs").iterdir()] if p.is_file()]
    missing = [_rel(p) for p in listed if p.name not in layout]
    assert not missing, f"the README's layout does not list {missing}"


def test_results_hold_no_superseded_sections():
    text = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    marked = [x for x in text.splitlines() if re.search(r"previous version|earlier probes", x, re.IGNORECASE)]
    assert not marked, marked
