"""Issue 36 at demo scale: does ICFT with a stage-0 memory of the untrained model (and WiSE-FT merging) keep
what the model knew, against today's ICFT, plain sequential LoRA and LoRA scaled by 0.5?

    python benchmarks/self_memory.py --shared ../shared/data --seeds 0 --jobs 2 \
        --out benchmarks/results/self-memory

Data: the demo's real curriculum (`icft.recipes.demo.real_curriculum`, configs/demo-real.yaml, 60 steps),
written to the work folder (runs/self-memory/, never the repository), with 20 held-out MedQuAD items as the
medical test. General: `general_instructions/instructions.jsonl`; 40 prompts (smallest sha256 of their id) are
the own-voice TEST prompts and are removed, with any prompt of the same text, from the file training reads
(`memory.general`), so neither the stage-0 memory nor the validation probe ever holds them.

Methods are `icft.recipes.compare.METHOD_OVERRIDES` on that config: lora-sequential, icft-paper (today's
ICFT), icft-self (stage-0 memory + merge_alpha auto). Each trained run is scored as trained and with its LoRA
scaled by 0.5 (WiSE-FT); icft-self also at alpha 1 (= icft-no-merge: merging is applied at load time, the
training is the same), and icft-paper at the alpha `merge_alpha: auto` would choose for it on validation
(= icft-no-self-memory, chosen by the same function on the same validation items and probe).

Scores, against the untrained model, on the same items: MedQuAD answer NLL per token of the reference answers
(lower is better) and ROUGE-L of greedy answers (48 new tokens) to the reference (content); own voice: NLL per
token of the untrained model's own greedy answers (48 tokens) to the 40 held-out general prompts, scored on the
answer tokens alone (as benchmarks/real_smollm2.py's probe); stock openers: how many of the 20 greedy MedQuAD
answers open (first 80 characters) with a ChatDoctor stock phrase (STOCK). Intervals: paired bootstrap over
items (and seeds), `icft.evaluation.statistics.paired_items`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from icft.tables import cell, markdown

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("lora-sequential", "icft-paper", "icft-self")
GENERAL = "general_instructions/instructions.jsonl"
N_GENERAL_TEST = 40
N_MEDQUAD = 20
NEW_TOKENS = 48
STOCK = ("based on your symptoms", "based on the symptoms", "hi, thanks for", "hi thanks for", "hello, thanks for",
         "thanks for your query", "thanks for the query", "thank you for your query", "it seems like you",
         "it seems that you", "you're suffering from", "you are suffering from", "you may be suffering",
         "i understand your concern", "as per your")  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Data


def general_key(text: str) -> str:
    return " ".join(text.lower().split())


def prepare(shared: Path, work: Path) -> dict:
    """Write the curriculum and the general file training reads; return the test items."""
    from icft.data.loaders import load_examples
    from icft.io import write_jsonl
    from icft.memory.self_memory import prompt_text
    from icft.recipes.demo import Sizes, real_curriculum

    data = work / "data"
    split = real_curriculum(shared, Sizes(test={"medquad": N_MEDQUAD}))
    for part in ("train", "validation"):
        write_jsonl(data / f"{part}.jsonl", (ex.to_dict() for ex in split[part]))
    medquad = [ex for ex in split["test"] if ex.source.startswith("medquad")]

    general = load_examples(shared / GENERAL).examples
    ranked = sorted(general, key=lambda ex: hashlib.sha256(ex.id.encode()).hexdigest())
    test = ranked[:N_GENERAL_TEST]
    held_texts = {general_key(prompt_text(ex)) for ex in test}
    held_ids = {ex.id for ex in test}
    raw = [json.loads(line) for line in (shared / GENERAL).read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(raw) == len(general), "every general record must load, to keep the raw lines aligned"
    kept = [r for r, ex in zip(raw, general)
            if ex.id not in held_ids and general_key(prompt_text(ex)) not in held_texts]  # fmt: skip
    write_jsonl(data / "general.jsonl", kept)
    return {"medquad": medquad, "general_test": test, "n_general_train": len(kept)}


def base_config(work: Path):
    from icft.config import load_config

    data = work / "data"
    return load_config(ROOT / "configs" / "demo-real.yaml", [
        f"data.train=[{data / 'train.jsonl'}]", f"data.validation=[{data / 'validation.jsonl'}]",
        f"memory.general=[{data / 'general.jsonl'}]"])  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# Training: one subprocess per run (`icft train`), --jobs side by side


def run_dir(work: Path, method: str, seed: int) -> Path:
    return work / "runs" / f"{method}-s{seed}"


def train_all(work: Path, seeds: list[int], jobs: int, threads: int) -> dict[str, float]:
    from icft.config import save_config
    from icft.recipes.compare import method_config

    config = base_config(work)
    todo = []
    for seed in seeds:
        for method in METHODS:
            folder = run_dir(work, method, seed)
            if (folder / "summary.json").exists():
                continue
            path = work / "configs" / f"{method}-s{seed}.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            save_config(method_config(config, method, seed), path)
            todo.append((method, seed, path, folder))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "ICFT_QUIET": "1",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    running, seconds = [], {}
    while todo or running:
        while todo and len(running) < jobs:
            method, seed, path, folder = todo.pop(0)
            log = open(work / f"train-{method}-s{seed}.log", "w")  # noqa: SIM115 (closed when the run ends)
            cmd = [sys.executable, "-m", "icft", "train", "--config", str(path), "--output-dir", str(folder),
                   "--overwrite"]  # fmt: skip
            running.append((f"{method}-s{seed}", subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env),
                            log, time.perf_counter()))  # fmt: skip
            print(f"training {method} seed {seed}", flush=True)
        time.sleep(5)
        for entry in list(running):
            name, proc, log, start = entry
            if proc.poll() is not None:
                log.close()
                running.remove(entry)
                seconds[name] = time.perf_counter() - start
                print(f"{name}: exit {proc.returncode} after {seconds[name]:.0f}s", flush=True)
                if proc.returncode:
                    raise SystemExit(f"{name} failed: see {work}/train-{name}.log")
    return seconds


# ----------------------------------------------------------------------------------------------------------
# Scoring


def own_voice_items(work: Path, tests: dict, fmt, base) -> list:
    """The untrained model's greedy answers to the held-out general prompts (cached)."""
    from icft.data.schema import Example
    from icft.evaluation.generation import own_answers
    from icft.memory.self_memory import as_prompt

    path = work / "own_voice_test.jsonl"
    if path.exists():
        return [Example.from_dict(json.loads(line)) for line in path.read_text().splitlines()]
    voice = own_answers(base, fmt, [as_prompt(ex) for ex in tests["general_test"]], NEW_TOKENS)
    path.write_text("".join(json.dumps(ex.to_dict()) + "\n" for ex in voice))
    return voice


