"""The ICFT training recipe, end to end: `TrainingRecipe`, read top to bottom, is the five steps below.

1. Data and model (`setup`): load the training and validation data (carving a validation split when none
   is given), the model, and wrap it in a LoRA adapter (peft).
2. Curriculum (`setup`): score every training example's difficulty, group examples into stages (general ->
   medical knowledge -> clinical tasks, or difficulty quantiles) and give each stage a share of
   `train.max_steps` (`curriculum.StageSchedule`).
3. Each step (`train`, `train_step`): draw the easiest competence(t) share of the current stage, re-mix
   high-loss examples from short-term memory (STM), replay exemplars from long-term memory (LTM); one
   forward pass; the three loss terms, the consistency term from a regularizer (`regularizers.py`: the
   teacher, and for baselines a KL anchor to the base model or EWC, called as a list); an optimizer step
   through accelerate.
4. At each stage end (`end_of_stage`): consolidate STM into LTM (exemplars chosen by herding on sentence
   embeddings, the model's outputs recorded as consistency targets), reset STM, let the regularizers mark
   the stage end, and evaluate every stage's validation split (one row of the stage matrices).
5. Checkpoint every `train.save_every` steps (atomically, resumable); at the end (`save`) save the adapter,
   the LTM, metrics and the stage matrices.

Consistency teacher: we store the model's outputs at consolidation time rather than keep an EMA copy of
the adapter (CLS-ER). Stored outputs cost no extra forward pass per step and no second set of weights,
and they pin the model to what it knew when each stage ended, which is what forgetting is measured
against.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_cosine_schedule_with_warmup

from .. import curriculum, losses
from ..checkpoint import (
    TrainingObjects,
    latest_checkpoint,
    load_checkpoint,
    restore_rng_states,
    rng_states,
    save_checkpoint,
    trainable_state,
)
from ..config import RunConfig, save_config
from ..data.kinds import choice_type
from ..data.prompt_format import PromptFormat
from ..data.schema import Example
from ..data.sources import load_data, split_validation
from ..data.tokenize import TokenizedPair, batch_tokens, collate, pack
from ..errors import TrainingError
from ..evaluation.generation import own_answers
from ..evaluation.stage_eval import stage_report, stage_row, validation_loss
from ..io import write_json
from ..likelihood import eval_batches, keeps_packed_apart, target_logits
from ..memory import Embedder, LongTermMemory, MemoryItem, ReplaySchedule, ShortTermMemory, example_text
from ..memory.retrieval import training_contexts
from ..memory.self_memory import SELF_STAGE, SelfMemory, general_prompts, split_general
from ..models import (
    count_parameters,
    enable_gradient_checkpointing,
    extra_trainable_modules,
    icft_home,
    load_model,
    prepare_for_kbit_training,
    resolve_target_modules,
)
from ..progress import MetricsLog, ProgressDisplay, peak_memory_mb, status_text
from ..regularizers import (
    EWC,
    Batch,
    EMATeacher,
    FrozenBaseTeacher,
    Regularizer,
    StoredTeacher,
    base_weights,
    load_regularizer_states,
    regularizer_states,
)
from ..runs import FINISHED, PROMPT_FORMAT_FILE, RunFolder, config_hash, read_marker, stamp
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
    share = config.data.validation_split
    if not share:
        say("no validation data (data.validation: [], data.validation_split: 0): no stage metrics this run")
        return train, []
    train, validation = split_validation(train, share)
    total = len(train) + len(validation)
    say(
        f"no validation files: holding out {len(validation)} of {total} training examples "
        f"({share:.0%}, grouped by document/topic; data.validation_split)"
    )
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
        model = _add_lora(model, config)
    if config.train.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    return model, tokenizer


def _add_lora(model, config: RunConfig):
    from peft import LoraConfig, get_peft_model

    try:
        targets = resolve_target_modules(model, config.peft.target_modules)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    pc = config.peft
    lora = LoraConfig(
        r=pc.r,
        lora_alpha=pc.alpha,
        lora_dropout=pc.dropout,
        target_modules=targets,
        modules_to_save=extra_trainable_modules(model) or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def refuse_finished_run(folder: RunFolder, config: dict) -> None:
    """A new run (neither --resume nor --overwrite) of the config a folder's finished run was trained under
    would only train it again: said in one line, before the model loads. A finished run of another config is
    RunFolder.claim's to refuse, by name."""
    if folder.resume or folder.overwrite or not folder.path.is_dir():
        return
    marker = read_marker(folder.path)
    finished = any((folder.path / name).exists() for name in FINISHED)
    if finished and marker and marker.get("config_hash") == config_hash(config):
        raise TrainingError(f"already trained: {folder.path} (use --overwrite to train again)")


# ----------------------------------------------------------------------------------------------------
# 2. Curriculum


