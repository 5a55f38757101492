"""Run configuration: pydantic models, loaded from YAML with `--set dotted.key=value` overrides.

Every key is checked before any data or model loads: an unknown key, or a value of the wrong type or
range, is a ConfigError naming the key. A key's type and allowed values are its field's annotation
(`Literal[...]`, `Field(ge=..., lt=...)`): one source for the check and for the reader. Types are strict
(no "3" for 3, no true for 1); an int is accepted where a float is expected. Assignment is not validated
(a config stays mutable, as `icft compare` and the demo need it): `check(config)` validates it again.
"""

from __future__ import annotations

import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

Scorer = Literal["length", "rarity", "model_loss"]  # difficulty scorers, see curriculum.py
Pacing = Literal["none", "linear", "sqrt", "step"]  # competence schedules, see curriculum.competence
Selection = Literal["herding", "kcenter", "reservoir"]  # LTM exemplar selection, see memory/selection.py
Template = Literal["auto", "plain", "chat"]  # prompt format, see data/formatting.py
SCORERS, PACINGS, SELECTIONS, TEMPLATES = (typing.get_args(t) for t in (Scorer, Pacing, Selection, Template))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ModelConfig(Section):
    name: str = "smollm2-135m-instruct"  # hub id, local folder, or an embedded model (see models.py)
    max_length: int = Field(128, ge=8)  # tokens per training sequence


class PeftConfig(Section):
    method: Literal["lora", "full"] = "lora"  # "full": full fine-tuning, a baseline
    r: int = Field(8, ge=1)
    alpha: int = Field(16, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str | None = None  # None or "attention": per architecture; "all-linear"; or names
    quantization: Literal["none", "4bit"] = "none"  # 4bit: QLoRA (bitsandbytes, CUDA GPUs only)


class DataConfig(Section):
    train: list[str] = ["bundled:train"]
    # Stage metrics (the accuracy matrix, forgetting) need items about what training taught: retention probes.
    validation: list[str] = ["bundled:validation-retention"]
    # With no validation files, this share of the training data is held out for the stage metrics.
    validation_split: float = Field(0.05, ge=0.0, le=0.5)
    max_train_examples: int = Field(0, ge=0)  # 0: all
    template: Template = "auto"  # auto: the tokenizer's chat template where it has one
    # {source: system prompt}; "*" for every other source and for chat/serve conversations ({}: none). Saved in
    # the run's prompt_format.json, so every path (training, eval, generate, chat, serve) asks with it.
    system_prompt: dict[str, str] = {}


class CurriculumConfig(Section):
    order: Literal["curriculum", "mixed"] = "curriculum"  # mixed: all stages shuffled together
    stages: list[str] | str = ["general", "knowledge", "clinical"]  # or "auto"
    num_stages: int = Field(3, ge=1)  # with stages: auto, difficulty quantiles
    stage_steps: list[float] | None = None  # share of train.max_steps per stage; None: in proportion to size
    pacing: Pacing = "sqrt"  # competence schedule inside a stage
    start_competence: float = Field(0.2, ge=0.0, le=1.0)
    pacing_share: float = Field(0.8, ge=0.0, le=1.0)  # competence reaches 1 after this share of the stage's steps
    scorers: dict[str, float] = {"length": 1.0, "rarity": 1.0}
    plateau_patience: int = Field(0, ge=0)  # >0: a stage also ends once its validation loss stops improving
    plateau_every: int = Field(20, ge=1)  # steps between those checks
    plateau_min_delta: float = Field(0.01, ge=0.0)  # the least drop in loss that counts as improving

    @field_validator("scorers", mode="before")
    @classmethod
    def _scorer_names_as_text(cls, value: Any) -> Any:  # YAML reads `{1: 2}` with an int key
        return {str(k): v for k, v in value.items()} if isinstance(value, dict) else value


class MemoryConfig(Section):
    enabled: bool = True
    stm_capacity: int = Field(256, ge=1)
    stm_replay: float = Field(0.125, ge=0.0, lt=1.0)  # share of each batch re-mixed from the STM
    ltm_capacity: int = Field(384, ge=1)
    ltm_replay: float = Field(0.25, ge=0.0, lt=1.0)  # share of each batch replayed from the LTM
    selection: Selection = "herding"
    consolidate_every: int = Field(0, ge=0)  # also consolidate every N steps (0: only at stage ends)
    teacher_top_k: int = Field(16, ge=1)  # top-k output distribution stored per target token
    # The consistency teacher: "stored" outputs at consolidation (ICFT), or "ema", an exponential moving
    # average of the adapter run on the replayed items (I-LoRA / CLS-ER; one more forward pass a step).
    teacher: Literal["stored", "ema"] = "stored"
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0)
    # Put the k facts nearest to each training example (from the other training examples) in its prompt, so
    # the model learns to use the context `--retrieve` gives it at answer time (0: off).
    retrieve_in_training: int = Field(0, ge=0)
    # The relevance floor of --retrieve K at answer time: facts whose cosine similarity to the question is below
    # it are left out of the prompt (None: the top K whatever they score). Saved with the run, read by every path.
    retrieve_min_score: float | None = Field(None, ge=-1.0, le=1.0)
    # The stage-0 memory (issue 36): files of general prompts (or records with a question/instruction) whose
    # untrained greedy answers and output distributions are recorded before step 0 into a protected LTM group,
    # replayed in every stage with its own consistency term anchored to the untrained model ([]: off).
    general: list[str] = []
    general_size: int = Field(64, ge=0)  # prompts in the stage-0 memory (0: none; the probe may still be made)
    general_probe: int = Field(20, ge=0)  # other prompts kept out as the own-voice validation probe
    general_new_tokens: int = Field(48, ge=1)  # greedy answer budget of the untrained model
    general_replay: float = Field(0.25, ge=0.0, lt=1.0)  # stage-0 rows added to each batch, a share of its size
    general_consistency: float = Field(1.0, ge=0.0)  # weight of the stage-0 group's KL to the untrained model
    general_ce: float = Field(0.0, ge=0.0)  # weight of cross-entropy on its self-generated answers (self-distillation)