def probe_items(work: Path, fmt, base, config) -> list:
    """The validation probe training made (the same split and greedy answers): for icft-paper's alpha."""
    from icft.evaluation.generation import own_answers
    from icft.memory.self_memory import general_prompts, split_general

    _, held = split_general(general_prompts(config.memory.general), config.memory.general_size,
                            config.memory.general_probe)  # fmt: skip
    return own_answers(base, fmt, held, config.memory.general_new_tokens)


def opens_with_stock(answer: str) -> bool:
    head = answer.lower().strip()[:80]
    return any(phrase in head for phrase in STOCK)


def score(model, fmt, medquad: list, voice: list) -> dict:
    from icft.evaluation.evaluate import EvalSettings, evaluate_examples
    from icft.likelihood import ScoreSettings, answer_nll

    result = evaluate_examples(model, fmt, medquad, EvalSettings(max_new_tokens=NEW_TOKENS))
    pairs = [(fmt.prompt(ex), str(ex.answer)) for ex in voice]
    voice_nll = answer_nll(model, fmt.tokenizer, pairs, ScoreSettings.of(fmt))
    return {
        "medquad_nll": {r["id"]: r["answer_nll"] for r in result.items},
        "medquad_rougeL": {r["id"]: r["rougeL"] for r in result.items},
        "own_voice_nll": {ex.id: v for ex, v in zip(voice, voice_nll)},
        "answers": {r["id"]: r["answer"] for r in result.items},
    }


