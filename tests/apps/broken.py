"""A module that fails while being imported (for the CLI error tests)."""

raise RuntimeError("tests.apps.broken fails on import")
