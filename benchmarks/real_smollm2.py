"""Issue 27's real-data benchmark: write its data files from ../shared/data, then run `icft compare` on them.

Stages: ChatDoctor dialogues -> MedQuAD -> PubMedQA, MEDIQA pairs (cut to `mediqa_cut` words), MMLU medical.
Each source's groups (MedQuAD: focus; MEDIQA, MMLU: question; else the id) are held out by `heldout_split`,
to test or to validation, never both; held-out items whose question is trained on are dropped. General: MMLU
general accuracy, own-voice prompts (other MMLU general questions). The rest is `icft compare` on the config,
whose data.train folder receives the files (train.jsonl, validation.jsonl, test-*.jsonl, voice-*.jsonl).

    python benchmarks/real_smollm2.py --config configs/real-smollm2.yaml --output-dir runs/compare-real-smollm2
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

from icft.config import load_config
from icft.data.loaders import load_examples
from icft.data.schema import Example
from icft.data.sources import hash_bucket, heldout_split
from icft.evaluation.stage_eval import fixed_sample
from icft.io import write_jsonl
from icft.memory import example_text
from icft.recipes.compare import compare

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MEDICAL = {"chatdoctor": ("chatdoctor_genmedgpt5k/dialogue.jsonl", "general", 0.05),  # file, stage, held out
           "medquad": ("medquad/qa.jsonl", "knowledge", 0.05), "pubmedqa": ("pubmedqa/train.jsonl", "clinical", 0.25),
           "mediqa": ("mediqa2019/pairs.jsonl", "clinical", 0.3), "mmlu_medical": ("mmlu_medical/dev.jsonl",
                                                                                   "clinical", 0.4)}  # fmt: skip
SIZES = {"train": 200, "test": 16, "validation": 8, "rouge": 6, "general": 30, "voice": 20, "mediqa_cut": 100,
         "max_words_chatdoctor": 90, "max_words_medquad": 110}  # items per source and file; words  # fmt: skip


def normalise(text: str | None) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", (text or "").lower()).split())


def group_of(name: str, ex: Example) -> str:
    """What a held-out split keeps together: a MedQuAD focus, a MEDIQA or MMLU question, else the item."""
    if name == "medquad":
        return "focus:" + normalise(ex.meta.get("focus") or ex.id)
    return "question:" + normalise(ex.prompt or ex.question) if name in ("mediqa", "mmlu_medical") else "id:" + ex.id


def read_source(data: Path, name: str, sizes: dict[str, int]) -> list[Example]:
    """A source's examples with their stage; MEDIQA's long answers cut, long ChatDoctor/MedQuAD items left out."""
    examples, cut = load_examples(data / MEDICAL[name][0]).examples, sizes["mediqa_cut"]
    if name == "mediqa":  # uncut, the question would fall out of the context
        examples = [dataclasses.replace(ex, chosen=" ".join(ex.chosen.split()[:cut]), rejected=" ".join(
            ex.rejected.split()[:cut]), meta={**ex.meta, "cut_words": cut}) for ex in examples]  # fmt: skip
    words = [sum(len(t["content"].split()) for t in ex.turns) if ex.turns else len(
        (ex.question or ex.prompt or "").split()) + len(str(ex.answer or ex.chosen or "").split()) for ex in examples]
    limit = sizes.get(f"max_words_{name}") or max(words, default=0)
    return [dataclasses.replace(ex, stage=MEDICAL[name][1]) for ex, n in zip(examples, words) if n <= limit]


def build(data: Path, sizes: dict[str, int]) -> dict[str, list[Example]]:
    """{file stem: examples}: train, validation, test-<set> (_gen: ROUGE-L subsets), voice-test, voice-validation."""
    parts = {name: heldout_split(read_source(data, name, sizes), lambda ex, n=name: f"{n}/{group_of(n, ex)}", share)
             for name, (_, _, share) in MEDICAL.items()}  # fmt: skip
    asked = {normalise(example_text(ex)) for train, _ in parts.values() for ex in train}  # MEDIQA, MedQuAD share
    files: dict[str, list[Example]] = {"train": [], "validation": []}
    for name, (train, held) in parts.items():
        held = [ex for ex in held if normalise(example_text(ex)) not in asked]
        validation, test = heldout_split(held, lambda ex, n=name: f"test/{group_of(n, ex)}", 0.67)  # test: 67%
        files["train"] += fixed_sample(train, sizes["train"])
        files["validation"] += fixed_sample(validation, sizes["validation"])
        files[f"test-{name}"] = fixed_sample(test, sizes["test"])
    files.update({f"test-{n}_gen": files[f"test-{n}"][: sizes["rouge"]] for n in ("chatdoctor", "medquad")})
    general = load_examples(data / "mmlu_general/dev.jsonl").examples
    general = sorted(general, key=lambda ex: hash_bucket(f"general/{ex.id}"))
    files["test-mmlu_general"], n, voices = general[: sizes["general"]], sizes["general"], sizes["voice"]
    voice = [Example(id=f"voice/{ex.id}", kind="qa", source="own_voice", question=ex.question, answer="-")
             for ex in general[n : n + 2 * voices]]  # fmt: skip
    files["voice-test"], files["voice-validation"] = voice[:voices], voice[voices:]
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/real-smollm2.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--size", action="append", default=[], metavar="KEY=N", help=f"defaults: {SIZES}")
    parser.add_argument("--output-dir", help="the compare folder (default runs/compare-<name>)")
    args = parser.parse_args()
    if not (SHARED / MEDICAL["pubmedqa"][0]).is_file():
        return print(f"skipped: {SHARED} does not hold the shared medical data")
    config = load_config(args.config, args.set)
    files = build(SHARED, {**SIZES, **{k: int(v) for k, v in (s.split("=") for s in args.size)}})
    folder = Path(config.data.train[0]).parent  # the config names the files written here
    for stem, examples in files.items():
        write_jsonl(folder / f"{stem}.jsonl", [ex.to_dict() for ex in examples])
    compare(config, Path(args.output_dir or f"runs/compare-{config.name}"))


if __name__ == "__main__":
    raise SystemExit(main())
