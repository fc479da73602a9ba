"""Shared plumbing of the ported peer suites (tests/peers): backends, tolerances, peer layouts.

Every group in tests/peers names the file and version its inputs and expected values come
from.  The inputs are ported (literal values, or the peer's shapes, value ranges, options and
dtypes drawn again with a seeded numpy generator); the test code is fastdiv's own.  Expected
values are the peer's literal ones where it has them, else a float64 numpy implementation of the
peer's documented formula written here (``torch_*`` below), and torch itself as a second oracle
when it is installed.  Deliberate differences are listed, with their reasons, in
docs/peers.rst; each has a test in test_differences.py.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import cases
from fastdiv import _registry

#: Every backend of the suite: the numpy float64 reference, both compiled CPU backends and cuda
#: (numba's CUDA simulator without a GPU: tests/conftest.py switches it on).
BACKENDS = ("numba", "cython", "numpy", "cuda")
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def backend_params():
    out = []
    for b in BACKENDS:
        why = _registry.unavailable_reason(b)
        marks = [pytest.mark.skipif(why is not None, reason=str(why))]
        if b == "cuda":
            marks.append(pytest.mark.cuda)
        elif not cases.fast(b, np.float64):
            # the peers' inputs are float64 (and 16-bit in places): numba's specializations for
            # them are compiled in the slow tier only (tests/cases.py, ``fast``)
            marks.append(pytest.mark.slow)
        out.append(pytest.param(b, marks=marks, id=b))
    return out


@pytest.fixture(params=backend_params())
def backend(request, monkeypatch):
    """The backend under test; on the simulated GPU the launch knobs are made small so that the
    multi-warp and multi-block reductions run on these tiny shapes (as tests/test_cuda_api.py)."""
    # one thread: the cases are tiny, and a parallel launch costs milliseconds on a busy 2-core
    # machine (results are bit-identical for any thread count; tests/conftest.py restores it)
    import fastdiv
    fastdiv.set_num_threads(1)
    if request.param == "cuda" and SIM:
        from fastdiv._cuda import divergences
        from fastdiv._cuda import kernels as K
        for name, value in dict(SMALL_BLOCK=32, GROUP_BLOCK=64, BLOCK=64, RED_BLOCK=32, RED_CHUNK=64,
                                TILE_ROWS=32).items():
            monkeypatch.setattr(K, name, value)
        monkeypatch.setattr(divergences, "DIV_BLOCK", 8)
    return request.param


#: FASTDIV_PEERS_FULL=1 runs every case on the simulated GPU too (minutes instead of seconds).
FULL = os.environ.get("FASTDIV_PEERS_FULL", "0") not in ("", "0")


def sample(backend, cases, keep=4, small=None):
    """The cases a backend runs: all of them on the host; on the simulated GPU (every GPU thread
    a Python thread: ~0.1-0.5 s a call) ``keep`` of them spread evenly over the list, first and
    last included, among those for which ``small(case)`` holds, unless FASTDIV_PEERS_FULL=1.
    On a real GPU: all."""
    cases = list(cases)
    if backend != "cuda" or not SIM or FULL:
        return cases
    if small is not None:
        cases = [c for c in cases if small(c)]
    if len(cases) <= keep:
        return cases
    idx = sorted({int(round(i)) for i in np.linspace(0, len(cases) - 1, keep)})
    return [cases[i] for i in idx]


def with_weight(call, weight):
    """``call(weight)``: bfloat16 class weights are accepted as torch accepts them (#18)."""
    return call(weight)


def rows_for(backend, rows):
    """The simulated GPU runs each GPU thread in Python (~13k elements/s): big peer shapes keep
    their class count but run on a few rows there."""
    return min(rows, 2) if backend == "cuda" and SIM else rows


def close(got, want, rtol, atol=0.0, what=""):
    """``|got - want| <= atol + rtol |want|`` elementwise (numpy's, torch's and scipy's rule), NaN
    matching NaN and infinities matching exactly."""
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64),
                               rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