def plan_stages(config: RunConfig, train: list[Example], validation: list[Example], model, fmt: PromptFormat):
    """Difficulty-scored training stages and, for the stage matrices, the matching validation groups."""
    cc = config.curriculum
    scorer = curriculum.ModelLoss(model, fmt.tokenizer, config.model.name, fmt.template)

    def scored(examples: list[Example]) -> list[Example]:
        scores = curriculum.difficulty_scores(examples, cc.scorers, scorer, cache_dir=icft_home() / "difficulty")
        return curriculum.attach_difficulty(examples, scores)

    train = scored(train)
    if cc.stages == "auto":
        if len(train) < cc.num_stages:
            raise TrainingError(
                f"{len(train)} training examples cannot make {cc.num_stages} stages (curriculum.num_stages)"
            )
        stages = curriculum.stages_by_quantile(train, cc.num_stages)
        val_groups = [[] for _ in stages]
        if len(validation) >= cc.num_stages:
            val_groups = [s.examples for s in curriculum.stages_by_quantile(scored(validation), cc.num_stages)]
    else:
        stages = curriculum.stages_by_field(train, list(cc.stages))
        val_groups = [[ex for ex in validation if ex.stage == s.name] for s in stages]
    try:
        budgets = curriculum.stage_budgets(config.train.max_steps, stages, cc.stage_steps)
    except ValueError as error:
        raise TrainingError(str(error)) from None
    return stages, budgets, val_groups


def unscored_stages(config: RunConfig, stages: list[curriculum.Stage], val_groups, validation) -> str | None:
    """The one line saying which stages the stage matrices cannot score, and why; None when every stage has
    validation examples (or there are none at all, or the evaluation is off: said elsewhere or asked for)."""
    empty = [stage.name for stage, group in zip(stages, val_groups) if not group]
    if not empty or not validation or not config.train.eval_max_examples:
        return None
    cc = config.curriculum
    if cc.stages == "auto":
        why = (
            f"{len(validation)} validation examples cannot make {cc.num_stages} difficulty stages "
            "(curriculum.num_stages)"
        )
    else:
        why = "no validation example has that stage (the records' 'stage' field)"
    return (
        f"stage(s) {', '.join(empty)}: not scored after each stage, {why}; "
        "their columns of the stage matrices stay empty and their plateau checks are skipped"
    )


def check_stage_names(config: RunConfig, train: list[Example], say) -> None:
    """Before the model loads: the stages named in the config must be the ones the records carry.

    Records with no stage at all (a user's own files) get difficulty stages, said in one line.
    """
    cc = config.curriculum
    if cc.stages == "auto":
        return
    found = sorted({ex.stage for ex in train if ex.stage})
    if not found:
        say(
            f"no training record has a 'stage' field: using {cc.num_stages} difficulty stages (curriculum.stages: auto)"
        )
        cc.stages = "auto"  # saved in the run's config.yaml, so a resume plans the same stages
        return
    names, found_list = list(cc.stages), ", ".join(found)
    unstaged = next((ex for ex in train if not ex.stage), None)
    if unstaged is not None:
        raise TrainingError(
            f"{unstaged.origin or unstaged.id}: record has no 'stage' while others do (stages "
            f"found: {found_list}); give each record a stage or set curriculum.stages: auto"
        )
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise TrainingError(
            f"training records have stage(s) {', '.join(unknown)} that curriculum.stages "
            f"{names} does not list (stages found: {found_list})"
        )
    empty = [name for name in names if name not in found]
    if empty:
        raise TrainingError(
            f"curriculum stage(s) {', '.join(empty)} have no training examples (stages found: "
            f"{found_list}); set curriculum.stages to the stages found, or raise or "
            "unset data.max_train_examples if it cut them off"
        )


# ----------------------------------------------------------------------------------------------------
# 3. One step


class TokenCache:
    """Each example tokenised once per answer side ("chosen", or "rejected" for preference pairs), in the
    run's prompt format."""

    def __init__(self, fmt: PromptFormat, contexts: dict[str, Example] | None = None, packed: bool = False):
        self.fmt, self.tokenizer = fmt, fmt.tokenizer
        self.contexts = contexts or {}  # id -> the example with retrieved context (memory.retrieve_in_training)
        self.cache: dict[tuple[str, str], TokenizedPair] = {}
        self.packed = packed  # batches packed into one row (tokenize.pack), else right-padded rows

    def batch(self, sequences: list[TokenizedPair]) -> dict[str, torch.Tensor]:
        pad = self.tokenizer.pad_token_id
        return pack(sequences, pad) if self.packed else collate(sequences, pad)

    def encode(self, ex: Example, answer: str = "chosen") -> TokenizedPair:
        key = (ex.id, answer)
        if key not in self.cache:
            if ex.meta.get("unfinished"):  # a stage-0 answer cut at its budget: no end of turn to learn
                self.cache[key] = self.fmt.encode_pair(self.fmt.prompt(ex), str(ex.answer), add_eos=False)
            else:
                self.cache[key] = self.fmt.encode(self.contexts.get(ex.id, ex), answer)
        return self.cache[key]


