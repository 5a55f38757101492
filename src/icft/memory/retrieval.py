"""Retrieval from a run's long-term memory (and a user's knowledge file) at answer time, and from the
training data itself while training (`training_contexts`).

The LTM a run consolidated is a store of short facts the model was trained on; putting the ones nearest
to a question into the prompt reminds the model of them (retrieval-augmented generation, Lewis et al.
2020). Keys are sentence embeddings of each item's *input side* (`example_text`: a question, a text),
the same embeddings the LTM already stores, so a query question is matched against stored questions.

The prompt format is one "Context:" block of facts, one per line, ahead of the question::

    Context: <fact 1>
    <fact 2>
    Question: <question>
    Answer:

For a qa item the fact is its question and answer, for text the text, for a preference pair the prompt and
the chosen answer, for a dialogue the patient's turns and the doctor's reply. Facts are added best first
while the prompt fits its token budget; the one that does not fit is cut to whole words, the rest dropped.
The question (and the room for the answer) is never cut for context. A run trained with
`memory.retrieve_min_score` keeps a relevance floor: facts whose cosine similarity to the question is below it
are not put in front of the question at all (an unrelated fact distracts more than no fact). The stage-0 memory
(the untrained model's own answers to general prompts, memory.general) is a training anchor, never a fact.

It lives with the memory, below training, evaluation and serving, which all put retrieved facts in prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.formatting import is_open_ended
from ..data.kinds import context_block as context_block  # the block's text lives with the kinds that place it
from ..data.kinds import is_choice, kind_of
from ..data.prompt_format import PromptFormat
from ..data.schema import Example
from .embedder import Embedder, example_text
from .long_term import LongTermMemory

# Exact search (one matrix product) is faster than building an index for small stores; past this size a
# faiss index answers in the same time with less temporary memory.
FAISS_THRESHOLD = 20_000
MIN_CUT_WORDS = 4  # a fact cut to fewer words than this says nothing: drop it instead


@dataclass
class Fact:
    id: str
    text: str
    source: str  # "memory" (the run's LTM) or "knowledge" (a --knowledge file)


@dataclass
class Hit:
    id: str
    score: float  # cosine similarity of the query and the fact's key
    text: str
    source: str

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "score": round(self.score, 6), "source": self.source, "text": self.text}


def fact_text(ex: Example) -> str:
    """The short fact an example contributes to a Context block, on one line."""
    return kind_of(ex).fact(ex)


class Retriever:
    """Top-k facts by cosine similarity: exact search for small stores, a faiss IndexFlatIP for large ones."""

    def __init__(
        self,
        facts: list[Fact],
        keys: np.ndarray,
        embedder: Embedder | None = None,
        faiss_threshold: int = FAISS_THRESHOLD,
        min_score: float | None = None,
    ):
        self.min_score = min_score  # the relevance floor: hits scoring below it are dropped (None: none)
        if len(facts) != len(keys):
            raise ValueError(f"{len(facts)} facts but {len(keys)} key rows")
        self.facts = facts
        self.keys = _unit_rows(np.asarray(keys, dtype=np.float32).reshape(len(facts), -1))
        self.embedder = embedder or Embedder()
        self.index = None
        if len(facts) >= faiss_threshold:
            import faiss

            self.index = faiss.IndexFlatIP(self.keys.shape[1])  # inner product of unit vectors = cosine
            self.index.add(self.keys)

    @classmethod
    def from_sources(
        cls,
        memory_dir: str | Path | LongTermMemory | None = None,
        knowledge: list[str] | None = None,
        embedder: Embedder | None = None,
        faiss_threshold: int = FAISS_THRESHOLD,
        min_score: float | None = None,
    ) -> Retriever:
        """A run's `memory/` folder (or its memory, loaded) and knowledge files (text and qa records, any
        format `load_data` reads)."""
        from ..data.schema import DataError
        from ..data.sources import load_data

        embedder = embedder or Embedder()
        facts: list[Fact] = []
        keys: list[np.ndarray] = []
        missing: list[tuple[int, str]] = []  # (fact index, text to embed) for items stored without a key
        if memory_dir is not None:
            memory = memory_dir if isinstance(memory_dir, LongTermMemory) else LongTermMemory.load(memory_dir)
            for item in memory.items(protected=False):  # the stage-0 memory holds no facts
                if item.embedding is None:
                    missing.append((len(facts), example_text(item.example)))
                    keys.append(np.zeros(0, np.float32))
                else:
                    keys.append(np.asarray(item.embedding, np.float32))
                facts.append(Fact(item.example.id, fact_text(item.example), "memory"))
        records = load_data(list(knowledge), quiet=True) if knowledge else []
        for ex in records:
            if ex.kind not in ("text", "qa"):
                raise DataError(ex.source, None, "kind", f"knowledge record {ex.id!r} is {ex.kind}: want text or qa")
            missing.append((len(facts), example_text(ex)))
            keys.append(np.zeros(0, np.float32))
            facts.append(Fact(ex.id, fact_text(ex), "knowledge"))
        if missing:
            vectors = embedder.encode([text for _, text in missing])
            for (i, _), vector in zip(missing, vectors):
                keys[i] = vector
        stacked = np.stack(keys) if keys else np.zeros((0, 384), np.float32)  # 384: all-MiniLM-L6-v2
        return cls(facts, stacked, embedder, faiss_threshold, min_score)

    def __len__(self) -> int:
        return len(self.facts)

    def search(self, queries: list[str], k: int, exclude: list[str | None] | None = None) -> list[list[Hit]]:
        """The k best facts for each query; `exclude[i]` (an example id) is never returned for query i,
        so an example that is itself in memory does not retrieve its own answer."""
        if k <= 0 or not self.facts or not queries:
            return [[] for _ in queries]
        exclude = exclude or [None] * len(queries)
        vectors = _unit_rows(self.embedder.encode(list(queries)))
        want = min(k + 1, len(self.facts))
        if self.index is not None:
            scores, rows = self.index.search(vectors, want)
        else:
            all_scores = vectors @ self.keys.T
            rows = np.argsort(-all_scores, axis=1, kind="stable")[:, :want]  # ties: the earlier fact
            scores = np.take_along_axis(all_scores, rows, axis=1)
        out = []
        for row_ids, row_scores, skip in zip(rows, scores, exclude):
            hits = [
                Hit(self.facts[i].id, float(s), self.facts[i].text, self.facts[i].source)
                for i, s in zip(row_ids, row_scores)
                if i >= 0 and self.facts[i].id != skip and (self.min_score is None or s >= self.min_score)
            ]
            out.append(hits[:k])
        return out


def fit_facts(
    facts: list[str], render: Callable[[list[str]], str], count: Callable[[str], int], budget: int
) -> list[str]:
    """The longest best-first list of facts whose rendered prompt has at most `budget` tokens.

    `render(facts)` builds the whole prompt and `count` measures it, so every template and tokenizer is
    measured exactly. The first fact that does not fit whole is cut to the most words that fit (binary
    search), and the rest are dropped. With no facts the prompt is returned as is, however long.
    """
    kept: list[str] = []
    for fact in facts:
        if count(render(kept + [fact])) <= budget:
            kept.append(fact)
            continue
        words = fact.split()
        lo, hi = 0, len(words) - 1  # the largest prefix length that fits lies in [lo, hi]
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if count(render(kept + [" ".join(words[:mid])])) <= budget:
                lo = mid
            else:
                hi = mid - 1
        if lo >= MIN_CUT_WORDS:
            kept.append(" ".join(words[:lo]))
        break
    return kept


def with_context(ex: Example, facts: list[str]) -> Example:
    """A copy of `ex` whose prompt starts with the Context block of `facts`.

    qa: the block fills the template's context slot (an existing context, e.g. a PubMedQA abstract,
    follows the facts). preference and dialogue templates have no context slot: the block opens the
    question ("Question: Context: ...") / the last patient turn, the one being answered ("Patient: Context:
    ..."), as `icft chat` and `icft serve` place it. text examples are returned unchanged (nothing is asked).
    """
    return kind_of(ex).with_context(ex, facts) if facts else ex


def prompt_budget(tokenizer: Any, ex: Example, max_length: int, max_new_tokens: int) -> int:
    """Prompt tokens allowed for `ex` (besides BOS, in the plain format) so that its answer (longest
    candidate, or the generation room) fits."""
    bos = 1 if tokenizer.bos_token_id is not None else 0
    return max_length - bos - _answer_room(PromptFormat(tokenizer), ex, max_new_tokens)


def _answer_room(fmt: PromptFormat, ex: Example, max_new_tokens: int) -> int:
    """Tokens kept for the answer of `ex`: the longest candidate, or the generation room (text: none)."""
    if is_open_ended(ex):
        return max_new_tokens
    if is_choice(ex):
        _, options, _ = fmt.candidates(ex)
        return max(len(fmt.tokenizer(o, add_special_tokens=False)["input_ids"]) for o in options)
    return 0  # text: nothing is asked


def add_retrieved_context(
    examples: list[Example],
    retriever: Retriever,
    k: int,
    fmt: PromptFormat,
    max_length: int,
    max_new_tokens: int = 48,
) -> tuple[list[Example], list[list[Hit]]]:
    """Each example with its top-k retrieved facts in its prompt (fitted to `max_length`), and the hits used.

    Scoring and generation both read prompts from the examples (`formatting`), so both see the context.
    Prompts are measured in the prompt format they will be asked in (`fmt`).
    A hit whose fact was dropped to fit is not reported.
    """
    askable = [ex for ex in examples if kind_of(ex).asks]
    found = retriever.search([example_text(ex) for ex in askable], k, exclude=[ex.id for ex in askable])
    hits_by_id = {id(ex): hits for ex, hits in zip(askable, found)}
    out_examples, out_hits = [], []
    for ex in examples:
        hits = hits_by_id.get(id(ex), [])
        budget = max_length - _answer_room(fmt, ex, max_new_tokens)
        facts = fit_facts(
            [h.text for h in hits], lambda fs, ex=ex: fmt.prompt(with_context(ex, fs)), _counter(fmt), budget
        )
        used = [dataclasses.replace(h, text=f) for h, f in zip(hits, facts)]
        out_examples.append(with_context(ex, facts))
        out_hits.append(used)
    return out_examples, out_hits


def training_contexts(
    examples: list[Example], k: int, fmt: PromptFormat, embedder: Embedder | None = None
) -> dict[str, Example]:
    """memory.retrieve_in_training: {id: the example with a Context block} for every training example that
    asks something, holding the k facts nearest to it among the *other* training examples.

    A model trained on bare prompts is never taught to read a Context block, so retrieval at answer time
    only distracts it. Trained this way it learns to use the facts put before a question (as in RAFT, Zhang
    et al. 2024). The store is the training data itself, the knowledge the LTM is consolidated from; an
    example never retrieves itself, so its answer is not handed to it. Facts are fitted so that the whole
    answer (the longer side of a preference pair) still fits the format's `max_length`: context is cut, never
    the answer.
    """
    count, tok = _counter(fmt), fmt.tokenizer
    embedder = embedder or Embedder()
    facts = [Fact(ex.id, fact_text(ex), "training") for ex in examples]
    retriever = Retriever(facts, embedder.encode([example_text(ex) for ex in examples]), embedder)
    askable = [ex for ex in examples if kind_of(ex).asks]
    found = retriever.search([example_text(ex) for ex in askable], k, exclude=[ex.id for ex in askable])
    out = {}
    for ex, hits in zip(askable, found):
        sides = kind_of(ex).sides  # a preference pair trains on both answers
        targets = [fmt.pair(ex, side)[1] for side in sides]
        answer = max(len(ids) for ids in tok(targets, add_special_tokens=False, verbose=False)["input_ids"])
        answer += 1  # the plain format's EOS (a chat target holds its end of turn)

        def render(fs: list[str], ex: Example = ex) -> str:
            return fmt.prompt(with_context(ex, fs))

        kept = fit_facts([h.text for h in hits], render, count, fmt.max_length - answer)
        if kept:
            out[ex.id] = with_context(ex, kept)
    return out


def _counter(fmt: PromptFormat) -> Callable[[str], int]:
    """Tokens of a prompt text as the format encodes it (BOS included)."""
    return lambda text: len(fmt.prompt_ids(text))


def load_retriever(
    run: str | Path | None, knowledge: list[str] | None, k: int, memory: LongTermMemory | None = None
) -> Retriever | None:
    """The run's memory/ (`memory`, when the caller loaded it already) plus knowledge files, or None when
    retrieval is off (k == 0). Raises ValueError (a bad knowledge file's DataError is one) with a one-line
    message for the user."""
    if k <= 0:
        if knowledge:
            raise ValueError("--knowledge needs --retrieve K (how many facts to put in each prompt)")
        return None
    folder = Path(run) / "memory" if run else None
    if memory is None and folder is not None and not (folder / "memory.jsonl").is_file():
        raise ValueError(f"{folder}: no long-term memory there (memory.jsonl) to retrieve from")
    if folder is None and memory is None and not knowledge:
        raise ValueError("--retrieve needs a run's memory (--run) or a knowledge file (--knowledge PATH)")
    try:
        return Retriever.from_sources(memory if memory is not None else folder, knowledge,
                                      min_score=retrieval_floor(run))  # fmt: skip
    except OSError as error:
        raise ValueError(str(error)) from None


def retrieval_floor(run: str | Path | None) -> float | None:
    """The relevance floor the run was trained with (memory.retrieve_min_score in its config.yaml), or None."""
    path = Path(run) / "config.yaml" if run else None
    if path is None or not path.is_file():
        return None
    from ..config import read_yaml

    config = read_yaml(path)
    floor = ((config or {}).get("memory") or {}).get("retrieve_min_score") if isinstance(config, dict) else None
    return float(floor) if isinstance(floor, (int, float)) and not isinstance(floor, bool) else None


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=np.float32))
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
