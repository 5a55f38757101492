"""Metrics as pure functions of predictions and references: classification, text overlap, diversity,
embedding similarity, and continual-learning metrics over a stage-by-stage accuracy matrix.

Scales follow each metric's usual reporting: BLEU is sacrebleu's 0-100, everything else is in [0, 1]
(perplexity and lengths aside). An empty input gives NaN where the metric is undefined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np


class Embedder(Protocol):
    """Anything with SentenceTransformer's `encode(list[str]) -> (n, dim) array`."""

    def encode(self, sentences: list[str], **kwargs: Any) -> Any: ...


# ----------------------------------------------------------------------------------------------------------
# Classification


def accuracy(golds: Sequence[Any], preds: Sequence[Any]) -> float:
    _check_same_length(golds, preds)
    if not golds:
        return math.nan
    return sum(g == p for g, p in zip(golds, preds)) / len(golds)


def macro_f1(golds: Sequence[Any], preds: Sequence[Any], labels: Sequence[Any]) -> float:
    """Mean over `labels` of F1 = 2TP / (2TP + FP + FN).

    A label that is neither a gold answer nor a prediction has no F1 and is left out of the mean, as
    scikit-learn does for labels it infers from the data; otherwise a perfect model on a yes/no-only
    sample of PubMedQA would score 2/3.
    """
    _check_same_length(golds, preds)
    scores = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(golds, preds))
        fp = sum(g != label and p == label for g, p in zip(golds, preds))
        fn = sum(g == label and p != label for g, p in zip(golds, preds))
        if tp + fp + fn:
            scores.append(2 * tp / (2 * tp + fp + fn))
    return sum(scores) / len(scores) if scores else math.nan


# ----------------------------------------------------------------------------------------------------------
# Generated text against references


def bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenizer, exp smoothing), 0-100, one reference per hypothesis."""
    import sacrebleu

    _check_same_length(hyps, refs)
    if not hyps:
        return math.nan
    return float(sacrebleu.corpus_bleu(list(hyps), [list(refs)]).score)


def rouge(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measures (rouge-score with Porter stemming)."""
    from rouge_score import rouge_scorer

    _check_same_length(hyps, refs)
    keys = ("rouge1", "rouge2", "rougeL")
    if not hyps:
        return {k: math.nan for k in keys}
    scorer = rouge_scorer.RougeScorer(list(keys), use_stemmer=True)
    scores = [scorer.score(ref, hyp) for hyp, ref in zip(hyps, refs)]  # score(target, prediction)
    return {k: sum(s[k].fmeasure for s in scores) / len(scores) for k in keys}


def rouge_l_scores(hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """ROUGE-L F of each answer, as `rouge` computes it before taking the mean (items are paired on it)."""
    from rouge_score import rouge_scorer

    _check_same_length(hyps, refs)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hyps, refs)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct n-grams over all n-grams of all texts (Li et al. 2016), on whitespace tokens.

    Texts with no n-gram at all (empty generations) give 0.0: no diversity, rather than undefined.
    """
    ngrams = [tuple(w[i : i + n]) for w in (t.split() for t in texts) for i in range(len(w) - n + 1)]
    return len(set(ngrams)) / len(ngrams) if ngrams else 0.0


def embedding_similarity(hyps: Sequence[str], refs: Sequence[str], embedder: Embedder) -> float:
    """Mean cosine similarity between the sentence embeddings of each hypothesis and its reference."""
    _check_same_length(hyps, refs)
    if not hyps:
        return math.nan
    vectors = np.asarray(embedder.encode(list(hyps) + list(refs)), dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms == 0, 1.0, norms)  # an all-zero embedding has cosine 0 with anything
    cosines = (unit[: len(hyps)] * unit[len(hyps) :]).sum(axis=1)
    return float(cosines.mean())


def mean_length(texts: Sequence[str]) -> float:
    """Mean number of whitespace-separated words."""
    if not texts:
        return math.nan
    return sum(len(t.split()) for t in texts) / len(texts)


# ----------------------------------------------------------------------------------------------------------
# Continual learning. R[i][j] is the accuracy on stage j's validation split after training stage i. With T
# rows (stages trained so far) only columns j < T count: a stage not yet trained has nothing to forget.
# R may be square, lower-triangular (rows of growing length) or wider than tall (a run stopped early);
# a missing or NaN entry is left out of every mean.


def average_accuracy(R: Sequence[Sequence[float]]) -> float:
    """Mean accuracy over the stages trained so far, after the last of them (the last row of R)."""
    T = len(R)
    if T == 0:
        return math.nan
    return _nanmean([_entry(R, T - 1, j) for j in range(T)])


def forgetting(R: Sequence[Sequence[float]]) -> float:
    """Mean over earlier stages j of (best accuracy on j before the last stage) - (accuracy on j at the end).

    Chaudhry et al. 2018's forgetting measure, as Avalanche reports it; 0.0 with a single stage.
    """
    T = len(R)
    if T <= 1:
        return 0.0 if T else math.nan
    drops = []
    for j in range(T - 1):
        before = [_entry(R, i, j) for i in range(T - 1)]
        best = max((v for v in before if not math.isnan(v)), default=math.nan)
        drops.append(best - _entry(R, T - 1, j))
    return _nanmean(drops)


def backward_transfer(R: Sequence[Sequence[float]]) -> float:
    """Mean over earlier stages j of R[T-1][j] - R[j][j] (Lopez-Paz & Ranzato 2017); 0.0 with a single stage.

    Negative means later stages hurt earlier ones.
    """
    T = len(R)
    if T <= 1:
        return 0.0 if T else math.nan
    return _nanmean([_entry(R, T - 1, j) - _entry(R, j, j) for j in range(T - 1)])


# ----------------------------------------------------------------------------------------------------------


def _entry(R: Sequence[Sequence[float]], i: int, j: int) -> float:
    value = R[i][j] if j < len(R[i]) else None
    return math.nan if value is None else float(value)


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else math.nan


def _check_same_length(a: Sequence[Any], b: Sequence[Any]) -> None:
    if len(a) != len(b):
        raise ValueError(f"expected two sequences of the same length, got {len(a)} and {len(b)}")
