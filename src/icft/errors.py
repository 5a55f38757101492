"""The errors icft reports to a user in one line (`error: ...`, exit code 2) instead of a traceback.

They live here, away from torch and transformers, so that `icft data validate` and the config checks
stay light: importing this module imports nothing else of icft but the data schema's error.
"""

from __future__ import annotations

from pathlib import Path

from .data.schema import DataError


class ConfigError(ValueError):
    """A bad config key or value; the message names the key and, where there is one, the fix."""


class TrainingError(RuntimeError):
    """A run that cannot go on (bad model, empty stage, non-finite loss); the message says what to do."""


USER_ERRORS = (ConfigError, DataError, TrainingError, FileNotFoundError)


def not_a_run(path: object) -> FileNotFoundError:
    """The one error every command that takes a run folder (eval --run, generate --run, export --run, chat,
    serve, train --resume) gives for a path that is not one: no folder there, or no config.yaml in it."""
    folder = Path(str(path))
    why = "no such folder" if not folder.is_dir() else "no config.yaml in it"
    return FileNotFoundError(f"{folder}: not a run folder ({why}); give the folder icft train wrote, e.g. runs/<name>")
