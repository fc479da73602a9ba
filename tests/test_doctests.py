"""The Examples sections of the public modules' docstrings run as doctests, and every public
function has one."""
from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect

import pytest

import fastdiv

MODULES = ["fastdiv.api", "fastdiv.execute", "fastdiv._registry", "fastdiv._config", "fastdiv._files", "fastdiv.dask",
           "fastdiv.comparison", "fastdiv.meters"]
OPTIONAL = {"fastdiv.dask": "dask"}


def _params():
    for name in MODULES:
        missing = OPTIONAL.get(name)
        skip = missing is not None and importlib.util.find_spec(missing) is None
        yield pytest.param(name, marks=pytest.mark.skipif(skip, reason=f"{missing} is not installed"), id=name)


@pytest.mark.parametrize("module", list(_params()))
def test_doctests(module):
    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in finder.find(mod, module, globs=vars(mod).copy()):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"no doctest examples found in {module}"
    assert result.failed == 0, f"{result.failed} of {result.attempted} doctest examples failed in {module}"


def test_every_public_function_has_a_runnable_example():
    for name in fastdiv.__all__:
        obj = getattr(fastdiv, name)
        if inspect.isfunction(obj):
            doc = inspect.getdoc(obj) or ""
            assert "Examples" in doc and ">>>" in doc, f"fastdiv.{name} has no Examples section"


def test_public_annotations_resolve():
    import typing

    for name in fastdiv.__all__:
        obj = getattr(fastdiv, name)
        if inspect.isfunction(obj):
            hints = typing.get_type_hints(obj)
            assert "return" in hints, f"fastdiv.{name} has no return annotation"