class LossConfig(Section):
    task: float = Field(1.0, ge=0.0)  # w_t: supervised loss on the current batch
    consistency: float = Field(1.0, ge=0.0)  # w_c: KL to the stored outputs on replayed LTM examples
    finetune: float = Field(1.0, ge=0.0)  # w_f: language-modelling loss on replayed memory examples
    ewc: float = Field(0.0, ge=0.0)  # lambda of elastic weight consolidation on the adapter (a baseline; 0: off)
    kl_base: float = Field(0.0, ge=0.0)  # lambda of KL(base model || model) on each batch (a baseline; 0: off)


class TrainConfig(Section):
    max_steps: int = Field(300, ge=1)  # optimizer steps over all stages
    batch_size: int = Field(16, ge=1)  # micro-batch per process
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, ge=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_ratio: float = Field(0.05, ge=0.0, le=1.0)
    max_grad_norm: float = Field(1.0, ge=0.0)
    seed: int = 0
    save_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    # Each micro-batch's rows packed end to end into one row, no padding (data/tokenize.py `pack`): the same
    # losses, fewer tokens through the model. Off by itself for a model that does not keep packed rows apart.
    packing: bool = True
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # through accelerate; bf16 also on CPU
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, slower
    eval_max_examples: int = Field(200, ge=0)  # per stage, for the after-stage accuracy matrix (0: skip it)
    eval_every: int = Field(0, ge=0)  # also measure every stage's validation items every N steps (learning curves)
    # Consolidation by merging (WiSE-FT): the LoRA scaling times alpha, saved with the run (adapter/merge.json)
    # and applied wherever the run loads. A number, or auto: chosen on validation only from merge_grid by the
    # medical validation answer-NLL drop plus the own-voice probe's drop (needs memory.general). None: off.
    merge_alpha: float | Literal["auto"] | None = None
    merge_grid: list[float] = [0.25, 0.5, 0.75, 1.0]


