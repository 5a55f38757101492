"""The bundled synthetic curriculum: the embedded default's training and evaluation data.

The JSONL files under ``data/`` are committed, so loading them needs nothing but this package. They are
generated from the knowledge tables by ``python -m tools.bundled.generate``, which lives in the repository
(``tools/bundled/``) and is not installed: the package holds the data, not the code that wrote it.
It is synthetic educational data, not medical advice (see README.md next to this file).

Evaluation comes in two files per split: ``*-unseen`` (conditions never trained on: transfer) and
``*-retention`` (held-out questions about trained conditions: retention and forgetting). ``validation`` and
``test`` name both together, retention first.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.schema import DataError, Example

DATA_DIR = Path(__file__).resolve().parent / "data"
SPLITS = ("train", "validation-retention", "validation-unseen", "test-retention", "test-unseen")
ALIASES = {
    "validation": ("validation-retention", "validation-unseen"),
    "test": ("test-retention", "test-unseen"),
}


def bundled_path(split: str) -> Path:
    """Path of the packaged JSONL file for one split (one of SPLITS; an alias has two files)."""
    if split not in SPLITS:
        hint = f"; '{split}' is {' + '.join(ALIASES[split])}" if split in ALIASES else ""
        raise ValueError(f"unknown split {split!r} (expected one of: {', '.join(SPLITS)}){hint}")
    return DATA_DIR / f"{split}.jsonl"


def load_bundled(split: str) -> list[Example]:
    """Read and validate one packaged split, or both files of an alias ("validation", "test")."""
    if split in ALIASES:
        return [ex for part in ALIASES[split] for ex in load_bundled(part)]
    if split not in SPLITS:
        raise ValueError(
            f"unknown split {split!r} (expected one of: {', '.join((*SPLITS, *ALIASES))})"
        )
    path = bundled_path(split)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; rebuild it in a checkout: python -m tools.bundled.generate")
    examples = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(str(path), line_no, None, f"invalid JSON: {e.msg}") from e
            examples.append(Example.from_dict(record, str(path), line_no))
    return examples
