"""Sphinx configuration of fastdiv's documentation.

Build (from the repository root, after ``pip install ".[docs]"``)::

    sphinx-build -W --keep-going -b html docs docs/_build/html

The build is offline: no intersphinx, no remote images, a theme that ships with Sphinx.
The API pages are autodoc'd from the docstrings of the fastdiv next to this folder, and the
CLI page's help texts are generated from fastdiv's own argument parser at build time.
"""
from __future__ import annotations

import contextlib
import io
import os
import pathlib
import sys

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))            # document this tree's fastdiv, not another install

import fastdiv  # noqa: E402

project = "fastdiv"
author = "fastdiv developers"
copyright = "fastdiv developers"
release = fastdiv.__version__
version = release

extensions = ["sphinx.ext.autodoc", "numpydoc"]
exclude_patterns = ["_build"]
html_theme = "alabaster"                 # ships with Sphinx: nothing to download
html_static_path: list[str] = []
html_theme_options = {"nosidebar": False, "page_width": "1100px"}

autodoc_member_order = "bysource"
autodoc_typehints = "none"               # the numpydoc Parameters sections say the types
numpydoc_show_class_members = False      # members are listed by autodoc's :members:
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
nitpicky = False


class CliHelp(SphinxDirective):
    """``.. fastdiv-cli-help:: eval``: the ``--help`` text of a ``fastdiv`` command, produced
    by the command's own parser when the docs are built (so the page cannot drift from it)."""

    required_arguments = 0
    optional_arguments = 1

    def run(self):
        from fastdiv import cli

        argv = ([self.arguments[0]] if self.arguments else []) + ["--help"]
        out = io.StringIO()
        old = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = "100"        # argparse wraps at the terminal width
        try:
            with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
                cli.main(argv)
        finally:
            if old is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = old
        text = out.getvalue().rstrip()
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def setup(app):
    app.add_directive("fastdiv-cli-help", CliHelp)
    return {"parallel_read_safe": True}

# Every documented function names each of its parameters, and only those (numpydoc PR01 /
# PR02); a new option without a line in its docstring fails the build.  The two constructors
# excluded are internal (users get an Evaluation from evaluate, a RowState from row_state).
numpydoc_validation_checks = {"PR01", "PR02"}
numpydoc_validation_exclude = {r"\.Evaluation$", r"\.RowState$", r"\.Comparison$", r"\.LinearLogits$"}
