"""The README's Python examples run as written, and its Quick start keeps exactly two commands."""
from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _torch_cuda():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:               # the examples build on each other (shared imports)
        if 'device="cuda"' in block and not _torch_cuda():
            continue                   # the GPU example runs where there is a GPU
        exec(compile(block, str(README), "exec"), namespace)
    assert 0 < namespace["perplexity"] < 1e6
    assert namespace["forward"] >= 0 and namespace["reverse"] >= 0
    assert namespace["loss"] > 0


def test_quick_start_has_two_commands_and_ci_uses_the_test_one():
    text = README.read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", quick, flags=re.S)
    assert len(commands) == 2 and all("\n" not in c for c in commands)
    ci = (README.parent / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in text and "test-command" in ci
