"""Surface-cue cheats on the bundled evaluation files: how far each gets without knowing any medicine.

    python benchmarks/cheat_scores.py [--by-type] [--other-models]

Prints one row per file (and, with --by-type, per item type: mc, yes/no/maybe, preference) with the chance
level and each cheat's accuracy (see icft.evaluation.baselines). Regenerate the data first if it changed.

The generator picks the retention probes' wrong options against the bag-of-words cheat itself (see
LookAlikePicker in tools/bundled/writer.py), so that cheat is near chance there by construction. --other-models
asks whether the cue is gone or only hidden from that one model: option-word models the generator never saw
(other regularisation, word pairs, naive Bayes, and the right-answer share of each exact option text in train).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable

import numpy as np

from icft.bundled import SPLITS, load_bundled
from icft.data.schema import Example
from icft.evaluation.baselines import (
    CHEATS,
    chance,
    cheat_rules,
    cheat_scores,
    choices,
    expected_hit,
    is_choice,
    item_type,
    option_texts,
    option_word_model,
    tagged_option,
)
from icft.tables import cell, markdown


def table(by_type: bool = False) -> str:
    """The cheat table as markdown."""
    train = load_bundled("train")
    rules = cheat_rules(train)
    rows = []
    for split in SPLITS[1:]:
        examples = load_bundled(split)
        groups = {split: examples}
        if by_type:
            for kind in ("mc", "yes/no/maybe", "preference"):
                groups[f"{split} {kind}"] = [ex for ex in examples if item_type(ex) == kind]
        for name, items in groups.items():
            scores = cheat_scores(rules, items)
            rows.append([name, str(int(scores["n"])), *(cell(scores[k]) for k in ("chance", *CHEATS))])
    return "\n".join(markdown(["file", "items", "chance", *CHEATS], rows))


def other_models(train: list[Example]) -> dict[str, Callable[[Example], list[float]]]:
    """Option-word cheats the generator did not pick against, fitted on train like the bag of words."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.naive_bayes import BernoulliNB

    words = {"token_pattern": r"[a-z0-9]+", "binary": True}
    models = {
        "LR C=0.1": (CountVectorizer(**words), LogisticRegression(C=0.1, max_iter=3000)),
        "LR C=10": (CountVectorizer(**words), LogisticRegression(C=10, max_iter=3000)),
        "LR word pairs": (CountVectorizer(ngram_range=(1, 2), **words), LogisticRegression(max_iter=3000)),
        "naive Bayes": (CountVectorizer(**words), BernoulliNB()),
    }
    rules: dict[str, Callable[[Example], list[float]]] = {}
    for name, (vectorizer, model) in models.items():
        looks_right = option_word_model(train, vectorizer, model)
        rules[name] = lambda ex, looks_right=looks_right: looks_right(ex.kind, choices(ex)[0])
    texts, labels = option_texts(train)
    right, seen = Counter(t for t, label in zip(texts, labels) if label), Counter(texts)

    def right_share(ex: Example) -> list[float]:
        tagged = [tagged_option(ex.kind, o) for o in choices(ex)[0]]
        return [(right[t] + 1) / (seen[t] + 4) for t in tagged]

    rules["right share of the text"] = right_share
    return rules


def other_models_table() -> str:
    rules = other_models(load_bundled("train"))
    rows = []
    for split in SPLITS[1:]:
        items = [ex for ex in load_bundled(split) if is_choice(ex)]
        hits = [float(np.mean([expected_hit(rule(ex), choices(ex)[1]) for ex in items])) for rule in rules.values()]
        rows.append([split, str(len(items)), cell(chance(items)), *(cell(h) for h in hits)])
    return "\n".join(markdown(["file", "items", "chance", *rules], rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--by-type", action="store_true", help="also one row per item type")
    parser.add_argument("--other-models", action="store_true", help="also option-word cheats the data never saw")
    args = parser.parse_args()
    print(table(args.by_type))
    if args.other_models:
        print()
        print(other_models_table())


if __name__ == "__main__":
    main()
