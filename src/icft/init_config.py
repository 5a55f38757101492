"""`icft init --data FILE... [--model M] [--output my.yaml]`: look at a user's data and write a config for it.

The config it writes is commented and complete: `icft train --config my.yaml` runs it unchanged. What it
decides from the data, and why:
- max_length: the 95th percentile of prompt + answer tokens (the model's own tokenizer and prompt format),
  rounded up to a multiple of 32, so that at most 5% of examples lose the start of their prompt;
- stages: the records' own `stage` values where they have them (in the order general -> knowledge ->
  clinical where those names are used, else in order of first appearance), difficulty stages otherwise;
- validation: none is given here, so a share of the training data is held out, grouped by topic;
- memory: STM about 5% and LTM about 10% of the data, within bounds that keep replay cheap;
- steps: about one epoch at batch 16, and at least 10 steps a stage.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np

from .data.formatting import prompt_and_target, resolve_template
from .data.sources import load_data
from .io import write_text

CANONICAL_ORDER = ("general", "knowledge", "clinical")
BATCH_SIZE = 16


def init_command(data: list[str], model: str, output: str) -> int:
    examples = load_data(data)
    if not examples:
        raise FileNotFoundError(f"no examples in {', '.join(data)}")
    lengths, model_limit = _token_lengths(examples, model)
    max_length = int(min(model_limit, max(64, math.ceil(np.percentile(lengths, 95) / 32) * 32)))
    stages = _stage_plan(examples)
    n = len(examples)
    n_stages = len(stages) if stages else 3
    n_train = n * 0.95  # what is left after the 5% validation hold-out (data.validation_split)
    steps = max(10 * n_stages, math.ceil(n_train / BATCH_SIZE))
    stm, ltm = int(min(512, max(32, n // 20))), int(min(2048, max(64, n // 10)))
    kinds = Counter(ex.kind for ex in examples)
    text = TEMPLATE.format(
        files=", ".join(data), n=n, kinds=", ".join(f"{k} {v}" for k, v in kinds.most_common()),
        p50=int(np.percentile(lengths, 50)), p95=int(np.percentile(lengths, 95)), max_length=max_length,
        model=model, train="[" + ", ".join(data) + "]", name=Path(output).stem,
        stages=f"[{', '.join(stages)}]" if stages else "auto",
        stage_note=(f"the records' own stages ({', '.join(f'{s} {c}' for s, c in _stage_counts(examples, stages))})"
                    if stages else "no record has a stage: 3 difficulty stages (length and word rarity)"),
        steps=steps, epochs=steps * BATCH_SIZE / n_train, stm=stm, ltm=ltm,
        save_every=max(10, steps // 5), log_every=max(1, min(10, steps // 20)),
    )  # fmt: skip
    from .config import load_config

    write_text(output, text)
    load_config(output)  # what we wrote must be a config train accepts; fail here, not at train time
    print(f"{n} examples ({', '.join(f'{k} {v}' for k, v in kinds.most_common())}); max_length {max_length}, stages "
          f"{'auto' if not stages else ', '.join(stages)}, {steps} steps")  # fmt: skip
    print(f"wrote {output}; next: icft train --config {output}")
    return 0


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
# Train with: icft train --config {name}.yaml   (then: icft eval --run runs/{name} --data <your test file>)
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
  stm_capacity: {stm}        # about 5% of the data: the current stage's hard examples
  stm_replay: 0.125
  ltm_capacity: {ltm}        # about 10% of the data: exemplars of finished stages
  ltm_replay: 0.25
  selection: herding
loss: {{task: 1.0, consistency: 1.0, finetune: 1.0}}
train:
  max_steps: {steps}        # about {epochs:.2f} epochs of the training part (after the hold-out) at batch 16
  batch_size: 16
  lr: 0.001
  save_every: {save_every}
  log_every: {log_every}
  eval_max_examples: 100    # per stage, for the stage matrices after each stage
"""
