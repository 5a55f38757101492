"""Build the bundled synthetic curriculum from the knowledge tables.

``knowledge.json`` (medical conditions) and ``general.json`` (general-knowledge facts) become Examples of
all four kinds at three tiers of difficulty:

- tier 1, stage "general": definitions and terminology, plus every general-domain (non-medical) example;
- tier 2, stage "knowledge": single-fact questions (multiple choice, yes/no/maybe, open), fact texts and
  preference pairs (right versus a neighbouring condition's answer);
- tier 3, stage "clinical": vignettes with several facts, patient-doctor dialogues and safety preference
  pairs (urgent care versus waiting for a routine appointment).

Five files measure two different things:

- ``train``: the training conditions (about 70%) and general facts;
- ``validation-unseen`` / ``test-unseen``: conditions and facts never seen in training (about 15% each), for
  transfer. No training example names them or quotes their facts: training wrong options come only from
  training conditions, and a training condition's table value that names a held-out condition or fact
  ("atrial fibrillation" among heart failure's causes) is left out of its examples (`without_names`);
- ``validation-retention`` / ``test-retention``: question instances about training conditions and facts that
  are held out of training while the facts they ask about are taught there (fact texts, other question
  forms), for retention and forgetting.

Every random choice comes from a ``random.Random`` seeded by (seed, condition), so one seed always gives
byte-identical files, and editing one condition does not reshuffle the others.

The templates for one condition live in ``writer.py``; ``text.py`` decides which phrases overlap, so that a
wrong option or a rejected answer is never also right for the condition asked about.

Usage, from the repository root: python -m tools.bundled.generate [--out DIR] [--seed N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from collections import Counter
from pathlib import Path

from icft.bundled import DATA_DIR, SPLITS
from icft.data.schema import Example
from icft.evaluation.baselines import option_word_model
from icft.io import write_jsonl

from .text import capitalize, predicate, slugify
from .writer import MEDICAL_SOURCE, ONSETS, POPULATIONS, STAGES, ConditionWriter, LookAlikePicker, Table

TABLES_DIR = Path(__file__).resolve().parent
KNOWLEDGE_FILE = TABLES_DIR / "knowledge.json"
GENERAL_FILE = TABLES_DIR / "general.json"
LIST_FIELDS = ("symptoms", "causes", "tests", "treatments", "red_flags")
GENERAL_SOURCE = "icft-general"
HELD_OUT_FRACTION = 0.15  # of each specialty (or general domain), once for validation and once for test
UNSEEN = {"validation": "validation-unseen", "test": "test-unseen"}
RETENTION = {"validation": "validation-retention", "test": "test-retention"}


def _stable_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_knowledge(path: str | Path = KNOWLEDGE_FILE) -> list[dict]:
    """The medical conditions, checked for the fields the generator needs."""
    conditions = json.loads(Path(path).read_text(encoding="utf-8"))["conditions"]
    for c in conditions:
        for name in ("name", "specialty", "population", "onset", "definition", *LIST_FIELDS):
            if not c.get(name):
                raise ValueError(f"{path}: condition {c.get('name')!r} has no {name!r}")
        if c["population"] not in POPULATIONS or c["onset"] not in ONSETS:
            raise ValueError(f"{path}: {c['name']}: unknown population or onset")
        predicate(c)
    names = [c["name"].lower() for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: condition names must be unique")
    return conditions


def load_general(path: str | Path = GENERAL_FILE) -> list[dict]:
    """The general-knowledge facts: subject, domain, fact, question, answer, distractors."""
    facts = json.loads(Path(path).read_text(encoding="utf-8"))["facts"]
    for f in facts:
        if len(f["distractors"]) != 3 or f["answer"] in f["distractors"]:
            raise ValueError(f"{path}: {f['subject']!r} needs 3 distractors that differ from the answer")
    return facts


def assign_splits(keys_by_group: dict[str, list[str]]) -> dict[str, str]:
    """Per group, order the keys by hash: the first ~15% go to "test", the next ~15% to "validation", the
    rest to "train". Stratifying by group keeps every specialty in every split."""
    split_of = {}
    for group in sorted(keys_by_group):
        keys = sorted(keys_by_group[group], key=_stable_hash)
        n_held = max(1, int(len(keys) * HELD_OUT_FRACTION + 0.5))
        for i, key in enumerate(keys):
            split_of[key] = "test" if i < n_held else "validation" if i < 2 * n_held else "train"
    return split_of


def name_pattern(names: list[str]) -> re.Pattern:
    """Any of `names` as a whole word or phrase, in any case."""
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)


def without_names(condition: dict, names: re.Pattern) -> dict:
    """A training condition's row whose values that name a held-out condition or fact are set aside under
    "unsaid": its examples never say them (training text never names what the unseen files ask about), while
    the checks of what else could be right for it still count them (`writer.known`)."""
    row = dict(condition, unsaid={})
    for field in LIST_FIELDS:
        said = [v for v in condition[field] if not names.search(v)]
        if len(said) < (3 if field == "symptoms" else 1):  # a vignette shows up to 3 symptoms
            raise ValueError(f"{condition['name']}: too few {field} left that name no held-out condition or fact")
        if len(said) < len(condition[field]):
            row[field] = said
            row["unsaid"][field] = [v for v in condition[field] if v not in said]
    return row


def named(files: dict[str, list[Example]], names: re.Pattern) -> list[tuple[str, str]]:
    """(example id, name) for every name found in any field of the training and retention files."""
    found = []
    for file in ("train", *RETENTION.values()):
        for ex in files[file]:
            matches = {m.lower() for text in _strings(ex.to_dict()) for m in names.findall(text)}
            found += [(ex.id, match) for match in sorted(matches)]
    return found


def _strings(value) -> list[str]:
    """Every string in a JSON-like value (an example's fields, its turns, options and meta)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [s for v in value for s in _strings(v)] if isinstance(value, list) else []


def general_examples(fact: dict, split: str, seed: int, index: int = 0) -> dict[str, list[Example]]:
    """A general fact's examples by file. An unseen fact gives all of them to its file; a training fact keeps
    its text and open question in train and gives its multiple-choice question to one retention file and a
    preference pair (right answer versus a wrong one) to the other, alternating across facts."""
    rng = random.Random(f"icft-bundled:{seed}:general:{fact['subject']}")
    slug = slugify(fact["subject"])
    options = [fact["answer"], *fact["distractors"]]
    rng.shuffle(options)
    wrong = rng.choice(fact["distractors"])

    def example(template: str, kind: str, file: str, **fields) -> Example:
        meta = {
            "condition": fact["subject"], "subject": fact["subject"], "domain": fact["domain"],
            "specialty": "general", "tier": 1, "split": file, "template": template,
        }  # fmt: skip
        return Example(
            id=f"icft-gen/{slug}/t1/{template}/0", kind=kind, source=GENERAL_SOURCE, stage=STAGES[1],
            meta=meta, **fields,
        )  # fmt: skip

    if split == "train":
        mc_file, pair_file = RETENTION["validation"], RETENTION["test"]
        if index % 2:
            mc_file, pair_file = pair_file, mc_file
        text_file = open_file = "train"
    else:
        mc_file = pair_file = text_file = open_file = UNSEEN[split]
    made = [
        example("text-fact", "text", text_file, text=fact["fact"]),
        example("mc-fact", "qa", mc_file, question=fact["question"], options=options,
                answer=options.index(fact["answer"])),
        example("open-fact", "qa", open_file, question=fact["question"], answer=capitalize(fact["answer"]) + "."),
        example("pref-fact", "preference", pair_file, prompt=fact["question"],
                chosen=f"The answer is {fact['answer']}.", rejected=f"The answer is {wrong}."),
    ]  # fmt: skip
    by_file: dict[str, list[Example]] = {}
    for ex in made:
        by_file.setdefault(ex.meta["split"], []).append(ex)
    return by_file


def generate(seed: int = 0) -> dict[str, list[Example]]:
    """The whole curriculum, as {"train": [...], "validation-retention": [...], ...} (see SPLITS)."""
    conditions = load_knowledge()
    facts = load_general()
    by_specialty: dict[str, list[str]] = {}
    for c in conditions:
        by_specialty.setdefault(c["specialty"], []).append(c["name"])
    by_domain: dict[str, list[str]] = {}
    for f in facts:
        by_domain.setdefault(f["domain"], []).append(f["subject"])
    condition_split = assign_splits(by_specialty)
    fact_split = assign_splits(by_domain)
    # A condition's place among its split's conditions (in hash order) drives the label alternation.
    index: dict[str, int] = {}
    for keys, split_of in ((by_specialty, condition_split), (by_domain, fact_split)):
        counters: Counter = Counter()
        for key in sorted((k for group in keys.values() for k in group), key=_stable_hash):
            index[key] = counters[split_of[key]]
            counters[split_of[key]] += 1

    held_out_names = name_pattern(
        [c["name"] for c in conditions if condition_split[c["name"]] != "train"]
        + [f["subject"] for f in facts if fact_split[f["subject"]] != "train"]
    )
    conditions = [without_names(c, held_out_names) if condition_split[c["name"]] == "train" else c for c in conditions]

    files: dict[str, list[Example]] = {name: [] for name in SPLITS}
    for f in facts:
        for file, examples in general_examples(f, fact_split[f["subject"]], seed, index[f["subject"]]).items():
            files[file].extend(examples)
    # Training examples draw wrong options and wrong diagnoses from training conditions only.
    train_table = Table([c for c in conditions if condition_split[c["name"]] == "train"])
    # Held-out examples draw them from their own split's conditions, so that a wrong option is no likelier
    # than the right one to be something training taught.
    held_out = {
        split: Table([c for c in conditions if condition_split[c["name"]] == split]) for split in UNSEEN
    }
    trained: list[ConditionWriter] = []
    for c in conditions:
        split = condition_split[c["name"]]
        if split == "train":
            writer = ConditionWriter(c, train_table, "train", seed, index[c["name"]])
            files["train"].extend(writer.write_all())
            trained.append(writer)
        else:
            writer = ConditionWriter(c, held_out[split], UNSEEN[split], seed, index[c["name"]])
            files[UNSEEN[split]].extend(writer.write_all())
    # The retention probes come once the training file is whole: their wrong options are picked to look as
    # right as the answer to the bag-of-words cheat fitted on it (see LookAlikePicker).
    picker = LookAlikePicker(option_word_model(files["train"]))
    for writer in trained:
        writer.picker = picker
        for file, probes in writer.probes().items():
            files[file].extend(probes)
    leaks = named(files, held_out_names)  # a definition or a general fact can still name one: fix the table
    if leaks:
        raise ValueError(f"{len(leaks)} training or retention examples name a held-out condition or fact: {leaks[:5]}")
    return files


def write(out_dir: str | Path = DATA_DIR, seed: int = 0) -> dict[str, list[Example]]:
    """Generate and write one JSONL file per split (see SPLITS), each atomically, under out_dir."""
    splits = generate(seed)
    for name, examples in splits.items():
        write_jsonl(Path(out_dir) / f"{name}.jsonl", (ex.to_dict() for ex in examples))
    return splits


def summary(splits: dict[str, list[Example]]) -> str:
    """Counts per split (and in total) by kind, tier and stage, as a markdown table."""
    columns = [
        "examples", "text", "qa", "preference", "dialogue", "tier 1", "tier 2", "tier 3",
        "stage general", "stage knowledge", "stage clinical", "conditions", "general facts",
    ]  # fmt: skip
    lines = ["| split | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name in [*splits, "total"]:
        examples = [e for s in splits.values() for e in s] if name == "total" else splits[name]
        counts = Counter(["examples"] * len(examples))
        counts.update(e.kind for e in examples)
        counts.update(f"tier {e.meta['tier']}" for e in examples)
        counts.update(f"stage {e.stage}" for e in examples)
        counts["conditions"] = len({e.meta["condition"] for e in examples if e.source == MEDICAL_SOURCE})
        counts["general facts"] = len({e.meta["condition"] for e in examples if e.source == GENERAL_SOURCE})
        lines.append(f"| {name} | " + " | ".join(str(counts[c]) for c in columns) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the bundled synthetic medical curriculum.")
    parser.add_argument("--out", default=str(DATA_DIR), help="output directory (default: the packaged data)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    splits = write(args.out, args.seed)
    print(f"wrote {', '.join(f'{n}.jsonl' for n in splits)} to {args.out}")
    print(summary(splits))


if __name__ == "__main__":
    main()
