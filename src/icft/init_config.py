"""`icft init --data FILE... [--model M] [--output my.yaml]`: look at a user's data and write a config for it.

The config it writes is commented and complete: `icft train --config my.yaml` runs it unchanged. What it
decides from the data, and why:
- max_length: the 95th percentile of prompt + answer tokens (the model's own tokenizer and prompt format),
  rounded up to a multiple of 32, so that at most 5% of examples lose the start of their prompt;
- stages: the records' own `stage` values where they have them (in the order general -> knowledge ->
  clinical where those names are used, else in order of first appearance), difficulty stages otherwise;
- validation: none is given here, so a share of the training data is held out, grouped by topic;
- memory: STM about 5% and LTM about 10% of the data, within bounds that keep replay cheap and never more
  than the training part holds; the comments state the actual share;
- steps: about one epoch (batch 16, smaller on small data), and at least 10 steps a stage where that stays
  within 3 epochs; more than 2 epochs, or few examples, is a warning in the file and on the screen;
- compare: `compare.test` holds the `--test` files (held-out data of the user's own), never the bundled ones.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data.formatting import prompt_and_target, resolve_template
from .data.sources import load_data
from .io import write_text

CANONICAL_ORDER = ("general", "knowledge", "clinical")
BATCH_SIZE = 16


def init_command(data: list[str], model: str, output: str, test: list[str] | None = None) -> int:
    examples = load_data(data)
    if not examples:
        raise FileNotFoundError(f"no examples in {', '.join(data)}")
    test = list(test or [])
    if test:
        load_data(test)  # a test file that cannot be read fails here, not after a comparison has trained
    lengths, model_limit = _token_lengths(examples, model)
    max_length = int(min(model_limit, max(64, math.ceil(np.percentile(lengths, 95) / 32) * 32)))
    stages = _stage_plan(examples)
    n = len(examples)
    n_stages = len(stages) if stages else 3
    plan = fit_plan(n, n_stages)
    kinds = Counter(ex.kind for ex in examples)
    warnings = plan.warnings()
    text = TEMPLATE.format(
        files=", ".join(data), n=n, kinds=", ".join(f"{k} {v}" for k, v in kinds.most_common()),
        p50=int(np.percentile(lengths, 50)), p95=int(np.percentile(lengths, 95)), max_length=max_length,
        model=model, train=_yaml_list(data), name=Path(output).stem,
        stages=f"[{', '.join(stages)}]" if stages else "auto",
        stage_note=(f"the records' own stages ({', '.join(f'{s} {c}' for s, c in _stage_counts(examples, stages))})"
                    if stages else "no record has a stage: 3 difficulty stages (length and word rarity)"),
        steps=plan.steps, stm=plan.stm, ltm=plan.ltm, batch=plan.batch,
        stm_note=plan.stm_note(), ltm_note=plan.ltm_note(), steps_note=plan.steps_note(),
        warnings="".join(f"# warning: {w}\n" for w in warnings),
        save_every=max(1, min(100, plan.steps // 5)), log_every=max(1, min(10, plan.steps // 20)),
        test=_yaml_list(test),
        test_note=("your held-out test files: icft compare scores every method on them" if test else
                   "none given (icft init --test FILE): add held-out files you never train on before icft compare; "
                   "empty, it reports validation figures only"),
    )  # fmt: skip
    from .config import load_config

    write_text(output, text)
    load_config(output)  # what we wrote must be a config train accepts; fail here, not at train time
    print(f"{n} examples ({', '.join(f'{k} {v}' for k, v in kinds.most_common())}); max_length {max_length}, stages "
          f"{'auto' if not stages else ', '.join(stages)}, {plan.steps} steps at batch {plan.batch} "
          f"({plan.epochs:.1f} epochs), memory STM {plan.stm} / LTM {plan.ltm}")  # fmt: skip
    for warning in warnings:
        print(f"warning: {warning}")
    if not test:
        print("compare.test is empty: give held-out test files (icft init --test FILE, or edit compare.test) "
              "before icft compare")  # fmt: skip
    print(f"wrote {output}; next: icft train --config {output}")
    return 0


HOLD_OUT = 0.05  # data.validation_split in the written config
MAX_EPOCHS = 3.0  # init never plans more passes over the data than this
MIN_STAGE_STEPS = 10  # when the data allows it (at most MAX_EPOCHS), at least this many steps a stage


@dataclass
class Plan:
    """What `icft init` fits to the data: batch, steps and memory sizes, with the figures its comments state."""

    n: int  # examples
    n_train: int  # after the hold-out
    batch: int
    steps: int
    stm: int
    ltm: int

    @property
    def epochs(self) -> float:
        return self.steps * self.batch / max(1, self.n_train)

    def stm_note(self) -> str:
        return (f"{self.stm / self.n:.0%} of the {self.n} examples: the current stage's hard examples "
                "(5% of the data, at least 8, at most 512 and a quarter of the training part)")  # fmt: skip

    def ltm_note(self) -> str:
        return (f"{self.ltm / self.n:.0%} of the {self.n} examples: exemplars of finished stages "
                "(10% of the data, at least 16, at most 2048 and half the training part)")  # fmt: skip

    def steps_note(self) -> str:
        return (f"{self.epochs:.2f} epochs of the {self.n_train} training examples (after the hold-out) at batch "
                f"{self.batch}")  # fmt: skip

    def warnings(self) -> list[str]:
        out = []
        if self.epochs > 2:
            out.append(f"{self.steps} steps are {self.epochs:.1f} passes over {self.n_train} training examples: "
                       "each is seen that many times, a risk of overfitting (learning the answers by heart); "
                       "watch the validation NLL, or add data")  # fmt: skip
        if self.n_train < 200:
            out.append(f"{self.n_train} training examples are few for fine-tuning: expect small, noisy changes, "
                       "and read any score against the trivial baselines (icft eval prints them)")  # fmt: skip
        return out


def fit_plan(n: int, n_stages: int) -> Plan:
    """Batch, steps and memory sizes for `n` examples in `n_stages` stages.

    Steps: about one epoch, and MIN_STAGE_STEPS a stage where that stays within MAX_EPOCHS. The batch shrinks
    (16 -> 8 -> 4) on small data so a stage still gets a few steps. Memory: STM 5% and LTM 10% of the data
    within bounds, never more than the training part holds.
    """
    n_train = max(1, math.floor(n * (1 - HOLD_OUT)))
    batch = BATCH_SIZE if n_train >= 40 * BATCH_SIZE else 8 if n_train >= 80 else 4
    one_epoch = math.ceil(n_train / batch)
    steps = max(one_epoch, min(MIN_STAGE_STEPS * n_stages, math.floor(MAX_EPOCHS * n_train / batch)), n_stages)
    stm = max(1, min(512, n_train // 4, max(8, n // 20)))
    ltm = max(1, min(2048, n_train // 2, max(16, n // 10)))
    return Plan(n, n_train, batch, steps, stm, ltm)


def _token_lengths(examples, model: str) -> tuple[list[int], int]:
    """Prompt + answer token counts (of up to 2,000 examples), and the most the model takes (capped at 2048)."""
    from transformers import AutoTokenizer

    from .models import model_source

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_source(model))
    except (OSError, ValueError) as error:
        raise FileNotFoundError(f"could not load the tokenizer of model '{model}' (--model): {error}") from None
    sample = examples if len(examples) <= 2000 else [examples[i] for i in np.linspace(0, len(examples) - 1, 2000,
                                                                                        dtype=int)]  # fmt: skip
    # Counted in the format training will use (data.template: auto): a chat template's turn markers and
    # system prompt are tokens too. Chat pairs hold their special tokens as text; plain ones get BOS/EOS added.
    template = resolve_template(tokenizer, "auto")
    texts = ["".join(prompt_and_target(ex, tokenizer, template)) for ex in sample]
    encoded = tokenizer(texts, add_special_tokens=template == "plain", verbose=False)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    return lengths, min(2048, int(tokenizer.model_max_length))


def _stage_plan(examples) -> list[str]:
    seen = list(dict.fromkeys(ex.stage for ex in examples if ex.stage))
    if not seen or any(not ex.stage for ex in examples):
        return []  # none, or only some records staged: difficulty stages are the honest plan
    canonical = [s for s in CANONICAL_ORDER if s in seen]
    return canonical + [s for s in seen if s not in canonical]


def _stage_counts(examples, stages: list[str]):
    counts = Counter(ex.stage for ex in examples)
    return [(s, counts[s]) for s in stages]


TEMPLATE = """\
# Written by `icft init` for: {files}
# data: {n} examples: {kinds}
# prompt + answer tokens: median {p50}, 95th percentile {p95}
{warnings}# Train with: icft train --config {name}.yaml   (then: icft eval --run runs/{name} --data <your test file>)
name: {name}
model:
  name: {model}        # a hub id, a local folder, or smollm2-135m-instruct (the embedded default)
  max_length: {max_length}        # 95th percentile of prompt + answer tokens, rounded up to 32 (model limit)
