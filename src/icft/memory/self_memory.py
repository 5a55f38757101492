"""The stage-0 memory: what the untrained model says to general prompts, kept so training cannot take it away.

ICFT's long-term memory anchors the model to itself at each stage's end, after the first stage has already
moved it most; nothing anchors it to the untrained model, and no general data is replayed. Before step 0 the
recipe asks the untrained model (adapter off) general prompts from `memory.general`, greedily and batched,
and stores its own answers with its output distributions on them (the LTM's top-k + rest-bucket teacher
storage) in a protected LTM group that consolidation never shrinks. That group is replayed in every stage
from step 0 with the consistency loss (its teacher: the untrained model) and, optionally, cross-entropy on the
self-generated answers (self-distillation). Other prompts of the same files, disjoint by id and by text, are
kept out as the own-voice validation probe that `train.merge_alpha: auto` is chosen on.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..data.schema import Example
from .items import MemoryItem

SELF_STAGE = "stage-0"  # the protected LTM group's stage name
SPLIT_SEED = 0  # the memory/probe split is the same at every training seed: runs differ in training only


@dataclass
class SelfMemory:
    items: list[MemoryItem] = field(default_factory=list)  # the protected group (answers by the untrained model)
    probe: list[Example] = field(default_factory=list)  # own-voice validation: held-out prompts, their answers


def prompt_text(ex: Example) -> str:
    """The request an example makes: its question (an instruction with its input), prompt, or text."""
    return (ex.question or ex.prompt or ex.text or "").strip()


def as_prompt(ex: Example) -> Example:
    return Example(id=ex.id, kind="qa", source=ex.source, question=prompt_text(ex), answer="-")


def split_general(examples: list[Example], size: int, probe: int) -> tuple[list[Example], list[Example]]:
    """(memory prompts, probe prompts): a fixed shuffle; the probe first, then memory prompts that share
    neither an id nor a text with the probe (nor with each other)."""
    prompts = [as_prompt(ex) for ex in examples if prompt_text(ex)]
    random.Random(SPLIT_SEED).shuffle(prompts)
    held, rest, seen = [], [], set()
    for ex in prompts:
        key = " ".join(ex.question.lower().split())
        if ex.id in seen or key in seen:
            continue
        seen.update((ex.id, key))
        (held if len(held) < probe else rest).append(ex)
    return rest[:size], held


def general_prompts(specs: list[str]) -> list[Example]:
    from ..data.sources import load_data

    return load_data(list(specs), quiet=True)
