"""`make demo`: ICFT on the embedded default (SmolLM2-135M-Instruct), end to end, in minutes on a CPU.

Read `run_demo()` top to bottom: five steps, each one a part icft already has.

1. Data, checked by `icft data validate`. Where ../shared/data exists, a small real curriculum is built from
   it (`real_curriculum`): general = ChatDoctor patient/doctor dialogues, knowledge = MedQuAD open questions,
   clinical = PubMedQA yes/no/maybe questions with their abstract, and the few MEDIQA 2019 preference pairs
   (answers ranked by people) short enough to fit. Held-out items come from groups no training item belongs
   to (a MedQuAD focus, a PubMedQA abstract, a dialogue; `data.sources.split_validation`). The staged subset
   is written to `<output-dir>-data/`, never into the repository. Without ../shared/data: the bundled
   synthetic curriculum and its held-out retention probes (questions on taught facts, in other words).
2. Train: `icft train`'s recipe and its progress display; three stages, short- and long-term memory on.
3. Evaluate the untrained model and the trained run on the same held-out items through the one evaluation
   path; each change gets a paired bootstrap interval over the items, and the trivial baselines (a random
   guess, one constant answer, the best option position) score the same items.
4. Answer three held-out medical questions. Each prompt carries the facts retrieved from the run's long-term
   memory, as `icft chat --retrieve 3` builds it; the untrained and the trained model answer the same prompt.
5. Say what changed in plain words: a change whose interval includes 0 is called noise.

    python -m icft.recipes.demo [--shared ../shared/data] [--output-dir runs/demo] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import RunConfig, load_config
from ..data.formatting import chat_messages, reference
from ..data.kinds import is_question, kind_of
from ..data.prompt_format import PromptFormat
from ..data.schema import Example
from ..evaluation.paired import Row, group_rows, table
from ..evaluation.stage_eval import fixed_sample
from ..runs import Run

# The real sources: file under the shared folder, stage, and the share of groups held out of training.
REAL_SOURCES = {
    "chatdoctor": ("chatdoctor_genmedgpt5k/dialogue.jsonl", "general", 0.05),
    "medquad": ("medquad/qa.jsonl", "knowledge", 0.05),
    "pubmedqa": ("pubmedqa/train.jsonl", "clinical", 0.2),
    # Only ~10 MEDIQA pairs are short enough to fit whole: all are trained on, none tested.
    "mediqa2019": ("mediqa2019/pairs.jsonl", "clinical", 0.0),
}
RETRIEVE = 3  # memory facts per demo answer, as `icft chat --retrieve 3`


@dataclass
class Sizes:
    """How much the demo trains and tests on, sized to its time budget (configs/demo.yaml says how)."""

    train: int = 160  # training pool per real source (the curriculum draws the easiest share first)
    validation: int = 12  # per real source, for the stage matrices
    test: dict[str, int] = field(default_factory=lambda: {"pubmedqa": 40, "medquad": 16})
    bundled_test: int = 8  # held-out retention probes per stage, bundled curriculum
    # Items longer than this (words) are left out, so that they fit model.max_length whole; PubMedQA keeps its
    # question and the end of its abstract (the results) when the prompt is cut from the start.
    max_words: dict[str, int] = field(default_factory=lambda: {"chatdoctor": 55, "medquad": 65, "mediqa2019": 80})
    answers: int = 3
    new_tokens: int = 60  # per demo answer


# ----------------------------------------------------------------------------------------------------
# 1. Data


def words(ex: Example) -> int:
    """Length in words of what training reads: what the item asks and its longest answer (a preference pair:
    the prompt and the longer of its two answers; a dialogue: the patient's turns and the doctor's reply)."""
    kind = kind_of(ex)
    asked = kind.query(ex) if kind.asks else ""
    return len(asked.split()) + max(len(kind.answer(ex, side).split()) for side in kind.sides)


def real_curriculum(shared: Path, sizes: Sizes) -> dict[str, list[Example]]:
    """{"train", "validation", "test"}: staged examples from the shared folder's files (read in place).

    Held-out items are drawn from the groups `split_validation` holds out (hash of the group key), and
    any held-out item whose question is also a training question is dropped, so none is trained on.
    """
    from ..data.loaders import load_examples
    from ..data.sources import split_validation
    from ..memory import example_text

    out: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    for name, (path, stage, share) in REAL_SOURCES.items():
        limit = sizes.max_words.get(name)
        examples = [_staged(ex, stage) for ex in load_examples(shared / path).examples
                    if limit is None or words(ex) <= limit]  # fmt: skip
        train, held = split_validation(examples, share)
        asked = {example_text(ex) for ex in train}
        held = fixed_sample([ex for ex in held if example_text(ex) not in asked], 0)
        n_test = sizes.test.get(name, 0)
        out["train"] += fixed_sample(train, sizes.train)
        out["test"] += held[:n_test]
        out["validation"] += held[n_test : n_test + sizes.validation]
    return out


def _staged(ex: Example, stage: str) -> Example:
    meta = dict(ex.meta)
    if "question_id" in meta:  # MEDIQA: all pairs about one question stay on one side of the split
        meta["topic"] = meta["question_id"]
    return dataclasses.replace(ex, stage=stage, meta=meta)


def prepare_data(config: RunConfig, shared: Path | None, data_dir: Path, sizes: Sizes) -> dict[str, list[Example]]:
    """Validate the data, point the config at it, and return the held-out test items by group."""
    from ..data.sources import load_data
    from ..data_commands import validate
    from ..errors import ConfigError
    from ..io import write_jsonl

    if shared is not None:
        sources = [str(shared / path) for path, _, _ in REAL_SOURCES.values()]
        if validate(sources) != 0:
            raise ConfigError(f"{shared}: the data above has errors; fix them or run without --shared")
        split = real_curriculum(shared, sizes)
        for part, examples in split.items():
            write_jsonl(data_dir / f"{part}.jsonl", (ex.to_dict() for ex in examples))
        config.data.train = [str(data_dir / "train.jsonl")]
        config.data.validation = [str(data_dir / "validation.jsonl")]
        counts = ", ".join(f"{part} {len(examples)}" for part, examples in split.items())
        print(f"real curriculum written to {data_dir}/: {counts} (held-out groups are never trained on)")
        return _by(split["test"], lambda ex: ex.source.split("/")[0])
    from ..bundled import bundled_path

    own = [spec for spec in config.data.train + config.data.validation if not spec.startswith("bundled:")]
    if validate([str(bundled_path("train").parent), *own]) != 0:
        raise ConfigError("the data above has errors")
    probes = load_data(["bundled:test-retention"], quiet=True)
    by_stage = _by(probes, lambda ex: ex.stage)
    return {stage: fixed_sample(examples, sizes.bundled_test) for stage, examples in by_stage.items()}


def _by(examples: list[Example], key) -> dict[str, list[Example]]:
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(key(ex), []).append(ex)
    return groups


# ----------------------------------------------------------------------------------------------------
# 3. Evaluation: untrained against trained, same items


def evaluate_both(base, trained, fmt: PromptFormat, tests: dict[str, list[Example]]) -> tuple[list[Row], dict]:
    """Table rows and the JSON record: every group's metrics for both models, baselines, item scores.
    Both models are asked in the trained run's prompt format (`fmt`), at its length."""
    from ..evaluation.baselines import trivial_baselines
    from ..evaluation.evaluate import evaluate_examples

    rows, record = [], {}
    for group, examples in tests.items():
        models = {"untrained": base, "trained": trained}
        results = {name: evaluate_examples(model, fmt, examples) for name, model in models.items()}
        baselines = trivial_baselines(examples)
        record[group] = {**{name: {"metrics": r.to_json(), "items": r.items} for name, r in results.items()},
                         "baselines": baselines}  # fmt: skip
        rows += group_rows(group, results["untrained"], results["trained"], baselines)
    return rows, record