REGULARIZER_PARTS = ("consistency", "kl_base", "ewc")  # in this order in L_total's sum


@dataclass
class MicroBatch:
    """What one micro-batch trains on: new examples of the current stage, examples re-mixed from the STM,
    items replayed from the LTM, and the stage-0 memory's items (None where the run has no stage-0 memory)."""

    new: list[Example]
    replay: list[Example] = field(default_factory=list)
    ltm: list[MemoryItem] = field(default_factory=list)
    self_items: list[MemoryItem] | None = None


@dataclass
class _Layout:
    """Where each group of a MicroBatch sits among its tokenised rows."""

    seqs: list[TokenizedPair]
    rows: list[int]  # the row of each new example's (chosen) answer
    pairs: list[tuple[int, int]]  # (index in new, rejected row) of each preference pair
    replay_start: int
    ltm_start: int
    self_start: int

    @classmethod
    def of(cls, cache: TokenCache, batch: MicroBatch) -> _Layout:
        seqs: list[TokenizedPair] = []
        rows, pairs = [], []
        for i, ex in enumerate(batch.new):
            rows.append(len(seqs))
            seqs.append(cache.encode(ex))
            if choice_type(ex) == "preference":
                pairs.append((i, len(seqs)))
                seqs.append(cache.encode(ex, "rejected"))
        replay_start = len(seqs)
        seqs += [cache.encode(ex) for ex in batch.replay]
        ltm_start = len(seqs)
        seqs += [cache.encode(item.example) for item in batch.ltm]
        self_start = len(seqs)
        seqs += [cache.encode(item.example) for item in batch.self_items or []]
        return cls(seqs, rows, pairs, replay_start, ltm_start, self_start)


@dataclass
class StepLosses:
    parts: dict[str, torch.Tensor]  # task, finetune and the regularizers' parts: consistency, kl_base, ewc
    new_hardness: list[float]  # per new example: per-token NLL of its (chosen) answer, one scale for all kinds
    replay_hardness: list[float]  # the same for the STM examples replayed, to refresh their losses
    tokens: int


def compute_losses(
    model,
    cache: TokenCache,
    batch: MicroBatch,
    config: RunConfig,
    device,
    regularizers: list[Regularizer] | None = None,
) -> StepLosses:
    """Loss parts for one micro-batch, in one forward pass over new, STM-replayed and LTM-replayed rows, and
    the stage-0 memory's rows.

    Each of the `regularizers` fills its part (`regularizers.py`); a part without one is 0. None: ICFT's own,
    the consistency term on the LTM items' stored outputs (where loss.consistency > 0). The stage-0 rows are
    not in L_fine-tune: they have their own parts, self_consistency (a regularizer's) and self_ce.
    """
    if regularizers is None:
        regularizers = [StoredTeacher()] if config.loss.consistency > 0 else []
    layout = _Layout.of(cache, batch)
    inputs = {k: v.to(device) for k, v in cache.batch(layout.seqs).items()}
    logits, targets, token_rows = target_logits(model, inputs)
    nll, _ = losses.per_sequence_nll(logits, targets, token_rows, len(layout.seqs))
    parts = _plain_parts(nll, logits.new_zeros(()), batch, layout)
    replayed_items = batch.ltm + list(batch.self_items or [])  # the regularizers tell the groups apart by stage
    replayed_inputs = cache.batch(layout.seqs[layout.ltm_start :]) if replayed_items else None
    view = Batch(inputs, logits, token_rows, layout.ltm_start, replayed_items, replayed_inputs)
    for regularizer in regularizers:
        value = regularizer.penalty(model, view)
        if value is not None:
            parts[regularizer.part] = value
    detached = nll.detach().float().cpu()
    new_hardness = detached[layout.rows].tolist()
    replay_hardness = detached[layout.replay_start : layout.ltm_start].tolist()
    return StepLosses(parts, new_hardness, replay_hardness, batch_tokens(inputs))


