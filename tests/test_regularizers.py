"""The regularizers: EWC's penalty, the EMA and stored-output consistency teachers, the KL-to-base anchor, and
the training loop calling them as components (the same parts as computed directly; checkpoints of older versions)."""

from __future__ import annotations

import json

import pytest
import torch

from icft.likelihood import target_logits
from icft.regularizers import EWC, Batch, EMATeacher, FrozenBaseTeacher


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 1))
    model[0].weight.requires_grad_(False)  # frozen weights are not regularised (the base model under LoRA)
    return model


def test_ewc_is_zero_at_the_anchor_and_pulls_back_where_the_fisher_is_large():
    model, x = _model(), torch.randn(16, 4)
    ewc = EWC(weight=10.0)
    assert ewc.penalty(model) is None
    ewc.consolidate(model, (model(x[i : i + 4]).pow(2).mean() for i in range(0, 16, 4)))
    assert "0.weight" not in ewc.fisher and set(ewc.fisher) == {"0.bias", "1.weight", "1.bias"}
    assert ewc.penalty(model).item() == pytest.approx(0.0)
    with torch.no_grad():
        model[1].weight.add_(0.5)
    moved = ewc.penalty(model)
    assert moved.item() > 0
    moved.backward()
    assert (model[1].weight.grad * 0.5 >= 0).all()  # the gradient points back toward the anchor


def test_ema_teacher_tracks_slowly_and_swaps_weights_back_exactly():
    model = _model()
    teacher = EMATeacher(model, decay=0.9, top_k=4)
    start = model[1].weight.detach().clone()
    with torch.no_grad():
        model[1].weight.add_(1.0)
    teacher.on_step(model)
    assert torch.allclose(teacher.shadow["1.weight"], start + 0.1)
    current, parameter = model[1].weight.detach().clone(), model[1].weight
    x = torch.randn(2, 4)
    student = model(x).sum()  # the student's backward is still pending while the teacher runs
    with teacher.weights_in(model):
        assert torch.allclose(model[1].weight, start + 0.1) and not model.training
        assert torch.allclose(model(x), torch.nn.functional.linear(model[0](x), start + 0.1, model[1].bias))
    assert model[1].weight is parameter and torch.equal(parameter, current) and model.training
    student.backward()  # nothing it saved was changed in place
    assert parameter.grad is not None and teacher.shadow["1.weight"].grad is None


def _view(model, inputs: dict) -> Batch:
    """A batch without LTM rows as the regularizers see it, with the model's logits."""
    logits, _, rows = target_logits(model, inputs)
    return Batch(inputs, logits, rows, len(inputs["input_ids"]), [], None)


