"""Run configuration: small dataclasses, loaded from YAML with `--set dotted.key=value` overrides.

Every key is checked: an unknown key or a value of the wrong type or range is an error naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    name: str = "minilm-decoder"  # hub id, local folder, or the embedded default
    max_length: int = 128  # tokens per training sequence


@dataclass
class PeftConfig:
    method: str = "lora"  # "lora" or "full" (full fine-tuning, a baseline)
    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: found per architecture (icft.models.lora_target_modules)


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=lambda: ["bundled:train"])
    validation: list[str] = field(default_factory=lambda: ["bundled:validation"])
    max_train_examples: int = 0  # 0: all


@dataclass
class CurriculumConfig:
    order: str = "curriculum"  # "curriculum" (stages in order) or "mixed" (all stages shuffled together)
    stages: list[str] | str = field(default_factory=lambda: ["general", "knowledge", "clinical"])  # or "auto"
    num_stages: int = 3  # with stages: auto, difficulty quantiles
    stage_steps: list[float] | None = None  # share of train.max_steps per stage; None: in proportion to size
    pacing: str = "sqrt"  # competence schedule inside a stage: none, linear, sqrt, step
    start_competence: float = 0.2
    pacing_share: float = 0.8  # competence reaches 1 after this share of the stage's steps
    scorers: dict[str, float] = field(default_factory=lambda: {"length": 1.0, "rarity": 1.0})
    plateau_patience: int = 0  # >0: a stage also ends once its validation loss stops improving for this many checks
    plateau_every: int = 20  # steps between those checks
    plateau_min_delta: float = 0.01  # the least drop in loss that counts as improving


@dataclass
class MemoryConfig:
    enabled: bool = True
    stm_capacity: int = 256
    stm_replay: float = 0.125  # share of each batch re-mixed from the STM's high-loss examples
    ltm_capacity: int = 384
    ltm_replay: float = 0.25  # share of each batch replayed from the LTM
    selection: str = "herding"  # herding, kcenter or reservoir
    consolidate_every: int = 0  # also consolidate every N steps (0: only at stage ends)
    teacher_top_k: int = 16  # top-k output distribution stored per target token


@dataclass
class LossConfig:
    task: float = 1.0  # w_t: supervised loss on the current batch
    consistency: float = 1.0  # w_c: KL to the stored outputs on replayed LTM examples
    finetune: float = 1.0  # w_f: language-modelling loss on replayed memory examples' gold targets


@dataclass
class TrainConfig:
    max_steps: int = 300  # optimizer steps over all stages
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 100
    log_every: int = 10
    mixed_precision: str = "no"  # no, fp16, bf16 (accelerate)
    eval_max_examples: int = 200  # per stage, for the after-stage accuracy matrix (0: skip it)


@dataclass
class CompareConfig:
    """Used by `icft compare` only: which methods, how many seeds, what to test on."""

    methods: list[str] = field(
        default_factory=lambda: ["base", "full-ft", "lora-mixed", "lora-sequential", "lora-curriculum",
                                 "lora-memory", "icft"]  # fmt: skip
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    test: list[str] = field(default_factory=lambda: ["bundled:test"])
    max_test_examples: int = 0  # per kind (0: all)
    full_ft_lr: float = 1e-4  # full fine-tuning needs a smaller step than LoRA
    jobs: int = 1  # runs side by side, one CPU thread each (CPU machines); 1 = one after another


@dataclass
class RunConfig:
    name: str = "demo"
    output_dir: str = ""  # default runs/<name>
    model: ModelConfig = field(default_factory=ModelConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)
    data: DataConfig = field(default_factory=DataConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    compare: CompareConfig = field(default_factory=CompareConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


CHOICES = {
    "peft.method": ("lora", "full"),
    "curriculum.order": ("curriculum", "mixed"),
    "curriculum.pacing": ("none", "linear", "sqrt", "step"),
    "memory.selection": ("herding", "kcenter", "reservoir"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
}
SHARES = ("curriculum.start_competence", "curriculum.pacing_share", "memory.stm_replay", "memory.ltm_replay")
POSITIVE = (
    "model.max_length", "train.max_steps", "train.batch_size", "train.grad_accum", "train.log_every",
    "train.save_every", "peft.r", "memory.stm_capacity", "memory.ltm_capacity", "memory.teacher_top_k",
)  # fmt: skip
NON_NEGATIVE = ("train.lr", "train.weight_decay", "loss.task", "loss.consistency", "loss.finetune",
                "curriculum.plateau_patience", "curriculum.plateau_min_delta")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read config: {err}") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the config must be a mapping of sections")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    config = _build(RunConfig, raw, "")
    _check(config)
    return config


def save_config(config: RunConfig, path: str | Path) -> None:
    from .io import write_text

    write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{key}': '{part}' is not a section")
    node[parts[-1]] = value


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{prefix.rstrip('.')}': expected a section (mapping)")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            raise ConfigError(f"unknown config key '{prefix}{key}' (known: {', '.join(sorted(names))})")
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        hint, key = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(hint):
            values[f.name] = _build(hint, raw[f.name], key + ".")
        else:
            values[f.name] = _coerce(raw[f.name], hint, key)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check a value against its annotated type; ints are accepted where floats are expected."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        origin = typing.get_origin(option) or option
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (str, bool) and type(value) is origin:
            return value
        if origin is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        if origin is dict and isinstance(value, dict):
            _, item = typing.get_args(option)
            return {str(k): _coerce(v, item, f"{key}.{k}") for k, v in value.items()}
    expected = " or ".join(getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"config key '{key}': expected {expected}, got {value!r}")


def _check(config: RunConfig) -> None:
    def get(key: str) -> Any:
        node: Any = config
        for part in key.split("."):
            node = getattr(node, part)
        return node

    for key, allowed in CHOICES.items():
        if get(key) not in allowed:
            raise ConfigError(f"config key '{key}': {get(key)!r} is not one of {', '.join(allowed)}")
    for key in SHARES:
        if not 0.0 <= get(key) <= 1.0:
            raise ConfigError(f"config key '{key}': {get(key)} is outside [0, 1]")
    for key in POSITIVE:
        if get(key) <= 0:
            raise ConfigError(f"config key '{key}': must be > 0, got {get(key)}")
    for key in NON_NEGATIVE:
        if get(key) < 0:
            raise ConfigError(f"config key '{key}': must be >= 0, got {get(key)}")
    stages = config.curriculum.stages
    if isinstance(stages, str) and stages != "auto":
        raise ConfigError(f"config key 'curriculum.stages': expected a list of stage names or 'auto', got {stages!r}")
    if config.memory.stm_replay + config.memory.ltm_replay >= 1.0:
        raise ConfigError("config keys 'memory.stm_replay' + 'memory.ltm_replay' must leave room for new data (< 1)")
    steps = config.curriculum.stage_steps
    if steps is not None and (any(s <= 0 for s in steps) or not steps):
        raise ConfigError("config key 'curriculum.stage_steps': shares must be positive")