def _plain_parts(nll: torch.Tensor, zero: torch.Tensor, batch: MicroBatch, layout: _Layout) -> dict:
    """The parts from the per-row NLL alone (task, finetune, self_ce); the regularizers' parts at 0."""
    rows = layout.rows
    task = nll[rows].clone() if rows else nll.new_zeros(0)
    for i, rejected in layout.pairs:  # a pair's task loss is pairwise; its hardness stays the chosen answer's NLL
        task[i] = losses.preference_loss(nll[rows[i]], nll[rejected])
    replayed = layout.self_start > layout.replay_start
    parts = {
        "task": task.mean() if len(batch.new) else zero,
        "finetune": nll[layout.replay_start : layout.self_start].mean() if replayed else zero,
        **dict.fromkeys(REGULARIZER_PARTS, zero),
    }
    if batch.self_items is not None:
        parts["self_consistency"] = zero
        parts["self_ce"] = nll[layout.self_start :].mean() if batch.self_items else zero
    return parts


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
    prompts, held = split_general(
        general_prompts(mc.general), mc.general_size if group else 0, mc.general_probe if probe else 0
    )
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
    say(
        f"stage-0 memory: the untrained model's own answers to {len(stored)} general prompts ({unfinished} cut at "
        f"{mc.general_new_tokens} tokens), protected in the LTM; own-voice probe: {len(probe_items)} others "
        f"({time.perf_counter() - start:.0f}s; memory.general)"
    )
    return SelfMemory(stored, probe_items)


# ----------------------------------------------------------------------------------------------------
# 4. Memories and regularizers

TEACHER_BATCH_SIZE = 32  # LTM items per forward pass when their teacher outputs are recorded


@torch.no_grad()
def record_teacher_outputs(
    model, cache: TokenCache, ltm: LongTermMemory, items: list[MemoryItem], k: int, device
) -> None:
    """Store the model's top-k output distribution on each new LTM exemplar's target tokens."""
    for start in eval_batches(model, len(items), TEACHER_BATCH_SIZE):
        chunk = items[start : start + TEACHER_BATCH_SIZE]
        batch = cache.batch([cache.encode(i.example) for i in chunk])
        logits, _, rows = target_logits(model, {k_: v.to(device) for k_, v in batch.items()})
        ids, logprobs = losses.top_k_outputs(logits, k)
        for r, item in enumerate(chunk):
            ltm.set_teacher(item.example.id, ids[rows == r].cpu(), logprobs[rows == r].cpu())


@dataclass
class Memories:
    """ICFT's two memories and how many replay slots each fills; everything that remembers across steps
    besides the weights and the regularizers' own state."""

    stm: ShortTermMemory
    ltm: LongTermMemory
    replay: ReplaySchedule
    embedder: Embedder | None  # None where memory is off
    enabled: bool
    # stage-0 rows added to each micro-batch (memory.general_replay of its size); None: no stage-0 memory
    self_replay: ReplaySchedule | None = None

    @classmethod
    def build(cls, config: RunConfig) -> Memories:
        mc, on, batch_size = config.memory, config.memory.enabled, config.train.batch_size
        group, _ = needs_general(config)
        replay = ReplaySchedule(batch_size, mc.ltm_replay if on else 0.0, mc.stm_replay if on else 0.0)
        self_replay = ReplaySchedule(batch_size, mc.general_replay, 0.0) if group else None
        stm, ltm = ShortTermMemory(mc.stm_capacity), LongTermMemory(mc.ltm_capacity, mc.selection)
        return cls(stm, ltm, replay, Embedder() if on else None, on, self_replay)

    def draw(self, rng: random.Random, new_examples: Callable[[int], list[Example]]) -> MicroBatch:
        """A micro-batch: its replay slots filled from the memories, the rest with `new_examples(n)`."""
        n_ltm, n_stm = self.replay.counts(len(self.ltm.items(protected=False)) > 0, len(self.stm) > 0)
        ltm_items, replayed = self.ltm.sample(n_ltm, rng), self.stm.sample_hard(n_stm, rng)
        self_items = None
        if self.self_replay is not None:  # from step 0, in every stage, on top of the batch
            self_items = self.ltm.sample(self.self_replay.counts(True, False)[0], rng, protected=True)
        new = new_examples(self.replay.batch_size - n_ltm - n_stm)
        return MicroBatch(new, replayed, ltm_items, self_items)

    def consolidate(self, model, cache: TokenCache, stage: str, top_k: int, rng: random.Random, device) -> None:
        """Move the STM's exemplars (chosen by herding on sentence embeddings) into the LTM, with the model's
        top-k outputs on them as their consistency targets; then empty the STM."""
        items = self.stm.items()
        if not items:
            return
        embeddings = self.embedder.encode([example_text(i.example) for i in items])
        added = self.ltm.consolidate(stage, items, embeddings, rng)
        record_teacher_outputs(model, cache, self.ltm, added, top_k, device)
        self.stm.reset()

    def state_dict(self) -> dict:
        state = {"stm": self.stm.state_dict(), "ltm": self.ltm.state_dict(), "replay": self.replay.state_dict()}
        if self.self_replay is not None:
            state["self_replay"] = self.self_replay.state_dict()
        return state

    def load_state_dict(self, saved: dict) -> None:
        for part, name in ((self.stm, "stm"), (self.ltm, "ltm"), (self.replay, "replay")):
            part.load_state_dict(saved[name])
        if self.self_replay is not None and "self_replay" in saved:
            self.self_replay.load_state_dict(saved["self_replay"])


