"""The four kinds of example, one class each: every text an example is turned into lives with its kind.

A kind knows its plain prompt and its answer (a preference pair has two answer sides: chosen and rejected),
its chat messages, its candidates and the right one (for items scored by likelihood: multiple-choice and
yes/no/maybe qa, preference pairs), whether it is answered by generation (open qa, dialogue), what it asks
(the text a retrieval query embeds), the short fact it contributes to a memory, and where retrieved facts go
in its prompt. Callers ask `kind_of(ex)` instead of branching on `ex.kind`; `formatting` turns these texts
into template-specific (prompt, target) pairs.

The plain prompts::

    qa          [Context: <context>\\n]Question: <question>[\\nOptions: (A) <o1> (B) <o2> ...]\\nAnswer:
    preference  Question: <prompt>\\nAnswer:
    dialogue    Patient: <user turn>\\nDoctor: <assistant turn>\\n...\\nDoctor:
    text        (none: the text is the target)
"""

from __future__ import annotations

import dataclasses

from .schema import OPTION_LETTERS, YES_NO_MAYBE, Example

Messages = list[dict[str, str]]
Choices = tuple[list[str], int]


def qa_question(ex: Example) -> str:
    """Context, question and lettered options: the plain prompt's body and the chat user message."""
    parts = []
    if ex.context:
        parts.append(f"Context: {ex.context}")
    parts.append(f"Question: {ex.question}")
    if ex.options:
        parts.append("Options: " + " ".join(f"({OPTION_LETTERS[i]}) {o}" for i, o in enumerate(ex.options)))
    return "\n".join(parts)


def qa_prompt(ex: Example) -> str:
    return qa_question(ex) + "\nAnswer:"


def preference_prompt(ex: Example) -> str:
    return f"Question: {ex.prompt}\nAnswer:"


def dialogue_prompt(turns: list[dict[str, str]]) -> str:
    """Every turn but the last (the one answered), then "Doctor:"."""
    names = {"user": "Patient", "assistant": "Doctor"}
    lines = [f"{names[t['role']]}: {t['content']}" for t in turns[:-1]]
    return "\n".join(lines) + "\nDoctor:"


def context_block(facts: list[str]) -> str:
    """'Context: f1\\nf2' (no trailing newline): the text qa_prompt puts after 'Context: '."""
    return "Context: " + "\n".join(facts) if facts else ""


def _one_line(text: str) -> str:
    return " ".join(text.split())


class Kind:
    """What an example of one kind is turned into. The methods take the example; instances hold no state."""

    name = ""
    asks = True  # it asks something: it has a prompt, an answer and chat messages (all kinds but text)
    sides: tuple[str, ...] = ("chosen",)  # the answers it can be trained on

    def prompt(self, ex: Example) -> str:
        """The plain template's prompt."""
        raise NotImplementedError

    def answer(self, ex: Example, side: str = "chosen") -> str:
        """The gold answer text (a preference pair's rejected one with side="rejected")."""
        raise NotImplementedError

    def pair(self, ex: Example, side: str = "chosen") -> tuple[str, str]:
        """The plain (prompt, target). The target starts with a space so that word-piece and BPE tokenizers
        split it the same way in training and scoring."""
        return self.prompt(ex), " " + self.answer(ex, side)

    def messages(self, ex: Example, side: str = "chosen") -> Messages:
        """User/assistant chat messages; the last one is the answer."""
        raise NotImplementedError

    def candidates(self, ex: Example) -> Choices | None:
        """The candidate answers and the index of the right one; None where the kind is not a choice."""
        return None

    def choice_type(self, ex: Example) -> str | None:
        """"mc", "yes/no/maybe" or "preference" for a choice item (the groups baselines report), else None."""
        return None

    def is_open(self, ex: Example) -> bool:
        """Answered by generation (scored against `answer` as a reference)."""
        return False

    def written_answer(self, ex: Example) -> str | None:
        """The answer written out in words that the item teaches (an open answer, a dialogue's reply, a
        preference pair's chosen answer); None where the answer is picked from options or nothing is asked."""
        return self.answer(ex) if self.is_open(ex) else None

    def query(self, ex: Example) -> str:
        """What is asked (the input side): the text retrieval embeds, so a query question meets stored ones."""
        raise NotImplementedError

    def fact(self, ex: Example) -> str:
        """The short fact the example contributes to a Context block, on one line."""
        raise NotImplementedError

    def with_context(self, ex: Example, facts: list[str]) -> Example:
        """A copy of `ex` whose prompt holds the Context block of `facts` (not empty)."""
        raise NotImplementedError


class Text(Kind):
    """Plain language-model text: no prompt, nothing asked; the text is the target."""

    name = "text"
    asks = False

    def prompt(self, ex: Example) -> str:
        return ""

    def answer(self, ex: Example, side: str = "chosen") -> str:
        return ex.text

    def pair(self, ex: Example, side: str = "chosen") -> tuple[str, str]:
        return "", ex.text  # no prompt, so no space before the text

    def messages(self, ex: Example, side: str = "chosen") -> Messages:
        raise ValueError(f"{self.name!r} examples have no chat form")

    def query(self, ex: Example) -> str:
        return ex.text

    def fact(self, ex: Example) -> str:
        return _one_line(ex.text)

    def with_context(self, ex: Example, facts: list[str]) -> Example:
        return ex  # nothing is asked, so there is no prompt to put facts in


