"""The run config: pydantic models whose errors read as icft's one-line `config key '...'` messages, and whose
resolved dict (and so the run folder's hash) does not depend on how a value was written."""

from __future__ import annotations

import pytest

from icft.config import RunConfig, check, load_config, save_config
from icft.errors import ConfigError
from icft.runs import config_hash

TRAIN_KEYS = ("batch_size, eval_every, eval_max_examples, grad_accum, gradient_checkpointing, log_every, lr, "
              "max_grad_norm, max_steps, merge_alpha, merge_grid, mixed_precision, packing, save_every, seed, "
              "warmup_ratio, weight_decay")  # fmt: skip

# (--set values, the whole message): the messages of the hand-written checks pydantic replaced, word for word.
MESSAGES = [
    (["train.max_stepz=3"], f"unknown config key 'train.max_stepz' (known: {TRAIN_KEYS})"),
    (["trian.max_steps=3"], "unknown config key 'trian' (known: compare, curriculum, data, loss, memory, model, name, "
                            "output_dir, peft, train)"),
    (["train=3"], "config key 'train': expected a section (mapping)"),
    (["model=null"], "config key 'model': expected a section (mapping)"),
    (["train.max_steps=many"], "config key 'train.max_steps': expected int, got 'many'"),
    (["train.max_steps=1.5"], "config key 'train.max_steps': expected int, got 1.5"),
    (["train.max_steps=true"], "config key 'train.max_steps': expected int, got True"),
    (["train.lr=1e-3"], "config key 'train.lr': expected float, got '1e-3'"),  # YAML 1.1 reads 1e-3 as text
    (["memory.enabled=1"], "config key 'memory.enabled': expected bool, got 1"),
    (["train.max_steps=0"], "config key 'train.max_steps': must be >= 1, got 0"),
    (["train.lr=-1"], "config key 'train.lr': must be >= 0.0, got -1.0"),
    (["peft.dropout=1"], "config key 'peft.dropout': must be in [0.0, 1.0), got 1.0"),
    (["peft.dropout=-0.1"], "config key 'peft.dropout': must be in [0.0, 1.0), got -0.1"),
    (["data.validation_split=0.6"], "config key 'data.validation_split': must be in [0.0, 0.5], got 0.6"),
    (["memory.selection=random"], "config key 'memory.selection': 'random' is not one of herding, kcenter, reservoir"),
    (["memory.selection=3"], "config key 'memory.selection': expected str, got 3"),
    (["peft.target_modules=[q_proj, 1]"], "config key 'peft.target_modules[1]': expected str, got 1"),
    (["peft.target_modules=3"], "config key 'peft.target_modules': expected list or str or NoneType, got 3"),
    (["peft.target_modules=everything"],
     "config key 'peft.target_modules': 'everything' is not attention, all-linear or a name list"),
    (["curriculum.stages=3"], "config key 'curriculum.stages': expected list or str, got 3"),
    (["curriculum.stages=[a, a]"], "config key 'curriculum.stages': needs distinct stage names, got ['a', 'a']"),
    (["curriculum.stage_steps=[1, x]"], "config key 'curriculum.stage_steps[1]': expected float, got 'x'"),
    (["curriculum.stage_steps=[1, 0]"], "config key 'curriculum.stage_steps': shares must be positive"),
    (["curriculum.scorers={length: x}"], "config key 'curriculum.scorers.length': expected float, got 'x'"),
    (["curriculum.scorers={length: -1}"], "config key 'curriculum.scorers.length': must be >= 0, got -1.0"),
    (["curriculum.scorers={1: 2}"], "config key 'curriculum.scorers': unknown scorer '1' (known: length, rarity, "
                                    "model_loss)"),
    (["curriculum.scorers=[length]"], "config key 'curriculum.scorers': expected dict, got ['length']"),
    (["memory.stm_replay=0.5", "memory.ltm_replay=0.5"],
     "config keys 'memory.stm_replay' + 'memory.ltm_replay' must leave room for new data (< 1)"),
    (["data.train=[a, 2]"], "config key 'data.train[1]': expected str, got 2"),
    (["compare.seeds=[true]"], "config key 'compare.seeds[0]': expected int, got True"),
    (["compare.lr_scales=[-1, 2]"], "config key 'compare.lr_scales': scales must be positive, got [-1.0, 2.0]"),
    (["train.max_steps.x=1"], "config key 'train.max_steps': expected int, got {'x': 1}"),
    # Two mistakes: a wrong type is reported before a value out of range, as the hand-written checks did.
    (["peft.r=0", "train.lr=abc"], "config key 'train.lr': expected float, got 'abc'"),
]  # fmt: skip


@pytest.mark.parametrize(("settings", "message"), MESSAGES, ids=[" ".join(s) for s, _ in MESSAGES])
def test_each_mistake_has_its_one_line_message(settings, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, settings)
    assert str(error.value) == message


def test_an_int_where_a_float_goes_resolves_and_hashes_as_the_float():
    """Run folders are named and guarded by the hash of the resolved config: `lr: 1` and `lr: 1.0` are one run."""
    as_int = load_config(None, ["train.lr=1", "compare.lr_scales=[1, 2]", "curriculum.scorers={length: 2}"])
    as_float = load_config(None, ["train.lr=1.0", "compare.lr_scales=[1.0, 2.0]", "curriculum.scorers={length: 2.0}"])
    assert as_int.train.lr == 1.0 and isinstance(as_int.train.lr, float)
    assert isinstance(as_int.compare.lr_scales[0], float) and isinstance(as_int.curriculum.scorers["length"], float)
    assert config_hash(as_int.to_dict()) == config_hash(as_float.to_dict())


def test_saved_config_loads_back_to_the_same_hash(tmp_path):
    config = load_config(None, ["train.max_steps=7", "peft.target_modules=[q_proj, v_proj]", "curriculum.stages=auto"])
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config and config_hash(again.to_dict()) == config_hash(config.to_dict())
    assert list(config.to_dict()) == ["name", "output_dir", "model", "peft", "data", "curriculum", "memory", "loss",
                                      "train", "compare"]  # fmt: skip


def test_assignment_is_free_and_check_validates_it_again():
    """`icft compare` and the demo assign fields, then check: the same messages as loading."""
    config = load_config(None)
    config.data.train = ["a.jsonl"]
    config.train.max_steps = 0
    with pytest.raises(ConfigError, match=r"^config key 'train.max_steps': must be >= 1, got 0$"):
        check(config)
    config.train.max_steps = 5
    config.loss.kl_base, config.peft.method = 1.0, "full"
    with pytest.raises(ConfigError, match="^config key 'loss.kl_base': the base model"):
        check(config)
    config.peft.method = "lora"
    check(config)
    assert config.data.train == ["a.jsonl"]


def test_defaults_are_not_shared_between_configs():
    a, b = RunConfig(), RunConfig()
    a.data.train.append("more.jsonl")
    a.train.max_steps = 3
    assert b.data.train == ["bundled:train"] and b.train.max_steps == 300
