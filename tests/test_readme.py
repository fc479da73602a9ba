"""The README's and the docs' Python examples run as written, the README's Quick start keeps
exactly two commands, and its API table names every public function with all its options."""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import pathlib
import re
import textwrap

import fastdiv
from fastdiv import cli, meters, states

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _gpu():
    if _torch_cuda():
        return True
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def _imported(block):
    """Top-level modules a README block imports."""
    names = set()
    for line in block.splitlines():
        m = re.match(r"\s*import\s+(.+)", line) or re.match(r"\s*from\s+(\S+)\s+import", line)
        if m:
            names.update(part.split()[0].split(".")[0] for part in m.group(1).split(","))
    return names


def _skip(block):
    """Why a block cannot run here (an optional library missing, or no GPU), else None."""
    missing = sorted(m for m in _imported(block) if importlib.util.find_spec(m) is None)
    if missing:
        return f"needs {', '.join(missing)}"
    if ('device="cuda"' in block or "cupy" in _imported(block)) and not _gpu():
        return "needs a GPU"
    return None


def _run_blocks(blocks, where):
    namespace: dict = {}
    for block in blocks:               # the examples build on each other (shared imports)
        if _skip(block):
            continue                   # optional-library and GPU examples run where they can
        exec(compile(block, where, "exec"), namespace)
    return namespace


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4
    namespace = _run_blocks(blocks, str(README))
    assert 0 < namespace["perplexity"] < 1e6
    assert namespace["forward"] >= 0 and namespace["reverse"] >= 0
    assert 0 <= namespace["jsd"] <= 0.6932 and namespace["sparse"] >= 0
    assert namespace["loss"] > 0 and namespace["vae_kl"] > 0
    assert namespace["metrics"]["perplexity"] > 1
    if "dataset_nll" in namespace:
        assert 8 < namespace["dataset_nll"] < 11         # standard-normal logits over 8192 classes


def _rst_python_blocks(text):
    """The bodies of the ``.. code-block:: python`` directives of an rst page."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == ".. code-block:: python":
            i += 1
            body = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("   ")):
                body.append(lines[i])
                i += 1
            blocks.append(textwrap.dedent("\n".join(body)))
        else:
            i += 1
    return blocks


def test_docs_python_blocks_run():
    namespace: dict = {}
    for page in sorted(DOCS.glob("*.rst")):
        namespace.update(_run_blocks(_rst_python_blocks(page.read_text()), str(page)))
    assert namespace["lse"].shape == (8,) and namespace["metrics"]["perplexity"] > 1
    assert namespace["sharded"].count == 60
    if "torch_loss" in namespace:
        assert namespace["torch_loss"].grad_fn is None and namespace["per_token"].shape == (512,)
    if "jax_nll" in namespace:
        assert namespace["jax_nll"].shape == (256,)


def _public():
    """(name as the README table writes it, object) for every public function and class."""
    out = []
    for prefix, mod in (("", fastdiv), ("meters.", meters), ("states.", states)):
        out += [(prefix + name, getattr(mod, name)) for name in mod.__all__
                if name not in ("meters", "states", "__version__")]
    if importlib.util.find_spec("dask") is not None:
        import fastdiv.dask as fdask

        out += [("dask." + name, getattr(fdask, name)) for name in fdask.__all__]
    return out


#: classes users receive rather than construct: the table names them, not their constructors
RESULT_TYPES = {"Evaluation", "CrossEntropyOutput", "Comparison", "BackendUnavailable", "states.RowState", "dask.DaskEvaluation"}


def test_readme_api_table_names_every_public_function_with_all_its_options():
    text = README.read_text()
    table = text.split("## Public API", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert "`__version__`" in table
    for name, obj in _public():
        row = [r for r in rows if f"`{name}" in r]
        assert row, f"README's API table has no row for {name}"
        if name in RESULT_TYPES or not callable(obj):
            continue
        for param in inspect.signature(obj).parameters:
            assert re.search(rf"\b{param}\b", row[0]), f"README's row for {name} lacks its option {param!r}"


def test_readme_api_table_lists_every_cli_option():
    table = README.read_text().split("## Public API", 1)[1].split("\n## ", 1)[0]
    for command in ("demo", "config", "bench", "eval", "compare", "reference"):
        row = [r for r in table.splitlines() if r.startswith(f"| `fastdiv {command}") or
               (command == "demo" and r.startswith("| `fastdiv [demo]"))]
        assert row, f"README's API table has no row for fastdiv {command}"
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
            cli.main([command, "--help"])
        for option in set(re.findall(r"(--[a-z][a-z-]+)", out.getvalue())) - {"--help"}:
            assert option in row[0], f"README's row for fastdiv {command} lacks {option}"


def test_readme_is_short_and_the_api_reference_is_complete():
    assert len(README.read_text().splitlines()) <= 250
    api = (DOCS / "api.rst").read_text()
    for name, _ in _public():
        assert name.split(".")[-1] in api, f"docs/api.rst does not document {name}"


def test_readme_skips_only_what_cannot_run_here():
    assert _skip("import numpy as np, fastdiv") is None
    assert _skip("import not_a_module_xyz, fastdiv") == "needs not_a_module_xyz"
    assert _skip("from not_a_module_xyz.sub import x") == "needs not_a_module_xyz"


def test_quick_start_has_two_commands_and_ci_uses_the_test_one():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, flags=re.S)
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    ci = (README.parent / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in text and "test-command" in ci
