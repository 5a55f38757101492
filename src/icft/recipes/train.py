"""The ICFT training recipe, end to end. Read it top to bottom.

1. Load data and the model; wrap it in a LoRA adapter (peft).
2. Score every training example's difficulty and group examples into stages (general -> medical
   knowledge -> clinical tasks, or difficulty quantiles); give each stage a share of `train.max_steps`.
3. For every step: draw the easiest competence(t) share of the current stage, re-mix high-loss examples
   from short-term memory (STM), replay exemplars from long-term memory (LTM); one forward pass; the
   three loss terms; an optimizer step through accelerate.
4. At each stage end: consolidate STM into LTM (exemplars chosen by herding on sentence embeddings, the
   model's outputs recorded as consistency targets), reset STM, and evaluate every stage's validation
   split (one row of the accuracy matrix).
5. Checkpoint every `train.save_every` steps (atomically, resumable); at the end save the adapter,
   LTM contents, metrics and the accuracy matrix.

Consistency teacher: we store the model's outputs at consolidation time rather than keep an EMA copy of
the adapter (CLS-ER). Stored outputs cost no extra forward pass per step and no second set of weights,
and they pin the model to what it knew when each stage ended, which is what forgetting is measured
against.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import get_cosine_schedule_with_warmup

from .. import curriculum, losses
from ..config import RunConfig, save_config
from ..data.formatting import prompt_and_target
from ..data.schema import Example
from ..data.sources import load_data
from ..data.tokenize import TokenizedPair, collate, encode_pair, target_logits
from ..evaluation.scoring import choice_accuracy, is_scorable, score_choices, score_pairs
from ..io import write_json, write_jsonl
from ..memory import Embedder, LongTermMemory, MemoryItem, ShortTermMemory, example_text
from ..models import count_parameters, extra_trainable_modules, load_model, lora_target_modules


class TrainingError(RuntimeError):
    pass


class ProgressDisplay:
    """A tqdm bar (stage, competence, loss parts, tokens/s, ETA) on a terminal; in a log file, one plain line
    per logged step with its ETA; nothing on other processes or with ICFT_QUIET=1."""

    def __init__(self, total: int, initial: int, quiet: bool):
        from tqdm.auto import tqdm

        self.total, self.initial, self.quiet = total, initial, quiet
        self.tty = sys.stdout.isatty()
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, initial=initial, desc="icft train", unit="step", file=sys.stdout,
                        disable=quiet or not self.tty, dynamic_ncols=True, mininterval=1.0)  # fmt: skip

    def step(self) -> None:
        self.bar.update(1)

    def status(self, step: int, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            self.bar.set_postfix_str(text)
            return
        eta = (time.perf_counter() - self.start) / max(1, step - self.initial) * (self.total - step)
        print(f"step {step}/{self.total} {text} eta {eta:.0f}s", flush=True)

    def write(self, text: str) -> None:
        if not self.quiet:
            self.bar.write(text) if self.tty else print(text, flush=True)

    def close(self) -> None:
        self.bar.close()


@dataclass
class Progress:
    """Where the run is: everything besides weights and optimizer that a resumed run needs."""

    step: int = 0
    tokens: int = 0
    accuracy_rows: list[list[float]] = field(default_factory=list)
    wall_s: float = 0.0
    boundaries: list[int] = field(default_factory=list)  # the step each stage ends; a plateau moves one earlier
    plateau_best: float = math.inf
    plateau_checks: int = 0  # checks in a row without improvement


# ----------------------------------------------------------------------------------------------------
# Setup


def apply_peft(model, config: RunConfig):
    if config.peft.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.peft.r,
        lora_alpha=config.peft.alpha,
        lora_dropout=config.peft.dropout,
        target_modules=config.peft.target_modules or lora_target_modules(model),
        modules_to_save=extra_trainable_modules(model) or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def build_stages(config: RunConfig, train: list[Example], validation: list[Example], model, tokenizer):
    """Difficulty-scored training stages and, for the accuracy matrix, the matching validation groups."""
    cc = config.curriculum
    cache = Path(os.environ.get("ICFT_CACHE", Path.home() / ".cache" / "icft")) / "difficulty"

    def scored(examples: list[Example]) -> list[Example]:
        scores = curriculum.difficulty_scores(
            examples, cc.scorers, model=model, tokenizer=tokenizer, cache_dir=cache, model_name=config.model.name
        )
        return curriculum.attach_difficulty(examples, scores)

    train = scored(train)
    if cc.stages == "auto":
        stages = curriculum.stages_by_quantile(train, cc.num_stages)
        val_groups = [s.examples for s in curriculum.stages_by_quantile(scored(validation), cc.num_stages)]
    else:
        stages = curriculum.stages_by_field(train, list(cc.stages))
        val_groups = [[ex for ex in validation if ex.stage == s.name] for s in stages]
    return stages, val_groups


def stage_budgets(config: RunConfig, stages: list[curriculum.Stage]) -> list[int]:
    """Optimizer steps per stage: configured shares, or in proportion to stage sizes; they sum to max_steps."""
    total = config.train.max_steps
    if total < len(stages):
        raise TrainingError(f"train.max_steps={total} is fewer than the {len(stages)} curriculum stages")
    shares = config.curriculum.stage_steps or [len(s.examples) for s in stages]
    if len(shares) != len(stages):
        raise TrainingError(f"curriculum.stage_steps has {len(shares)} entries for {len(stages)} stages")
    budgets = [max(1, int(total * s / sum(shares))) for s in shares]
    budgets[-1] = total - sum(budgets[:-1])
    return budgets


# ----------------------------------------------------------------------------------------------------
# One step


class Batcher:
    """Tokenizes each example once, and builds the batch of sequences with each one's role."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length
        self.cache: dict[tuple[str, str], TokenizedPair] = {}

    def encode(self, ex: Example, answer: str = "chosen") -> TokenizedPair:
        key = (ex.id, answer)
        if key not in self.cache:
            prompt, target = prompt_and_target(ex)
            if answer == "rejected":
                target = " " + ex.rejected
            self.cache[key] = encode_pair(self.tokenizer, prompt, target, self.max_length)
        return self.cache[key]


