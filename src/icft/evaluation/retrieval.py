"""`icft eval --retrieve K`: the evaluation files' examples with facts retrieved from a run's long-term memory
and knowledge files in their prompts (`memory.retrieval`, as `icft generate` puts them), and which facts each
example got, for the error report."""

from __future__ import annotations

from typing import Any

from ..data.prompt_format import PromptFormat
from ..data.schema import Example
from ..memory.long_term import LongTermMemory
from ..memory.retrieval import add_retrieved_context, load_retriever
from ..models import context_limit


def retrieve_for_eval(
    datasets: dict[str, list[Example]],
    model: Any,
    fmt: PromptFormat,
    run_dir: str | None,
    knowledge: list[str] | None,
    k: int,
    memory: LongTermMemory | None = None,
) -> tuple[dict[str, list[Example]], dict[str, list[dict]]]:
    """Each file's examples with retrieved context, fitted in the prompt format they are asked in, and
    {example id: hits as JSON}. `memory`: the run's long-term memory, when it is loaded already.

    Raises ValueError when there is nothing to retrieve from.
    """
    retriever = load_retriever(run_dir, knowledge, k, memory)
    if retriever is None:
        return datasets, {}
    limit = context_limit(model, 512)  # what evaluate_examples uses
    out, retrieved = {}, {}
    for name, examples in datasets.items():
        out[name], hits = add_retrieved_context(examples, retriever, k, fmt.tokenizer, limit, fmt=fmt)
        for ex, row in zip(examples, hits):
            retrieved[ex.id] = [{"id": h.id, "score": round(h.score, 6), "source": h.source} for h in row]
    return out, retrieved
