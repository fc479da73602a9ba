"""The README's Python examples run as written, and its Quick start keeps exactly two commands."""
from __future__ import annotations

import importlib.util
import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


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


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:               # the examples build on each other (shared imports)
        if _skip(block):
            continue                   # optional-library and GPU examples run where they can
        exec(compile(block, str(README), "exec"), namespace)
    assert 0 < namespace["perplexity"] < 1e6
    assert namespace["forward"] >= 0 and namespace["reverse"] >= 0
    assert namespace["loss"] > 0
    assert namespace["metrics"]["perplexity"] > 1 and namespace["lse"].shape == (8,)
    if "torch_loss" in namespace:
        assert namespace["torch_loss"].grad_fn is None and namespace["per_token"].shape == (512,)
    if "jax_nll" in namespace:
        assert namespace["jax_nll"].shape == (256,)
    if "dataset_nll" in namespace:
        assert 8 < namespace["dataset_nll"] < 11         # standard-normal logits over 8192 classes


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
