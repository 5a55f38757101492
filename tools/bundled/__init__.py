"""The generator of the bundled curriculum (`icft.bundled`): the knowledge tables and the code that writes
the committed JSONL files from them. Run from the repository root: ``python -m tools.bundled.generate``."""