class EvalSet(Section):
    """One evaluation file of `icft compare` (compare.test, compare.validation). A bare path in the list is an
    EvalSet with that path and every other key at its default."""

    path: str  # bundled:<name> or a data file
    label: str = ""  # the name it is reported under ("": from the path, bundled:test-unseen -> unseen)
    # New tokens per greedy answer to an open question, scored by ROUGE-L and the other generation metrics
    # (None: the evaluation default; 0: none, likelihoods only). Own-voice sets: the references' length.
    answers: int | None = Field(None, ge=0)
    # The untrained model's greedy answers to these prompts are the references (computed once, cached in the
    # compare folder); scored by the NLL of those answers alone: a rise is forgetting of what the model said.
    own_voice: bool = False
    content: bool = False  # its items' answer NLL pools into the content composite (answer NLL drop vs base)


class CompareConfig(Section):
    """Used by `icft compare` only: which methods, how many seeds, what to test on, what to tune."""

    methods: list[str] = ["base", "full-ft", "lora-mixed", "lora-sequential", "lora-curriculum", "lora-memory", "icft"]
    seeds: list[int] = [0, 1, 2]
    # The ablations (icft-no-*) run on the first N seeds only (0: all): they answer "which part matters",
    # a smaller question than ICFT against the baselines, so they get fewer runs.
    ablation_seeds: int = Field(0, ge=0)
    test: list[EvalSet] = [EvalSet(path="bundled:test-retention"), EvalSet(path="bundled:test-unseen")]
    max_test_examples: int = Field(0, ge=0)  # per kind (0: all)
    full_ft_lr: float = Field(1e-4, ge=0.0)  # full fine-tuning needs a smaller step than LoRA
    jobs: int = Field(1, ge=1)  # runs side by side, one CPU thread each (CPU machines); 1 = one after another
    # Tries, chosen on validation at the first seed: {method: {tag: {config key: value, "lr_scale": x}}}; each
    # tag is one more run of the method (its defaults are always tried too), "lr_scale" multiplies its rate.
    tries: dict[str, dict[str, dict[str, Any]]] = {}
    # Shorthand for the same try for every trained method: {"x<s>": {"lr_scale": s}} for each scale (the
    # defaults are not tried unless 1 is listed). Not together with `tries`.
    lr_scales: list[float] = []
    # How a try is chosen: average_accuracy (stage accuracy on data.validation after training; lowest answer
    # NLL where nothing is scored by choice) or trade (content answer-NLL drop + own-voice NLL drop against
    # the untrained model on compare.validation, nats per answer token, equal weights).
    criterion: Literal["average_accuracy", "trade"] = "average_accuracy"
    validation: list[EvalSet] = []  # the sets `trade` scores tries on ([]: data.validation, as content)
    # WiSE-FT points (the final LoRA adapter scaled by alpha, no training) of wise_methods ([]: every trained
    # LoRA method) at every seed, scored on the wise_sets test labels ([]: all), reported as "<method> a=<alpha>".
    wise_alphas: list[float] = []
    wise_methods: list[str] = []
    wise_sets: list[str] = []

    @field_validator("test", "validation", mode="before")
    @classmethod
    def _paths_as_sets(cls, value: Any) -> Any:
        return [{"path": v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value


class RunConfig(Section):
    name: str = "demo"
    output_dir: str = ""  # default runs/<name>
    model: ModelConfig = ModelConfig()
    peft: PeftConfig = PeftConfig()
    data: DataConfig = DataConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    memory: MemoryConfig = MemoryConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    compare: CompareConfig = CompareConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @model_validator(mode="after")
    def _rules_between_keys(self) -> RunConfig:
        """The rules a single field's annotation cannot say; they run once every field is valid."""
        cc, mc, loss = self.curriculum, self.memory, self.loss
        if isinstance(cc.stages, str) and cc.stages != "auto":
            raise ConfigError(f"config key 'curriculum.stages': expected a list of stage names or auto, got "
                              f"{_short(cc.stages)}")  # fmt: skip
        if isinstance(cc.stages, list) and (not cc.stages or len(set(cc.stages)) != len(cc.stages)):
            raise ConfigError(f"config key 'curriculum.stages': needs distinct stage names, got {_short(cc.stages)}")
        if cc.stage_steps is not None and (not cc.stage_steps or any(s <= 0 for s in cc.stage_steps)):
            raise ConfigError("config key 'curriculum.stage_steps': shares must be positive")
        for name, weight in cc.scorers.items():
            if name not in SCORERS:
                raise ConfigError(f"config key 'curriculum.scorers': unknown scorer '{name}' (known: "
                                  f"{', '.join(SCORERS)})")  # fmt: skip
            if weight < 0:
                raise ConfigError(f"config key 'curriculum.scorers.{name}': must be >= 0, got {weight}")
        if not any(w > 0 for w in cc.scorers.values()):
            raise ConfigError("config key 'curriculum.scorers': give one scorer a positive weight, e.g. {length: 1}")
        target = self.peft.target_modules
        if isinstance(target, str) and target not in ("attention", "all-linear"):
            raise ConfigError(f"config key 'peft.target_modules': {_short(target)} is not attention, all-linear or "
                              "a name list")  # fmt: skip
        if mc.stm_replay + mc.ltm_replay >= 1.0:
            raise ConfigError("config keys 'memory.stm_replay' + 'memory.ltm_replay' must leave room for new data "
                              "(< 1)")  # fmt: skip
        if loss.kl_base > 0 and self.peft.method != "lora":
            raise ConfigError("config key 'loss.kl_base': the base model is the LoRA model with its adapter off; "
                              "it needs peft.method=lora")  # fmt: skip
        self._merge_rules()
        if loss.task == 0 and loss.consistency == 0 and loss.finetune == 0:
            raise ConfigError("config keys 'loss.task', 'loss.consistency' and 'loss.finetune' are all 0: nothing "
                              "to train on; give one a positive weight")  # fmt: skip
        if not self.data.train:
            raise ConfigError("config key 'data.train': give at least one training file (or bundled:train)")
        if not self.compare.seeds:
            raise ConfigError("config key 'compare.seeds': give at least one seed, e.g. [0, 1, 2]")
        if not self.compare.methods:
            raise ConfigError("config key 'compare.methods': give at least one method")
        if any(x <= 0 for x in self.compare.lr_scales):
            raise ConfigError("config key 'compare.lr_scales': scales must be positive, got "
                              f"{_short(self.compare.lr_scales)}")
        if self.compare.lr_scales and self.compare.tries:
            raise ConfigError("config keys 'compare.lr_scales' and 'compare.tries': give one (lr_scales is a "
                              "shorthand for tries)")  # fmt: skip
        if any(not 0 <= a <= 1 for a in self.compare.wise_alphas):
            raise ConfigError(f"config key 'compare.wise_alphas': alphas lie in [0, 1], got "
                              f"{_short(self.compare.wise_alphas)}")  # fmt: skip
        return self


    def _merge_rules(self) -> None:
        alpha, grid = self.train.merge_alpha, self.train.merge_grid
        if alpha is None:
            return
        if self.peft.method != "lora":
            raise ConfigError("config key 'train.merge_alpha': scales a LoRA adapter; it needs peft.method=lora")
        if alpha == "auto" and not self.memory.general:
            raise ConfigError("config key 'train.merge_alpha': auto is chosen on the own-voice probe made from "
                              "memory.general; give memory.general a file of general prompts")  # fmt: skip
        if not isinstance(alpha, str) and alpha < 0:
            raise ConfigError(f"config key 'train.merge_alpha': must be >= 0, got {alpha}")
        if not grid or any(a <= 0 for a in grid):
            raise ConfigError(f"config key 'train.merge_grid': positive scales, got {grid}")


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
            raise ConfigError(f"--set {_short(item)}: expected dotted.key=value")
        _set_dotted(raw, key.strip(), load_yaml_text(value, f"--set {_short(item)}"))
    return _validate(raw)


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
    return load_yaml_text(text, str(path))


class YamlAliasError(yaml.YAMLError):
    def __init__(self, line: int):
        super().__init__(f"line {line}")
        self.line = line


class NoAliasLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing aliases (*name). An alias repeats a value by reference: nested ones let a few
    lines stand for billions of values (an "alias bomb"), which anything walking the config (a check, an error
    message, a hash) would expand until memory runs out. Configs have no need for them."""

    def compose_node(self, parent, index):  # noqa: ANN001, ANN201 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            raise YamlAliasError(self.peek_event().start_mark.line + 1)
        return super().compose_node(parent, index)


def load_yaml_text(text: str, where: str) -> Any:
    """YAML text as icft reads every config (files, --set values, a run's config.yaml): aliases, nesting beyond
    Python's recursion limit and syntax errors are a one-line ConfigError naming `where`."""
    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except YamlAliasError as err:
        raise ConfigError(f"{where}:{err.line}: YAML aliases (*name) are not accepted in icft configs; write the "
                          "value out in full") from None  # fmt: skip
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply to read (a config is a few levels of sections)") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{where}: cannot read config: {' '.join(str(err).split())[:300]}") from None


_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict, _REPR.maxlevel = 60, 60, 6, 6, 3


def _short(value: Any) -> str:
    """repr() cut to a line: an error message never echoes (or walks) a whole huge value."""
    return _REPR.repr(value)


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


def check(config: RunConfig) -> None:
    """Validate a config again after its fields were assigned (assignment itself is not validated)."""
    _validate(config.model_dump())


def _validate(raw: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as error:
        # One error is reported: a wrong type or unknown key before a value out of range (as the checks by hand did).
        first = sorted(error.errors(), key=lambda e: e["type"] in VALUE_ERRORS)[0]
        raise ConfigError(_message(first)) from None


RANGE_ERRORS = ("greater_than_equal", "less_than", "less_than_equal")
VALUE_ERRORS = (*RANGE_ERRORS, "literal_error")  # the others: a wrong type, an unknown key


def _message(error: Any) -> str:
    """A pydantic error as icft's one-line message, naming the dotted key (a list item as key[i])."""
    kind, loc, value = error["type"], error["loc"], error["input"]
    if kind == "value_error":  # a rule of RunConfig._rules_between_keys, already worded
        return str(error["ctx"]["error"])
    key, hint, field = "", RunConfig, None
    path = loc[:-1] if kind == "extra_forbidden" else loc
    for i, part in enumerate(path):
        options = _options(hint)
        if isinstance(hint, type) and issubclass(hint, BaseModel):
            field = hint.model_fields[part]
            key, hint = f"{key}.{part}".lstrip("."), field.annotation
        elif isinstance(part, int) and _member(options, list):  # a list item
            key, hint = f"{key}[{part}]", typing.get_args(_member(options, list))[0]
        elif _member(options, dict):  # a dict's value
            key, hint = f"{key}.{part}", typing.get_args(_member(options, dict))[1]
        elif i < len(path) - 1:  # pydantic names the union member ("list[str]") the error is inside of
            hint = next(o for o in options if part.startswith(getattr(o, "__name__", "")))
    if kind == "extra_forbidden":
        known = ", ".join(sorted(hint.model_fields))
        return f"unknown config key '{key}.{loc[-1]}' (known: {known})".replace("'.", "'")
    if kind == "model_type":
        return f"config key '{key}': expected a section (mapping)"
    if kind == "literal_error" and isinstance(value, str):
        return f"config key '{key}': {_short(value)} is not one of {', '.join(typing.get_args(hint))}"
    if kind in RANGE_ERRORS:  # Field(ge=..., le=... or lt=...)
        limit = {name: getattr(m, name) for m in field.metadata for name in ("ge", "le", "lt") if hasattr(m, name)}
        high = limit.get("le", limit.get("lt"))
        where = f">= {limit['ge']}" if high is None else f"in [{limit['ge']}, {high}{')' if 'lt' in limit else ']'}"
        return f"config key '{key}': must be {where}, got {float(value) if hint is float else value}"
    expected = " or ".join("str" if typing.get_origin(o) is Literal else getattr(o, "__name__", str(o))
                           for o in _options(hint))  # fmt: skip
    return f"config key '{key}': expected {expected}, got {_short(value)}"


def _options(hint: Any) -> tuple:
    """The members of a union annotation (`list[str] | None`), or the annotation alone."""
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _member(options: tuple, container: type) -> Any:
    return next((o for o in options if typing.get_origin(o) is container), None)
