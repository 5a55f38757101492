"""Surface-cue cheats on the bundled evaluation files: how far each gets without knowing any medicine.

    python benchmarks/cheat_scores.py [--by-type]

Prints one row per file (and, with --by-type, per item type: mc, yes/no/maybe, preference) with the chance
level and each cheat's accuracy (see icft.evaluation.baselines). Regenerate the data first if it changed.
"""

from __future__ import annotations

import argparse

from icft.bundled import SPLITS, load_bundled
from icft.evaluation.baselines import CHEATS, cheat_rules, cheat_scores, item_type


def table(by_type: bool = False) -> str:
    """The cheat table as markdown."""
    train = load_bundled("train")
    rules = cheat_rules(train)
    header = ["file", "items", "chance", *CHEATS]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for split in SPLITS[1:]:
        examples = load_bundled(split)
        groups = {split: examples}
        if by_type:
            for kind in ("mc", "yes/no/maybe", "preference"):
                groups[f"{split} {kind}"] = [ex for ex in examples if item_type(ex) == kind]
        for name, items in groups.items():
            scores = cheat_scores(rules, items)
            cells = [name, str(int(scores["n"])), *(f"{scores[k]:.3f}" for k in ("chance", *CHEATS))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--by-type", action="store_true", help="also one row per item type")
    print(table(parser.parse_args().by_type))


if __name__ == "__main__":
    main()