peft:
  method: lora
  r: 8
  alpha: 16
  target_modules: attention   # or all-linear (attention and MLP), or a list of module names
data:
  train: {train}
  validation: []        # none given: hold out a share of the training data instead
  validation_split: 0.05   # grouped by document/topic, so near-duplicates stay on one side
  template: auto        # the tokenizer's chat template where it has one, plain prompts otherwise
curriculum:
  order: curriculum
  stages: {stages}        # {stage_note}
  num_stages: 3
  pacing: sqrt          # inside a stage, start on the easiest 20% and widen to all of it
  start_competence: 0.2
  scorers: {{length: 1.0, rarity: 1.0}}
memory:
  enabled: true
  stm_capacity: {stm}        # {stm_note}
  stm_replay: 0.125
  ltm_capacity: {ltm}        # {ltm_note}
  ltm_replay: 0.25
  selection: herding
loss: {{task: 1.0, consistency: 1.0, finetune: 1.0}}
train:
  max_steps: {steps}        # {steps_note}
  batch_size: {batch}
  lr: 0.001
  save_every: {save_every}
  log_every: {log_every}
  eval_max_examples: 100    # per stage, for the stage matrices after each stage
compare:
  test: {test}        # {test_note}
"""


def _yaml_list(paths: list[str]) -> str:
    """A flow list of paths, each quoted (JSON is YAML): a path with ", ", "#" or a leading "*" stays one path."""
    return "[" + ", ".join(json.dumps(p) for p in paths) + "]"
