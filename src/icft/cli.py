"""The `icft` command line: data validate/stats, train, eval, compare.

Each subcommand is a thin wrapper: it parses arguments and calls one function of a module.
Errors in user input (data, config, paths) print one clear line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# peft still calls a transformers method that v5 renamed; the warning says nothing a user can act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="icft", description="Incremental Curriculum-Based Fine-Tuning")
    sub = parser.add_subparsers(dest="command", required=True)

    data_parser = sub.add_parser("data", help="check and describe data files")
    data = data_parser.add_subparsers(dest="data_command", required=True)
    for name, text in (("validate", "check files and summarise them per kind and source"),
                       ("stats", "counts, length percentiles and difficulty histogram")):  # fmt: skip
        p = data.add_parser(name, help=text)
        p.add_argument("paths", nargs="+", help="data files or folders")
        if name == "stats":
            p.add_argument("--score", action="store_true", help="score difficulty (length + rarity) where unset")

    train = sub.add_parser("train", help="run the ICFT training recipe")
    train.add_argument("--config", help="YAML config (defaults apply to keys it leaves out)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    train.add_argument("--output-dir", help="run folder (default runs/<name>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    train.add_argument("--overwrite", action="store_true", help="replace a run of another config in the output "
                       "folder (only icft's files are removed)")  # fmt: skip

    ev = sub.add_parser("eval", help="evaluate a trained run or a base model on data files")
    who = ev.add_mutually_exclusive_group(required=True)
    who.add_argument("--run", help="run folder written by icft train")
    who.add_argument("--model", help="untrained base model: hub id, local folder or smollm2-135m-instruct")
    ev.add_argument("--data", nargs="+", required=True, help="data files to evaluate on")
    ev.add_argument("--json", help="write metrics to this JSON file (default with --run: RUN/eval-<data>.json)")
    ev.add_argument("--base", action="store_true", help="also evaluate the run's untrained base model: paired "
                    "changes with 95%% intervals")  # fmt: skip
    ev.add_argument("--show", type=int, default=0, metavar="N", help="print N generated answers beside references")
    ev.add_argument("--max-length", type=int, default=None, metavar="TOKENS",
                    help="cut inputs to this many tokens (default: the run's max_length; 1024 for --model)")
    ev.add_argument("--max-examples", type=int, default=None, help="evaluate at most this many per file")
    ev.add_argument("--batch-size", type=int, default=32)
    ev.add_argument("--retrieve", type=int, default=0, metavar="K", help="put the K nearest memory facts in prompts")
    ev.add_argument("--knowledge", action="append", metavar="PATH", help="extra text/qa records to retrieve from")

    init = sub.add_parser("init", help="inspect data files and write a config for them")
    init.add_argument("--data", nargs="+", required=True, help="training data files")
    init.add_argument("--model", default="smollm2-135m-instruct",
                      help="hub id, local folder or smollm2-135m-instruct (the default)")
    init.add_argument("--output", default="icft.yaml", help="config file to write (default icft.yaml)")
    init.add_argument("--test", nargs="+", default=[], help="held-out test files for icft compare (compare.test)")

    compare = sub.add_parser("compare", help="ICFT against baselines, same budget, several seeds")
    compare.add_argument("--config", required=True)
    compare.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    compare.add_argument("--output-dir", help="default runs/compare-<name>")

    from .inference.commands import add_parsers  # generate, chat, export, serve

    add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .errors import USER_ERRORS  # light: `icft data validate` must not pay for torch

    try:
        return _dispatch(args)
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "data":
        from . import data_commands as commands

        if args.data_command == "validate":
            return commands.validate(args.paths)
        return commands.stats(args.paths, score=args.score)
    if args.command == "train":
        return _train(args)
    if args.command == "init":
        from .init_config import init_command

        return init_command(args.data, args.model, args.output, args.test)
    if args.command == "eval":
        from .evaluation.commands import EvalRequest, eval_command

        return eval_command(EvalRequest(
            args.data, run_dir=args.run, model=args.model, json_path=args.json, max_examples=args.max_examples,
            batch_size=args.batch_size, retrieve=args.retrieve, knowledge=args.knowledge, base=args.base,
            show=args.show, max_length=args.max_length,
        ))
    if args.command in ("generate", "chat", "export", "serve"):
        from .inference.commands import dispatch

        return dispatch(args)
    if args.command == "compare":
        from .config import load_config
        from .recipes.compare import compare

        config = load_config(args.config, args.set)
        compare(config, Path(args.output_dir or f"runs/compare-{config.name}"))
        return 0
    raise AssertionError(args.command)


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .errors import ConfigError
    from .recipes.train import train

    if args.resume and args.overwrite:
        raise ConfigError("--overwrite starts a new run in place of an old one; it does not go with --resume")
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").exists():
            from .errors import not_a_run

            raise not_a_run(run_dir)
        config = load_config(run_dir / "config.yaml", args.set)
        trained_for = load_config(run_dir / "config.yaml").train.max_steps
        if config.train.max_steps != trained_for:  # the stage ends and the LR schedule were laid out for it
            raise ConfigError(f"--set train.max_steps={config.train.max_steps}: {run_dir} was planned for "
                              f"{trained_for} steps and resumes with them; to train longer, start a new run")
        train(config, run_dir, resume=True)
        return 0
    config = load_config(args.config, args.set)
    train(config, Path(args.output_dir or config.output_dir or f"runs/{config.name}"), overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