# --------------------------------------------------------------------------- torch's conventions

#: torch.testing.assert_close's default (rtol, atol) per input dtype.
TORCH_TOL = {
    "float64": (1e-7, 1e-7),
    "float32": (1.3e-6, 1e-5),
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
}

FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")   # floating_types_and(half, bfloat16)


def np_dtype(name):
    if name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def make_tensor(rng, shape, dtype, low=None, high=None):
    """torch.testing.make_tensor's values: floats uniform in [low, high) with [-9, 9) by default,
    rounded to ``dtype``; integers uniform in [low, high)."""
    if dtype == "long":
        return rng.integers(low, high, size=shape, dtype=np.int64)
    low = -9.0 if low is None else low
    high = 9.0 if high is None else high
    return rng.uniform(low, high, size=shape).astype(np_dtype(dtype))


def class_last(a):
    """torch's (N, C, d1, ...) layout with the class axis last, as fastdiv reads it (a 1-D input is
    one unbatched row)."""
    a = np.asarray(a)
    return a if a.ndim < 2 else np.moveaxis(a, 1, -1)


def f64(a):
    return np.asarray(a, dtype=np.float64)


def log_softmax(x, axis=-1):
    x = f64(x)
    m = np.max(x, axis=axis, keepdims=True)
    d = x - m
    return d - np.log(np.sum(np.exp(d), axis=axis, keepdims=True))


def torch_cross_entropy(x, target, *, weight=None, ignore_index=-100, label_smoothing=0.0, reduction="mean"):
    """torch.nn.functional.cross_entropy's documented value in float64, class axis LAST.

    Class indices: ``l = -(1 - eps) w_t log q_t - eps / C sum_c w_c log q_c`` (0 where ignored);
    "mean" divides by the sum of ``w_t`` over the non-ignored targets.  Probabilities:
    ``l = -sum_c w_c ((1 - eps) p_c + eps / C) log q_c``; "mean" divides by the number of rows."""
    logq = log_softmax(x)
    c = logq.shape[-1]
    w = np.ones(c) if weight is None else f64(weight)
    target = np.asarray(target)
    if np.issubdtype(target.dtype, np.integer):
        keep = target != ignore_index
        t = np.where(keep, target, 0)
        nll = -np.take_along_axis(logq, t[..., None], axis=-1)[..., 0] * w[t]
        smooth = -np.sum(logq * w, axis=-1)
        loss = np.where(keep, (1 - label_smoothing) * nll + label_smoothing / c * smooth, 0.0)
        denom = np.sum(np.where(keep, w[t], 0.0))
    else:
        p = f64(target) * (1 - label_smoothing) + label_smoothing / c
        loss = -np.sum(p * w * logq, axis=-1)
        denom = loss.size
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.sum(loss)
    return np.sum(loss) / denom


def torch_kl_div(inp, target, *, reduction="mean", log_target=False):
    """torch.nn.functional.kl_div(input=log q, target): elementwise ``target (log target - input)``
    (``exp(t) (t - input)`` with log_target), 0 where target = 0; "batchmean" divides the sum by
    ``input.size(0)``, "mean" by the number of elements."""
    inp, target = f64(inp), f64(target)
    if log_target:
        terms = np.exp(target) * (target - inp)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(target > 0, target * (np.log(np.where(target > 0, target, 1.0)) - inp), 0.0)
    if reduction == "none":
        return terms
    if reduction == "sum":
        return np.sum(terms)
    if reduction == "batchmean":
        return np.sum(terms) / inp.shape[0]
    return np.mean(terms)


def torch_or_none():
    """torch when installed (a second oracle), else None: the float64 formulas above decide."""
    try:
        import torch
    except ImportError:
        return None
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)          # tiny cases: its thread pool only costs time here
    return torch


def to_torch(torch, a):
    """A torch tensor with ``a``'s values and dtype (bfloat16 through float32, exactly)."""
    a = np.asarray(a)
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(a.copy())          # (np.ascontiguousarray makes a 0-d array 1-d)
