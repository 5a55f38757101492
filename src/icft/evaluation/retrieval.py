"""`icft eval --retrieve K`: the evaluation files' examples with facts retrieved from a run's long-term memory
and knowledge files in their prompts (`memory.retrieval`, as `icft generate` puts them), and which facts each
example got, for the error report."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..data.prompt_format import DEFAULT_MAX_LENGTH
from ..data.schema import Example
from ..memory.retrieval import add_retrieved_context, load_retriever
from ..models import context_limit

if TYPE_CHECKING:
    from ..runs import Run


def retrieve_for_eval(
    datasets: dict[str, list[Example]], run: Run, knowledge: list[str] | None, k: int
) -> tuple[dict[str, list[Example]], dict[str, list[dict]]]:
    """Each file's examples with `k` facts retrieved from the run's long-term memory (`run.memory`, or its
    folder's memory/) and the `knowledge` files, fitted in the prompt format they are asked in
    (`run.format`), and {example id: hits as JSON}.

    Raises ValueError when there is nothing to retrieve from.
    """
    retriever = load_retriever(run.path, knowledge, k, run.memory)
    if retriever is None:
        return datasets, {}
    fmt = run.format
    limit = context_limit(run.model, DEFAULT_MAX_LENGTH)  # a prompt with its facts fits the default length
    out, retrieved = {}, {}
    for name, examples in datasets.items():
        out[name], hits = add_retrieved_context(examples, retriever, k, fmt, limit)
        for ex, row in zip(examples, hits):
            retrieved[ex.id] = [{"id": h.id, "score": round(h.score, 6), "source": h.source} for h in row]
    return out, retrieved