def compute_losses(model, batcher: Batcher, new: list[Example], replay: list[Example], ltm: list[MemoryItem],
                   config: RunConfig, device) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:  # fmt: skip
    """Loss parts for one micro-batch, the per-example task losses (for the STM) and the token count."""
    seqs: list[TokenizedPair] = []
    task_rows, pair_rows = [], []  # (index in `new`, row) and (index in `new`, chosen row, rejected row)
    for i, ex in enumerate(new):
        if ex.kind == "preference":
            pair_rows.append((i, len(seqs), len(seqs) + 1))
            seqs += [batcher.encode(ex, "chosen"), batcher.encode(ex, "rejected")]
        else:
            task_rows.append((i, len(seqs)))
            seqs.append(batcher.encode(ex))
    replay_start = len(seqs)
    seqs += [batcher.encode(ex) for ex in replay]
    ltm_start = len(seqs)
    seqs += [batcher.encode(item.example) for item in ltm]

    batch = {k: v.to(device) for k, v in collate(seqs, batcher.tokenizer.pad_token_id).items()}
    logits, targets, rows = target_logits(model, batch)
    nll, _ = losses.per_sequence_nll(logits, targets, rows, len(seqs))

    task = torch.zeros(len(new), device=device)
    for i, row in task_rows:
        task[i] = nll[row]
    for i, chosen, rejected in pair_rows:
        task[i] = losses.preference_loss(nll[chosen], nll[rejected])
    zero = logits.new_zeros(())
    parts = {
        "task": task.mean() if len(new) else zero,
        "finetune": nll[replay_start:].mean() if len(seqs) > replay_start else zero,
        "consistency": zero,
    }
    if ltm and config.loss.consistency > 0:
        on_ltm = rows >= ltm_start  # tokens come out row by row, so they line up with the stored targets
        teacher_ids = torch.cat([item.teacher_ids for item in ltm]).to(device)
        teacher_logprobs = torch.cat([item.teacher_logprobs for item in ltm]).to(device)
        if teacher_ids.shape[0] != int(on_ltm.sum()):
            raise TrainingError("stored LTM teacher outputs do not match the replayed tokens")
        parts["consistency"] = losses.consistency_kl(logits[on_ltm], teacher_ids, teacher_logprobs)
    return parts, task.detach(), int(batch["attention_mask"].sum())


