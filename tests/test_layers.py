"""Imports point down only. Every module and package of icft sits in one layer, and imports only from layers
below its own: the data layer knows nothing of models or training, the memory nothing of evaluation, and
evaluation and serving (inference), which sit side by side, share code only through the layers below them
(retrieval lives with the memory, `context_limit` with the models, `is_open_ended` with the data format).
Checked on the source, so a new import that breaks the layering, or a new module without a layer, fails here.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "icft"

# Lowest first. A module may import a module of a lower layer, never one of its own layer or a higher one.
LAYERS = (
    ("__init__",),
    ("data", "bundled"),  # examples, their formats and sources; the packaged dataset (see SAME_LAYER)
    ("errors",),  # the errors a user sees in one line: light, only the data schema's error below them
    ("io", "models", "losses", "likelihood", "tables"),  # tables: the one table writer, plain text
    ("config", "progress", "regularizers"),  # regularizers: the anchors training adds, built on the losses
    ("memory", "curriculum"),  # memory also holds retrieval (memory/retrieval.py)
    ("runs",),  # a run folder: its config, prompt format, adapter, base model and long-term memory
    ("checkpoint",),  # a run folder's checkpoints/
    ("evaluation", "inference"),  # scoring a model and serving it: side by side
    ("recipes", "data_commands", "init_config"),  # training and comparing; the data and init commands
    ("cli", "demo"),  # demo: recipes/demo.py, see OWN_UNIT
    ("__main__",),
)
# Files that are a unit of their own. The demo runs the whole toolkit end to end (validate, train, evaluate,
# generate with retrieval), so it sits with the command line, above the recipes and the serving stack.
OWN_UNIT = {"recipes/demo.py": "demo"}
# Same-layer imports that are allowed: `data.sources` resolves `bundled:NAME`, and the bundled files load
# through the data schema.
SAME_LAYER = {("data", "bundled"), ("bundled", "data")}
# Lower-layer imports that are not: training never depends on the serving stack (fastapi, the engine).
APART = {("recipes", "inference")}
LAYER_OF = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def _unit(path: Path, src: Path) -> str:
    """The package or top-level module a file belongs to: "memory" for memory/retrieval.py, "cli" for cli.py."""
    return OWN_UNIT.get(path.relative_to(src).as_posix()) or path.relative_to(src).parts[0].removesuffix(".py")


def _icft_imports(path: Path, src: Path) -> set[str]:
    """The package or top-level module below `icft` of every icft name that `path` imports (at any depth in
    the file, relative or absolute)."""
    here = ["icft", *path.relative_to(src).parts[:-1]]  # the package the file is in
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            targets = [module + [alias.name] for alias in node.names]
        elif isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        else:
            continue
        found |= {t[1] for t in targets if t[0] == "icft" and len(t) > 1}
    return found


def violations(src: Path, unit: str | None = None) -> list[str]:
    """Every import under `src` (or in one unit of it) that does not point down, as "file imports name"."""
    out = []
    for path in sorted(src.rglob("*.py")):
        mine = _unit(path, src)
        if unit is not None and mine != unit:
            continue
        for name in sorted(_icft_imports(path, src) - {mine}):
            allowed = (LAYER_OF[name] < LAYER_OF[mine] and (mine, name) not in APART) or (mine, name) in SAME_LAYER
            if not allowed:
                out.append(f"{path.relative_to(src)} imports {name}")
    return out


def test_every_module_and_package_has_a_layer():
    units = {_unit(path, SRC) for path in SRC.rglob("*.py")}
    assert units == set(LAYER_OF), (f"without a layer: {sorted(units - set(LAYER_OF))}",
                                    f"no longer there: {sorted(set(LAYER_OF) - units)}")  # fmt: skip
    assert sum(len(units) for units in LAYERS) == len(LAYER_OF)  # each in one layer only


@pytest.mark.parametrize("unit", sorted(LAYER_OF))
def test_imports_point_down(unit):
    assert not violations(SRC, unit)


def test_the_check_finds_upward_and_sideways_imports(tmp_path):
    # a tree with the imports this file exists to stop, each written the ways Python allows
    files = {
        "recipes/train.py": "from ..inference.retrieval import training_contexts\n",  # apart
        "evaluation/commands.py": "def f():\n    from ..inference.commands import retrieve_for_eval\n",  # sideways
        "inference/generate.py": "from ..evaluation.generation import context_limit\n",  # sideways
        "bundled/writer.py": "from icft.evaluation.baselines import shared_words\n",  # up
        "memory/x.py": "from .. import curriculum\nimport icft.recipes.train\n",  # same layer, up
        "data/ok.py": "from ..bundled import load_bundled\nfrom .schema import Example\n",  # allowed
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path) == [
        "bundled/writer.py imports evaluation", "evaluation/commands.py imports inference",
        "inference/generate.py imports evaluation", "memory/x.py imports curriculum", "memory/x.py imports recipes",
        "recipes/train.py imports inference",
    ]  # fmt: skip