def format_rows(rows: list[Row]) -> str:
    header = ["held-out items", "metric", "n", "untrained", "ICFT", "change [95% interval]",
              "no model (best trivial baseline)"]  # fmt: skip
    return "\n".join(table(rows, header))


# ----------------------------------------------------------------------------------------------------
# 4. Answers with the memory facts they retrieved


def answer_questions(base, run: Run, questions: list[Example], k: int, new_tokens: int) -> list[dict]:
    """Each question's prompt with its top-k memory facts (built as `icft chat` builds it), answered by both."""
    from ..inference.generate import Engine
    from ..memory.retrieval import load_retriever

    retriever = load_retriever(run.path, None, k, memory=run.memory)
    icft = Engine(run.model, run.tokenizer, "icft", retriever, k, fmt=run.format)
    untrained = Engine(base, run.tokenizer, "untrained", fmt=run.format)
    prompts = [icft.chat_prompt(chat_messages(ex)[:-1], new_tokens) for ex in questions]
    answers = {name: engine.generate(prompts, new_tokens) for name, engine in (("untrained", untrained),
                                                                               ("icft", icft))}  # fmt: skip
    return [{"id": ex.id, "question": chat_messages(ex)[-2]["content"], "reference": reference(ex),
             "retrieved": [h.to_json() for h in prompt.retrieved],
             **{name: out[i].text for name, out in answers.items()}}
            for i, (ex, prompt) in enumerate(zip(questions, prompts))]  # fmt: skip