# ----------------------------------------------------------------------------------------------------
# Memory consolidation and evaluation


@torch.no_grad()
def record_teacher_outputs(model, batcher: Batcher, ltm: LongTermMemory, items: list[MemoryItem], k: int,
                           device, batch_size: int = 32) -> None:  # fmt: skip
    """Store the model's top-k output distribution on each new LTM exemplar's target tokens."""
    was_training = model.training
    model.eval()
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = {k_: v.to(device) for k_, v in collate([batcher.encode(i.example) for i in chunk],
                                                        batcher.tokenizer.pad_token_id).items()}  # fmt: skip
        logits, _, rows = target_logits(model, batch)
        ids, logprobs = losses.top_k_outputs(logits, k)
        for r, item in enumerate(chunk):
            ltm.set_teacher(item.example.id, ids[rows == r].cpu(), logprobs[rows == r].cpu())
    model.train(was_training)


def consolidate(model, batcher, stm: ShortTermMemory, ltm: LongTermMemory, embedder: Embedder, stage: str,
                config: RunConfig, rng: random.Random, device) -> None:  # fmt: skip
    items = stm.items()
    if not items:
        return
    embeddings = embedder.encode([example_text(i.example) for i in items])
    added = ltm.consolidate(stage, items, embeddings, rng)
    record_teacher_outputs(model, batcher, ltm, added, config.memory.teacher_top_k, device)
    stm.reset()


def stage_accuracies(model, tokenizer, val_groups: list[list[Example]], config: RunConfig) -> list[float]:
    """Accuracy on each stage's validation split: multiple-choice qa and preference pairs, scored by likelihood."""
    row = []
    for group in val_groups:
        scorable = [ex for ex in group if is_scorable(ex)]
        random.Random(0).shuffle(scorable)  # the same subset for every method, seed and step
        scorable = scorable[: config.train.eval_max_examples]
        scores = score_choices(model, tokenizer, scorable, max_length=config.model.max_length)
        row.append(choice_accuracy(scores, normalised=True) if scores else float("nan"))
    return row


def validation_loss(model, tokenizer, examples: list[Example], config: RunConfig) -> float:
    """Mean NLL per target token on (a fixed sample of) a stage's validation examples."""
    examples = list(examples)
    random.Random(0).shuffle(examples)
    pairs = [prompt_and_target(ex) for ex in examples[: config.train.eval_max_examples or 200]]
    logprobs = score_pairs(model, tokenizer, pairs, max_length=config.model.max_length)
    tokens = sum(encode_pair(tokenizer, p, t, config.model.max_length, add_eos=False).n_target for p, t in pairs)
    return -sum(logprobs) / max(1, tokens)