# --lean: the points the comparison needs at every seed (the others at the first seed only)
LEAN = ("lora-sequential x1", "lora-sequential x0.5", "icft-paper x1", "icft-self (merged, alpha chosen on validation)")


def evaluate_all(work: Path, tests: dict, seeds: list[int], methods: tuple[str, ...] = METHODS,
                 lean: bool = False) -> dict:  # fmt: skip
    """{point: {seed: scores}}; a point is a model: base, or a method at a scale."""
    from icft.data.prompt_format import PromptFormat
    from icft.recipes.merge import choose_merge, set_lora_scale
    from icft.runs import Run, load_base

    path = work / "scores.json"
    scores = json.loads(path.read_text()) if path.exists() else {}
    config = base_config(work)
    base, tokenizer = load_base(config.model.name, "cpu")
    fmt = PromptFormat.from_config(tokenizer, config)
    voice = own_voice_items(work, tests, fmt, base)
    validation = __import__("icft.data.sources", fromlist=["load_data"]).load_data(config.data.validation, quiet=True)

    def keep(point: str, seed: int, model, extra: dict | None = None) -> None:
        if str(seed) in scores.get(point, {}) or (lean and point not in LEAN):
            return
        start = time.perf_counter()
        scores.setdefault(point, {})[str(seed)] = {**score(model, fmt, tests["medquad"], voice), **(extra or {}),
                                                   "seconds": time.perf_counter() - start}  # fmt: skip
        path.write_text(json.dumps(scores, indent=1))
        print(f"scored {point} seed {seed} ({time.perf_counter() - start:.0f}s)", flush=True)

    if "base" not in scores:
        keep("base", 0, base)
    probe = None
    for seed in seeds:
        for method in methods:
            folder = run_dir(work, method, seed)
            run = Run.from_pretrained(folder, "cpu", memory=False)  # applies a saved merge_alpha
            merge_file = folder / "adapter" / "merge.json"
            merge = json.loads(merge_file.read_text()) if merge_file.exists() else None
            if merge is not None:
                keep(f"{method} (merged, alpha chosen on validation)", seed, run.model, {"merge": merge})
            set_lora_scale(run.model, 1.0)
            keep(f"{method} x1" + (" (= icft-no-merge)" if method == "icft-self" else ""), seed, run.model)
            merged = "icft-paper merged on validation (= icft-no-self-memory)"
            if method == "icft-paper" and not lean and str(seed) not in scores.get(merged, {}):
                # icft-no-self-memory: today's ICFT at the alpha merge_alpha: auto chooses for it
                probe = probe or probe_items(work, fmt, base, config)
                chosen = choose_merge(run.model, run.format, validation, probe, list(config.train.merge_grid))
                set_lora_scale(run.model, chosen["alpha"])
                keep(merged, seed, run.model, {"merge": chosen})
            set_lora_scale(run.model, 0.5)
            keep(f"{method} x0.5", seed, run.model)
    return scores


# ----------------------------------------------------------------------------------------------------------
# Report


def paired(scores: dict, point: str, other: str, metric: str):
    from icft.evaluation.statistics import paired_items

    ours = {int(s): v[metric] for s, v in scores[point].items()}
    theirs = {int(s): v[metric] for s, v in scores[other].items()}
    if other == "base":  # one untrained model: the same scores at every seed
        theirs = {s: next(iter(theirs.values())) for s in ours}
    return paired_items(ours, theirs)


