"""What a model scores without knowing anything: trivial baselines and surface-cue "cheats".

`trivial_baselines` gives the floor that `icft eval` prints next to a model (random guessing, a constant
answer, the best fixed option position), computed on exactly the items evaluated. For generated answers the
constant answer is one reference text given to every item: on templated answers it scores high ROUGE-L
without knowing anything, which is why a model's ROUGE-L is read against it. The cheats
(`cheat_scores`) are simple rules that read only the surface of an item: the first option, the longest
option, the option that repeats most of the question's words, the most frequent gold label, and a
bag-of-words classifier over option words trained on the training file. On data without give-aways each
stays near chance; `tests/test_benchmark_data.py` holds the bundled files to that.

Items are the scorable examples (multiple-choice and yes/no/maybe qa, preference pairs). A preference pair
is scored as a choice between chosen and rejected, whose order a likelihood scorer never sees, so its
position baselines are 0.5 by definition. Ties count as a fair share: a rule that cannot separate the right
option from two others gets 1/3 of a hit, never a lucky first pick.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np

from ..data.formatting import reference
from ..data.kinds import choice_type, is_question, kind_of
from ..data.kinds import choices as choices  # the candidate texts and the right one's index
from ..data.kinds import is_choice as is_choice
from ..data.schema import YES_NO_MAYBE, Example
from . import metrics as M

BASELINES = ("random", "majority", "position-prior")
# What each baseline is, in the words `icft eval` prints under its table. `majority` and `position-prior` are
# chosen on the very items scored: the best any constant answer or position gets there, not a held-out model.
BASELINE_LABELS = {
    "random": "a uniform random guess among the options (expected score)",
    "majority": "the best constant answer, chosen on these items (open answers: the one reference text with the "
                "best mean ROUGE-L against all)",
    "position-prior": "the best fixed option position, chosen on these items",
}  # fmt: skip
CHEATS = ("first option", "longest option", "question overlap", "majority label", "bag of words")
# Words too common to count as a cue when comparing an option with its question.
STOPWORDS = frozenset(
    "a an the and or of in on to for with by is are was be this that these those which what who how does do "
    "it its as at from has have not no yes someone patient".split()
)


def is_yes_no_maybe(ex: Example) -> bool:
    return choice_type(ex) == "yes/no/maybe"


# ----------------------------------------------------------------------------------------------------------
# Trivial baselines


def trivial_baselines(examples: Sequence[Example]) -> dict[str, dict[str, float]]:
    """{baseline: {metric: value}} on the scorable items among `examples`, with the metric names of
    `evaluate_examples`: `accuracy` (all qa with options), `macro_f1` and `recall_<label>` (yes/no/maybe
    qa), `preference_accuracy`. Baselines: `random` (expected score of a uniform guess), `majority` (one
    constant answer: the most frequent gold label for yes/no/maybe, for other multiple choice the option
    text that is right most often where option texts repeat, else the best position), `position-prior`
    (the single option position that is right most often). Generated answers (open qa, dialogue): `rougeL`
    of the best constant answer, under `majority`."""
    qa = [ex for ex in examples if is_question(ex) and is_choice(ex)]
    yn = [ex for ex in qa if is_yes_no_maybe(ex)]
    mc = [ex for ex in qa if not is_yes_no_maybe(ex)]
    n_pref = sum(choice_type(ex) == "preference" for ex in examples)
    out: dict[str, dict[str, float]] = {name: {} for name in BASELINES}
    if qa:
        out["random"]["accuracy"] = float(np.mean([1 / len(ex.options) for ex in qa]))
        k = best_position(qa)
        out["position-prior"]["accuracy"] = _mean_hits(qa, lambda ex: k)
        label = best_position(yn) if yn else 0
        mc_rule = constant_option_rule(mc)
        out["majority"]["accuracy"] = _mean_hits(qa, lambda ex: label if is_yes_no_maybe(ex) else mc_rule(ex))
    if yn:
        golds = [YES_NO_MAYBE[ex.answer] for ex in yn]  # type: ignore[index]
        out["random"].update(_random_label_scores(golds))
        constant = [YES_NO_MAYBE[best_position(yn)]] * len(yn)
        for name in ("majority", "position-prior"):  # on yes/no/maybe a position is a label
            out[name]["macro_f1"] = M.macro_f1(golds, constant, YES_NO_MAYBE)
            out[name].update(label_recalls(golds, constant))
    if n_pref:
        for name in BASELINES:
            out[name]["preference_accuracy"] = 0.5
    generated = [ex for ex in examples if kind_of(ex).is_open(ex)]
    if generated:
        out["majority"]["rougeL"] = constant_answer_rouge([reference(ex) for ex in generated])
    return {name: values for name, values in out.items() if values}


def constant_answer_rouge(refs: Sequence[str], max_candidates: int = 100) -> float:
    """Mean ROUGE-L of the best single answer given to every item: the reference with the highest mean
    ROUGE-L against all references (at most `max_candidates` distinct ones tried, evenly spread). Like
    the majority label it is chosen on the items scored: the best any constant answer gets there."""
    distinct = sorted(set(refs))
    candidates = distinct[:: math.ceil(len(distinct) / max_candidates)]
    return max(M.rouge([c] * len(refs), refs)["rougeL"] for c in candidates)


def best_position(items: Sequence[Example]) -> int:
    """The option index that is right most often (the lowest such index on a tie)."""
    counts = Counter(choices(ex)[1] for ex in items)
    return max(sorted(counts), key=lambda k: counts[k]) if counts else 0


def constant_option_rule(items: Sequence[Example]) -> Callable[[Example], int]:
    """Where option texts repeat across items, answer the text that is right most often wherever it is
    offered (the best position elsewhere); otherwise the best position."""
    k = best_position(items)
    offered = Counter(o for ex in items for o in set(choices(ex)[0]))
    if not offered or offered.most_common(1)[0][1] < 2:
        return lambda ex: k
    right = Counter(choices(ex)[0][choices(ex)[1]] for ex in items)
    text = max(sorted(right), key=lambda t: right[t])

    def rule(ex: Example) -> int:
        options = choices(ex)[0]
        return options.index(text) if text in options else k

    return rule


def _mean_hits(items: Sequence[Example], predict: Callable[[Example], int]) -> float:
    return float(np.mean([predict(ex) == choices(ex)[1] for ex in items]))


def label_recalls(golds: Sequence[str], preds: Sequence[str]) -> dict[str, float]:
    """`recall_<label>` for each yes/no/maybe label among `golds`: a model that always says "yes" has a fine
    accuracy on a yes-heavy sample and a recall of 0 on "no" and "maybe", which accuracy hides."""
    out = {}
    for label in YES_NO_MAYBE:
        hits = [p == label for g, p in zip(golds, preds) if g == label]
        if hits:
            out[f"recall_{label}"] = sum(hits) / len(hits)
    return out


def _random_label_scores(golds: list[str]) -> dict[str, float]:
    """A uniform guess over the three labels: recall 1/3 each, and the macro-F1 of its expected counts
    (TP = n_l/3, FP = (n - n_l)/3, FN = 2 n_l/3, so F1_l = 2 n_l / (3 n_l + n))."""
    n, counts = len(golds), Counter(golds)
    f1 = [2 * counts[label] / (3 * counts[label] + n) for label in YES_NO_MAYBE if counts[label]]
    return {"macro_f1": sum(f1) / len(f1), **{f"recall_{label}": 1 / 3 for label in YES_NO_MAYBE if counts[label]}}


# ----------------------------------------------------------------------------------------------------------
# Surface cheats. Each returns one score per option; the item's expected hit is the share of the gold option
# among the top-scoring ones.


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _question(ex: Example) -> str:
    """A choice item's words a cheat can read besides its options: its context and what it asks."""
    return " ".join(t for t in (ex.context, kind_of(ex).query(ex)) if t)