def pick_questions(tests: dict[str, list[Example]], n: int) -> list[Example]:
    """Open questions where there are enough (they read best as answers), else questions with options too;
    taken from every group in turn."""
    questions = [ex for examples in tests.values() for ex in examples if is_question(ex)]
    is_open = [ex for ex in questions if kind_of(ex).is_open(ex) and not ex.context]
    return _round_robin(_by(is_open if len(is_open) >= n else questions, lambda ex: ex.stage or ""), n)


def _round_robin(groups: dict[str, list[Example]], n: int) -> list[Example]:
    picked, i = [], 0
    while len(picked) < n and any(i < len(g) for g in groups.values()):
        picked += [g[i] for g in groups.values() if i < len(g)][: n - len(picked)]
        i += 1
    return picked


def format_answers(answers: list[dict]) -> str:
    lines = []
    for i, a in enumerate(answers, 1):
        lines.append(f"[{i}] {_short(a['question'], 300)}")
        for hit in a["retrieved"]:
            lines.append(f"    memory {hit['score']:.2f}  {_short(hit['text'], 110)}")
        lines += [f"    untrained: {_short(a['untrained'], 300)}", f"    ICFT:      {_short(a['icft'], 300)}",
                  f"    reference: {_short(a['reference'], 300)}"]  # fmt: skip
    return "\n".join(lines)


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


# ----------------------------------------------------------------------------------------------------
# 5. In plain words


def summary(rows: list[Row], stage_eval: dict, train_summary: dict) -> list[str]:
    """One sentence per measured change, calling a change noise when its interval includes 0; forgetting
    across the stages; and what one seed cannot tell."""
    lines = ["In plain words:"]
    for r in rows:
        label = f"{r.group} {r.metric}"
        if r.low is None:
            lines.append(f"- {label}: {r.untrained:.3f} -> {r.trained:.3f} (no per-item interval for this metric).")
            continue
        if r.low <= 0 <= r.high:
            verdict = (f"no change beyond noise ({r.change:+.3f}; the 95% interval {r.low:+.3f} to {r.high:+.3f} "
                       "includes 0)")
        else:
            verdict = (f"{'better' if r.better else 'worse'} after training, {r.untrained:.3f} -> {r.trained:.3f} "
                       f"(change {r.change:+.3f}, 95% interval {r.low:+.3f} to {r.high:+.3f})")  # fmt: skip
        floor = ""
        if r.baseline is not None:
            side = "at or below" if r.trained <= r.baseline else "above"
            floor = f"; the trained model is {side} answering without a model ({r.baseline_name} {r.baseline:.3f})"
        lines.append(f"- {label} on {r.n} held-out items: {verdict}{floor}.")
    lines += _forgetting_lines(stage_eval)
    lines.append(f"- This is one seed and one short run ({train_summary.get('steps', 0)} steps, "
                 f"{train_summary.get('tokens', 0):,} tokens): another seed can move every number above; "
                 "`icft compare` trains several seeds and pairs them.")  # fmt: skip
    return lines


