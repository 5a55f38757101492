"""A training run folder, as `icft train` writes it, and the one way to load the model it produced.

runs/<name>/
  .icft-run.json     written first: marks the folder as icft's, with the config's hash and the names icft owns
  .icft-run.lock     locked (flock) by the process training in the folder, for as long as it runs
  config.yaml        the resolved run config
  prompt_format.json the prompt format it trained in (template, max_length): how it is asked and served
  adapter/ | model/  LoRA adapter (on top of config's model.name) | the whole model (full fine-tuning)
  memory/            the long-term memory (memory.jsonl + tensors.pt)
  metrics.jsonl, stage_eval.json, summary.json, checkpoints/, tensorboard/

icft writes only into a new or empty folder, or one with its marker, and removes only the names the marker
lists (RUN_ENTRIES), never a user's file. It follows no link there: the lock is opened with O_NOFOLLOW and must
be a plain file, a resumed run whose files or checkpoints/ are links is refused, and a link in icft's place is
removed itself, not what it points to. adapter/, model/ and memory/ each carry the hash of the config
they were trained under, so a folder whose config.yaml moved on without them is refused, not evaluated.

`Run.from_pretrained(run_dir)` loads a finished run whole: model, tokenizer, prompt format, long-term memory
and config. A folder written before prompt_format.json existed gets the format its config.yaml resolves to.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import ConfigError, TrainingError
from .io import read_json, remove_path

if TYPE_CHECKING:
    from .data.prompt_format import PromptFormat
    from .memory.long_term import LongTermMemory

MARKER = ".icft-run.json"
LOCK = ".icft-run.lock"
PROMPT_FORMAT_FILE = "prompt_format.json"
HASH_FILE = ".icft-config-hash"  # in adapter/, model/ and memory/: the config_hash they were trained under
# Everything icft writes at the top of a run folder (train, and compare's per-run results): the only names it
# ever removes there, and only in a folder holding its marker.
RUN_ENTRIES = ("config.yaml", PROMPT_FORMAT_FILE, "checkpoints", "tensorboard", "metrics.jsonl", "adapter", "model",
               "memory", "stage_eval.json", "summary.json", "items.json", "result.json")  # fmt: skip
FINISHED = ("adapter", "model", "summary.json")  # a run that wrote one of these has ended (or was ending)
PARTIAL_CHECKPOINT = ".tmp-step-"  # checkpoint.save_checkpoint writes checkpoints/.tmp-step-N, then renames it


def config_hash(config: dict[str, Any]) -> str:
    """A short hash of a run config (its dict, or config.yaml as loaded): equal configs, equal hashes."""
    canonical = yaml.safe_load(yaml.safe_dump(config))  # the dict as config.yaml holds it
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).hexdigest()[:16]


class RunFolder:
    """The run folder a training process writes: checked, then claimed (locked, marked) before the model loads.

    check() is read-only (a file in the way, a folder that is not icft's, a folder in use) and runs before the
    data loads; claim() takes the lock, removes what killed writes left behind and, for a new run, the files
    of the run before it, and writes the marker. The lock is an flock: the OS frees it when its process
    dies, so a run killed with kill -9 resumes without anything to clean up by hand.
    """

    def __init__(self, path: Path, resume: bool = False, overwrite: bool = False):
        self.path, self.resume, self.overwrite = Path(path), resume, overwrite
        self.fd: int | None = None
        self.created = False

    def check(self) -> None:
        from .io import check_output_dir

        check_output_dir(self.path, "--resume" if self.resume else "--output-dir")
        if not self.path.is_dir():
            return
        if self.resume:
            self._check_resumable()
        if read_marker(self.path) is None and not self._legacy_resume():
            foreign = [p.name for p in sorted(self.path.iterdir()) if not _icft_own_without_marker(p.name)]
            if foreign:
                shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
                raise ConfigError(f"{self.path}: not empty ({shown}) and not an icft run folder (no {MARKER}); icft "
                                  "writes only into a new or empty folder or its own run folder: give another "
                                  "--output-dir")  # fmt: skip
        holder = _lock_holder(self.path)
        if holder is not None:
            raise TrainingError(f"{self.path} is in use by process {holder}")

    def _legacy_resume(self) -> bool:
        """A run folder of an icft older than the marker, resumed: config.yaml and a complete checkpoint."""
        return self.resume and (self.path / "config.yaml").is_file() and bool(checkpoint_folders(self.path))

    def _check_resumable(self) -> None:
        """Before the data loads: a resumed run writes into its files, so none may be a link (it would be written
        through, and checkpoint rotation would delete where it points), and it needs a checkpoint to resume."""
        for name in RUN_ENTRIES:
            if (self.path / name).is_symlink():
                raise TrainingError(f"{self.path / name}: a symbolic link; a resumed run writes only into its own "
                                    "files and folders, not through links: replace the link with what it points "
                                    "to, or train again in a new --output-dir")  # fmt: skip
        real_folder(self.path / "checkpoints", self.path)
        if not checkpoint_folders(self.path):
            raise TrainingError(f"--resume {self.path}: no checkpoint yet (the run stopped before its first, every "
                                f"train.save_every steps): run `icft train --config {self.path / 'config.yaml'} "
                                f"--output-dir {self.path}` again with the same config")  # fmt: skip

    def claim(self, config: dict[str, Any], say) -> None:
        from .io import remove_leftovers, write_json

        self.check()
        self.created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self.fd = _lock(self.path)
        try:
            marker = read_marker(self.path)  # again, now that no other icft process can change it
            new = config_hash(config)
            left = remove_leftovers(self.path, RUN_ENTRIES + (MARKER,))
            checkpoints = self.path / "checkpoints"
            if checkpoints.is_dir() and not checkpoints.is_symlink():  # a link is removed below, never followed
                left += [p for p in checkpoints.glob(PARTIAL_CHECKPOINT + "*") if remove_path(p)]
            if left:
                say(f"removed what an interrupted run left half-written: {', '.join(p.name for p in left)}")
            if not self.resume and marker is not None:
                self._check_replace(marker, new, config)
                removed = remove_own(self.path, marker)
                if removed:
                    say(f"starting a new run in {self.path}: removed the earlier run's {', '.join(removed)} "
                        "(use --resume to continue a run instead)")  # fmt: skip
            write_json(self.path / MARKER, {"icft_run": 1, "config_hash": new, "owned": [*RUN_ENTRIES, LOCK]})
        except BaseException:
            self.release(failed=True)
            raise

    def _check_replace(self, marker: dict, new: str, config: dict[str, Any]) -> None:
        """A new run may replace a run of its own config, or anything with --overwrite; not another config's run."""
        if marker.get("config_hash") == new or self.overwrite:
            return
        if any((self.path / name).exists() for name in FINISHED):
            what = "a finished run"
        elif checkpoint_folders(self.path):
            what = "an interrupted run"
        else:
            return  # nothing trained there: nothing to lose
        changed = _changed_keys(self.path / "config.yaml", config)
        resume = f", --resume {self.path} to continue it" if what == "an interrupted run" else ""
        raise ConfigError(f"{self.path} holds {what} of another config{changed}: give another --output-dir{resume}, "
                          "or add --overwrite to replace it")  # fmt: skip

    def release(self, failed: bool = False) -> None:
        """Unlock. A failed run that had made the folder and written nothing but the marker leaves no folder."""
        if self.fd is None:
            return
        if failed and self.created and {p.name for p in self.path.iterdir()} <= {MARKER, LOCK}:
            for name in (MARKER, LOCK):
                (self.path / name).unlink(missing_ok=True)
            self.path.rmdir()
        os.close(self.fd)  # closing the file frees the lock
        self.fd = None


def read_marker(run_dir: Path) -> dict | None:
    """The folder's marker, or None when it has none. An unreadable marker still marks the folder as icft's; one
    whose `owned` is not a list of names is a ConfigError (icft would not know which files are its own)."""
    path = Path(run_dir) / MARKER
    if not path.is_file():
        return None
    try:
        marker = read_json(path)
    except ConfigError:
        return {}
    if not isinstance(marker, dict):
        return {}
    owned = marker.get("owned", [])
    if not isinstance(owned, list) or not all(isinstance(name, str) for name in owned):
        got = type(owned).__name__ if not isinstance(owned, list) else "a list holding other things than names"
        raise ConfigError(f"{path}: field 'owned' must be a list of file names, got {got}: the marker is damaged; "
                          "delete it, then --resume the run there or give a new run another --output-dir")  # fmt: skip
    return marker


def real_folder(path: Path, run_dir: Path) -> None:
    """`path` (inside run_dir) is missing or a real folder, not a link: icft deletes in it."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        what = "a symbolic link" if path.is_symlink() else "not a folder"
        raise TrainingError(f"{path}: {what}; icft removes old checkpoints in there, so it must be a real folder "
                            f"of the run {run_dir}: remove it, or train in a new --output-dir")  # fmt: skip


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """The run's complete checkpoints (checkpoints/step-N, real folders), oldest first; none under a link."""
    root = Path(run_dir) / "checkpoints"
    if root.is_symlink() or not root.is_dir():
        return []
    return sorted(p for p in root.glob("step-*") if p.is_dir() and not p.is_symlink())


def remove_own(run_dir: Path, marker: dict) -> list[str]:
    """Remove the run files the marker lists (only names icft writes: a marker cannot point elsewhere)."""
    removed = []
    for name in marker.get("owned", RUN_ENTRIES):
        path = run_dir / name
        if name not in RUN_ENTRIES or not (path.exists() or path.is_symlink()):
            continue
        if name == "checkpoints" and path.is_dir() and not path.is_symlink():
            for step in [*path.glob("step-*"), *path.glob(PARTIAL_CHECKPOINT + "*")]:
                remove_path(step)
            if not any(path.iterdir()):  # anything else in there is not icft's
                path.rmdir()
        else:
            remove_path(path)
        removed.append(name)
    return removed


def _icft_own_without_marker(name: str) -> bool:
    """What a folder may hold and still count as empty: the lock and marker of a claim killed halfway."""
    return name == LOCK or re.fullmatch(re.escape(MARKER) + r"\..+", name) is not None


def _lock(run_dir: Path) -> int:
    fd = _open_lock(run_dir / LOCK, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise TrainingError(f"{run_dir} is in use by process {holder}") from None
    os.ftruncate(fd, 0)  # safe: _open_lock made sure it is the folder's own plain file
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _open_lock(path: Path, flags: int) -> int:
    """Open the lock file without following a link (a link would have the lock truncate any file), and only if it
    is a plain file with no other name (a hard link to a user's file would be truncated too)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as error:
        if path.is_symlink():
            raise TrainingError(f"{path}: a symbolic link, not icft's lock file: remove it") from None
        raise TrainingError(f"{path}: cannot open the lock file ({error.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        what = "has another name (a hard link)" if stat.S_ISREG(info.st_mode) else "not a plain file"
        raise TrainingError(f"{path}: {what}, not icft's lock file: remove it")
    return fd


def _lock_holder(run_dir: Path) -> str | None:
    """The process id holding the folder's lock, or None when no live process holds it."""
    path = run_dir / LOCK
    if not path.is_file() and not path.is_symlink():
        return None
    fd = _open_lock(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
    finally:
        os.close(fd)


def _changed_keys(old_path: Path, new: dict[str, Any], shown: int = 4) -> str:
    """' (key: old -> new, ...)' between a saved config.yaml and a config, or '' when it cannot be read."""
    from .config import read_yaml

    try:
        old = read_yaml(old_path)
    except ConfigError:
        return ""
    if not isinstance(old, dict):
        return ""
    a, b = _flat(old), _flat(yaml.safe_load(yaml.safe_dump(new)))
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if not keys:
        return ""
    text = ", ".join(f"{k}: {a.get(k)} -> {b.get(k)}" for k in keys[:shown])
    return f" ({text}{', ...' if len(keys) > shown else ''})"


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + str(key): value})
    return out


def stamp(folder: Path, run_dir: Path) -> None:
    """Write the hash of run_dir's config.yaml into an output folder (adapter/, model/, memory/)."""
    (Path(folder) / HASH_FILE).write_text(config_hash(run_config(run_dir)) + "\n", encoding="utf-8")


def check_parts_match(run_dir: str | Path) -> None:
    """adapter/ (or model/) and memory/ must have been trained under the config in config.yaml: a ConfigError
    names the part that was not. Parts written before icft stamped them (no .icft-config-hash) are accepted
    without a check."""
    run_dir = Path(run_dir)
    expected = config_hash(run_config(run_dir))
    for part in ("adapter", "model", "memory"):
        path = run_dir / part / HASH_FILE
        if path.is_file() and path.read_text(encoding="utf-8", errors="replace").strip() != expected:
            raise ConfigError(f"{run_dir / part} was trained under another config than {run_dir / 'config.yaml'}: "
                              f"the folder mixes two runs; finish the newer one (icft train --resume {run_dir}) or "
                              "train again")  # fmt: skip


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """The run's config.yaml as a dict; a clear error when the folder is not a finished run."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        from .errors import not_a_run

        raise not_a_run(run_dir)
    from .config import read_yaml

    config = read_yaml(path)
    name = (config.get("model") or {}).get("name") if isinstance(config, dict) else None
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{path}: field 'model.name' missing (the adapter's base model)")
    return config


def load_run(run_dir: str | Path, device: str | None = None):
    """(model, tokenizer) of a finished run: base model + adapter/, or model/ for full fine-tuning."""
    from .models import load_model

    run_dir = Path(run_dir)
    config = run_config(run_dir)
    check_parts_match(run_dir)
    if (run_dir / "model").is_dir():
        model, tokenizer = _load(load_model, str(run_dir / "model"))
    else:
        adapter = run_dir / "adapter"
        if not adapter.is_dir():
            raise FileNotFoundError(f"{adapter}: adapter not found (did the run finish? resume it with "
                                    f"icft train --resume {run_dir})")  # fmt: skip
        model, tokenizer = _load(load_model, config["model"]["name"])
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter))
        except (OSError, ValueError, KeyError) as error:
            raise FileNotFoundError(f"{adapter}: could not load the adapter onto "
                                    f"'{config['model']['name']}': {error}") from None  # fmt: skip
        apply_saved_merge(model, adapter)  # train.merge_alpha: the WiSE-FT scale saved with the run (merge.json)
    return model.to(device or _best_device()), tokenizer


@dataclass
class Run:
    """A finished run, loaded whole (peft's `from_pretrained` style): what answering with it needs.

    `format` is the prompt format it trained in; `memory` its long-term memory (None when it saved none);
    `config` its config.yaml. `Run.from_base(name)` wraps a model folder or name the same way (format: its
    prompt_format.json, else auto).
    """

    model: Any
    tokenizer: Any
    format: PromptFormat
    config: dict[str, Any]
    memory: LongTermMemory | None = None
    path: Path | None = None

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, device: str | None = None, memory: bool = True) -> Run:
        """Load `run_dir` (errors as `load_run`'s); `memory=False` leaves the long-term memory on disk."""
        run_dir = Path(run_dir)
        model, tokenizer = load_run(run_dir, device)
        return cls(model, tokenizer, load_prompt_format(run_dir, tokenizer), run_config(run_dir),
                   load_memory(run_dir) if memory else None, run_dir)  # fmt: skip

    @classmethod
    def from_base(cls, name: str, device: str | None = None) -> Run:
        """A model by name or folder: no config, no memory, the prompt format its tokenizer calls for (auto),
        or the one saved in the folder (prompt_format.json: a model `icft export` wrote from a run)."""
        from .data.prompt_format import PromptFormat

        model, tokenizer = load_base(name, device)
        saved = Path(name) / PROMPT_FORMAT_FILE
        fmt = load_prompt_format(name, tokenizer) if saved.is_file() else PromptFormat.resolve(tokenizer, "auto")
        return cls(model, tokenizer, fmt, {})


def load_prompt_format(run_dir: str | Path, tokenizer: Any) -> PromptFormat:
    """The run's saved prompt format; for a folder from before prompt_format.json, the one config.yaml's
    data.template and model.max_length resolve to. A ConfigError when it cannot be used with `tokenizer`."""
    from .data.prompt_format import PromptFormat

    path = Path(run_dir) / PROMPT_FORMAT_FILE
    if not path.is_file():
        try:
            return PromptFormat.from_config(tokenizer, run_config(run_dir))
        except ValueError as error:
            raise ConfigError(f"{Path(run_dir) / 'config.yaml'}: {error}") from None
    saved = read_json(path)
    try:
        return PromptFormat.from_json(tokenizer, saved if isinstance(saved, dict) else {})
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from None


def load_memory(run_dir: str | Path) -> LongTermMemory | None:
    """The run's long-term memory (memory/), or None when the run saved none."""
    from .memory.long_term import MEMORY_FILE, LongTermMemory

    folder = Path(run_dir) / "memory"
    if not (folder / MEMORY_FILE).is_file():
        return None
    try:
        return LongTermMemory.load(folder)
    except RecursionError:  # json's answer to a record nested 100k deep
        raise ConfigError(f"{folder / MEMORY_FILE}: a record nested too deeply to read") from None


def load_base(name: str, device: str | None = None):
    """(model, tokenizer) of an untrained model, with the same clear error as a run's."""
    from .models import load_model

    model, tokenizer = _load(load_model, name)
    return model.to(device or _best_device()), tokenizer


def _load(load_model, name: str):
    try:
        return load_model(name)
    except (OSError, ValueError) as error:  # transformers reports a bad model folder or id as either
        raise FileNotFoundError(f"could not load model '{name}': {error}") from None


def _best_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


MERGE_FILE = "merge.json"  # in the run's adapter/ folder (train.merge_alpha): rewritten with the adapter, never stale


def apply_saved_merge(model, adapter_dir: str | Path) -> float:
    """Apply the adapter scale saved beside an adapter (none saved: 1, nothing changes); returns it."""
    from .models import set_lora_scale

    path = Path(adapter_dir) / MERGE_FILE
    if not path.is_file():
        return 1.0
    saved = read_json(path)
    alpha = saved.get("alpha") if isinstance(saved, dict) else None
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"{path}: field 'alpha' must be a number from 0 to 1, got {alpha!r:.40}")
    if alpha != 1.0:
        set_lora_scale(model, float(alpha))
    return float(alpha)
