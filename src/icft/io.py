"""Atomic file writes: a reader never sees a half-written output, a crash never leaves one behind.

Temporary names are `.<name>.icft-tmp-<random>` (and `.<name>.icft-old` while a folder is replaced), next to
the output: a kill mid-write leaves only names that are recognisably icft's, which the next run removes
(`remove_leftovers`). Output paths are checked (`check_output_file`, `check_output_dir`) before any work.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import ConfigError

TMP, OLD = ".icft-tmp-", ".icft-old"  # what atomic_path appends to `.<name>`


@contextmanager
def atomic_path(path: str | Path, is_dir: bool = False):
    """Yield a temporary path next to `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}{TMP}"
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders; outputs get the usual permissions
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp
        if is_dir:
            old = path.with_name(f".{path.name}{OLD}")
            if path.exists():
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink()


def leftovers(folder: Path, name: str) -> list[Path]:
    """What a killed atomic_path(folder / name) left behind: this version's names, and older versions'
    `.<name>.<8 random characters>` and `.<name>.old` (tempfile's names), nothing else."""
    ours = re.compile(re.escape(f".{name}") + rf"({re.escape(TMP)}.+|{re.escape(OLD)}|\.[a-z0-9_]{{8}}|\.old)")
    return sorted(p for p in Path(folder).glob(f".{name}.*") if ours.fullmatch(p.name))


def remove_leftovers(folder: Path, names: Iterable[str]) -> list[Path]:
    """Remove the temporary files and folders of killed atomic writes of `names` in `folder`; return them."""
    removed = [p for name in names for p in leftovers(folder, name)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink()
    return removed


def remove_path(path: Path) -> bool:
    """Remove a file or folder; a link is removed itself, never followed. Returns whether anything was there."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
        return True
    if path.is_dir():
        shutil.rmtree(path)
        return True
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output_file(path: str | Path, option: str) -> None:
    """Before any work: `option` names a file icft can write (not a folder; in a folder it may write to)."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name (e.g. {path / 'out.json'})")
    _check_writable(path.parent, option, path)


def check_output_dir(path: str | Path, option: str) -> None:
    """Before any work: `option` names a folder icft can make or write in (not a file)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: exists and is not a folder")
    _check_writable(path, option, path)


def _check_writable(folder: Path, option: str, path: Path) -> None:
    existing = folder.absolute()
    while not existing.exists():  # the folders still to make are made in the nearest one that exists
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{option} {path}: {existing} is a file, not a folder")
    try:  # a real write, not os.access: root passes os.access everywhere, even in /proc
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise ConfigError(f"{option} {path}: cannot write in {existing} ({error.strerror})") from None


def read_json(path: str | Path) -> Any:
    """A JSON file's content; a one-line ConfigError naming the file when it is not JSON, not UTF-8, or nested
    past Python's recursion limit (json raises RecursionError there, which would be a traceback)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        raise ConfigError(f"{path}: not valid JSON ({error})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read") from None


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
