"""Move an `icft compare` output folder of the layout before hash-named runs to the new one, once:

    python -m tools.migrate_compare runs/compare-demo

<method>/seed<N> and <method>/lr-select/x<scale> become runs/<method>-s<N>[-x<scale>]-<hash>, named by the
config each folder's own config.yaml says it was trained with (base: the comparison's config.yaml). The old
layout copied the chosen selection run to the first seed's folder: the two are one run now, and the less
complete copy (the one without test results) is removed, as is a folder with nothing trained in it. Then
`icft compare` keeps every finished run.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from icft.config import RunConfig, load_config
from icft.io import write_json
from icft.recipes.compare import RUNS, Point, method_config, run_dir, run_status, tested_on

ORDER = ("finished", "trained", "interrupted", "new")  # of two copies of one run, the one further on is kept


def migrate(output_dir: Path) -> list[Path]:
    """Move every old-layout run folder under output_dir; returns the new folders."""
    old = old_folders(output_dir)
    if not old:
        return []
    config = load_config(output_dir / "config.yaml")  # the comparison that wrote them
    moved = []
    for folder in sorted(old, key=lambda f: ORDER.index(run_status(f))):
        point = old_point(config, folder)
        target = None if point is None else run_dir(output_dir, point)
        if target is None or target.exists():  # nothing trained there, or a copy of a run already moved
            shutil.rmtree(folder)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(target)
        moved.append(target)
        result = target / "result.json"
        if result.exists():  # scored on the old config's test files (compare refused any other)
            write_json(result, {**json.loads(result.read_text()), "tested_on": tested_on(config)})
    remove_empty(old)
    return moved


def old_folders(output_dir: Path) -> list[Path]:
    found = [*output_dir.glob("*/seed*"), *output_dir.glob("*/lr-select/x*")]
    return [f for f in found if f.is_dir() and re.fullmatch(r"seed\d+|x[\d.e+-]+", f.name)]


def old_point(config: RunConfig, folder: Path) -> Point | None:
    """The point an old folder ran: its own config.yaml says how it was trained (None: it has none)."""
    selection = folder.parent.name == "lr-select"
    method = folder.parent.parent.name if selection else folder.parent.name
    seed = config.compare.seeds[0] if selection else int(folder.name.removeprefix("seed"))
    scale = float(folder.name[1:]) if selection else None
    if method == "base":
        return Point(method, seed, method_config(config, method, seed))
    if not (folder / "config.yaml").exists():
        return None
    return Point(method, seed, load_config(folder / "config.yaml"), tested=not selection, scale=scale)


def remove_empty(old: list[Path]) -> None:
    for method_dir in {f.parent.parent if f.parent.name == "lr-select" else f.parent for f in old}:
        for folder in (method_dir / "lr-select", method_dir):
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", type=Path, help="an icft compare output folder")
    output_dir = parser.parse_args().output_dir
    print(f"{output_dir}: moved {len(migrate(output_dir))} run folders to {RUNS}/")


if __name__ == "__main__":
    main()