def build_regularizers(config: RunConfig, model) -> list[Regularizer]:
    """The regularizers a config switches on (`model` before accelerate wraps it), in the order their parts
    are summed: the consistency teacher (ICFT's stored outputs, or an EMA of the adapter), the KL-to-base
    anchor, EWC, and the stage-0 memory's teacher (the untrained model's stored outputs, weighted on its own)."""
    mc, lc = config.memory, config.loss
    group, _ = needs_general(config)
    own = frozenset({SELF_STAGE}) if group else frozenset()  # the stage-0 group is not the medical teacher's
    regularizers: list[Regularizer] = []
    if mc.enabled and lc.consistency > 0:
        ema = mc.teacher == "ema"
        regularizers.append(EMATeacher(model, mc.ema_decay, mc.teacher_top_k) if ema else StoredTeacher(own))
    if lc.kl_base > 0:
        regularizers.append(FrozenBaseTeacher(lc.kl_base, mc.teacher_top_k))
    if lc.ewc > 0:
        regularizers.append(EWC(lc.ewc))
    if group and mc.general_consistency > 0:
        regularizers.append(StoredTeacher.self_memory(SELF_STAGE, mc.general_consistency))
    return regularizers


def loss_weights(config: RunConfig) -> dict[str, float]:
    """Each loss part's weight in L_total. The KL anchor, EWC and the stage-0 KL carry their own weights
    (loss.kl_base, loss.ewc, memory.general_consistency)."""
    lc = config.loss
    return {
        "task": lc.task,
        "consistency": lc.consistency,
        "finetune": lc.finetune,
        "ewc": 1.0,
        "kl_base": 1.0,
        "self_consistency": 1.0,
        "self_ce": config.memory.general_ce,
    }


def merge_record(
    config: RunConfig, model, fmt: PromptFormat, validation: list[Example], probe: list[Example], say
) -> dict | None:
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
    say(
        f"merge (WiSE-FT): alpha {record['alpha']:g} chosen on validation ({len(medical)} items + {len(probe)} "
        f"own-voice probes; medical NLL drop + own-voice drop per alpha: {cells})"
    )
    return record


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
    """The whole run in a RunFolder: set up, train, save (`TrainingRecipe`)."""
    recipe = TrainingRecipe(config, folder)
    recipe.setup()
    recipe.train()
    recipe.save()