# ----------------------------------------------------------------------------------------------------
# Checkpoints


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run_dir: Path, accelerator: Accelerator, model, optimizer, scheduler, state: dict) -> None:
    """checkpoints/step-N/: weights, optimizer, scheduler (rank 0) and each rank's RNG/curriculum/memory."""
    root = run_dir / "checkpoints"
    step = state["progress"].step
    tmp, final = root / f".tmp-step-{step:06d}", root / f"step-{step:06d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(state, tmp / f"rank{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        torch.save(trainable_state(accelerator.unwrap_model(model)), tmp / "trainable.pt")
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a checkpoint exists only once every file of it is written
        for old in sorted(root.glob("step-*"))[:-2]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def load_checkpoint(path: Path, accelerator: Accelerator, model, optimizer, scheduler) -> dict:
    weights = torch.load(path / "trainable.pt", map_location="cpu")
    params = dict(accelerator.unwrap_model(model).named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optim = torch.load(path / "optim.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    return torch.load(path / f"rank{accelerator.process_index}.pt", map_location="cpu", weights_only=False)


def rng_states(rng: random.Random) -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "recipe": rng.getstate()}  # fmt: skip


def restore_rng_states(states: dict, rng: random.Random) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    rng.setstate(states["recipe"])


# ----------------------------------------------------------------------------------------------------
# The run


def train(config: RunConfig, run_dir: str | Path, resume: bool = False) -> Path:
    run_dir = Path(run_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.train.grad_accum,
        mixed_precision=config.train.mixed_precision,
        log_with="tensorboard",
        project_dir=str(run_dir),
    )
    main = accelerator.is_main_process
    say = print if main else (lambda *a, **k: None)
    set_seed(config.train.seed)  # the same adapter init on every process
    rng = random.Random(config.train.seed * 1000 + accelerator.process_index)  # each process draws its own batches

    # 1. Data and model
    train_examples = load_data(config.data.train, quiet=not main)
    if config.data.max_train_examples:
        train_examples = train_examples[: config.data.max_train_examples]
    val_examples = load_data(config.data.validation, quiet=True) if config.data.validation else []
    model, tokenizer = load_model(config.model.name)
    model = apply_peft(model, config)
    trainable, total = count_parameters(model)
    say(f"model {config.model.name}: {trainable:,} trainable / {total:,} parameters "
        f"({100 * trainable / total:.2f}%), peft={config.peft.method}")  # fmt: skip

    # 2. Curriculum
    stages, val_groups = build_stages(config, train_examples, val_examples, model, tokenizer)
    budgets = stage_budgets(config, stages)
    boundaries = [int(b) for b in np.cumsum(budgets)]
    if config.curriculum.order == "mixed":
        everything = sorted((ex for s in stages for ex in s.examples), key=lambda ex: ex.difficulty)
        train_stages = [curriculum.Stage("mixed", everything)]
        train_budgets, pacing = [config.train.max_steps], "none"
    else:
        train_stages, train_budgets, pacing = stages, budgets, config.curriculum.pacing
    pacing_steps = [int(b * config.curriculum.pacing_share) for b in train_budgets]
    start = config.curriculum.start_competence
    samplers = [
        curriculum.CompetenceSampler(stage, n, pacing, start, seed=config.train.seed * 7919 + 31 * i
                                     + accelerator.process_index)  # fmt: skip
        for i, (stage, n) in enumerate(zip(train_stages, pacing_steps))
    ]
    say("stages: " + ", ".join(f"{s.name} ({len(s.examples)} examples, {b} steps)" for s, b in zip(stages, budgets)))

    # 3. Memory
    mc = config.memory
    stm, ltm = ShortTermMemory(mc.stm_capacity), LongTermMemory(mc.ltm_capacity, mc.selection)
    embedder = Embedder() if mc.enabled else None

    # 4. Optimizer, schedule, accelerate
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.train.lr,
                                  weight_decay=config.train.weight_decay)  # fmt: skip
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(config.train.warmup_ratio * config.train.max_steps), config.train.max_steps
    )
    # The scheduler stays outside prepare(): every process takes every step, so it must step once per step.
    model, optimizer = accelerator.prepare(model, optimizer)
    device = accelerator.device
    batcher = Batcher(tokenizer, config.model.max_length)

    progress = Progress(boundaries=boundaries)
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise TrainingError(f"--resume {run_dir}: no checkpoint under {run_dir / 'checkpoints'}")
        state = load_checkpoint(checkpoint, accelerator, model, optimizer, scheduler)
        progress = state["progress"]
        for sampler, s in zip(samplers, state["samplers"]):
            sampler.load_state_dict(s)
        stm.load_state_dict(state["stm"])
        ltm.load_state_dict(state["ltm"])
        restore_rng_states(state["rng"], rng)
        say(f"resumed from {checkpoint} at step {progress.step}")
    elif main and (run_dir / "checkpoints").exists():
        say(f"starting a new run in {run_dir}: its old checkpoints are removed (use --resume to continue instead)")
        shutil.rmtree(run_dir / "checkpoints")
    boundaries = progress.boundaries
    train_boundaries = boundaries if len(train_stages) > 1 else [config.train.max_steps]
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
    metrics_path = run_dir / "metrics.jsonl"
    logged = _read_metrics(metrics_path, upto=progress.step) if resume else []
    accelerator.init_trackers("tensorboard")

    # 5. The loop
    weights = {"task": config.loss.task, "consistency": config.loss.consistency, "finetune": config.loss.finetune}
    micro = config.train.batch_size
    n_ltm = round(micro * mc.ltm_replay) if mc.enabled else 0
    n_stm = round(micro * mc.stm_replay) if mc.enabled else 0
    quiet = not main or os.environ.get("ICFT_QUIET") == "1"
    bar = ProgressDisplay(config.train.max_steps, progress.step, quiet)
    window: dict[str, list[float]] = {"total": [], "task": [], "consistency": [], "finetune": []}
    window_tokens, window_start = 0, time.perf_counter()
    run_start = time.perf_counter() - progress.wall_s
    model.train()
    while progress.step < config.train.max_steps:
        step = progress.step
        t_index = next(i for i, b in enumerate(train_boundaries) if step < b)
        stage_start = 0 if t_index == 0 else train_boundaries[t_index - 1]
        sampler, stage_name = samplers[t_index], train_stages[t_index].name
        comp = curriculum.competence(step - stage_start, pacing_steps[t_index], pacing, start)

        step_tokens = 0
        for _ in range(config.train.grad_accum):
            with accelerator.accumulate(model):
                ltm_items = ltm.sample(n_ltm, rng) if len(ltm) else []
                replay = stm.sample_hard(n_stm, rng) if len(stm) else []
                new = sampler.sample(step - stage_start, micro - len(ltm_items) - len(replay))
                parts, task_losses, n_tokens = compute_losses(model, batcher, new, replay, ltm_items, config, device)
                total_loss = losses.weighted_total(parts, weights)
                if not torch.isfinite(total_loss):
                    last = latest_checkpoint(run_dir)
                    raise TrainingError(
                        f"non-finite loss at step {step} (stage {stage_name}): "
                        + ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
                        + f". Last good checkpoint: {last or 'none'} (resume with --resume {run_dir})"
                    )
                accelerator.backward(total_loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), config.train.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
                if mc.enabled:
                    stm.update(new, task_losses.tolist())
            window["total"].append(total_loss.item())
            for k, v in parts.items():
                window[k].append(v.item())
            step_tokens += n_tokens
        scheduler.step()
        progress.step += 1
        progress.tokens += step_tokens * accelerator.num_processes  # every process takes a batch of its own
        window_tokens += step_tokens
        bar.step()

        if progress.step % config.train.log_every == 0 or progress.step == config.train.max_steps:
            elapsed = time.perf_counter() - window_start
            record = {
                "step": progress.step, "stage": stage_name, "lr": scheduler.get_last_lr()[0],
                "loss_total": _mean(window["total"]), "loss_task": _mean(window["task"]),
                "loss_consistency": _mean(window["consistency"]), "loss_finetune": _mean(window["finetune"]),
                "tokens_per_s": window_tokens * accelerator.num_processes / max(elapsed, 1e-9),
                "competence": comp, "ltm_size": len(ltm), "stm_size": len(stm),
            }  # fmt: skip
            logged.append(record)
            accelerator.log({k: v for k, v in record.items() if k != "stage"}, step=progress.step)
            bar.status(
                progress.step,
                f"{stage_name} c={comp:.2f} task={record['loss_task']:.3f} cons={record['loss_consistency']:.3f} "
                f"ft={record['loss_finetune']:.3f} {record['tokens_per_s']:.0f} tok/s",
            )
            if main:
                write_jsonl(metrics_path, logged)
            window = {k: [] for k in window}
            window_tokens, window_start = 0, time.perf_counter()

        cc = config.curriculum
        if (cc.plateau_patience and len(train_stages) > 1 and t_index < len(train_stages) - 1
                and (progress.step - stage_start) % cc.plateau_every == 0 and val_groups[t_index]):  # fmt: skip
            loss = validation_loss(accelerator.unwrap_model(model), tokenizer, val_groups[t_index], config)
            if loss < progress.plateau_best - cc.plateau_min_delta:
                progress.plateau_best, progress.plateau_checks = loss, 0
            else:
                progress.plateau_checks += 1
            if progress.plateau_checks >= cc.plateau_patience:
                bar.write(f"stage {stage_name}: validation loss {loss:.4f} has plateaued; "
                          f"the next stage starts at step {progress.step}")  # fmt: skip
                boundaries[t_index] = progress.step  # the unused steps go to the next stage

        at_boundary = progress.step in boundaries
        if at_boundary:
            progress.plateau_best, progress.plateau_checks = math.inf, 0
        if mc.enabled and (at_boundary or (mc.consolidate_every and progress.step % mc.consolidate_every == 0)):
            consolidate(accelerator.unwrap_model(model), batcher, stm, ltm, embedder, stage_name, config, rng, device)
        if at_boundary and config.train.eval_max_examples and val_groups:
            row = stage_accuracies(accelerator.unwrap_model(model), tokenizer, val_groups, config)
            progress.accuracy_rows.append(row)
            done = len(progress.accuracy_rows)
            bar.write(f"after stage {done}/{len(stages)} ({stages[done - 1].name}) accuracy: "
                      + "  ".join(f"{s.name}={a:.3f}" for s, a in zip(stages, row)))  # fmt: skip
        if progress.step % config.train.save_every == 0 or progress.step == config.train.max_steps:
            progress.wall_s = time.perf_counter() - run_start
            save_checkpoint(run_dir, accelerator, model, optimizer, scheduler, {
                "progress": progress, "samplers": [s.state_dict() for s in samplers],
                "stm": stm.state_dict(), "ltm": ltm.state_dict(), "rng": rng_states(rng),
            })  # fmt: skip
    bar.close()
    accelerator.end_training()

    # 6. Outputs
    progress.wall_s = time.perf_counter() - run_start
    if main:
        _save_outputs(run_dir, accelerator.unwrap_model(model), tokenizer, config, ltm, stages, progress,
                      trainable, total, logged)  # fmt: skip
    accelerator.wait_for_everyone()
    return run_dir


