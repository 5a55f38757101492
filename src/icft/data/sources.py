"""Resolve the data entries of a config: `bundled:<split>` or a path any loader understands."""

from __future__ import annotations

import sys

from .schema import Example


def load_data(specs: list[str], quiet: bool = False) -> list[Example]:
    from .loaders import load_examples

    examples: list[Example] = []
    for spec in specs:
        if spec.startswith("bundled:"):
            from ..bundled import load_bundled

            examples += load_bundled(spec.split(":", 1)[1])
            continue
        result = load_examples(spec)
        if result.skipped and not quiet:
            print(f"{spec}: skipped {len(result.skipped)} records (first: {result.skipped[0][1]})", file=sys.stderr)
        examples += result.examples
    return examples
