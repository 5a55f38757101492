"""Run configuration: small dataclasses, loaded from YAML with `--set dotted.key=value` overrides.

Every key is checked before any data or model loads: an unknown key, or a value of the wrong type or
range, is a ConfigError naming the key. The allowed values of a key live next to it, in the field's
metadata (`choice`, `between`, `at_least`): one source for the check and for the reader.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

SCORERS = ("length", "rarity", "model_loss")  # difficulty scorers, see curriculum.py
PACINGS = ("none", "linear", "sqrt", "step")  # competence schedules, see curriculum.competence
SELECTIONS = ("herding", "kcenter", "reservoir")  # LTM exemplar selection, see memory/selection.py
TEMPLATES = ("auto", "plain", "chat")  # prompt format, see data/formatting.py


def choice(default: Any, allowed: tuple) -> Any:
    return field(default=default, metadata={"choices": allowed})


def between(default: float, low: float, high: float, high_open: bool = False) -> Any:
    """A number in [low, high], or [low, high) with high_open."""
    return field(default=default, metadata={"range": (low, high, high_open)})


def at_least(default: float, low: float) -> Any:
    return field(default=default, metadata={"range": (low, None, False)})


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"  # hub id, local folder, or an embedded model (see models.py)
    max_length: int = at_least(128, 8)  # tokens per training sequence


@dataclass
class PeftConfig:
    method: str = choice("lora", ("lora", "full"))  # "full": full fine-tuning, a baseline
    r: int = at_least(8, 1)
    alpha: int = at_least(16, 1)
    dropout: float = between(0.05, 0.0, 1.0, high_open=True)
    target_modules: list[str] | str | None = None  # None or "attention": per architecture; "all-linear"; or names
    quantization: str = choice("none", ("none", "4bit"))  # 4bit: QLoRA (bitsandbytes, CUDA GPUs only)


@dataclass
class DataConfig:
    train: list[str] = field(default_factory=lambda: ["bundled:train"])
    # Stage metrics (the accuracy matrix, forgetting) need items about what training taught: retention probes.
    validation: list[str] = field(default_factory=lambda: ["bundled:validation-retention"])
    # With no validation files, this share of the training data is held out for the stage metrics.
    validation_split: float = between(0.05, 0.0, 0.5)
    max_train_examples: int = at_least(0, 0)  # 0: all
    template: str = choice("auto", TEMPLATES)  # auto: the tokenizer's chat template where it has one


@dataclass
class CurriculumConfig:
    order: str = choice("curriculum", ("curriculum", "mixed"))  # mixed: all stages shuffled together
    stages: list[str] | str = field(default_factory=lambda: ["general", "knowledge", "clinical"])  # or "auto"
    num_stages: int = at_least(3, 1)  # with stages: auto, difficulty quantiles
    stage_steps: list[float] | None = None  # share of train.max_steps per stage; None: in proportion to size
    pacing: str = choice("sqrt", PACINGS)  # competence schedule inside a stage
    start_competence: float = between(0.2, 0.0, 1.0)
    pacing_share: float = between(0.8, 0.0, 1.0)  # competence reaches 1 after this share of the stage's steps
    scorers: dict[str, float] = field(default_factory=lambda: {"length": 1.0, "rarity": 1.0})
    plateau_patience: int = at_least(0, 0)  # >0: a stage also ends once its validation loss stops improving
    plateau_every: int = at_least(20, 1)  # steps between those checks
    plateau_min_delta: float = at_least(0.01, 0.0)  # the least drop in loss that counts as improving


@dataclass
class MemoryConfig:
    enabled: bool = True
    stm_capacity: int = at_least(256, 1)
    stm_replay: float = between(0.125, 0.0, 1.0, high_open=True)  # share of each batch re-mixed from the STM
    ltm_capacity: int = at_least(384, 1)
    ltm_replay: float = between(0.25, 0.0, 1.0, high_open=True)  # share of each batch replayed from the LTM
    selection: str = choice("herding", SELECTIONS)
    consolidate_every: int = at_least(0, 0)  # also consolidate every N steps (0: only at stage ends)
    teacher_top_k: int = at_least(16, 1)  # top-k output distribution stored per target token
    # The consistency teacher: "stored" outputs at consolidation (ICFT), or "ema", an exponential moving
    # average of the adapter run on the replayed items (I-LoRA / CLS-ER; one more forward pass a step).
    teacher: str = choice("stored", ("stored", "ema"))
    ema_decay: float = between(0.99, 0.0, 1.0, high_open=True)
    # Put the k facts nearest to each training example (from the other training examples) in its prompt, so
    # the model learns to use the context `--retrieve` gives it at answer time (0: off).
    retrieve_in_training: int = at_least(0, 0)


@dataclass
class LossConfig:
    task: float = at_least(1.0, 0.0)  # w_t: supervised loss on the current batch
    consistency: float = at_least(1.0, 0.0)  # w_c: KL to the stored outputs on replayed LTM examples
    finetune: float = at_least(1.0, 0.0)  # w_f: language-modelling loss on replayed memory examples
    ewc: float = at_least(0.0, 0.0)  # lambda of elastic weight consolidation on the adapter (a baseline; 0: off)
    kl_base: float = at_least(0.0, 0.0)  # lambda of KL(base model || model) on each batch (a baseline; 0: off)


@dataclass
class TrainConfig:
    max_steps: int = at_least(300, 1)  # optimizer steps over all stages
    batch_size: int = at_least(16, 1)  # micro-batch per process
    grad_accum: int = at_least(1, 1)
    lr: float = at_least(1e-3, 0.0)
    weight_decay: float = at_least(0.0, 0.0)
    warmup_ratio: float = between(0.05, 0.0, 1.0)
    max_grad_norm: float = at_least(1.0, 0.0)
    seed: int = 0
    save_every: int = at_least(100, 1)
    log_every: int = at_least(10, 1)
    mixed_precision: str = choice("no", ("no", "fp16", "bf16"))  # through accelerate; bf16 also on CPU
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, slower
    eval_max_examples: int = at_least(200, 0)  # per stage, for the after-stage accuracy matrix (0: skip it)
    eval_every: int = at_least(0, 0)  # also measure every stage's validation items every N steps (learning curves)


@dataclass
class CompareConfig:
    """Used by `icft compare` only: which methods, how many seeds, what to test on."""

    methods: list[str] = field(
        default_factory=lambda: ["base", "full-ft", "lora-mixed", "lora-sequential", "lora-curriculum",
                                 "lora-memory", "icft"]  # fmt: skip
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    # The ablations (icft-no-*) run on the first N seeds only (0: all): they answer "which part matters",
    # a smaller question than ICFT against the baselines, so they get fewer runs.
    ablation_seeds: int = at_least(0, 0)
    test: list[str] = field(default_factory=lambda: ["bundled:test-retention", "bundled:test-unseen"])
    max_test_examples: int = at_least(0, 0)  # per kind (0: all)
    full_ft_lr: float = at_least(1e-4, 0.0)  # full fine-tuning needs a smaller step than LoRA
    jobs: int = at_least(1, 1)  # runs side by side, one CPU thread each (CPU machines); 1 = one after another
    # Learning-rate selection, the same for every method: at the first seed, train with each scale times the
    # method's own rate (train.lr; full_ft_lr for full-ft), keep the best on validation. []: no selection.
    lr_scales: list[float] = field(default_factory=list)


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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    raw: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
        if raw is None:  # an empty file is more likely the wrong file than a wish for every default
            raise ConfigError(f"{path}: the config is empty (no keys); give at least one key, e.g. name: my-run, "
                              "or leave out --config to train with every default")  # fmt: skip
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the config must be a mapping of sections")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        _set_dotted(raw, key.strip(), yaml.safe_load(value))
    config = _build(RunConfig, raw, "")
    check(config)
    return config


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content (None when empty or only comments); a ConfigError naming the file and, for text
    that is not UTF-8, the line."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from None
    if b"\0" in data:
        raise ConfigError(f"{path}: a binary file, not a YAML config")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x}); save the config as "
                          "UTF-8") from None  # fmt: skip
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: cannot read config: {err}") from None


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


def check(config: RunConfig) -> None:
    """Every key against its field's allowed values, then the rules that tie keys together."""
    _check_fields(config, "")
    cc, mc, loss = config.curriculum, config.memory, config.loss
    if isinstance(cc.stages, str) and cc.stages != "auto":
        raise ConfigError(f"config key 'curriculum.stages': expected a list of stage names or auto, got {cc.stages!r}")
    if isinstance(cc.stages, list) and (not cc.stages or len(set(cc.stages)) != len(cc.stages)):
        raise ConfigError(f"config key 'curriculum.stages': needs distinct stage names, got {cc.stages}")
    if cc.stage_steps is not None and (not cc.stage_steps or any(s <= 0 for s in cc.stage_steps)):
        raise ConfigError("config key 'curriculum.stage_steps': shares must be positive")
    for name, weight in cc.scorers.items():
        if name not in SCORERS:
            raise ConfigError(f"config key 'curriculum.scorers': unknown scorer '{name}' (known: {', '.join(SCORERS)})")
        if weight < 0:
            raise ConfigError(f"config key 'curriculum.scorers.{name}': must be >= 0, got {weight}")
    if not any(w > 0 for w in cc.scorers.values()):
        raise ConfigError("config key 'curriculum.scorers': give one scorer a positive weight, e.g. {length: 1}")
    target = config.peft.target_modules
    if isinstance(target, str) and target not in ("attention", "all-linear"):
        raise ConfigError(f"config key 'peft.target_modules': {target!r} is not attention, all-linear or a name list")
    if mc.stm_replay + mc.ltm_replay >= 1.0:
        raise ConfigError("config keys 'memory.stm_replay' + 'memory.ltm_replay' must leave room for new data (< 1)")
    if config.loss.kl_base > 0 and config.peft.method != "lora":
        raise ConfigError("config key 'loss.kl_base': the base model is the LoRA model with its adapter off; "
                          "it needs peft.method=lora")  # fmt: skip
    if loss.task == 0 and loss.consistency == 0 and loss.finetune == 0:
        raise ConfigError("config keys 'loss.task', 'loss.consistency' and 'loss.finetune' are all 0: nothing to "
                          "train on; give one a positive weight")  # fmt: skip
    if not config.data.train:
        raise ConfigError("config key 'data.train': give at least one training file (or bundled:train)")
    if not config.compare.seeds:
        raise ConfigError("config key 'compare.seeds': give at least one seed, e.g. [0, 1, 2]")
    if not config.compare.methods:
        raise ConfigError("config key 'compare.methods': give at least one method")
    if any(not isinstance(x, (int, float)) or x <= 0 for x in config.compare.lr_scales):
        raise ConfigError(f"config key 'compare.lr_scales': scales must be positive, got {config.compare.lr_scales}")


def _check_fields(node: Any, prefix: str) -> None:
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), prefix + f.name
        if dataclasses.is_dataclass(value):
            _check_fields(value, key + ".")
            continue
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(f.metadata['choices'])}")
        if "range" in f.metadata:
            low, high, high_open = f.metadata["range"]
            if value < low or (high is not None and (value >= high if high_open else value > high)):
                where = f">= {low}" if high is None else f"in [{low}, {high}{')' if high_open else ']'}"
                raise ConfigError(f"config key '{key}': must be {where}, got {value}")