def interval(diff, sign: float = 1.0) -> str:
    """sign x the difference: mean [low, high], bold where the interval excludes 0."""
    if diff is None:
        return "–"
    low, high = sorted((sign * diff.low, sign * diff.high))
    text = f"{cell(sign * diff.mean, sign=True)} [{cell(low, sign=True)}, {cell(high, sign=True)}]"
    return f"**{text}**" if diff.significant else text


def verdict(diff, sign: float) -> str:
    """"ahead" / "behind" where the interval excludes 0, else "no clear difference"; with the figure."""
    if diff is None:
        return "not measured"
    word = "no clear difference" if not diff.significant else "ahead" if sign * diff.mean > 0 else "behind"
    return f"{word} ({interval(diff, sign).strip('*')})"


def mean_over(scores: dict, point: str, metric: str) -> float:
    return statistics.mean(statistics.mean(v[metric].values()) for v in scores[point].values())


def stock_count(scores: dict, point: str) -> str:
    counts = [sum(opens_with_stock(a) for a in v["answers"].values()) for v in scores[point].values()]
    n = len(next(iter(scores[point].values()))["answers"])
    return "/".join(str(c) for c in counts) + f" of {n}"


def main_table(scores: dict) -> list[str]:
    """Each model against the untrained one: MedQuAD answer NLL and ROUGE-L, own-voice NLL, their changes."""
    header = ["model", "seeds", "MedQuAD answer NLL", "NLL drop vs base", "ROUGE-L", "ROUGE-L change",
              "own-voice NLL", "own-voice drop vs base", "stock openers", "sum of the two drops"]  # fmt: skip
    rows = []
    for point in scores:
        nll, voice = mean_over(scores, point, "medquad_nll"), mean_over(scores, point, "own_voice_nll")
        rouge = mean_over(scores, point, "medquad_rougeL")
        if point == "base":
            rows.append(["untrained", "–", cell(nll), "–", cell(rouge), "–", cell(voice), "–",
                         stock_count(scores, point), "–"])  # fmt: skip
            continue
        d_nll, d_voice = paired(scores, point, "base", "medquad_nll"), paired(scores, point, "base", "own_voice_nll")
        alphas = {v["merge"]["alpha"] for v in scores[point].values() if "merge" in v}
        name = point + (f" (alpha {'/'.join(f'{a:g}' for a in sorted(alphas))})" if alphas else "")
        rows.append([name, ",".join(sorted(scores[point])), cell(nll), interval(d_nll, -1), cell(rouge),
                     interval(paired(scores, point, "base", "medquad_rougeL")), cell(voice), interval(d_voice, -1),
                     stock_count(scores, point), cell(-(d_nll.mean + d_voice.mean), sign=True)])  # fmt: skip
    return markdown(header, rows)


OURS = "icft-self (merged, alpha chosen on validation)"


def against_table(scores: dict) -> list[str]:
    """The new design minus LoRA x0.5 and today's ICFT, paired on the same items and seeds."""
    rows = [[other, interval(paired(scores, OURS, other, "medquad_nll"), -1),
             interval(paired(scores, OURS, other, "medquad_rougeL")),
             interval(paired(scores, OURS, other, "own_voice_nll"), -1)]
            for other in ("lora-sequential x0.5", "icft-paper x0.5", "icft-paper x1", "lora-sequential x1",
                          "icft-paper merged on validation (= icft-no-self-memory)")
            if OURS in scores and other in scores]  # fmt: skip
    lines = markdown(["new design minus", "MedQuAD NLL drop", "ROUGE-L", "own-voice drop"], rows)
    lines += ["", "In plain words (the new design minus each, from the table above):", ""]
    for other in ("lora-sequential x0.5", "icft-paper x1"):
        if OURS in scores and other in scores:
            parts = [f"{label} {verdict(paired(scores, OURS, other, metric), sign)}"
                     for label, metric, sign in (("MedQuAD answer NLL drop", "medquad_nll", -1),
                                                 ("ROUGE-L", "medquad_rougeL", 1),
                                                 ("own-voice drop", "own_voice_nll", -1))]  # fmt: skip
            lines.append(f"- against {other}: " + "; ".join(parts) + ".")
    return lines