def test_kl_to_base_is_zero_for_the_untrained_adapter_and_pulls_a_moved_one_back(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model

    from icft.data.tokenize import collate, encode_pair
    from icft.models import load_model

    base, tokenizer = load_model(str(tiny_llama_dir))
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    model.train()
    pairs = [("Question: what lowers fever?\nAnswer:", " paracetamol"), ("Patient: I cough.\nDoctor:", " rest")]
    batch = collate([encode_pair(tokenizer, p, t, 64) for p, t in pairs], tokenizer.pad_token_id)
    anchor = FrozenBaseTeacher(weight=2.0, top_k=8)
    # LoRA starts with B = 0: the model is its base, so the anchor is exactly 0
    assert anchor.penalty(model, _view(model, batch)).item() == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    moved = anchor.penalty(model, _view(model, batch))
    assert moved.item() > 0 and model.training  # the teacher ran in eval mode and gave the mode back
    moved.backward()
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    with torch.no_grad():
        for p in lora:
            p.sub_(0.05 * p.grad)
    assert anchor.penalty(model, _view(model, batch)).item() < moved.item()


def test_kl_to_base_needs_a_lora_model():
    with pytest.raises(ValueError, match="peft.method=lora"):
        FrozenBaseTeacher(1.0, 4).penalty(_model(), Batch({}, torch.zeros(1, 3), torch.zeros(1), 1, [], None))


def test_the_training_loop_gets_each_regularizers_part_as_computed_directly(tiny_llama_dir):
    """compute_losses calls the regularizers as a list; each part it returns is, to the bit, the term computed
    here by hand (the EMA teacher with its weights copied into a copy of the model, as before it was a
    component), and the parts keep their order in L_total's sum."""
    import copy
    import random

    from icft.config import load_config
    from icft.data.prompt_format import PromptFormat
    from icft.data.schema import Example
    from icft.data.tokenize import collate
    from icft.losses import consistency_kl, top_k_outputs
    from icft.memory import LongTermMemory, MemoryItem
    from icft.recipes.train import MicroBatch, TokenCache, build_regularizers, compute_losses, load_adapted_model
    from icft.recipes.train import record_teacher_outputs as record
    from icft.regularizers import StoredTeacher

    torch.manual_seed(0)
    config = load_config(None, [f"model.name={tiny_llama_dir}", "peft.r=4", "peft.dropout=0", "loss.ewc=3",
                                "loss.kl_base=2", "memory.teacher=ema", "memory.ema_decay=0.5"])  # fmt: skip
    model, tokenizer = load_adapted_model(config)
    model.eval()
    lora = {n: p for n, p in model.named_parameters() if p.requires_grad}

    def move():
        with torch.no_grad():
            for p in lora.values():
                p.add_(torch.randn_like(p) * 0.3)

    move()
    cache = TokenCache(PromptFormat(tokenizer, "plain", 48))
    new = [Example("a", "qa", "s", question="Q?", options=["x", "y"], answer=1),
           Example("b", "preference", "s", prompt="P?", chosen="good", rejected="bad")]
    replay = [Example("c", "text", "s", text="Some replayed text here.")]
    old = [Example(f"o{i}", "qa", "s", question=f"Old {i}?", answer=f"it was {i}") for i in range(3)]
    ltm = LongTermMemory(10, "reservoir")
    items = ltm.consolidate("s", [MemoryItem(ex) for ex in old], torch.zeros(3, 4).numpy(), random.Random(0))
    record(model, cache, ltm, items, config.memory.teacher_top_k, "cpu")
    ema, anchor, ewc = build_regularizers(config, model)
    assert (type(ema), type(anchor), type(ewc)) == (EMATeacher, FrozenBaseTeacher, EWC)

    def task_loss(examples):
        return compute_losses(model, cache, MicroBatch(examples), config, "cpu", []).parts["task"]

    ewc.on_stage_end(model, 0, new + replay, task_loss)
    move()
    ema.on_step(model)
    move()

    batch = MicroBatch(new, replay, items)
    out = compute_losses(model, cache, batch, config, "cpu", [ema, anchor, ewc])
    assert list(out.parts) == ["task", "finetune", "consistency", "kl_base", "ewc"]
    assert torch.equal(out.parts["ewc"], 0.5 * 3 * sum((ewc.fisher[n] * (p - ewc.anchor[n]).pow(2)).sum()
                                                       for n, p in lora.items()))  # fmt: skip

    seqs = [cache.encode(new[0]), cache.encode(new[1]), cache.encode(new[1], "rejected"), cache.encode(replay[0])]
    ltm_seqs = [cache.encode(item.example) for item in items]  # the order the memory gave them
    inputs = collate(seqs + ltm_seqs, tokenizer.pad_token_id)
    with torch.no_grad():
        logits, _, rows = target_logits(model, inputs)
        student = logits[rows >= len(seqs)]
        teacher = copy.deepcopy(model)
        for n, p in teacher.named_parameters():
            if n in ema.shadow:
                p.copy_(ema.shadow[n])
        ema_logits = target_logits(teacher, collate(ltm_seqs, tokenizer.pad_token_id))[0]
        with model.disable_adapter():
            base = target_logits(model, inputs)[0]
    assert torch.equal(out.parts["consistency"], consistency_kl(student, *top_k_outputs(ema_logits, 16)))
    assert torch.equal(out.parts["kl_base"], 2 * consistency_kl(logits, *top_k_outputs(base, 16)))
    stored = consistency_kl(student, torch.cat([i.teacher_ids for i in items]),
                            torch.cat([i.teacher_logprobs for i in items]))  # fmt: skip
    assert torch.equal(compute_losses(model, cache, batch, config, "cpu", [StoredTeacher()])
                       .parts["consistency"], stored)  # fmt: skip
    assert stored > 0 and out.parts["consistency"] > 0 and out.parts["kl_base"] > 0 and out.parts["ewc"] > 0
    # No LTM rows, no consistency; EWC before any stage end has no term: both parts are 0.
    quiet = compute_losses(model, cache, MicroBatch(new, replay), config, "cpu", [ema, EWC(1.0)])
    assert quiet.parts["consistency"].item() == 0 and quiet.parts["ewc"].item() == 0


def test_regularizer_states_load_from_older_checkpoints_and_a_missing_state_is_said():
    from icft.errors import TrainingError
    from icft.regularizers import load_regularizer_states, regularizer_states

    ewc, ema = EWC(1.0), EMATeacher(_model(), 0.9, 4)
    ewc.fisher, ewc.anchor = {"1.bias": torch.ones(1)}, {"1.bias": torch.zeros(1)}
    ema.shadow["1.bias"] = torch.full((1,), 7.0)
    memories = {"stm": {}, "ltm": {}, "replay": {}}  # what else a process's checkpoint state holds
    # Checkpoints before regularizers were components kept EWC's and the EMA teacher's states at the top level.
    older = {**memories, "ema": ema.state_dict(), "ewc": ewc.state_dict()}
    for saved in (older, {**memories, "regularizers": regularizer_states([ewc, ema])}):
        loaded = [EWC(1.0), EMATeacher(_model(), 0.9, 4)]
        load_regularizer_states(loaded, saved)
        assert torch.equal(loaded[0].fisher["1.bias"], torch.ones(1))
        assert torch.equal(loaded[1].shadow["1.bias"], torch.full((1,), 7.0))
    load_regularizer_states([FrozenBaseTeacher(1.0, 4)], {**older, "ewc": None})  # stateless: nothing to load
    with pytest.raises(TrainingError, match="no state for the regularizer 'ema'"):
        load_regularizer_states([EMATeacher(_model(), 0.9, 4)], {**older, "ema": None})


@pytest.mark.slow
@pytest.mark.parametrize(("settings", "part"), [
    (["loss.ewc=100", "memory.enabled=false"], "loss_ewc"),
    (["memory.teacher=ema", "memory.ema_decay=0.5"], "loss_consistency"),
])  # fmt: skip
def test_baselines_train_end_to_end(settings, part, tiny_llama_dir, staged_data, tmp_path, monkeypatch):
    from test_train import overrides

    from icft.cli import main

    args = overrides(tiny_llama_dir, staged_data, steps=9) + [x for s in settings for x in ("--set", s)]
    assert main(["train", *args, "--output-dir", str(tmp_path / "run")]) == 0
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert records[0][part] == 0.0 and any(r[part] > 0 for r in records[3:])


@pytest.mark.slow
def test_kl_to_base_trains_end_to_end_and_keeps_the_model_nearer_its_base(tiny_llama_dir, staged_data, tmp_path,
                                                                          monkeypatch):
    """lora-kl-base's term is logged and is what it says: with a strong anchor the trained model ends nearer
    its base (smaller KL on the training batches) than the same run without it."""
    from test_train import overrides

    from icft.cli import main

    base = overrides(tiny_llama_dir, staged_data, steps=9) + ["--set", "memory.enabled=false"]
    kl = {}
    for name, weight in (("free", "0"), ("anchored", "50")):
        args = [*base, "--set", f"loss.kl_base={weight}", "--set", "loss.task=1"]
        assert main(["train", *args, "--output-dir", str(tmp_path / name)]) == 0
        records = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        kl[name] = [r.get("loss_kl_base") for r in records]
    assert kl["free"] == [0.0] * len(kl["free"])  # off
    # step 1 runs the untrained adapter (LoRA's B = 0): the model is its base, the term exactly 0
    assert kl["anchored"][0] == pytest.approx(0.0, abs=1e-4) and kl["anchored"][-1] > 0

    from icft.data.formatting import prompt_and_target
    from icft.data.loaders import load_examples
    from icft.data.tokenize import collate, encode_pair
    from icft.runs import load_run

    examples = load_examples(staged_data[0]).examples[:16]
    distance = {}
    for name in ("free", "anchored"):
        model, tokenizer = load_run(tmp_path / name, device="cpu")
        pairs = [encode_pair(tokenizer, *prompt_and_target(ex), 48) for ex in examples]
        batch = collate(pairs, tokenizer.pad_token_id)
        with torch.no_grad():
            distance[name] = FrozenBaseTeacher(1.0, 8).penalty(model, _view(model, batch)).item()
    assert distance["anchored"] < distance["free"]
