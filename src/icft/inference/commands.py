"""`icft generate`, `icft chat`, `icft export` and `icft serve`: argument parsing and dispatch.

Bad input (a missing run folder, a malformed data file, contradictory options) prints ``error: <message>``
on stderr and returns exit code 2, without a traceback. Heavy modules are imported when a command runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from typing import Any

EXIT_BAD_INPUT = 2


def add_parsers(sub: argparse._SubParsersAction) -> None:
    gen = sub.add_parser("generate", help="answer prompts or a data file with a trained run or a model")
    _add_model_args(gen)
    what = gen.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", action="append",
                      help="a question, asked as a user turn in the run's prompt format (repeatable)")  # fmt: skip
    what.add_argument("--data", help="data file: answers each record's prompt (qa, dialogue, preference)")
    gen.add_argument("--raw", action="store_true", help="continue each --prompt as raw text (no chat turn)")
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 (default) is greedy decoding")
    gen.add_argument("--batch-size", type=int, default=16)
    gen.add_argument("--json", help="write answers, retrieved memory ids and scores to this file")

    chat = sub.add_parser("chat", help="interactive chat in the terminal (/memory, /reset, Ctrl-D to leave)")
    _add_model_args(chat)
    chat.add_argument("--max-new-tokens", type=int, default=128)
    chat.add_argument("--temperature", type=float, default=0.0)

    export = sub.add_parser("export", help="write a run as a standalone model (--merge) or adapter folder")
    export.add_argument("--run", required=True, help="run folder written by icft train")
    export.add_argument("--output", required=True, help="folder to write (an earlier export's files there are "
                        "replaced; other files are kept)")  # fmt: skip
    export.add_argument("--merge", action="store_true", help="merge the adapter into the base model")
    export.add_argument("--overwrite", action="store_true", help="write into a folder holding files no export "
                        "wrote (they are kept; files of the export's names are replaced)")  # fmt: skip

    serve = sub.add_parser("serve", help="a chat page and an OpenAI-compatible HTTP API (chat/completions, ...)")
    _add_model_args(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--model-name", help="name clients pass as `model` (default: run folder or model name)")
    serve.add_argument("--api-key", default=os.environ.get("ICFT_API_KEY") or None,
                       help="require `Authorization: Bearer KEY` on /v1/* (default: $ICFT_API_KEY, which other "
                            "users cannot read from the process list)")  # fmt: skip
    serve.add_argument("--allow-host", action="append", metavar="NAME",
                       help="another name the Host header may carry, e.g. a reverse proxy's (repeatable)")  # fmt: skip
    serve.add_argument("--queue-size", type=int, default=16, help="requests waiting beyond this get 503")
    serve.add_argument("--batch-size", type=int, default=8, help="most prompts generated together")
    serve.add_argument("--request-timeout", type=float, default=300.0, metavar="SECONDS",
                       help="a request still running after this ends with 504 and frees its slot")  # fmt: skip


def _add_model_args(p: argparse.ArgumentParser) -> None:
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--run", help="run folder written by icft train (adapter + long-term memory)")
    who.add_argument("--model", help="base model: hub id, local folder, or smollm2-135m-instruct")
    p.add_argument("--retrieve", type=int, default=0, metavar="K", help="put the K nearest memory facts in prompts")
    p.add_argument("--knowledge", action="append", metavar="PATH", help="extra text/qa records to retrieve from")
    p.add_argument("--max-length", type=int, default=2048, help="prompt + answer token limit (and the model's)")


def dispatch(args: argparse.Namespace) -> int:
    """Run one of this package's commands; returns the exit code."""
    from ..data.schema import DataError
    from .generate import InputError

    try:
        if args.command == "generate":
            return generate_command(args)
        if args.command == "chat":
            from .chat import chat_command

            return chat_command(_engine(args), args.max_new_tokens, args.temperature)
        if args.command == "export":
            from .export import export

            export(args.run, args.output, merge=args.merge, overwrite=args.overwrite)
            return 0
        if args.command == "serve":
            return serve_command(args)
    except (InputError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    raise AssertionError(args.command)


def _engine(args: argparse.Namespace, name: str | None = None) -> Any:
    from .generate import Engine

    return Engine.load(
        run=args.run,
        model=args.model,
        retrieve_k=args.retrieve,
        knowledge=args.knowledge,
        name=name,
        max_length=args.max_length,
    )


def serve_command(args: argparse.Namespace) -> int:
    """The options checked before the model loads (seconds, not minutes, to a typo's error), then serve."""
    from .generate import InputError
    from .serve import Limits, check_api_key, serve

    check_api_key(args.api_key)
    for option, value, low in (("--queue-size", args.queue_size, 1), ("--batch-size", args.batch_size, 1)):
        if value < low:
            raise InputError(f"{option} must be >= {low}, got {value}")
    if not 0 < args.request_timeout < 10**7:  # also refuses nan and inf
        raise InputError(f"--request-timeout must be > 0 seconds (and finite), got {args.request_timeout}")
    limits = Limits(queue_size=args.queue_size, batch_size=args.batch_size, request_timeout=args.request_timeout)
    engine = _engine(args, name=args.model_name)
    return serve(engine, args.host, args.port, limits, api_key=args.api_key, allow_hosts=args.allow_host)


def generate_command(args: argparse.Namespace) -> int:
    """Answers printed one per block; `--json` gets them with the retrieved ids and similarity scores."""
    from ..io import check_output_file, write_json

    _check_generate_options(args)
    if args.json:
        check_output_file(args.json, "--json")  # before the model loads, not after every answer is generated
    examples = _records_to_answer(args.data) if args.data else []
    engine = _engine(args)
    ids, prompts = _prompts(engine, args, examples)
    prompts = [engine.truncate(p, args.max_new_tokens) for p in prompts]
    completions = engine.generate(prompts, args.max_new_tokens, args.temperature, batch_size=args.batch_size)
    records = []
    for i, (id_, prompt, c) in enumerate(zip(ids, prompts, completions)):
        records.append(_answer_record(id_, prompt, c, examples[i] if examples else None))
        found = ", ".join(f"{h.id} ({h.score:.3f})" for h in c.retrieved)
        print(f"[{id_}] {c.text}" + (f"\n  retrieved: {found}" if found else ""))
    if args.json:
        settings = {
            "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature,
            "retrieve": args.retrieve,
            "knowledge": args.knowledge or [],
        }
        write_json(args.json, {"model": engine.name, "settings": settings, "answers": records})
        print(f"wrote {args.json}")
    return 0


def _check_generate_options(args: argparse.Namespace) -> None:
    from .generate import InputError

    if args.max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise InputError(f"--temperature must be >= 0, got {args.temperature}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.raw and args.data:
        raise InputError("--raw applies to --prompt (raw text to continue), not to --data")


def _records_to_answer(path: str) -> list[Any]:
    """The data file's qa, dialogue and preference records (text records have no question to answer)."""
    from ..data.kinds import kind_of
    from ..data.schema import DataError
    from ..data.sources import load_data
    from .generate import InputError

    try:
        examples = [ex for ex in load_data([path], quiet=True) if kind_of(ex).asks]
    except (DataError, OSError) as error:
        raise InputError(str(error)) from None
    if not examples:
        raise InputError(f"{path}: no qa, dialogue or preference records to answer")
    return examples


def _prompts(engine: Any, args: argparse.Namespace, examples: list[Any]) -> tuple[list[str], list[Any]]:
    """(ids, prompts): each record asked in the run's prompt format, with retrieved facts; or each --prompt."""
    from ..memory.retrieval import add_retrieved_context

    if examples:
        hits = [[] for _ in examples]
        if engine.retrieve_k:
            examples, hits = add_retrieved_context(examples, engine.retriever, engine.retrieve_k, engine.format,
                                                   engine.limit, args.max_new_tokens)
        # each record asked in the run's prompt format, as training and `icft eval` ask it
        prompts = [replace(engine.example_prompt(ex), retrieved=h) for ex, h in zip(examples, hits)]
        return [ex.id for ex in examples], prompts
    if args.raw:
        prompts = [engine.completion_prompt(p, args.max_new_tokens) for p in args.prompt]
    else:
        # a question is a user turn, as `icft chat` and `serve` ask it: a chat model given raw text may end at once
        prompts = [engine.chat_prompt([{"role": "user", "content": p}], args.max_new_tokens) for p in args.prompt]
    return [f"prompt-{i}" for i in range(len(prompts))], prompts


def _answer_record(id_: str, prompt: Any, c: Any, example: Any | None) -> dict[str, Any]:
    """One answer as --json writes it (with the record's reference answer, for a data file's record)."""
    from ..data.formatting import reference

    record = {
        "id": id_,
        "prompt": prompt.text,
        "answer": c.text,
        "finish_reason": c.finish_reason,
        "prompt_tokens": c.prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "retrieved": [{"id": h.id, "score": round(h.score, 6), "source": h.source} for h in c.retrieved],
    }
    if example is not None:
        record["reference"] = reference(example)
    return record
