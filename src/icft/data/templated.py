"""How templated a file's answers are: boilerplate a model learns to say whatever it is asked.

ChatDoctor's answers open with a few stock phrases ("Hi, thanks for your query", "Based on your symptoms, it
seems like you're suffering from ..."); fine-tuning on them teaches the model to open every medical answer
that way. Two measures per file, on the answer side of each record (an open qa answer, a dialogue's last
assistant turn, a preference pair's chosen answer):

- opener share: the share of answers whose first three words are one of the file's ten most common openings;
- repeated 4-gram share: the share of answer words inside a 4-gram found in more than 1% of the answers
  (and in at least two): text repeated across answers rather than written for the question.

Free-written answers score low on both (MedQuAD's reference answers name their subject in their opening);
templated ones high. `icft data stats` prints them per file.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from .kinds import kind_of
from .schema import Example

TOP_OPENERS = 10
OPENER_WORDS = 3
NGRAM = 4
REPEATED_SHARE = 0.01  # a 4-gram in more than this share of a file's answers counts as repeated
WORD = re.compile(r"[a-z0-9']+")


@dataclass
class TemplateMeasures:
    answers: int
    opener_share: float
    top_openers: list[tuple[str, int]]
    repeated_4gram_share: float


def answer_side(ex: Example) -> str | None:
    """The text a record teaches a model to answer with, or None (text records, multiple choice)."""
    return kind_of(ex).written_answer(ex)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def measure(answers: list[str]) -> TemplateMeasures | None:
    tokenized = [w for w in (words(a) for a in answers) if w]
    if not tokenized:
        return None
    openers = Counter(" ".join(w[:OPENER_WORDS]) for w in tokenized if len(w) >= OPENER_WORDS)
    top = openers.most_common(TOP_OPENERS)
    opener_share = sum(n for _, n in top) / len(tokenized)
    return TemplateMeasures(len(tokenized), opener_share, top, repeated_ngram_share(tokenized))


def repeated_ngram_share(tokenized: list[list[str]]) -> float:
    """Share of all answer words covered by a 4-gram whose document frequency exceeds REPEATED_SHARE."""
    grams = [[tuple(w[i : i + NGRAM]) for i in range(len(w) - NGRAM + 1)] for w in tokenized]
    frequency = Counter(g for answer in grams for g in set(answer))
    floor = max(1, REPEATED_SHARE * len(tokenized))
    repeated = {g for g, n in frequency.items() if n > floor}
    covered = total = 0
    for w, answer in zip(tokenized, grams):
        inside = [False] * len(w)
        for i, g in enumerate(answer):
            if g in repeated:
                inside[i : i + NGRAM] = [True] * NGRAM
        covered += sum(inside)
        total += len(w)
    return covered / max(1, total)


def by_file(examples: list[Example]) -> dict[str, TemplateMeasures]:
    """{file: measures} for each file (from each record's origin) with answers to measure."""
    answers: dict[str, list[str]] = {}
    for ex in examples:
        text = answer_side(ex)
        if text:
            answers.setdefault(ex.origin.rsplit(":", 1)[0] or ex.source, []).append(text)
    out = {}
    for name, texts in answers.items():
        measures = measure(texts)
        if measures is not None:
            out[name] = measures
    return out


def print_template_measures(examples: list[Example]) -> None:
    """`icft data stats`: the two measures per file, with its most common opening."""
    measured = by_file(examples)
    if not measured:
        return
    print(f"\ntemplated answers (share opening with the file's {TOP_OPENERS} most common {OPENER_WORDS}-word "
          f"openings; share of answer words in {NGRAM}-grams found in >{REPEATED_SHARE:.0%} of its "
          "answers):")  # fmt: skip
    for name, m in measured.items():
        opener, count = m.top_openers[0] if m.top_openers else ("-", 0)
        print(f"  {name}: {m.answers} answers, openers {m.opener_share:.0%}, repeated 4-grams "
              f"{m.repeated_4gram_share:.0%} (most common opening: '{opener}' x{count})")  # fmt: skip