def _forgetting_lines(stage_eval: dict) -> list[str]:
    """The first stage's validation answer NLL right after it and at the end: did later stages undo it?"""
    nll = stage_eval.get("nll_matrix") or []
    stages = stage_eval.get("stages") or []
    if len(nll) < 2 or nll[0][0] is None or nll[-1][0] is None:
        return []
    after, end = nll[0][0], nll[-1][0]
    what = ("the later stages did not undo it here" if end <= after else
            "it rose while the later stages trained: some of it was forgotten")  # fmt: skip
    return [f"- The first stage ({stages[0]}): its validation answer NLL was {after:.3f} right after it and "
            f"{end:.3f} at the end; {what} (a few validation items, stage_eval.json; no interval)."]


# ----------------------------------------------------------------------------------------------------
# The demo


def run_demo(config: RunConfig, output_dir: Path, shared: Path | None, sizes: Sizes | None = None) -> dict:
    """All five steps; prints as it goes and writes `demo.json` into the run folder. Returns that record."""
    from ..io import write_json
    from ..recipes.train import train
    from ..runs import load_base

    sizes = sizes or Sizes()
    seconds: dict[str, float] = {}  # wall seconds per step
    cpu: dict[str, float] = {}  # CPU seconds of this process (all threads) per step: the work, whatever the load
    start = (time.perf_counter(), time.process_time())

    def lap(name: str) -> None:
        seconds[name] = time.perf_counter() - start[0] - sum(seconds.values())
        cpu[name] = time.process_time() - start[1] - sum(cpu.values())

    _title(f"1. Data: {'real, from ' + str(shared) if shared else 'the bundled curriculum (no shared data folder)'}")
    tests = prepare_data(config, shared, Path(f"{output_dir}-data"), sizes)
    lap("data")

    _title(f"2. ICFT training: {config.model.name}, {config.train.max_steps} steps, 3 stages, memory on")
    train(config, output_dir, overwrite=True)
    lap("train")

    _title("3. Held-out items: the untrained model against the ICFT-trained run")
    run = Run.from_pretrained(output_dir)  # the trained model, its prompt format and its long-term memory
    base, _ = load_base(config.model.name)
    rows, record = evaluate_both(base, run.model, run.format, tests)
    print(format_rows(rows))
    lap("evaluate")

    _title(f"4. Held-out questions answered with the {RETRIEVE} facts each retrieved from the run's long-term memory")
    answers = answer_questions(base, run, pick_questions(tests, sizes.answers), RETRIEVE, sizes.new_tokens)
    print(format_answers(answers))
    lap("answers")

    _title("5. What changed")
    stage_eval = json.loads((output_dir / "stage_eval.json").read_text())
    train_summary = json.loads((output_dir / "summary.json").read_text())
    words_ = summary(rows, stage_eval, train_summary)
    print("\n".join(words_))
    lap("summary")
    out = {"data": "real" if shared else "bundled", "rows": [dataclasses.asdict(r) for r in rows], "summary": words_,
           "answers": answers, "evaluation": record, "seconds": {k: round(v, 1) for k, v in seconds.items()},
           "cpu_seconds": {k: round(v, 1) for k, v in cpu.items()}}  # fmt: skip
    write_json(output_dir / "demo.json", out)
    print("\ntime: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()) + f"; total {sum(seconds.values()):.0f}s "
          f"({sum(cpu.values()):.0f} CPU seconds)")  # fmt: skip
    print(f"wrote {output_dir}/demo.json; try: icft chat --run {output_dir} --retrieve 3")
    return out


def _title(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main(argv: list[str] | None = None) -> int:
    import warnings

    from ..errors import USER_ERRORS

    # peft asks transformers a deprecated question on every adapter: noise on the demo's first screen
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated")

    parser = argparse.ArgumentParser(prog="python -m icft.recipes.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default="../shared/data",
                        help="folder of the shared public data; where it does not exist, the bundled curriculum")
    parser.add_argument("--config", help="default: configs/demo-real.yaml with shared data, else configs/demo.yaml")
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    args = parser.parse_args(argv)
    shared = Path(args.shared) if args.shared and Path(args.shared).is_dir() else None
    try:
        config = load_config(args.config or ("configs/demo-real.yaml" if shared else "configs/demo.yaml"), args.set)
        run_demo(config, Path(args.output_dir), shared)
    except USER_ERRORS as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
