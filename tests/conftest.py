"""Shared fixtures for the server tests.

The `yimmo_server` fixture comes from yimmo's own pytest plugin
(yimmo.testing, loaded through its pytest11 entry point once the package is
installed); nothing here registers it.
"""

import os
import sys

import pytest

# The test modules import `helpers` and the apps in tests/apps whatever
# pytest's import mode is.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from helpers import LogWatcher  # noqa: E402


@pytest.fixture
def log_watcher():
    """Records everything logged on the "yimmo" logger and its children
    (whether or not they propagate to the root logger) during the test."""
    with LogWatcher("yimmo") as watcher:
        yield watcher
