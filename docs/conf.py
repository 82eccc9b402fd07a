"""Sphinx configuration for yimmo's documentation.

Build: sphinx-build -W -b html docs docs/_build (the `docs` extra has
Sphinx). The options page is generated at build time from the option
table in yimmo/_options.py (docs/_ext/yimmo_docs.py), and the unit files
and proxy configurations are included from README.rst, so neither can
drift from what the code and README say.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The checkout's yimmo first (an in-place build, or the editable install
# CI makes), then the docs' own extension.
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(HERE, "_ext"))

import yimmo  # noqa: E402

project = "yimmo"
author = "the yimmo authors"
copyright = "the yimmo authors (MIT)"
version = release = yimmo.__version__

extensions = [
    "sphinx.ext.autodoc",
    "yimmo_docs",
]

root_doc = "index"
exclude_patterns = ["_build"]
# Code blocks say their language; a bare "::" block is plain text.
highlight_language = "none"
pygments_style = "sphinx"

autodoc_member_order = "bysource"

html_theme = "alabaster"
html_title = "yimmo %s" % release
html_static_path = []
