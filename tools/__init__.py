"""Tools that work on a source checkout and are not installed with icft (run them from the repository root)."""
