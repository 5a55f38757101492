"""The ICFT training recipe, end to end. Read `run_recipe()` top to bottom: it is the five steps below.

1. Data and model: load the training and validation data (carving a validation split when none is
   given), the model, and wrap it in a LoRA adapter (peft).
2. Curriculum: score every training example's difficulty, group examples into stages (general ->
   medical knowledge -> clinical tasks, or difficulty quantiles) and give each stage a share of
   `train.max_steps` (`curriculum.StageSchedule`).
3. Each step: draw the easiest competence(t) share of the current stage, re-mix high-loss examples from
   short-term memory (STM), replay exemplars from long-term memory (LTM); one forward pass; the three
   loss terms, the consistency term from a regularizer (`regularizers.py`: the teacher, and for baselines
   a KL anchor to the base model or EWC, called as a list); an optimizer step through accelerate.
4. At each stage end: consolidate STM into LTM (exemplars chosen by herding on sentence embeddings, the
   model's outputs recorded as consistency targets), reset STM, and evaluate every stage's validation
   split (one row of the stage matrices).
5. Checkpoint every `train.save_every` steps (atomically, resumable); at the end save the adapter, the
   LTM, metrics and the stage matrices.

Consistency teacher: we store the model's outputs at consolidation time rather than keep an EMA copy of
the adapter (CLS-ER). Stored outputs cost no extra forward pass per step and no second set of weights,
and they pin the model to what it knew when each stage ended, which is what forgetting is measured
against.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_cosine_schedule_with_warmup

from .. import curriculum, losses
from ..checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    trainable_state,
)
from ..config import RunConfig, save_config
from ..data.prompt_format import PromptFormat
from ..data.schema import Example
from ..data.sources import load_data, split_validation
from ..data.tokenize import TokenizedPair, collate
from ..errors import TrainingError
from ..evaluation.generation import own_answers
from ..evaluation.stage_eval import stage_report, stage_row, validation_loss
from ..io import write_json
from ..likelihood import eval_batches, target_logits
from ..memory import Embedder, LongTermMemory, MemoryItem, ReplaySchedule, ShortTermMemory, example_text
from ..memory.retrieval import training_contexts
from ..memory.self_memory import SELF_STAGE, SelfMemory, general_prompts, split_general
from ..models import (
    count_parameters,
    enable_gradient_checkpointing,
    extra_trainable_modules,
    load_model,
    prepare_for_kbit_training,
    resolve_target_modules,
)
from ..progress import MetricsLog, ProgressDisplay
from ..regularizers import EWC, Batch, EMATeacher, FrozenBaseTeacher, Regularizer, StoredTeacher, base_weights
from ..runs import PROMPT_FORMAT_FILE, RunFolder, stamp
from .merge import MERGE_FILE, choose_merge


@dataclass
class RunState:
    """Where the run is: everything besides weights, optimizer, schedule and memories that a resume needs."""

    step: int = 0
    tokens: int = 0
    stage_rows: list[dict] = field(default_factory=list)  # one stage_eval row per finished stage
    curve: list[dict] = field(default_factory=list)  # {"step", stage rows} every train.eval_every steps
    wall_s: float = 0.0


# ----------------------------------------------------------------------------------------------------
# 1. Data and model


def load_training_data(config: RunConfig, say) -> tuple[list[Example], list[Example]]:
    """(train, validation). No validation files: a held-out share of the training data, said in one line."""
    train = load_data(config.data.train, quiet=False)
    if config.data.max_train_examples:
        train = train[: config.data.max_train_examples]
    if config.data.validation:
        return train, load_data(config.data.validation, quiet=True)
    if not config.data.validation_split:
        say("no validation data (data.validation: [], data.validation_split: 0): no stage metrics this run")
        return train, []
    train, validation = split_validation(train, config.data.validation_split)
    say(f"no validation files: holding out {len(validation)} of {len(train) + len(validation)} training examples "
        f"({config.data.validation_split:.0%}, grouped by document/topic; data.validation_split)")  # fmt: skip
    return train, validation


def load_adapted_model(config: RunConfig):
    quantized = config.peft.quantization != "none"
    try:
        model, tokenizer = load_model(config.model.name, quantization=config.peft.quantization if quantized else None)
    except (OSError, ValueError) as error:  # transformers reports a bad id or folder as either
        raise TrainingError(f"could not load model '{config.model.name}' (config key 'model.name'): {error}") from None
    if quantized:
        model = prepare_for_kbit_training(model, config.train.gradient_checkpointing)
    if config.peft.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    else:
        from peft import LoraConfig, get_peft_model

        try:
            targets = resolve_target_modules(model, config.peft.target_modules)
        except ValueError as error:
            raise TrainingError(str(error)) from None
        model = get_peft_model(model, LoraConfig(
            r=config.peft.r, lora_alpha=config.peft.alpha, lora_dropout=config.peft.dropout, target_modules=targets,
            modules_to_save=extra_trainable_modules(model) or None, task_type="CAUSAL_LM",
        ))  # fmt: skip
    if config.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model, tokenizer


# ----------------------------------------------------------------------------------------------------
# 2. Curriculum


def plan_stages(config: RunConfig, train: list[Example], validation: list[Example], model, fmt: PromptFormat):
    """Difficulty-scored training stages and, for the stage matrices, the matching validation groups."""
    cc = config.curriculum
    cache = Path(os.environ.get("ICFT_CACHE", Path.home() / ".cache" / "icft")) / "difficulty"

    def scored(examples: list[Example]) -> list[Example]:
        scores = curriculum.difficulty_scores(examples, cc.scorers, model=model, tokenizer=fmt.tokenizer,
                                              cache_dir=cache, model_name=config.model.name,
                                              template=fmt.template)  # fmt: skip
        return curriculum.attach_difficulty(examples, scores)

    train = scored(train)
    if cc.stages == "auto":
        if len(train) < cc.num_stages:
            raise TrainingError(f"{len(train)} training examples cannot make {cc.num_stages} stages "
                                "(curriculum.num_stages)")  # fmt: skip
        stages = curriculum.stages_by_quantile(train, cc.num_stages)
        val_groups = ([s.examples for s in curriculum.stages_by_quantile(scored(validation), cc.num_stages)]
                      if len(validation) >= cc.num_stages else [[] for _ in stages])  # fmt: skip
    else:
        stages = curriculum.stages_by_field(train, list(cc.stages))
        val_groups = [[ex for ex in validation if ex.stage == s.name] for s in stages]
    try:
        budgets = curriculum.stage_budgets(config.train.max_steps, stages, cc.stage_steps)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    return stages, budgets, val_groups


def check_stage_names(config: RunConfig, train: list[Example], say) -> None:
    """Before the model loads: the stages named in the config must be the ones the records carry.

    Records with no stage at all (a user's own files) get difficulty stages, said in one line.
    """
    cc = config.curriculum
    if cc.stages == "auto":
        return
    found = sorted({ex.stage for ex in train if ex.stage})
    if not found:
        say(f"no training record has a 'stage' field: using {cc.num_stages} difficulty stages "
            "(curriculum.stages: auto)")  # fmt: skip
        cc.stages = "auto"  # saved in the run's config.yaml, so a resume plans the same stages
        return
    names = list(cc.stages)
    unstaged = next((ex for ex in train if not ex.stage), None)
    if unstaged is not None:
        raise TrainingError(f"{unstaged.origin or unstaged.id}: record has no 'stage' while others do (stages "
                            f"found: {', '.join(found)}); give each record a stage or set curriculum.stages: auto")
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise TrainingError(f"training records have stage(s) {', '.join(unknown)} that curriculum.stages "
                            f"{names} does not list (stages found: {', '.join(found)})")  # fmt: skip
    empty = [name for name in names if name not in found]
    if empty:
        raise TrainingError(f"curriculum stage(s) {', '.join(empty)} have no training examples (stages found: "
                            f"{', '.join(found)}); set curriculum.stages to the stages found, or raise or "
                            "unset data.max_train_examples if it cut them off")  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# 3. One step


class TokenCache:
    """Each example tokenised once per answer side ("chosen", or "rejected" for preference pairs), in the
    run's prompt format."""

    def __init__(self, fmt: PromptFormat, contexts: dict[str, Example] | None = None):
        self.fmt, self.tokenizer = fmt, fmt.tokenizer
        self.contexts = contexts or {}  # id -> the example with retrieved context (memory.retrieve_in_training)
        self.cache: dict[tuple[str, str], TokenizedPair] = {}

    def encode(self, ex: Example, answer: str = "chosen") -> TokenizedPair:
        key = (ex.id, answer)
        if key not in self.cache:
            if ex.meta.get("unfinished"):  # a stage-0 answer cut at its budget: no end of turn to learn
                self.cache[key] = self.fmt.encode_pair(self.fmt.prompt(ex), str(ex.answer), add_eos=False)
            else:
                self.cache[key] = self.fmt.encode(self.contexts.get(ex.id, ex), answer)
        return self.cache[key]


REGULARIZER_PARTS = ("consistency", "kl_base", "ewc")  # in this order in L_total's sum
SELF_PARTS = ("self_consistency", "self_ce")  # the stage-0 memory's parts, present only where it is on


@dataclass
class StepLosses:
    parts: dict[str, torch.Tensor]  # task, finetune and the regularizers' parts: consistency, kl_base, ewc
    new_hardness: list[float]  # per new example: per-token NLL of its (chosen) answer, one scale for all kinds
    replay_hardness: list[float]  # the same for the STM examples replayed, to refresh their losses
    tokens: int


def compute_losses(model, cache: TokenCache, new: list[Example], replay: list[Example], ltm: list[MemoryItem],
                   config: RunConfig, device, regularizers: list[Regularizer] | None = None,
                   self_items: list[MemoryItem] | None = None) -> StepLosses:  # fmt: skip
    """Loss parts for one micro-batch, in one forward pass over new, STM-replayed and LTM-replayed rows, and
    the stage-0 memory's rows (`self_items`; None where the run has no stage-0 memory).

    Each of the `regularizers` fills its part (`regularizers.py`); a part without one is 0. None: ICFT's own,
    the consistency term on the LTM items' stored outputs (where loss.consistency > 0). The stage-0 rows are
    not in L_fine-tune: they have their own parts, self_consistency (a regularizer's) and self_ce.
    """
    if regularizers is None:
        regularizers = [StoredTeacher()] if config.loss.consistency > 0 else []
    seqs: list[TokenizedPair] = []
    rows, pairs = [], []  # row of each new example's (chosen) answer; (index in new, rejected row) of pairs
    for i, ex in enumerate(new):
        rows.append(len(seqs))
        seqs.append(cache.encode(ex))
        if ex.kind == "preference":
            pairs.append((i, len(seqs)))
            seqs.append(cache.encode(ex, "rejected"))
    replay_start = len(seqs)
    seqs += [cache.encode(ex) for ex in replay]
    ltm_start = len(seqs)
    seqs += [cache.encode(item.example) for item in ltm]
    self_start = len(seqs)
    seqs += [cache.encode(item.example) for item in self_items or []]

    batch = {k: v.to(device) for k, v in collate(seqs, cache.tokenizer.pad_token_id).items()}
    logits, targets, token_rows = target_logits(model, batch)
    nll, _ = losses.per_sequence_nll(logits, targets, token_rows, len(seqs))

    task = nll[rows].clone() if rows else nll.new_zeros(0)
    for i, rejected in pairs:  # a pair's task loss is pairwise; its hardness stays the chosen answer's NLL
        task[i] = losses.preference_loss(nll[rows[i]], nll[rejected])
    zero = logits.new_zeros(())
    parts = {
        "task": task.mean() if len(new) else zero,
        "finetune": nll[replay_start:self_start].mean() if self_start > replay_start else zero,
        **dict.fromkeys(REGULARIZER_PARTS, zero),
    }
    if self_items is not None:
        parts["self_consistency"] = zero
        parts["self_ce"] = nll[self_start:].mean() if self_items else zero
    replayed_items = ltm + list(self_items or [])  # the regularizers tell the groups apart by stage
    view = Batch(batch, logits, token_rows, ltm_start, replayed_items,
                 collate(seqs[ltm_start:], cache.tokenizer.pad_token_id) if replayed_items else None)  # fmt: skip
    for regularizer in regularizers:
        value = regularizer.penalty(model, view)
        if value is not None:
            parts[regularizer.part] = value
    detached = nll.detach().float().cpu()
    return StepLosses(parts, detached[rows].tolist(), detached[replay_start:ltm_start].tolist(),
                      int(batch["attention_mask"].sum()))  # fmt: skip


# ----------------------------------------------------------------------------------------------------
# Before step 0: the stage-0 memory of the untrained model


def needs_general(config: RunConfig) -> tuple[bool, bool]:
    """(a stage-0 memory group, an own-voice probe) as the config asks for them."""
    mc = config.memory
    group = bool(mc.enabled and mc.general and mc.general_size > 0)
    return group, bool(mc.general) and config.train.merge_alpha == "auto"


@torch.no_grad()
def build_self_memory(config: RunConfig, model, cache: TokenCache, ltm: LongTermMemory, device, say) -> SelfMemory:
    """Ask the untrained model (adapter off) the general prompts; put its answers with its output distributions
    on them into the LTM's protected stage-0 group; keep the probe's answers for choosing merge_alpha."""
    group, probe = needs_general(config)
    if not (group or probe):
        return SelfMemory()
    mc = config.memory
    prompts, held = split_general(general_prompts(mc.general), mc.general_size if group else 0,
                                  mc.general_probe if probe else 0)  # fmt: skip
    start = time.perf_counter()
    # without an adapter (full fine-tuning) the model before step 0 is already the untrained one
    with base_weights(model) if hasattr(model, "disable_adapter") else contextlib.nullcontext():
        answers = own_answers(model, cache.fmt, prompts + held, mc.general_new_tokens)
        by_prompt = {ex.id.removeprefix("self/"): ex for ex in answers}
        items = [MemoryItem(example=by_prompt[ex.id]) for ex in prompts if ex.id in by_prompt]
        stored = ltm.protect(SELF_STAGE, items)
        record_teacher_outputs(model, cache, ltm, stored, mc.teacher_top_k, device)
    probe_items = [by_prompt[ex.id] for ex in held if ex.id in by_prompt]
    unfinished = sum(1 for item in stored if item.example.meta.get("unfinished"))
    say(f"stage-0 memory: the untrained model's own answers to {len(stored)} general prompts ({unfinished} cut at "
        f"{mc.general_new_tokens} tokens), protected in the LTM; own-voice probe: {len(probe_items)} others "
        f"({time.perf_counter() - start:.0f}s; memory.general)")  # fmt: skip
    return SelfMemory(stored, probe_items)


# ----------------------------------------------------------------------------------------------------
# 4. Stage ends: consolidation


@torch.no_grad()
def record_teacher_outputs(model, cache: TokenCache, ltm: LongTermMemory, items: list[MemoryItem], k: int,
                           device, batch_size: int = 32) -> None:  # fmt: skip
    """Store the model's top-k output distribution on each new LTM exemplar's target tokens."""
    for start in eval_batches(model, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = collate([cache.encode(i.example) for i in chunk], cache.tokenizer.pad_token_id)
        logits, _, rows = target_logits(model, {k_: v.to(device) for k_, v in batch.items()})
        ids, logprobs = losses.top_k_outputs(logits, k)
        for r, item in enumerate(chunk):
            ltm.set_teacher(item.example.id, ids[rows == r].cpu(), logprobs[rows == r].cpu())


def consolidate(model, cache: TokenCache, stm: ShortTermMemory, ltm: LongTermMemory, embedder: Embedder,
                stage: str, config: RunConfig, rng: random.Random, device) -> None:  # fmt: skip
    items = stm.items()
    if not items:
        return
    embeddings = embedder.encode([example_text(i.example) for i in items])
    added = ltm.consolidate(stage, items, embeddings, rng)
    record_teacher_outputs(model, cache, ltm, added, config.memory.teacher_top_k, device)
    stm.reset()


# ----------------------------------------------------------------------------------------------------
# The run


def train(config: RunConfig, run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> Path:
    """Train in `run_dir`: a new run (replacing an earlier run of the same config, or of any config with
    `overwrite`) or, with `resume`, the run there from its last checkpoint. The main process holds the
    folder's lock from before the model loads to the end (icft.runs.RunFolder)."""
    folder = RunFolder(Path(run_dir), resume, overwrite)
    try:
        run_recipe(config, folder)
    except BaseException:
        folder.release(failed=True)
        raise
    folder.release()
    return folder.path


def run_recipe(config: RunConfig, folder: RunFolder) -> None:
    run_dir, resume = folder.path, folder.resume
    accelerator = Accelerator(gradient_accumulation_steps=config.train.grad_accum,
                              mixed_precision=config.train.mixed_precision, log_with="tensorboard",
                              project_dir=str(run_dir))  # fmt: skip
    say = print if accelerator.is_main_process else (lambda *a, **k: None)
    if accelerator.is_main_process:
        folder.check()  # before the data loads: a folder icft may not write into is refused at once
    set_seed(config.train.seed)  # the same adapter init on every process
    rng = random.Random(config.train.seed * 1000 + accelerator.process_index)  # each process draws its own batches

    # 1. Data and model
    train_examples, val_examples = load_training_data(config, say)
    check_stage_names(config, train_examples, say)
    if accelerator.is_main_process:  # after check_stage_names, which may change the config that is saved
        folder.claim(config.to_dict(), say)
    model, tokenizer = load_adapted_model(config)
    fmt = PromptFormat.from_config(tokenizer, config)  # every example becomes tokens through it, here and later
    if accelerator.is_main_process:
        write_json(run_dir / PROMPT_FORMAT_FILE, fmt.to_json())  # beside config.yaml: the run is served in it
    trainable, total = count_parameters(model)
    say(f"model {config.model.name}: {trainable:,} trainable / {total:,} parameters "
        f"({100 * trainable / total:.2f}%), peft={config.peft.method}, prompt template {fmt.template}")  # fmt: skip

    # 2. Curriculum
    stages, budgets, val_groups = plan_stages(config, train_examples, val_examples, model, fmt)
    cc = config.curriculum
    schedule = curriculum.StageSchedule(stages, budgets, cc.order, cc.pacing, cc.start_competence, cc.pacing_share,
                                        seed=config.train.seed * 7919 + accelerator.process_index)  # fmt: skip
    say("stages: " + ", ".join(f"{s.name} ({len(s.examples)} examples, {b} steps)" for s, b in zip(stages, budgets)))

    # 3. Memory, optimizer, and where the run starts
    memory = Memory.build(config, model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.train.lr,
                                  weight_decay=config.train.weight_decay)  # fmt: skip
    scheduler = get_cosine_schedule_with_warmup(optimizer, int(config.train.warmup_ratio * config.train.max_steps),
                                                config.train.max_steps)  # fmt: skip
    # The scheduler stays outside prepare(): every process takes every step, so it must step once per step.
    model, optimizer = accelerator.prepare(model, optimizer)
    contexts = {}
    if config.memory.retrieve_in_training:
        contexts = training_contexts(train_examples, config.memory.retrieve_in_training, fmt)
        say(f"retrieved context: {len(contexts)} of {len(train_examples)} training examples carry up to "
            f"{config.memory.retrieve_in_training} facts from the others (memory.retrieve_in_training)")  # fmt: skip
    cache = TokenCache(fmt, contexts)
    # Before start_or_resume: a resumed run restores the same protected group from its checkpoint's LTM
    self_memory = build_self_memory(config, accelerator.unwrap_model(model), cache, memory.ltm,
                                    accelerator.device, say)  # fmt: skip
    state, saved_log = start_or_resume(config, run_dir, resume, accelerator, model, optimizer, scheduler, schedule,
                                       memory, rng, say)  # fmt: skip
    log = MetricsLog(run_dir / "metrics.jsonl", state.step if resume else None, write=accelerator.is_main_process)
    if saved_log is not None:  # the loss sums since the last log line: averages span the resume like no resume
        log.load_state_dict(saved_log)
    bar = ProgressDisplay(config.train.max_steps, state.step,
                          quiet=not accelerator.is_main_process or os.environ.get("ICFT_QUIET") == "1")  # fmt: skip
    run_start = time.perf_counter() - state.wall_s

    # 4. The loop: one optimizer step per iteration, then stage ends and checkpoints
    model.train()
    while state.step < config.train.max_steps:
        step, stage = state.step, stages[schedule.stage_index(state.step)].name
        for _ in range(config.train.grad_accum):
            parts, tokens = train_step(model, optimizer, accelerator, cache, memory, schedule, step, stage, config,
                                       rng, run_dir)  # fmt: skip
            log.add(parts, tokens)
            state.tokens += tokens * accelerator.num_processes  # every process takes a batch of its own
        scheduler.step()
        state.step += 1
        bar.step()
        if state.step % config.train.log_every == 0 or state.step == config.train.max_steps:
            log_progress(log, bar, accelerator, state.step, stage, scheduler.get_last_lr()[0],
                         schedule.competence(step), memory)  # fmt: skip
        end_of_step(state, schedule, stages, val_groups, accelerator.unwrap_model(model), cache, memory, config,
                    rng, accelerator.device, bar)  # fmt: skip
        if state.step % config.train.save_every == 0 or state.step == config.train.max_steps:
            state.wall_s = time.perf_counter() - run_start
            save_checkpoint(run_dir, state.step, accelerator, model, optimizer, scheduler, {
                "state": asdict(state), "schedule": schedule.state_dict(), "rng": rng_states(rng),
                "metrics": log.state_dict(),
                **memory.state_dict()})  # fmt: skip
    bar.close()

    # 5. Outputs
    state.wall_s = time.perf_counter() - run_start
    weights = trainable_state(accelerator.unwrap_model(model))  # collective under FSDP: every process gathers
    merge = merge_record(config, accelerator.unwrap_model(model), fmt, val_examples, self_memory.probe, say)
    if accelerator.is_main_process:
        save_outputs(run_dir, accelerator.unwrap_model(model), weights, tokenizer, config, memory.ltm, stages, state,
                     trainable, total, log.records, merge)  # fmt: skip
    accelerator.wait_for_everyone()
    accelerator.end_training()  # last: it also takes down the process group the barrier above needs


def merge_record(config: RunConfig, model, fmt: PromptFormat, validation: list[Example], probe: list[Example],
                 say) -> dict | None:  # fmt: skip
    """adapter/merge.json's record (train.merge_alpha), or None where merging is off. auto: chosen on the
    validation items and the own-voice probe only (recipes/merge.py)."""
    from ..evaluation.stage_eval import fixed_sample

    alpha = config.train.merge_alpha
    if alpha is None:
        return None
    if alpha != "auto":
        return {"alpha": float(alpha), "chosen_by": "config (train.merge_alpha)"}
    medical = fixed_sample(validation, 200)
    if not medical or not probe:
        say("train.merge_alpha auto: no validation items or no own-voice probe to choose on; the adapter stays at 1")
        return {"alpha": 1.0, "chosen_by": "nothing to choose on: no validation items or probe"}
    record = choose_merge(model, fmt, medical, probe, list(config.train.merge_grid))
    cells = "  ".join(f"{a}: {v['trade']:+.3f}" for a, v in record["grid"].items())
    say(f"merge (WiSE-FT): alpha {record['alpha']:g} chosen on validation ({len(medical)} items + {len(probe)} "
        f"own-voice probes; medical NLL drop + own-voice drop per alpha: {cells})")  # fmt: skip
    return record


def build_regularizers(config: RunConfig, model) -> list[Regularizer]:
    """The regularizers a config switches on (`model` before accelerate wraps it), in the order their parts
    are summed: the consistency teacher (ICFT's stored outputs, or an EMA of the adapter), the KL-to-base
    anchor, EWC, and the stage-0 memory's teacher (the untrained model's stored outputs, weighted on its own)."""
    mc, lc = config.memory, config.loss
    group, _ = needs_general(config)
    own = frozenset({SELF_STAGE}) if group else frozenset()  # the stage-0 group is not the medical teacher's
    regularizers: list[Regularizer] = []
    if mc.enabled and lc.consistency > 0:
        regularizers.append(EMATeacher(model, mc.ema_decay, mc.teacher_top_k) if mc.teacher == "ema"
                            else StoredTeacher(own))  # fmt: skip
    if lc.kl_base > 0:
        regularizers.append(FrozenBaseTeacher(lc.kl_base, mc.teacher_top_k))
    if lc.ewc > 0:
        regularizers.append(EWC(lc.ewc))
    if group and mc.general_consistency > 0:
        regularizers.append(StoredTeacher.self_memory(SELF_STAGE, mc.general_consistency))
    return regularizers


@dataclass
class Memory:
    """Everything that remembers across steps besides the weights: ICFT's two memories, how many replay
    slots each fills, and the regularizers (ICFT's consistency teacher, the baselines' EMA teacher, KL
    anchor to the base model and EWC)."""

    stm: ShortTermMemory
    ltm: LongTermMemory
    replay: ReplaySchedule
    embedder: Embedder | None
    regularizers: list[Regularizer]
    enabled: bool
    # stage-0 rows added to each micro-batch (memory.general_replay of its size); None: no stage-0 memory
    self_replay: ReplaySchedule | None = None

    @classmethod
    def build(cls, config: RunConfig, model) -> Memory:
        mc, on = config.memory, config.memory.enabled
        group, _ = needs_general(config)
        return cls(stm=ShortTermMemory(mc.stm_capacity), ltm=LongTermMemory(mc.ltm_capacity, mc.selection),
                   replay=ReplaySchedule(config.train.batch_size, mc.ltm_replay if on else 0.0,
                                         mc.stm_replay if on else 0.0),
                   embedder=Embedder() if on else None, regularizers=build_regularizers(config, model),
                   enabled=on, self_replay=ReplaySchedule(config.train.batch_size, mc.general_replay, 0.0)
                   if group else None)  # fmt: skip

    def state_dict(self) -> dict:
        state = {"stm": self.stm.state_dict(), "ltm": self.ltm.state_dict(), "replay": self.replay.state_dict(),
                 "regularizers": {r.name: r.state_dict() for r in self.regularizers}}  # fmt: skip
        if self.self_replay is not None:
            state["self_replay"] = self.self_replay.state_dict()
        return state

    def load_state_dict(self, saved: dict) -> None:
        for part, name in ((self.stm, "stm"), (self.ltm, "ltm"), (self.replay, "replay")):
            part.load_state_dict(saved[name])
        if self.self_replay is not None and "self_replay" in saved:
            self.self_replay.load_state_dict(saved["self_replay"])
        states = saved.get("regularizers")
        if states is None:  # a checkpoint of an older version: EWC and the EMA teacher under keys of their own
            states = {name: saved[name] for name in (EWC.name, EMATeacher.name) if saved.get(name) is not None}
        for regularizer in self.regularizers:
            if regularizer.name in states:
                regularizer.load_state_dict(states[regularizer.name])
            elif regularizer.state_dict():
                raise TrainingError(f"the checkpoint holds no state for the regularizer '{regularizer.name}': it "
                                    "was written under another loss or memory config")  # fmt: skip


def start_or_resume(config: RunConfig, run_dir: Path, resume: bool, accelerator, model, optimizer, scheduler,
                    schedule: curriculum.StageSchedule, memory: Memory, rng: random.Random,
                    say) -> tuple[RunState, dict | None]:  # fmt: skip
    """A fresh RunState, or everything restored from the last checkpoint; and the metrics log's saved state.
    (A new run's folder was emptied of the run before it by RunFolder.claim.)"""
    state, saved_log = RunState(), None
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise TrainingError(f"--resume {run_dir}: no checkpoint under {run_dir / 'checkpoints'}")
        saved = load_checkpoint(checkpoint, accelerator, model, optimizer, scheduler)
        state = RunState(**saved["state"])  # saved as a dict: checkpoints hold plain data only
        schedule.load_state_dict(saved["schedule"])
        memory.load_state_dict(saved)
        restore_rng_states(saved["rng"], rng)
        saved_log = saved.get("metrics")  # absent in checkpoints of older versions
        say(f"resumed from {checkpoint} at step {state.step}")
    if accelerator.is_main_process:
        save_config(config, run_dir / "config.yaml")
    accelerator.init_trackers("tensorboard")
    return state, saved_log


def train_step(model, optimizer, accelerator, cache: TokenCache, memory: Memory, schedule: curriculum.StageSchedule,
               step: int, stage: str, config: RunConfig, rng: random.Random,
               run_dir: Path) -> tuple[dict, int]:  # fmt: skip
    """One micro-batch: new examples, STM and LTM replay; the loss parts; backward and (when due) an update."""
    weights = {"task": config.loss.task, "consistency": config.loss.consistency, "finetune": config.loss.finetune,
               "ewc": 1.0, "kl_base": 1.0,  # these two terms carry their own weights (loss.ewc, loss.kl_base)
               "self_consistency": 1.0, "self_ce": config.memory.general_ce}  # (memory.general_consistency)
    with accelerator.accumulate(model):
        n_ltm, n_stm = memory.replay.counts(len(memory.ltm.items(protected=False)) > 0, len(memory.stm) > 0)
        ltm_items, replayed = memory.ltm.sample(n_ltm, rng), memory.stm.sample_hard(n_stm, rng)
        self_items = None
        if memory.self_replay is not None:  # from step 0, in every stage, on top of the batch
            self_items = memory.ltm.sample(memory.self_replay.counts(True, False)[0], rng, protected=True)
        new = schedule.sample(step, config.train.batch_size - n_ltm - n_stm)
        out = compute_losses(model, cache, new, replayed, ltm_items, config, accelerator.device,
                             memory.regularizers, self_items)  # fmt: skip
        total_loss = losses.weighted_total(out.parts, weights)
        if not torch.isfinite(total_loss):
            raise TrainingError(
                f"non-finite loss at step {step} (stage {stage}): "
                + ", ".join(f"{k}={v.item():.4g}" for k, v in out.parts.items())
                + f". Last good checkpoint: {latest_checkpoint(run_dir) or 'none'} (resume with --resume {run_dir})"
            )
        accelerator.backward(total_loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(model.parameters(), config.train.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        for regularizer in memory.regularizers:
            regularizer.on_step(accelerator.unwrap_model(model))
        if memory.enabled:
            memory.stm.update(new + replayed, out.new_hardness + out.replay_hardness)
    return {"total": total_loss.item(), **{k: v.item() for k, v in out.parts.items()}}, out.tokens


def log_progress(log: MetricsLog, bar: ProgressDisplay, accelerator, step: int, stage: str, lr: float,
                 competence: float, memory: Memory) -> None:  # fmt: skip
    record = log.flush(step, {"stage": stage, "lr": lr, "competence": competence, "ltm_size": len(memory.ltm),
                              "stm_size": len(memory.stm)}, accelerator.num_processes)  # fmt: skip
    accelerator.log({k: v for k, v in record.items() if k != "stage"}, step=step)
    own = (f"self_kl={record['loss_self_consistency']:.3f} self_ce={record['loss_self_ce']:.3f} "
           if "loss_self_consistency" in record else "")  # the stage-0 group's parts, where it is on
    bar.status(step, f"{stage} c={competence:.2f} task={record['loss_task']:.3f} "
               f"cons={record['loss_consistency']:.3f} ft={record['loss_finetune']:.3f} {own}"
               f"{record['tokens_per_s']:.0f} tok/s")  # fmt: skip


def end_of_step(state: RunState, schedule: curriculum.StageSchedule, stages, val_groups, model, cache: TokenCache,
                memory: Memory, config: RunConfig, rng, device, bar) -> None:  # fmt: skip
    """Plateau checks, consolidation, the regularizers' stage ends and the stage matrices' next row, where this
    step calls for them."""
    cc, mc, steps = config.curriculum, config.memory, state.step
    index = schedule.stage_index(steps - 1)
    stage_start = schedule.ends[index - 1] if index else 0
    if (cc.plateau_patience and cc.order != "mixed" and index < len(stages) - 1
            and (steps - stage_start) % cc.plateau_every == 0 and val_groups[index]):  # fmt: skip
        loss = validation_loss(model, cache.fmt, val_groups[index], config.train.eval_max_examples)
        if schedule.record_validation_loss(steps, loss, cc.plateau_patience, cc.plateau_min_delta):
            bar.write(f"stage {stages[index].name}: validation loss {loss:.4f} has plateaued; the next stage "
                      f"starts at step {steps}")  # fmt: skip
    at_end = schedule.ends_stage(steps)
    if at_end:
        schedule.start_next_stage()
    if mc.enabled and (at_end or (mc.consolidate_every and steps % mc.consolidate_every == 0)):
        consolidate(model, cache, memory.stm, memory.ltm, memory.embedder, stages[index].name, config, rng, device)
    if at_end:
        def task_loss(examples: list[Example]) -> torch.Tensor:
            return compute_losses(model, cache, examples, [], [], config, device, []).parts["task"]

        for regularizer in memory.regularizers:
            regularizer.on_stage_end(model, index, stages[index].examples, task_loss)
    every = config.train.eval_every and steps % config.train.eval_every == 0
    if (at_end or every) and config.train.eval_max_examples and any(val_groups):
        row = stage_row(model, cache.fmt, val_groups, config.train.eval_max_examples)
        if every:
            state.curve.append({"step": steps, **row})
        if not at_end:
            return
        state.stage_rows.append(row)
        done = len(state.stage_rows)
        cells = [f"{s.name}=" + (f"{a:.3f}" if a is not None else f"nll {n:.3f}" if n is not None else "-")
                 for s, a, n in zip(stages, row["accuracy"], row["nll"])]  # fmt: skip
        bar.write(f"after stage {done}/{len(stages)} ({stages[done - 1].name}): " + "  ".join(cells))


def save_outputs(run_dir: Path, model, trained: dict, tokenizer, config: RunConfig, ltm: LongTermMemory, stages,
                 state: RunState, trainable: int, total: int, logged: list[dict],
                 merge: dict | None = None) -> None:  # fmt: skip
    from ..io import atomic_path

    weights = "adapter" if config.peft.method == "lora" else "model"
    with atomic_path(run_dir / weights, is_dir=True) as tmp:
        # LoRA: the gathered trainable weights are the adapter (the same tensors, or under FSDP their full form).
        model.save_pretrained(tmp, **({"state_dict": trained} if weights == "adapter" else {}))
        tokenizer.save_pretrained(tmp)
        if merge is not None:  # inside adapter/: replaced with it, so a later run never inherits a stale scale
            write_json(tmp / MERGE_FILE, merge)
        stamp(tmp, run_dir)  # the config it was trained under: icft eval refuses it beside another config
    ltm.save(run_dir / "memory")
    stamp(run_dir / "memory", run_dir)
    write_json(run_dir / "stage_eval.json", {**stage_report([s.name for s in stages], state.stage_rows),
                                             "curve": state.curve})  # fmt: skip
    write_json(run_dir / "summary.json", {
        "steps": state.step, "tokens": state.tokens, "wall_s": state.wall_s,
        "tokens_per_s": state.tokens / max(state.wall_s, 1e-9), "trainable_params": trainable, "total_params": total,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0,
        "ltm_counts": ltm.counts(), "final_losses": logged[-1] if logged else None,
        **({"merge_alpha": merge["alpha"]} if merge is not None else {}),
    })  # fmt: skip
    print(f"wrote {run_dir}: {weights}, memory ({len(ltm)} exemplars), metrics.jsonl, stage_eval.json, summary.json")