def answers_and_alphas(scores: dict, tests: dict) -> list[str]:
    """The alphas merging chose, seed by seed, and the first 3 MedQuAD answers of every model (seed 0)."""
    lines = ["## The alphas merge_alpha: auto chose (validation only: medical NLL drop + own-voice drop)", ""]
    for point in scores:
        for seed, v in scores[point].items():
            if "merge" in v:
                grid = ", ".join(f"{a}: {g['trade']:+.3f}" for a, g in v["merge"]["grid"].items())
                lines.append(f"- {point}, seed {seed}: alpha {v['merge']['alpha']:g} ({grid})")
    lines += ["", "## Greedy answers to the first 3 MedQuAD test questions (seed 0)", ""]
    for ex in tests["medquad"][:3]:
        lines += [f"**{ex.question}**", ""]
        for point in scores:
            answer = scores[point].get("0", next(iter(scores[point].values())))["answers"].get(ex.id, "")
            lines.append(f"- {point}: {' '.join(answer.split())[:240]}")
        lines.append("")
    return lines


def report(out: Path, scores: dict, tests: dict, run: dict) -> str:
    """report.md; `run`: {"seeds", "command", "seconds", "note"}."""
    note, seconds = run.get("note"), run.get("seconds")
    lines = [
        "# ICFT that keeps what the model knew (issue 36): demo scale", "", f"`{run['command']}`", "",
        *([note, ""] if note else []),
        f"configs/demo-real.yaml (SmolLM2-135M-Instruct, 60 steps of batch 4, LoRA r=8 on attention), seeds "
        f"{run['seeds']}. Test: {len(tests['medquad'])} held-out MedQuAD items (reference answers), "
        f"{N_GENERAL_TEST} held-out general instructions (own voice: the untrained model's greedy answers, "
        f"{NEW_TOKENS} tokens), never in the stage-0 memory nor its validation probe "
        f"({tests['n_general_train']} general instructions left for training to draw 64 + 20 from).", "",
        "Changes against the untrained model, higher = better (NLL drops in nats per answer token), mean "
        "[95% paired bootstrap interval over items and seeds]; **bold** where it excludes 0. Stock openers: greedy "
        "MedQuAD answers whose first 80 characters hold a ChatDoctor stock phrase, per seed.", "",
        *main_table(scores), "", "## The new design against LoRA x0.5 and today's ICFT (paired, same items and seeds)",
        "", *against_table(scores), "", *answers_and_alphas(scores, tests),
    ]  # fmt: skip
    if seconds:
        lines.append("Training seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()) + ".")
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "self-memory"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "self-memory"))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="train nothing; score what is trained")
    parser.add_argument("--lean", action="store_true", help=f"score only {', '.join(LEAN)}")
    parser.add_argument("--note", default="", help="a line under the command in report.md (how the runs were made)")
    parser.add_argument("--train-only", action="store_true", help="train, score nothing")
    parser.add_argument("--methods", default=",".join(METHODS), help="the trained methods to score")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    tests = prepare(Path(args.shared), work)
    seconds = {} if args.report_only else train_all(work, seeds, args.jobs, args.threads)
    if args.train_only:
        return 0
    import torch

    torch.set_num_threads(max(1, args.jobs * args.threads))
    scores = evaluate_all(work, tests, seeds, tuple(args.methods.split(",")), args.lean)
    (out / "results.json").write_text(json.dumps({"seeds": seeds, "scores": scores, "train_seconds": seconds},
                                                 indent=1))  # fmt: skip
    shown = list(argv if argv is not None else sys.argv[1:])
    if "--note" in shown:  # the note is printed under the command, not inside it
        del shown[shown.index("--note") : shown.index("--note") + 2]
    command = "python benchmarks/self_memory.py " + " ".join(shown)
    print(report(out, scores, tests, {"seeds": seeds, "command": command, "seconds": seconds,
                                      "note": args.note}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