class QA(Kind):
    """A question: multiple choice (answer = option index), yes/no/maybe, or open (answer = the text)."""

    name = "qa"

    def prompt(self, ex: Example) -> str:
        return qa_prompt(ex)

    def answer(self, ex: Example, side: str = "chosen") -> str:
        return ex.options[ex.answer] if ex.options else ex.answer

    def messages(self, ex: Example, side: str = "chosen") -> Messages:
        return [{"role": "user", "content": qa_question(ex)}, {"role": "assistant", "content": self.answer(ex)}]

    def candidates(self, ex: Example) -> Choices | None:
        return (list(ex.options), ex.answer) if ex.options else None

    def choice_type(self, ex: Example) -> str | None:
        if not ex.options:
            return None
        return "yes/no/maybe" if ex.options == YES_NO_MAYBE else "mc"

    def is_open(self, ex: Example) -> bool:
        return not ex.options

    def query(self, ex: Example) -> str:
        return ex.question

    def fact(self, ex: Example) -> str:
        return _one_line(f"{ex.question} {self.answer(ex)}")

    def with_context(self, ex: Example, facts: list[str]) -> Example:
        # the template's context slot; an existing context (e.g. a PubMedQA abstract) follows the facts
        lines = "\n".join(facts)
        return dataclasses.replace(ex, context=lines + (f"\n{ex.context}" if ex.context else ""))


class Preference(Kind):
    """A prompt with a chosen and a rejected answer: a choice between the two, trained on either side."""

    name = "preference"
    sides = ("chosen", "rejected")

    def prompt(self, ex: Example) -> str:
        return preference_prompt(ex)

    def answer(self, ex: Example, side: str = "chosen") -> str:
        return ex.rejected if side == "rejected" else ex.chosen

    def messages(self, ex: Example, side: str = "chosen") -> Messages:
        return [{"role": "user", "content": ex.prompt}, {"role": "assistant", "content": self.answer(ex, side)}]

    def candidates(self, ex: Example) -> Choices | None:
        return [ex.chosen, ex.rejected], 0

    def choice_type(self, ex: Example) -> str | None:
        return "preference"

    def written_answer(self, ex: Example) -> str | None:
        return ex.chosen

    def query(self, ex: Example) -> str:
        return ex.prompt

    def fact(self, ex: Example) -> str:
        return _one_line(f"{ex.prompt} {ex.chosen}")

    def with_context(self, ex: Example, facts: list[str]) -> Example:
        # no context slot: the block opens the question ("Question: Context: ..."), as `icft chat` places it
        return dataclasses.replace(ex, prompt=f"{context_block(facts)}\n{ex.prompt}")


class Dialogue(Kind):
    """Patient (user) and doctor (assistant) turns; the last turn, the doctor's, is the answer."""

    name = "dialogue"

    def prompt(self, ex: Example) -> str:
        return dialogue_prompt(ex.turns)

    def answer(self, ex: Example, side: str = "chosen") -> str:
        return ex.turns[-1]["content"]

    def messages(self, ex: Example, side: str = "chosen") -> Messages:
        return [{"role": t["role"], "content": t["content"]} for t in ex.turns]

    def is_open(self, ex: Example) -> bool:
        return True

    def query(self, ex: Example) -> str:
        return "\n".join(t["content"] for t in ex.turns if t["role"] == "user")

    def fact(self, ex: Example) -> str:
        return _one_line(" ".join(t["content"] for t in ex.turns))

    def with_context(self, ex: Example, facts: list[str]) -> Example:
        # no context slot: the block opens the last patient turn, the one being answered ("Patient: Context: ...")
        turns = [dict(t) for t in ex.turns]
        last = max((i for i, t in enumerate(turns[:-1]) if t["role"] == "user"), default=0)
        turns[last]["content"] = f"{context_block(facts)}\n{turns[last]['content']}"
        return dataclasses.replace(ex, turns=turns)


BY_NAME = {kind.name: kind for kind in (Text(), QA(), Preference(), Dialogue())}  # one per schema.KINDS


def kind_of(ex: Example) -> Kind:
    """The kind `ex` is (raises ValueError for a kind the schema does not know)."""
    try:
        return BY_NAME[ex.kind]
    except KeyError:
        raise ValueError(f"unknown kind {ex.kind!r}") from None


def is_choice(ex: Example) -> bool:
    """Items scored by likelihood of their candidates: multiple-choice and yes/no/maybe qa, preference pairs."""
    return kind_of(ex).candidates(ex) is not None


def is_question(ex: Example) -> bool:
    """A qa item (open, multiple-choice or yes/no/maybe), not a dialogue, a preference pair or plain text."""
    return isinstance(kind_of(ex), QA)


def choices(ex: Example) -> Choices:
    """The candidate answer texts and the index of the right one (a preference pair: chosen, rejected)."""
    found = kind_of(ex).candidates(ex)
    if found is None:
        raise ValueError(f"example {ex.id} ({ex.kind}) has no candidates to score")
    return found


def choice_type(ex: Example) -> str | None:
    """"mc", "yes/no/maybe" or "preference" for a choice item, None for any other."""
    return kind_of(ex).choice_type(ex)
