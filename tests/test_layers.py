"""Imports point down only: the data layer knows nothing of training, the curriculum nothing of evaluation,
components nothing of recipes. Checked on the source, so a new import that breaks the layering fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "icft"

# package or module -> icft modules it must never import (directly, at any indentation)
FORBIDDEN = {
    "data": ("curriculum", "memory", "evaluation", "recipes", "likelihood", "models", "losses", "inference"),
    "curriculum.py": ("evaluation", "recipes", "inference", "memory"),
    "memory": ("evaluation", "recipes", "inference", "curriculum"),
    "losses.py": ("evaluation", "recipes", "inference"),
    "likelihood.py": ("evaluation", "recipes", "inference", "curriculum"),
    "evaluation": ("recipes",),
    "errors.py": ("models", "recipes", "evaluation", "curriculum", "memory"),
}


def _icft_imports(path: Path) -> set[str]:
    """First component below `icft` of every icft module imported by `path`."""
    package = path.relative_to(SRC).parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts[0]] if parts else [alias.name for alias in node.names]
            elif node.module and node.module.startswith("icft."):
                names = [node.module.split(".")[1]]
            else:
                continue
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("icft."))
    return found


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_imports_point_down(layer):
    target = SRC / layer
    files = sorted(target.rglob("*.py")) if target.is_dir() else [target]
    assert files
    for path in files:
        bad = {name.removesuffix(".py") for name in _icft_imports(path)} & {f.removesuffix(".py")
                                                                             for f in FORBIDDEN[layer]}  # fmt: skip
        assert not bad, f"{path.relative_to(SRC)} imports {sorted(bad)}"