def first_option(ex: Example) -> list[float]:
    # A preference pair's stored order is invisible to a scorer: both candidates tie.
    options, _ = choices(ex)
    return [0.0] * len(options) if choice_type(ex) == "preference" else [-float(i) for i in range(len(options))]


def longest_option(ex: Example) -> list[float]:
    return [float(len(o)) for o in choices(ex)[0]]


def shared_words(question: str, option: str) -> int:
    """Content words an option repeats from its question (the bundled generator balances this too)."""
    return len((set(words(question)) - STOPWORDS) & set(words(option)))


def question_overlap(ex: Example) -> list[float]:
    return [float(shared_words(_question(ex), o)) for o in choices(ex)[0]]


def majority_label(train: Sequence[Example]) -> Callable[[Example], list[float]]:
    """The training file's most frequent right answer text (per item type: "yes" for yes/no/maybe, the
    first word of chosen answers for preference pairs, e.g. "No."); options without it tie."""
    right = Counter(_label_key(ex, choices(ex)[0][choices(ex)[1]]) for ex in train if is_choice(ex))

    def score(ex: Example) -> list[float]:
        return [float(right[_label_key(ex, o)]) for o in choices(ex)[0]]

    return score


def _label_key(ex: Example, option: str) -> tuple[str, str]:
    group = item_type(ex)
    if group == "preference":
        return ("preference", (words(option) or [""])[0])
    return ("yn" if group == "yes/no/maybe" else "mc", option.lower())


