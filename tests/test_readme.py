"""README.rst stays true to the code: its option list is the one the option
table renders, and its two set-up commands are the ones CI runs."""

import pathlib
import re

from yimmo._options import options_rst

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_readme_option_list_is_generated_from_the_table():
    text = (ROOT / "README.rst").read_text()
    block = text.split(".. options-begin", 1)[1].split(".. options-end")[0]
    assert block.strip() == options_rst().strip()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.rst").read_text()
    commands = re.findall(r"^    (apt-get update .*)$", readme, re.M)
    assert len(commands) == 2, commands
    assert "python -m yimmo" in commands[0]
    test_command = commands[1]
    assert test_command.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command in ci.splitlines()
