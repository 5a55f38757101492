"""Evaluate a model on examples of every kind, and on data files, with the metrics each kind allows.

- multiple-choice and yes/no/maybe qa: `accuracy` (highest summed log-probability), `accuracy_norm`
  (log-probability per character, lm-eval's acc_norm) and, for yes/no/maybe options, `macro_f1`;
- preference pairs: `preference_accuracy` (the chosen answer scores higher, length-normalised);
- open qa and dialogue: greedy generation compared to the reference answer: `bleu` (0-100), `rouge1`,
  `rouge2`, `rougeL`, `distinct1`, `distinct2`, `embedding_similarity` (given an embedder), `mean_length`;
- text: `perplexity`, exp of the mean negative log-likelihood per token over all texts.

- every item: `answer_nll`, the mean negative log-likelihood per token of its reference answer (a text
  example: of the text) after its prompt.

`metrics["accuracy_by"]` breaks the accuracy of the scorable examples down by kind, source, stage and
tier (`meta["tier"]`), e.g. {"kind=qa": 0.6, "tier=2": 0.5}; it is the one entry that is not a number.
`EvalResult.errors` lists the scorable examples the model got wrong; `EvalResult.items` holds one record per
example (its hit, or its generated answer and ROUGE-L, and its answer NLL), from which every caller (`icft
eval`, `icft compare`, the benchmarks) aggregates: this module is the one evaluation path.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .. import tables
from ..data.formatting import is_open_ended, reference
from ..data.kinds import choice_type, choices, is_question, kind_of
from ..data.prompt_format import PromptFormat
from ..data.schema import YES_NO_MAYBE, Example
from ..data.tokenize import collate, encode_pair
from ..likelihood import (
    ScoreSettings,
    answer_nll,
    budget_batches,
    eval_batches,
    sequence_logprobs,
    target_logits,
    token_budget,
)
from . import metrics as M
from . import registry
from .baselines import label_recalls
from .generation import EVAL_MAX_NEW_TOKENS, context_limit, generate_answers
from .scoring import ChoiceScores, choice_accuracy, is_scorable, score_choices

GROUP_FIELDS = ("kind", "source", "stage", "tier")


@dataclass(frozen=True)
class EvalSettings:
    """How `evaluate_examples` runs, besides the prompt format: rows per batch (a batch also holds at most
    `likelihood.token_budget` tokens), the most tokens a generated answer may have, and progress bars on
    stderr."""

    batch_size: int = 32
    max_new_tokens: int = EVAL_MAX_NEW_TOKENS
    progress: bool = False


@dataclass
class EvalResult:
    metrics: dict[str, Any]  # metric name -> float, and "accuracy_by" -> {group: accuracy}
    errors: list[dict[str, Any]] = field(default_factory=list)
    n_examples: int = 0
    # one record per example, in input order: {"id", "kind", "answer_nll"} and "hit" (0/1, choice items) or
    # "answer" and "rougeL" (open items)
    items: list[dict[str, Any]] = field(default_factory=list)

    @property
    def accuracy_by(self) -> dict[str, float]:
        return self.metrics.get("accuracy_by", {})

    def scalars(self) -> dict[str, float]:
        """The metrics that are numbers (all but `accuracy_by`)."""
        return {k: v for k, v in self.metrics.items() if isinstance(v, (int, float))}

    def to_json(self) -> dict[str, Any]:
        """The metrics with NaN and infinity as null (JSON has neither), and `n_examples`."""
        out: dict[str, Any] = {k: _finite_or_none(v) for k, v in self.scalars().items()}
        if self.accuracy_by:
            out["accuracy_by"] = {k: _finite_or_none(v) for k, v in self.accuracy_by.items()}
        out["n_examples"] = self.n_examples
        return out


def evaluate_examples(
    model: PreTrainedModel,
    fmt: PromptFormat,
    examples: list[Example],
    settings: EvalSettings = EvalSettings(),
    embedder: M.Embedder | None = None,
) -> EvalResult:
    """Every metric the examples allow (see the module docstring) and one record per example; the model is
    left in its former mode. `embedder` adds `embedding_similarity` to the metrics of generated answers.

    `fmt` is the prompt format the model is asked in (a run's `Run.format`; a base model's
    `PromptFormat(tokenizer, template, max_length)`): scoring, generation and answer NLL prompts go through
    it, cut to its `max_length` tokens (or the model's position limit, if lower); references stay plain text.
    """
    fmt = dataclasses.replace(fmt, max_length=context_limit(model, fmt.max_length))
    items = [{"id": ex.id, "kind": ex.kind} for ex in examples]
    position = {id(ex): i for i, ex in enumerate(examples)}  # by object: ids may repeat across merged files

    scorable = [ex for ex in examples if is_scorable(ex)]
    scores = score_choices(model, fmt, scorable, settings.batch_size, settings.progress) if scorable else []
    hits = [_is_hit(s) for s in scores]
    for s, hit in zip(scores, hits):
        items[position[id(s.example)]]["hit"] = int(hit)
    metrics: dict[str, Any] = _choice_metrics(scores)

    open_ended = [ex for ex in examples if is_open_ended(ex)]
    if open_ended:
        answers = _generate(model, fmt, open_ended, settings)
        refs = [reference(ex) for ex in open_ended]
        metrics.update(generation_metrics(answers, refs, embedder))
        for ex, answer, rouge_l in zip(open_ended, answers, M.rouge_l_scores(answers, refs)):
            items[position[id(ex)]].update(answer=answer, rougeL=rouge_l)

    texts = [kind_of(ex).answer(ex) for ex in examples if not kind_of(ex).asks]  # plain text: perplexity
    if texts:
        metrics["perplexity"] = perplexity(model, fmt.tokenizer, texts, fmt.max_length, settings.batch_size,
                                           settings.progress)  # fmt: skip

    pairs = [fmt.pair(ex) for ex in examples]
    scoring = ScoreSettings.of(fmt, settings.batch_size, settings.progress)
    nll = answer_nll(model, fmt.tokenizer, pairs, scoring) if pairs else []
    for record, value in zip(items, nll):
        record["answer_nll"] = value
    if nll:
        metrics["answer_nll"] = sum(nll) / len(nll)

    metrics = registry.ordered(metrics)
    if scores:
        metrics["accuracy_by"] = _accuracy_by(scores, hits)
    return EvalResult(
        metrics=metrics,
        errors=[_error_record(s) for s, hit in zip(scores, hits) if not hit],
        n_examples=len(examples),
        items=items,
    )


def _generate(model: PreTrainedModel, fmt: PromptFormat, examples: list[Example], settings: EvalSettings) -> list[str]:
    """The model's greedy answers to open examples. A model trained on short sequences keeps half its context
    for the prompt."""
    budget = min(settings.max_new_tokens, fmt.max_length // 2)
    prompts = [fmt.prompt(ex) for ex in examples]
    return generate_answers(model, fmt, prompts, budget, settings.batch_size, settings.progress)


def generation_metrics(hyps: list[str], refs: list[str], embedder: M.Embedder | None = None) -> dict[str, float]:
    """Overlap with the references, diversity and length of generated answers."""
    out = {"bleu": M.bleu(hyps, refs), **M.rouge(hyps, refs)}
    out["distinct1"] = M.distinct_n(hyps, 1)
    out["distinct2"] = M.distinct_n(hyps, 2)
    if embedder is not None:
        out["embedding_similarity"] = M.embedding_similarity(hyps, refs, embedder)
    out["mean_length"] = M.mean_length(hyps)
    return out


@torch.no_grad()
def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    max_length: int = 512,
    batch_size: int = 32,
    progress: bool = False,
) -> float:
    """exp(mean NLL per predicted token) over all texts together; a text is cut after `max_length` tokens.

    Pooling tokens (not averaging per-text perplexities) is the usual corpus perplexity: long texts
    weigh in proportion to their length.
    """
    sequences = [encode_pair(tokenizer, "", t, max_length, add_eos=False) for t in texts]
    sequences = sorted((s for s in sequences if s.n_target > 0), key=lambda s: -len(s.input_ids))
    device = next(model.parameters()).device
    total_logp, total_tokens = 0.0, 0.0
    batches = budget_batches([len(s.input_ids) for s in sequences], batch_size, token_budget(model))
    for b in eval_batches(model, len(batches), 1, progress, desc="perplexity"):
        chunk = [sequences[k] for k in batches[b]]
        batch = {k: v.to(device) for k, v in collate(chunk, tokenizer.pad_token_id).items()}
        _, row_sum, row_count = sequence_logprobs(*target_logits(model, batch), n_rows=len(chunk))
        total_logp += row_sum.sum().item()
        total_tokens += row_count.sum().item()
    return math.exp(-total_logp / total_tokens) if total_tokens else math.nan


# ----------------------------------------------------------------------------------------------------------
# Data files


def evaluate_files(
    model: PreTrainedModel,
    fmt: PromptFormat,
    paths: list[str | Path],
    max_examples: int | None = None,
    settings: EvalSettings = EvalSettings(),
) -> dict[str, EvalResult]:
    """`evaluate_examples` on each file (its first `max_examples`), keyed by file name.

    Raises DataError (from the loaders) for a missing or malformed file before any model work starts.
    """
    datasets = load_files(paths, max_examples)
    return {name: evaluate_examples(model, fmt, exs, settings) for name, exs in datasets.items()}


def load_files(
    paths: list[str | Path], max_examples: int | None = None, quiet: bool = True
) -> dict[str, list[Example]]:
    """The examples of each file (its first `max_examples`), keyed by file name; raises DataError. Not `quiet`:
    what the reader decided (records without `kind` read as qa) and what it skipped go to stderr.

    `bundled:<name>` works as in configs (e.g. `--data bundled:test-retention bundled:test-unseen`).
    """
    from ..data.sources import load_data

    return {name: load_data([str(path)], quiet=quiet)[:max_examples] for name, path in label_files(paths).items()}


def count_cut(fmt: PromptFormat, examples: list[Example], max_length: int) -> tuple[int, int]:
    """(items with a prompt + answer longer than `max_length` tokens, items): what cutting to that length
    changes. A text of no more UTF-8 bytes than the length cannot be longer in tokens (a byte-level token
    holds at least one byte), so only long texts are tokenized."""
    n_cut = 0
    for ex in examples:
        for prompt, target in (fmt.pair(ex, side) for side in kind_of(ex).sides):
            if len(prompt.encode("utf-8")) + len(target.encode("utf-8")) + 2 <= max_length:
                continue
            ids = fmt.tokenizer(prompt + target, add_special_tokens=False, verbose=False)["input_ids"]
            if len(ids) + 2 > max_length:
                n_cut += 1
                break
    return n_cut, len(examples)


def format_table(results: dict[str, EvalResult]) -> str:
    """A fixed-width table: one row per file, one column per metric any file has ('-' where it has none)."""
    columns = list(registry.ordered({k: 0.0 for r in results.values() for k in r.scalars()}))
    rows = [[name, str(r.n_examples), *(tables.cell(r.metrics.get(c), 4) for c in columns)]
            for name, r in results.items()]  # fmt: skip
    return "\n".join(tables.text(["file", "n", *columns], rows))


def print_table(
    results: dict[str, EvalResult],
    file: TextIO | None = None,
    examples: dict[str, list[Example]] | None = None,
    baselines: dict[str, dict[str, dict[str, float]]] | None = None,
) -> None:
    """The metrics table; given each file's `examples`, also one row per trivial baseline (random guess,
    constant answer, best option position) on the same items, so a score can be read against its floor, and
    a line under the table saying what each baseline is. `baselines`: each file's `trivial_baselines`, where
    the caller has them already (the best constant answer takes seconds on long answers)."""
    if examples:
        results = _with_baselines(results, examples, baselines or {})
    lines = [format_table(results)]
    if examples:
        from .baselines import BASELINE_LABELS

        shown = [b for b in BASELINE_LABELS if any(name.endswith(f" [{b}]") for name in results)]
        width = max((len(b) for b in shown), default=0) + 2
        lines += [f"  {'[' + b + ']':<{width}}  {BASELINE_LABELS[b]}" for b in shown]
    print("\n".join(lines), file=file or sys.stdout)


def _with_baselines(results: dict[str, EvalResult], examples: dict[str, list[Example]],
                    known: dict[str, dict[str, dict[str, float]]]) -> dict[str, EvalResult]:  # fmt: skip
    from .baselines import trivial_baselines

    out: dict[str, EvalResult] = {}
    for name, result in results.items():
        out[name] = result
        floors = known[name] if name in known else trivial_baselines(examples.get(name, []))
        for baseline, values in floors.items():
            out[f"{name} [{baseline}]"] = EvalResult(metrics=dict(values), n_examples=result.n_examples)
    return out


# ----------------------------------------------------------------------------------------------------------


def _pick(s: ChoiceScores) -> int:
    # preference accuracy compares length-normalised scores (a longer answer is not a worse one)
    return s.pred_norm if choice_type(s.example) == "preference" else s.pred


def _is_hit(s: ChoiceScores) -> bool:
    return _pick(s) == s.gold


def _choice_metrics(scores: list[ChoiceScores]) -> dict[str, float]:
    out: dict[str, float] = {}
    questions = [s for s in scores if is_question(s.example)]
    if questions:
        out["accuracy"] = choice_accuracy(questions)
        out["accuracy_norm"] = choice_accuracy(questions, normalised=True)
    yes_no_maybe = [s for s in questions if choice_type(s.example) == "yes/no/maybe"]
    if yes_no_maybe:
        golds = [YES_NO_MAYBE[s.gold] for s in yes_no_maybe]
        preds = [YES_NO_MAYBE[s.pred] for s in yes_no_maybe]
        out["macro_f1"] = M.macro_f1(golds, preds, YES_NO_MAYBE)
        out.update(label_recalls(golds, preds))  # accuracy hides a model that always says "yes"
    preference = [s for s in scores if choice_type(s.example) == "preference"]
    if preference:
        out["preference_accuracy"] = choice_accuracy(preference, normalised=True)
    return out


def _group_keys(ex: Example) -> list[str]:
    values = {"kind": ex.kind, "source": ex.source, "stage": ex.stage, "tier": ex.meta.get("tier")}
    return [f"{name}={values[name]}" for name in GROUP_FIELDS if values[name] is not None]


def _accuracy_by(scores: list[ChoiceScores], hits: list[bool]) -> dict[str, float]:
    groups: dict[str, list[bool]] = defaultdict(list)
    for s, hit in zip(scores, hits):
        for key in _group_keys(s.example):
            groups[key].append(hit)
    return {key: sum(v) / len(v) for key, v in sorted(groups.items())}


def _error_record(s: ChoiceScores) -> dict[str, Any]:
    ex = s.example
    answers, _ = choices(ex)
    return {
        "id": ex.id, "kind": ex.kind, "source": ex.source, "tier": ex.meta.get("tier"),
        "question": kind_of(ex).query(ex), "gold": answers[s.gold], "predicted": answers[_pick(s)],
    }  # fmt: skip


def label_files(paths: list[str | Path]) -> dict[str, str | Path]:
    """A file's name labels its results; the full path only where two files share a name."""
    names = [str(p).split(":", 1)[1] if str(p).startswith("bundled:") else Path(str(p)).name for p in paths]
    return {(name if names.count(name) == 1 else str(p)): p for name, p in zip(names, paths)}


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None
