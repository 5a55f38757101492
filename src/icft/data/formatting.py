"""Turn examples into (prompt, target) text pairs: the one place prompt templates live.

Training masks the prompt and learns the target; evaluation scores candidate targets after the prompt.
A target starts with a space so that word-piece and BPE tokenizers split it the same way in both.
"""

from __future__ import annotations

from .schema import OPTION_LETTERS, Example


def qa_prompt(ex: Example) -> str:
    parts = []
    if ex.context:
        parts.append(f"Context: {ex.context}")
    parts.append(f"Question: {ex.question}")
    if ex.options:
        parts.append("Options: " + " ".join(f"({OPTION_LETTERS[i]}) {o}" for i, o in enumerate(ex.options)))
    return "\n".join(parts) + "\nAnswer:"


def dialogue_prompt(turns: list[dict[str, str]]) -> str:
    names = {"user": "Patient", "assistant": "Doctor"}
    lines = [f"{names[t['role']]}: {t['content']}" for t in turns[:-1]]
    return "\n".join(lines) + "\nDoctor:"


def preference_prompt(ex: Example) -> str:
    return f"Question: {ex.prompt}\nAnswer:"


def prompt_and_target(ex: Example) -> tuple[str, str]:
    """The supervised pair for text, qa and dialogue examples (preference: the chosen answer)."""
    if ex.kind == "text":
        return "", ex.text
    if ex.kind == "qa":
        answer = ex.options[ex.answer] if ex.options else ex.answer
        return qa_prompt(ex), " " + answer
    if ex.kind == "dialogue":
        return dialogue_prompt(ex.turns), " " + ex.turns[-1]["content"]
    if ex.kind == "preference":
        return preference_prompt(ex), " " + ex.chosen
    raise ValueError(f"unknown kind {ex.kind!r}")


def candidates(ex: Example) -> tuple[str, list[str], int]:
    """Prompt, candidate continuations and the index of the right one, for scoring by likelihood."""
    if ex.kind == "qa" and ex.options:
        return qa_prompt(ex), [" " + o for o in ex.options], ex.answer
    if ex.kind == "preference":
        return preference_prompt(ex), [" " + ex.chosen, " " + ex.rejected], 0
    raise ValueError(f"example {ex.id} ({ex.kind}) has no candidates to score")


def reference(ex: Example) -> str:
    """The reference text a generated answer is compared to (open QA and dialogue)."""
    return prompt_and_target(ex)[1].strip()