class TrainingRecipe:
    """One training run in a claimed run folder: `setup()`, `train()`, `save()`, in that order.

    Every process of a data-parallel run builds its own: each draws its own batches and keeps its own
    memories; the main process alone writes the run folder and prints."""

    def __init__(self, config: RunConfig, folder: RunFolder):
        self.config, self.folder, self.run_dir = config, folder, folder.path
        tc = config.train
        self.accelerator = Accelerator(
            gradient_accumulation_steps=tc.grad_accum,
            mixed_precision=tc.mixed_precision,
            log_with="tensorboard",
            project_dir=str(self.run_dir),
        )
        self.main = self.accelerator.is_main_process
        self.say = print if self.main else (lambda *a, **k: None)

    # ------------------------------------------------------------------------------------------------
    # Before the first step

    def setup(self) -> None:
        """Data, model, curriculum, memories, optimizer, and where the run starts. The order is the order of
        the seeded draws (the adapter's init, the batches), so a resume repeats it exactly."""
        config = self.config
        if self.main:
            self.folder.check()  # before the data loads: a folder icft may not write into is refused at once
        set_seed(config.train.seed)  # the same adapter init on every process
        # each process draws its own batches
        self.rng = random.Random(config.train.seed * 1000 + self.accelerator.process_index)
        self.train_examples, self.val_examples = load_training_data(config, self.say)
        check_stage_names(config, self.train_examples, self.say)
        if self.main:  # after check_stage_names, which may change the config that is saved
            refuse_finished_run(self.folder, config.to_dict())
            self.folder.claim(config.to_dict(), self.say)
        self._load_model()
        self._plan_curriculum()
        self._build_memories_and_optimizer()
        saved_log = self._start_or_resume()
        self.log = MetricsLog(
            self.run_dir / "metrics.jsonl", self.state.step if self.folder.resume else None, write=self.main
        )
        if saved_log is not None:  # the loss sums since the last log line: averages span the resume like no resume
            self.log.load_state_dict(saved_log)
        quiet = not self.main or os.environ.get("ICFT_QUIET") == "1"
        self.bar = ProgressDisplay(config.train.max_steps, self.state.step, quiet=quiet)
        self.run_start = time.perf_counter() - self.state.wall_s

    def _load_model(self) -> None:
        config = self.config
        self.model, self.tokenizer = load_adapted_model(config)
        # every example becomes tokens through it, here and later
        self.fmt = PromptFormat.from_config(self.tokenizer, config)
        if self.main:
            write_json(self.run_dir / PROMPT_FORMAT_FILE, self.fmt.to_json())  # beside config.yaml: served in it
        self.trainable, self.total = count_parameters(self.model)
        share = 100 * self.trainable / self.total
        self.say(
            f"model {config.model.name}: {self.trainable:,} trainable / {self.total:,} parameters "
            f"({share:.2f}%), peft={config.peft.method}, prompt template {self.fmt.template}"
        )

    def _plan_curriculum(self) -> None:
        config = self.config
        self.stages, budgets, self.val_groups = plan_stages(
            config, self.train_examples, self.val_examples, self.model, self.fmt
        )
        seed = config.train.seed * 7919 + self.accelerator.process_index
        self.schedule = curriculum.StageSchedule(self.stages, budgets, config.curriculum, seed=seed)
        planned = ", ".join(f"{s.name} ({len(s.examples)} examples, {b} steps)" for s, b in zip(self.stages, budgets))
        self.say("stages: " + planned)
        unscored = unscored_stages(config, self.stages, self.val_groups, self.val_examples)
        if unscored:
            self.say(unscored)

    def _build_memories_and_optimizer(self) -> None:
        config, accelerator = self.config, self.accelerator
        self.memories = Memories.build(config)
        self.regularizers = build_regularizers(config, self.model)
        self.loss_weights = loss_weights(config)
        trained = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trained, lr=config.train.lr, weight_decay=config.train.weight_decay)
        warmup = int(config.train.warmup_ratio * config.train.max_steps)
        self.scheduler = get_cosine_schedule_with_warmup(optimizer, warmup, config.train.max_steps)
        # The scheduler stays outside prepare(): every process takes every step, so it must step once per step.
        self.model, self.optimizer = accelerator.prepare(self.model, optimizer)
        model = accelerator.unwrap_model(self.model)
        self.cache = TokenCache(self.fmt, self._training_contexts(), self._packing(model))
        # Before _start_or_resume: a resumed run restores the same protected group from its checkpoint's LTM
        self.self_memory = build_self_memory(config, model, self.cache, self.memories.ltm, accelerator.device, self.say)

    def _packing(self, model) -> bool:
        """train.packing, where the model keeps packed rows apart (said once where it does not)."""
        if not self.config.train.packing:
            return False
        if keeps_packed_apart(model):
            return True
        self.say("train.packing: this model's attention does not keep packed rows apart; training on padded rows")
        return False

    def _training_contexts(self) -> dict[str, Example]:
        """Retrieved facts each training example carries (memory.retrieve_in_training); {} where it is off."""
        facts = self.config.memory.retrieve_in_training
        if not facts:
            return {}
        contexts = training_contexts(self.train_examples, facts, self.fmt)
        self.say(
            f"retrieved context: {len(contexts)} of {len(self.train_examples)} training examples carry up to "
            f"{facts} facts from the others (memory.retrieve_in_training)"
        )
        return contexts

    def _start_or_resume(self) -> dict | None:
        """A fresh RunState, or everything restored from the last checkpoint; returns the metrics log's saved
        state. (A new run's folder was emptied of the run before it by RunFolder.claim.)"""
        self.state, saved_log = RunState(), None
        if self.folder.resume:
            checkpoint = latest_checkpoint(self.run_dir)
            if checkpoint is None:
                raise TrainingError(f"--resume {self.run_dir}: no checkpoint under {self.run_dir / 'checkpoints'}")
            saved = load_checkpoint(checkpoint, self.accelerator, self._training_objects())
            self.state = RunState(**saved["state"])  # saved as a dict: checkpoints hold plain data only
            self.schedule.load_state_dict(saved["schedule"])
            self.memories.load_state_dict(saved)
            load_regularizer_states(self.regularizers, saved)
            restore_rng_states(saved["rng"], self.rng)
            saved_log = saved.get("metrics")  # absent in checkpoints of older versions
            self.say(f"resumed from {checkpoint} at step {self.state.step}")
        if self.main:
            save_config(self.config, self.run_dir / "config.yaml")
        self.accelerator.init_trackers("tensorboard")
        return saved_log

    def _training_objects(self) -> TrainingObjects:
        return TrainingObjects(self.model, self.optimizer, self.scheduler)

    # ------------------------------------------------------------------------------------------------
    # The steps

    def train(self) -> None:
        """One optimizer step per iteration (train.grad_accum micro-batches), then stage ends and checkpoints."""
        config, state = self.config.train, self.state
        self.model.train()
        while state.step < config.max_steps:
            step, stage = state.step, self.stages[self.schedule.stage_index(state.step)].name
            for _ in range(config.grad_accum):
                parts, tokens = self.train_step(step, stage)
                self.log.add(parts, tokens)
                state.tokens += tokens * self.accelerator.num_processes  # every process takes a batch of its own
            self.scheduler.step()
            state.step += 1
            self.bar.step()
            if state.step % config.log_every == 0 or state.step == config.max_steps:
                self.log_progress(stage, self.schedule.competence(step))
            self.end_of_step()
            if state.step % config.save_every == 0 or state.step == config.max_steps:
                self.checkpoint()
        self.bar.close()

    def train_step(self, step: int, stage: str) -> tuple[dict, int]:
        """One micro-batch: new examples, STM and LTM replay; the loss parts; backward and (when due) an update."""
        accelerator, model = self.accelerator, self.model
        with accelerator.accumulate(model):
            batch = self.memories.draw(self.rng, lambda n: self.schedule.sample(step, n))
            out = compute_losses(model, self.cache, batch, self.config, accelerator.device, self.regularizers)
            total_loss = losses.weighted_total(out.parts, self.loss_weights)
            if not torch.isfinite(total_loss):
                raise self._non_finite(step, stage, out.parts)
            accelerator.backward(total_loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), self.config.train.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad()
            for regularizer in self.regularizers:
                regularizer.on_step(accelerator.unwrap_model(model))
            if self.memories.enabled:
                self.memories.stm.update(batch.new + batch.replay, out.new_hardness + out.replay_hardness)
        return {"total": total_loss.item(), **{k: v.item() for k, v in out.parts.items()}}, out.tokens

    def _non_finite(self, step: int, stage: str, parts: dict[str, torch.Tensor]) -> TrainingError:
        values = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
        last = latest_checkpoint(self.run_dir) or "none"
        return TrainingError(
            f"non-finite loss at step {step} (stage {stage}): {values}. Last good checkpoint: {last} "
            f"(resume with --resume {self.run_dir})"
        )

    def log_progress(self, stage: str, competence: float) -> None:
        """The loss parts averaged since the last log line: metrics.jsonl, tensorboard and the progress line."""
        step, memories = self.state.step, self.memories
        extra = {
            "stage": stage,
            "lr": self.scheduler.get_last_lr()[0],
            "competence": competence,
            "ltm_size": len(memories.ltm),
            "stm_size": len(memories.stm),
        }
        record = self.log.flush(step, extra, self.accelerator.num_processes)
        self.accelerator.log({k: v for k, v in record.items() if k != "stage"}, step=step)
        self.bar.status(step, status_text(stage, competence, record))

    def end_of_step(self) -> None:
        """Plateau checks, consolidation, stage ends and the learning curve, where this step calls for them."""
        steps, mc = self.state.step, self.config.memory
        index = self.schedule.stage_index(steps - 1)
        self._check_plateau(index)
        at_end = self.schedule.ends_stage(steps)
        if at_end:
            self.end_of_stage(index)
        elif mc.enabled and mc.consolidate_every and steps % mc.consolidate_every == 0:
            self.consolidate(index)
        self._evaluate(at_end)

    def _check_plateau(self, index: int) -> None:
        """Every curriculum.plateau_every steps of a stage (not the last): end it once its validation loss has
        stopped improving (curriculum.plateau_patience)."""
        cc, steps, schedule = self.config.curriculum, self.state.step, self.schedule
        stage_start = schedule.ends[index - 1] if index else 0
        if not cc.plateau_patience or cc.order == "mixed" or index >= len(self.stages) - 1:
            return
        if (steps - stage_start) % cc.plateau_every or not self.val_groups[index]:
            return
        model = self.accelerator.unwrap_model(self.model)
        loss = validation_loss(model, self.fmt, self.val_groups[index], self.config.train.eval_max_examples)
        if schedule.record_validation_loss(steps, loss, cc.plateau_patience, cc.plateau_min_delta):
            self.bar.write(
                f"stage {self.stages[index].name}: validation loss {loss:.4f} has plateaued; the next stage "
                f"starts at step {steps}"
            )

    def end_of_stage(self, index: int) -> None:
        """Stage `index` has ended: consolidate its STM into the LTM, then each regularizer's stage end (EWC's
        Fisher estimate on the stage's examples)."""
        self.schedule.start_next_stage()
        if self.config.memory.enabled:
            self.consolidate(index)
        model, device = self.accelerator.unwrap_model(self.model), self.accelerator.device

        def task_loss(examples: list[Example]) -> torch.Tensor:
            return compute_losses(model, self.cache, MicroBatch(examples), self.config, device, []).parts["task"]

        for regularizer in self.regularizers:
            regularizer.on_stage_end(model, index, self.stages[index].examples, task_loss)

    def consolidate(self, index: int) -> None:
        model = self.accelerator.unwrap_model(self.model)
        top_k, device = self.config.memory.teacher_top_k, self.accelerator.device
        self.memories.consolidate(model, self.cache, self.stages[index].name, top_k, self.rng, device)

    def _evaluate(self, at_end: bool) -> None:
        """Every stage's validation items: the stage matrices' next row at a stage end, a point of the learning
        curve every train.eval_every steps."""
        tc, steps = self.config.train, self.state.step
        every = bool(tc.eval_every) and steps % tc.eval_every == 0
        if not (at_end or every) or not tc.eval_max_examples or not any(self.val_groups):
            return
        row = stage_row(self.accelerator.unwrap_model(self.model), self.fmt, self.val_groups, tc.eval_max_examples)
        if every:
            self.state.curve.append({"step": steps, **row})
        if not at_end:
            return
        self.state.stage_rows.append(row)
        done = len(self.state.stage_rows)
        cells = [
            f"{s.name}=" + (f"{a:.3f}" if a is not None else f"nll {n:.3f}" if n is not None else "-")
            for s, a, n in zip(self.stages, row["accuracy"], row["nll"])
        ]
        self.bar.write(f"after stage {done}/{len(self.stages)} ({self.stages[done - 1].name}): " + "  ".join(cells))

    def checkpoint(self) -> None:
        """checkpoints/step-N: weights, optimizer and scheduler, and each process's own state."""
        state = self.state
        state.wall_s = time.perf_counter() - self.run_start
        rank_state = {
            "state": asdict(state),
            "schedule": self.schedule.state_dict(),
            "rng": rng_states(self.rng),
            "metrics": self.log.state_dict(),
            **self.memories.state_dict(),
            "regularizers": regularizer_states(self.regularizers),
        }
        save_checkpoint(self.run_dir, state.step, self.accelerator, self._training_objects(), rank_state)

    # ------------------------------------------------------------------------------------------------
    # After the last step

    def save(self) -> None:
        """The adapter (or whole model), the LTM, stage matrices and summary; merge_alpha where it is asked."""
        accelerator = self.accelerator
        self.state.wall_s = time.perf_counter() - self.run_start
        model = accelerator.unwrap_model(self.model)
        weights = trainable_state(model)  # collective under FSDP: every process gathers
        merge = merge_record(self.config, model, self.fmt, self.val_examples, self.self_memory.probe, self.say)
        if self.main:
            saved = self._save_weights(model, weights, merge)
            self._save_memory_and_reports(merge)
            ltm = self.memories.ltm
            print(
                f"wrote {self.run_dir}: {saved}, memory ({len(ltm)} exemplars), metrics.jsonl, stage_eval.json, "
                "summary.json"
            )
        accelerator.wait_for_everyone()
        accelerator.end_training()  # last: it also takes down the process group the barrier above needs

    def _save_weights(self, model, trained: dict, merge: dict | None) -> str:
        """adapter/ (LoRA) or model/ (full fine-tuning), with the tokenizer; returns which."""
        from ..io import atomic_path

        name = "adapter" if self.config.peft.method == "lora" else "model"
        with atomic_path(self.run_dir / name, is_dir=True) as tmp:
            # LoRA: the gathered trainable weights are the adapter (the same tensors, or under FSDP their full form).
            model.save_pretrained(tmp, **({"state_dict": trained} if name == "adapter" else {}))
            self.tokenizer.save_pretrained(tmp)
            if merge is not None:  # inside adapter/: replaced with it, so a later run never inherits a stale scale
                write_json(tmp / MERGE_FILE, merge)
            stamp(tmp, self.run_dir)  # the config it was trained under: icft eval refuses it beside another config
        return name

    def _save_memory_and_reports(self, merge: dict | None) -> None:
        run_dir, state, ltm = self.run_dir, self.state, self.memories.ltm
        ltm.save(run_dir / "memory")
        stamp(run_dir / "memory", run_dir)
        report = stage_report([s.name for s in self.stages], state.stage_rows)
        write_json(run_dir / "stage_eval.json", {**report, "curve": state.curve})
        rss_mb, gpu_mb = peak_memory_mb()
        logged = self.log.records
        summary = {
            "steps": state.step,
            "tokens": state.tokens,
            "wall_s": state.wall_s,
            "tokens_per_s": state.tokens / max(state.wall_s, 1e-9),
            "trainable_params": self.trainable,
            "total_params": self.total,
            "peak_rss_mb": rss_mb,
            "peak_gpu_mb": gpu_mb,
            "ltm_counts": ltm.counts(),
            "final_losses": logged[-1] if logged else None,
        }
        if merge is not None:
            summary["merge_alpha"] = merge["alpha"]
        write_json(run_dir / "summary.json", summary)