def _save_outputs(run_dir: Path, model, tokenizer, config, ltm, stages, progress, trainable, total, logged) -> None:
    from ..evaluation.metrics import average_accuracy, backward_transfer, forgetting
    from ..io import atomic_path

    with atomic_path(run_dir / ("adapter" if config.peft.method == "lora" else "model"), is_dir=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    ltm.save(run_dir / "memory")
    R = progress.accuracy_rows
    write_json(run_dir / "stage_eval.json", {
        "stages": [s.name for s in stages], "accuracy_matrix": R,
        "average_accuracy": average_accuracy(R) if R else None,
        "forgetting": forgetting(R) if R else None, "backward_transfer": backward_transfer(R) if R else None,
    })  # fmt: skip
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    peak_gpu_mb = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else 0.0
    write_json(run_dir / "summary.json", {
        "steps": progress.step, "tokens": progress.tokens, "wall_s": progress.wall_s,
        "tokens_per_s": progress.tokens / max(progress.wall_s, 1e-9),
        "trainable_params": trainable, "total_params": total,
        "peak_rss_mb": peak_rss_mb, "peak_gpu_mb": peak_gpu_mb, "ltm_counts": ltm.counts(),
        "final_losses": logged[-1] if logged else None,
    })  # fmt: skip
    weights = "adapter" if config.peft.method == "lora" else "model"
    print(f"wrote {run_dir}: {weights}, memory ({len(ltm)} exemplars), metrics.jsonl, stage_eval.json, summary.json")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _read_metrics(path: Path, upto: int) -> list[dict]:
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= upto]
