"""Bad input raises ValueError/TypeError naming the argument; it never crashes or lies."""
from __future__ import annotations

import numpy as np
import pytest

import fastdiv

from conftest import ALL_HOST

X = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
T = np.array([0, 1, 2, 3])

CASES = [
    # (id, callable, exception, message fragment)
    ("x 0-d", lambda b: fastdiv.logsumexp(np.float32(1.0), backend=b), ValueError, "x must have at least 1 dimension"),
    ("x V=0", lambda b: fastdiv.logsumexp(np.zeros((3, 0)), backend=b), ValueError, "empty class axis"),
    ("x int", lambda b: fastdiv.logsumexp(np.arange(6).reshape(2, 3), backend=b), TypeError, "x must be a floating-point array"),
    ("x bool", lambda b: fastdiv.entropy(np.ones((2, 3), bool), backend=b), TypeError, "p must be a floating-point"),
    ("x complex", lambda b: fastdiv.logsumexp(np.ones((2, 3), complex), backend=b), TypeError, "complex"),
    ("x object", lambda b: fastdiv.logsumexp(np.array([[1.0, None]], dtype=object), backend=b), TypeError, "object"),
    ("x str", lambda b: fastdiv.logsumexp(np.array([["a", "b"]]), backend=b), TypeError, "string"),
    ("x ragged", lambda b: fastdiv.logsumexp([[1.0, 2.0], [3.0]], backend=b), TypeError, "x could not be converted"),
    ("kl shapes", lambda b: fastdiv.kl_div(X, X[:, :4], backend=b), ValueError, "p and q must have the same shape"),
    ("kl rows", lambda b: fastdiv.kl_div(X, X[:3], backend=b), ValueError, "same shape"),
    ("inputs", lambda b: fastdiv.kl_div(X, X, inputs="logit", backend=b), ValueError, "inputs must be one of"),
    ("entropy inputs", lambda b: fastdiv.entropy(X, inputs=None, backend=b), ValueError, "inputs must be one of"),
    ("reduction", lambda b: fastdiv.kl_div(X, X, reduction="batchmean", backend=b), ValueError, "reduction must be one of"),
    ("ce reduction", lambda b: fastdiv.cross_entropy(X, T, reduction="avg", backend=b), ValueError, "reduction must be one of"),
    ("target = V", lambda b: fastdiv.cross_entropy(X, np.array([0, 1, 2, 5]), backend=b), ValueError, "target[3] = 5"),
    ("target = -1", lambda b: fastdiv.cross_entropy(X, np.array([-1, 1, 2, 3]), backend=b), ValueError, "target must be in [0, 5)"),
    ("target huge", lambda b: fastdiv.cross_entropy(X, np.array([0, 1, 2, 2**40]), backend=b), ValueError, "target"),
    ("target shape", lambda b: fastdiv.cross_entropy(X, np.array([0, 1, 2]), backend=b), ValueError, "target of class indices must have shape"),
    ("target bool", lambda b: fastdiv.cross_entropy(X, np.ones(4, bool), backend=b), TypeError, "boolean"),
    ("target str", lambda b: fastdiv.cross_entropy(X, np.array(list("abcd")), backend=b), TypeError, "target must hold integer class indices"),
    ("float target shape", lambda b: fastdiv.cross_entropy(X, np.ones(4, np.float32), backend=b), ValueError, "float target (probabilities) must have the same shape"),
    ("weight length", lambda b: fastdiv.cross_entropy(X, T, weight=np.ones(4), backend=b), ValueError, "weight must be a 1-D array of length V = 5"),
    ("weight negative", lambda b: fastdiv.cross_entropy(X, T, weight=np.array([1, 1, -1, 1, 1.0]), backend=b), ValueError, "weight must be non-negative"),
    ("weight nan", lambda b: fastdiv.cross_entropy(X, T, weight=np.array([1, 1, np.nan, 1, 1.0]), backend=b), ValueError, "weight must be finite"),
    ("weight 2-d", lambda b: fastdiv.cross_entropy(X, T, weight=np.ones((5, 1)), backend=b), ValueError, "weight must be a 1-D array"),
    ("weight str", lambda b: fastdiv.cross_entropy(X, T, weight=np.array(list("abcde")), backend=b), TypeError, "weight must be a real numeric array"),
    ("smoothing > 1", lambda b: fastdiv.cross_entropy(X, T, label_smoothing=1.5, backend=b), ValueError, "label_smoothing must be a number in [0, 1]"),
    ("smoothing < 0", lambda b: fastdiv.cross_entropy(X, T, label_smoothing=-0.1, backend=b), ValueError, "label_smoothing"),
    ("smoothing nan", lambda b: fastdiv.cross_entropy(X, T, label_smoothing=float("nan"), backend=b), ValueError, "label_smoothing"),
    ("smoothing str", lambda b: fastdiv.cross_entropy(X, T, label_smoothing="0.1", backend=b), ValueError, "label_smoothing"),
    ("ignore_index float", lambda b: fastdiv.cross_entropy(X, T, ignore_index=1.5, backend=b), TypeError, "ignore_index must be an integer"),
    ("backend", lambda b: fastdiv.logsumexp(X, backend="tpu"), ValueError, "backend must be one of"),
    ("float128", lambda b: fastdiv.logsumexp(np.ones((2, 2), np.longdouble), backend=b), TypeError, "float16, bfloat16, float32 and float64"),
]


@pytest.mark.parametrize("backend", ALL_HOST)
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(case, backend):
    _, fn, exc, fragment = case
    with pytest.raises(exc) as info:
        fn(backend)
    assert fragment in str(info.value), str(info.value)


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