def bag_of_words(train: Sequence[Example]) -> Callable[[Example], list[float]]:
    """Logistic regression on binary option-word features (option words only, no question), fitted on
    every (item, option) pair of the training file with "is it the right option" as the label."""
    looks_right = option_word_model(train)
    return lambda ex: looks_right(ex.kind, choices(ex)[0])


def option_word_model(train: Sequence[Example], vectorizer=None, model=None) -> Callable[[str, list[str]], list[float]]:
    """The bag-of-words cheat's model: (kind, option texts) -> how right each option looks from its words
    alone (a logistic-regression logit). The bundled data's retention probes use it to pick wrong options
    that look as right as the answer does. `vectorizer` and `model` (scikit-learn) replace the cheat's
    (binary option words, logistic regression), to ask whether other option-word models find a cue."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    texts, labels = option_texts(train)
    vectorizer = CountVectorizer(binary=True, token_pattern=r"[a-z0-9]+") if vectorizer is None else vectorizer
    model = LogisticRegression(max_iter=2000, C=1.0) if model is None else model
    model.fit(vectorizer.fit_transform(texts), labels)

    def score(kind: str, options: list[str]) -> list[float]:
        x = vectorizer.transform([tagged_option(kind, o) for o in options])
        logits = model.decision_function(x) if hasattr(model, "decision_function") else model.predict_log_proba(x)[:, 1]
        return [round(float(v), 9) for v in logits]  # rounding makes equal bags of words tie exactly

    return score


def option_texts(train: Sequence[Example]) -> tuple[list[str], list[int]]:
    """Every (item, option) pair of the scorable training items, as tagged_option text and 1 if it is right."""
    texts, labels = [], []
    for ex in train:
        if is_choice(ex):
            options, gold = choices(ex)
            texts += [tagged_option(ex.kind, o) for o in options]
            labels += [int(i == gold) for i in range(len(options))]
    return texts, labels


def tagged_option(kind: str, option: str) -> str:
    # the kind as a word, so preference answers and options can weigh words differently
    return f"{'pref' if kind == 'preference' else 'qa'}kind {option.lower()}"


def expected_hit(scores: list[float], gold: int) -> float:
    best = max(scores)
    top = [i for i, s in enumerate(scores) if math.isclose(s, best, rel_tol=0, abs_tol=1e-9)]
    return 1 / len(top) if gold in top else 0.0


def chance(items: Sequence[Example]) -> float:
    return float(np.mean([1 / len(choices(ex)[0]) for ex in items])) if items else math.nan


def item_type(ex: Example) -> str | None:
    """"mc", "yes/no/maybe" or "preference": the groups cheats are reported for (None: not a choice item)."""
    return choice_type(ex)


def cheat_rules(train: Sequence[Example]) -> dict[str, Callable[[Example], list[float]]]:
    """The cheats by name; the label and bag-of-words ones learn from `train`."""
    return {
        "first option": first_option,
        "longest option": longest_option,
        "question overlap": question_overlap,
        "majority label": majority_label(train),
        "bag of words": bag_of_words(train),
    }


def cheat_scores(
    rules: dict[str, Callable[[Example], list[float]]], examples: Sequence[Example]
) -> dict[str, float]:
    """{"n": items, "chance": expected accuracy of a uniform guess, cheat name: accuracy} on the scorable
    items of `examples`."""
    items = [ex for ex in examples if is_choice(ex)]
    out = {"n": float(len(items)), "chance": chance(items)}
    for name, rule in rules.items():
        out[name] = float(np.mean([expected_hit(rule(ex), choices(ex)[1]) for ex in items])) if items else math.nan
    return out
