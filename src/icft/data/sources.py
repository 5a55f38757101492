"""Resolve the data entries of a config (`bundled:<name>` or a path any loader understands), check that
example ids are unique across everything loaded, and carve a validation split when none is given."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable

from .schema import DataError, Example

# Meta fields that name the document or topic an example comes from: examples sharing one stay on one
# side of a held-out split, so near-duplicates (the same condition asked two ways) cannot leak across.
GROUP_KEYS = ("condition", "focus", "document", "topic")


def load_data(specs: list[str], quiet: bool = False) -> list[Example]:
    from .loaders import load_examples

    examples: list[Example] = []
    for spec in specs:
        if spec.startswith("bundled:"):
            from ..bundled import load_bundled

            try:
                examples += load_bundled(spec.split(":", 1)[1])
            except ValueError as error:  # an unknown bundled name
                raise DataError(spec, None, None, str(error)) from None
            continue
        result = load_examples(spec)
        for note in [] if quiet else result.notes:  # e.g. records without `kind` read as qa: said once a file
            print(f"{spec}: {note}", file=sys.stderr)
        if result.skipped and not quiet:
            print(f"{spec}: skipped {len(result.skipped)} records (first: {result.skipped[0][1]})", file=sys.stderr)
        examples += result.examples
    check_unique_ids(examples)
    return examples


def check_unique_ids(examples: list[Example]) -> None:
    """Memories and the tokenisation cache are keyed by id: a repeated id is an error naming both places."""
    seen: dict[str, Example] = {}
    for ex in examples:
        first = seen.setdefault(ex.id, ex)
        if first is not ex:
            raise DataError(ex.origin or "<data>", None, "id",
                            f"'{ex.id}' is also the id of the example at {first.origin or '<data>'}; ids must be "
                            "unique across all files loaded together (remove the duplicate or give it a new id)")


def meta_group(ex: Example) -> str:
    """The group an example is held out with: its first GROUP_KEYS meta field, else its own id."""
    return next((str(ex.meta[k]) for k in GROUP_KEYS if ex.meta.get(k)), ex.id)


def heldout_split(examples: list[Example], group_key: Callable[[Example], str],
                  share: float) -> tuple[list[Example], list[Example]]:  # fmt: skip
    """(kept, held out): about `share` of the groups held out, each example's group named by `group_key`; both
    sides keep the input order.

    A hash of the group, not a random draw: the same example lands on the same side in every run and every
    process, and all examples of one group land on one side.
    """
    held = [hash_bucket(group_key(ex)) < share * 10_000 for ex in examples]
    return [ex for ex, h in zip(examples, held) if not h], [ex for ex, h in zip(examples, held) if h]


def split_validation(examples: list[Example], share: float) -> tuple[list[Example], list[Example]]:
    """(train, validation) of data without a validation file: held out by `meta_group`."""
    return heldout_split(examples, meta_group, share)


def hash_bucket(key: str) -> int:
    """0-9999 from the sha256 of the key."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) % 10_000
