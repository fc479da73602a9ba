"""Errors outside the bad-input matrix: thread settings, the backend environment variable and
an unavailable backend.  Bad arguments to the public functions (each with the exception type
and the words of its message) are cases of the matrix, tests/bad_inputs.py."""
from __future__ import annotations

import numpy as np
import pytest

import fastdiv

X = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)


def test_threads_validation():
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(ValueError, match="n must be a positive integer"):
            fastdiv.set_num_threads(bad)


def test_backend_env_override(monkeypatch):
    monkeypatch.setenv("FASTDIV_BACKEND", "numpy")
    from fastdiv import _registry
    assert _registry.resolve("auto") == "numpy"
    monkeypatch.setenv("FASTDIV_BACKEND", "gpu")
    with pytest.raises(ValueError, match="FASTDIV_BACKEND must be one of"):
        fastdiv.logsumexp(X)


def test_unavailable_backend_says_why(monkeypatch):
    from fastdiv import _registry
    monkeypatch.setitem(_registry._loaded, "cython", (None, "ImportError: no module named _kernels"))
    with pytest.raises(fastdiv.BackendUnavailable, match="cython.*not available.*_kernels"):
        fastdiv.logsumexp(X, backend="cython")
    # auto falls back silently
    assert np.isfinite(fastdiv.logsumexp(X)).all()
