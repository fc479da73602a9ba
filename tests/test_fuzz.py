"""Fuzzing every public function on every host backend against the float64 reference.

Strategies draw: leading shapes of 1 to 3 axes (zero rows included); V from 1 to 128256 (few
rows when V is huge); float16, bfloat16, float32, float64; C-contiguous, strided, Fortran-ordered
and big-endian layouts; logits of scale 1e-3 to 1e4 around offsets up to +-1e4; masked classes
(none, some, most, all), whole masked rows, NaN and +inf entries; for cross-entropy ignored
targets, class weights (with zeros), label smoothing and soft targets; every reduction.

The cuda backend is fuzzed on small rows with 1 in 50 of the examples (the simulator is slow).

Profiles (tests/conftest.py): ``default`` (40 examples per test) runs in CI; ``thorough``
(10 000 examples per test) is the long run whose summary is kept in tests/FUZZ_SUMMARY.md:

    HYPOTHESIS_PROFILE=thorough PYTHONPATH=. nice python -m pytest -p no:cacheprovider \
        tests/test_fuzz.py --hypothesis-show-statistics -rA
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdiv
from fastdiv import _checks, _registry
from fastdiv import reference as R

from conftest import ALL_HOST, TOL, assert_rows_close

# reduction="mean" over zero rows is NaN with this warning for entropy and kl_div (documented).
pytestmark = pytest.mark.filterwarnings("ignore:mean of an empty batch is NaN:RuntimeWarning")


DTYPES = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}
if _checks._bfloat16() is not None:
    DTYPES["bfloat16"] = _checks._bfloat16()
#: Largest finite value per dtype (logits beyond it would be +inf after the cast).
_FMAX = {"float16": 6e4, "bfloat16": 3e38, "float32": 3e38, "float64": 1e308}

V_SMALL = [1, 2, 3, 7, 51, 130, 257, 1271, 2049, 5000]
V_HUGE = [32000, 50257, 128256]
LAYOUTS = ["C", "strided", "F", "big-endian"]


@st.composite
def shapes(draw, v=None, lead=None):
    """A leading shape (0 to 3 axes' worth of rows, zero rows possible) and V."""
    if v is None:
        v = draw(st.sampled_from(V_SMALL) if draw(st.integers(0, 9)) else st.sampled_from(V_HUGE))
    if lead is None:
        big = v > 10_000
        lead = draw(st.sampled_from([(), (1,), (2,), (0,)] if big else
                                    [(), (1,), (3,), (6,), (0,), (2, 3), (3, 0), (2, 1, 3)]))
    return tuple(lead), v


def _lay_out(x, layout, draw_seed):
    """The same values in another memory layout (what users hand over from other programs)."""
    if layout == "strided":
        wide = np.empty(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        wide[..., ::2] = x
        wide[..., 1::2] = np.float32(draw_seed % 7)      # garbage between the values
        return wide[..., ::2]
    if layout == "F":
        return np.asfortranarray(x)
    if layout == "big-endian" and x.dtype.kind == "f":   # bfloat16 has no byte-swapped dtype
        return x.astype(x.dtype.newbyteorder(">"))
    return x


@st.composite
def logits(draw, shape=None, dtype=None):
    lead, v = draw(shapes()) if shape is None else shape
    dtype = draw(st.sampled_from(list(DTYPES))) if dtype is None else dtype
    scale = draw(st.sampled_from([1e-3, 1.0, 10.0, 300.0, 1e4]))
    offset = draw(st.sampled_from([0.0, 50.0, -50.0, 1e4, -1e4]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = int(np.prod(lead, dtype=np.int64))
    x = rng.standard_normal((n, v)) * scale + offset + rng.uniform(-5, 5, (n, 1))
    mask = draw(st.sampled_from([0.0, 0.1, 0.9, 1.0]))
    x[rng.random((n, v)) < mask] = -np.inf
    special = draw(st.sampled_from(["none", "nan", "inf", "masked_row", "one_left"]))
    if special != "none" and n:
        r = rng.integers(n)
        if special == "masked_row":
            x[r] = -np.inf
        elif special == "one_left":
            x[r] = -np.inf
            x[r, rng.integers(v)] = offset
        else:
            x[r, rng.integers(v)] = np.nan if special == "nan" else np.inf
    with np.errstate(invalid="ignore"):                   # keep +-inf and NaN, clip finite values
        x = np.where(np.isfinite(x), np.clip(x, -_FMAX[dtype], _FMAX[dtype]), x)
    x = x.reshape(lead + (v,)).astype(DTYPES[dtype])
    return _lay_out(x, draw(st.sampled_from(LAYOUTS)), seed)


def probs_from(x):
    """softmax(x) in x's dtype (masked/NaN/+inf rows become rows of zeros)."""
    x2 = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    p = np.exp(R.log_softmax_rows(x2))
    return np.nan_to_num(p, nan=0.0).reshape(x.shape).astype(x.dtype)


def _rows(a):
    return np.asarray(a, np.float64).reshape(-1, a.shape[-1])


def _tol_dtype(x):
    return np.float64 if x.dtype.kind == "f" and x.dtype.itemsize == 8 else np.float32


def check(got, want_rows, x, what, kind="rel", reduction="none", denom=None):
    """``got`` (any reduction) against the reference's per-row values ``want_rows``."""
    tol_dtype = _tol_dtype(x)
    if reduction == "none":
        got = np.asarray(got)
        assert got.shape == x.shape[:-1], (what, got.shape, x.shape)
        assert got.dtype == tol_dtype, (what, got.dtype)
        assert_rows_close(got.reshape(-1), want_rows, tol_dtype, what, kind)
        return
    # A reduction of per-row values: allowed error = the sum of the allowed per-row errors.
    want_rows = np.asarray(want_rows, np.float64)
    n = want_rows.size if denom is None else denom
    got = float(got)
    if n == 0:          # documented (fastdiv.reduce): sum 0, a mean over nothing NaN
        assert got == 0.0 if reduction == "sum" else np.isnan(got), (what, reduction, got)
        return
    want = np.sum(want_rows) / (n if reduction == "mean" else 1)
    if not np.isfinite(want):
        assert np.array_equal(got, want, equal_nan=True), (what, reduction, got, want)
        return
    tol = TOL[tol_dtype]
    bound = (tol["kl"] if kind == "kl" else tol["rtol"]) * np.sum(1 + np.abs(want_rows)) / (n if reduction == "mean" else 1)
    assert abs(got - want) <= bound, (what, reduction, got, want, bound)


REDUCTIONS = st.sampled_from(["none", "mean", "sum"])


@pytest.mark.parametrize("backend", ALL_HOST)
@given(x=logits())
def test_fuzz_logsumexp(backend, x):
    check(fastdiv.logsumexp(x, backend=backend), R.logsumexp_rows(_rows(x)), x, "lse")


@pytest.mark.parametrize("backend", ALL_HOST)
@given(data=st.data())
def test_fuzz_entropy(backend, data):
    x = data.draw(logits())
    inputs = data.draw(st.sampled_from(["logits", "log_probs", "probs"]))
    reduction = data.draw(REDUCTIONS)
    if inputs == "probs":
        x = probs_from(x)
    elif inputs == "log_probs":
        with np.errstate(divide="ignore"):
            x = np.log(probs_from(x))
    with np.errstate(invalid="ignore"):
        got = fastdiv.entropy(x, inputs=inputs, reduction=reduction, backend=backend)
    check(got, R.entropy_rows(_rows(x), inputs), x, f"entropy({inputs})", reduction=reduction)


@pytest.mark.parametrize("backend", ALL_HOST)
@given(data=st.data())
def test_fuzz_kl(backend, data):
    x = data.draw(logits())
    z = data.draw(logits(shape=(x.shape[:-1], x.shape[-1])))
    inputs = data.draw(st.sampled_from(["logits", "log_probs", "probs"]))
    reduction = data.draw(REDUCTIONS)
    if inputs != "logits":
        x, z = probs_from(x), probs_from(z)
        if inputs == "log_probs":
            with np.errstate(divide="ignore"):
                x, z = np.log(x), np.log(z)
    with np.errstate(invalid="ignore"):
        got = fastdiv.kl_div(x, z, inputs=inputs, reduction=reduction, backend=backend)
    want = R.kl_rows(_rows(x), _rows(z), inputs)
    # The reference's dtype is the wider of the two inputs'.
    wide = x if _tol_dtype(x) == np.float64 else z
    check(got, want, wide, f"kl({inputs}, {x.dtype}, {z.dtype})", kind="kl", reduction=reduction)


def _weight(draw, v, dtype):
    kind = draw(st.sampled_from([None, "random", "zeros"]))
    if kind is None:
        return None
    w = np.random.default_rng(v).uniform(0, 2, v)
    if kind == "zeros":
        w[::3] = 0.0
    return w


@pytest.mark.parametrize("backend", ALL_HOST)
@given(data=st.data())
def test_fuzz_cross_entropy_hard(backend, data):
    x = data.draw(logits())
    lead, v = x.shape[:-1], x.shape[-1]
    n = int(np.prod(lead, dtype=np.int64))
    ignore = data.draw(st.sampled_from([-100, -1, v]))        # ignore_index may lie in or out of range
    t = np.array(data.draw(st.lists(st.integers(-1, v - 1), min_size=n, max_size=n)), dtype=np.int64)
    t[t == -1] = ignore
    t = t.astype(data.draw(st.sampled_from([np.int64, np.int32])) if ignore >= -(2**31) else np.int64)
    t = t.reshape(lead)
    eps = data.draw(st.sampled_from([0.0, 0.1, 1.0]))
    w = _weight(data.draw, v, x.dtype)
    reduction = data.draw(REDUCTIONS)
    got = fastdiv.cross_entropy(x, t, weight=w, label_smoothing=eps, ignore_index=ignore, reduction=reduction,
                                backend=backend)
    wc = None if w is None else w.astype(_tol_dtype(x))
    t1 = t.reshape(-1)
    want = R.cross_entropy_hard_rows(_rows(x), t1, ignore, wc, eps)
    denom = None
    if reduction == "mean":
        counted = t1 != ignore
        denom = float(np.count_nonzero(counted)) if w is None else float(np.sum(wc[t1[counted]], dtype=np.float64))
        if denom == 0:
            assert np.isnan(float(got))                     # an empty mean: NaN, as in torch
            return
    check(got, want, x, f"ce(eps={eps}, weight={w is not None}, ignore={ignore})", reduction=reduction, denom=denom)


@pytest.mark.parametrize("backend", ALL_HOST)
@given(data=st.data())
def test_fuzz_cross_entropy_soft(backend, data):
    x = data.draw(logits())
    p = probs_from(data.draw(logits(shape=(x.shape[:-1], x.shape[-1]))))
    eps = data.draw(st.sampled_from([0.0, 0.1, 1.0]))
    w = _weight(data.draw, x.shape[-1], x.dtype)
    reduction = data.draw(REDUCTIONS)
    got = fastdiv.cross_entropy(x, p, weight=w, label_smoothing=eps, reduction=reduction, backend=backend)
    wide = x if _tol_dtype(x) == np.float64 else p
    want = R.cross_entropy_soft_rows(_rows(x), _rows(p), None if w is None else w.astype(_tol_dtype(wide)), eps)
    check(got, want, wide, f"soft ce(eps={eps}, weight={w is not None})", reduction=reduction,
          denom=int(np.prod(x.shape[:-1], dtype=np.int64)))


# --------------------------------------------------------------------------- cuda (simulator)

#: numba's CUDA simulator runs every GPU thread in Python: small rows, few examples (1 in 50 of
#: the profile's, at least 20).  On a real GPU the same test runs on the device.
CUDA_SETTINGS = settings(max_examples=max(20, settings().max_examples // 50))
V_CUDA = [1, 2, 7, 51, 130, 257]


CUDA_SKIP = pytest.mark.skipif(_registry.unavailable_reason("cuda") is not None,
                               reason=str(_registry.unavailable_reason("cuda")))

@st.composite
def cuda_logits(draw):
    v = draw(st.sampled_from(V_CUDA))
    lead = draw(st.sampled_from([(1,), (3,), (2, 2), (0,)]))
    return draw(logits(shape=(lead, v), dtype=draw(st.sampled_from(["float16", "float32", "float64"]))))


@CUDA_SKIP
@CUDA_SETTINGS
@given(x=cuda_logits())
def test_fuzz_cuda_backend(x):
    z = np.ascontiguousarray(x)[::-1] if x.ndim == 2 else np.ascontiguousarray(x)
    rows = _rows(x)
    with np.errstate(invalid="ignore"):
        check(fastdiv.logsumexp(x, backend="cuda"), R.logsumexp_rows(rows), x, "cuda lse")
        check(fastdiv.entropy(x, backend="cuda"), R.entropy_rows(rows), x, "cuda entropy")
        check(fastdiv.kl_div(x, z, reduction="none", backend="cuda"), R.kl_rows(rows, _rows(z)), x, "cuda kl", kind="kl")


@CUDA_SKIP
@CUDA_SETTINGS
@given(x=cuda_logits())
def test_fuzz_cuda_cross_entropy(x):
    t = np.random.default_rng(x.shape[-1]).integers(0, x.shape[-1], x.shape[:-1])
    check(fastdiv.cross_entropy(x, t, reduction="none", backend="cuda"),
          R.cross_entropy_hard_rows(_rows(x), t.reshape(-1)), x, "cuda ce")
