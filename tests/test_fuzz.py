"""Fuzzing the case table (tests/cases.py) on every backend against the float64 reference.

Hypothesis draws the inputs; the table's row says how to build the arguments from logits
(probabilities and log-probabilities are their softmax), how to call the op and what the
reference is.  Strategies draw: leading shapes of 1 to 3 axes (zero rows included); V from 1
to 128256 (few rows when V is huge); float16, bfloat16, float32, float64, and for ops of two
float arrays a second dtype for the second one; every layout of ``cases.LAYOUTS``; logits of
scale 1e-3 to 1e4 around offsets up to +-1e4; masked classes (none, some, most, all), whole
masked rows, NaN and +inf entries; every reduction.

README's test command draws the row for each example (one test per backend, in the dtypes of
the backend's fast tier); the ``slow`` tier fuzzes each row on each backend in every dtype.
The cuda backend is fuzzed on small rows with 1 in 50 of the examples (the simulator is slow:
there README's command runs half as many, the slow tier the full number again).

Profiles (tests/conftest.py): ``default`` (40 examples per test) runs in CI; ``thorough``
(10 000 examples per test) is the long run whose summary is kept in tests/FUZZ_SUMMARY.md:

    HYPOTHESIS_PROFILE=thorough PYTHONPATH=. nice python -m pytest -p no:cacheprovider \
        tests/test_fuzz.py -m "" --hypothesis-show-statistics -rA
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cases as C

# reduction="mean" over zero rows is NaN with this warning for entropy and kl_div (documented).
pytestmark = [pytest.mark.filterwarnings("ignore:mean of an empty batch is NaN:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]

#: Largest finite value per dtype (logits beyond it would be +inf after the cast).
_FMAX = {"float16": 6e4, "bfloat16": 3e38, "float32": 3e38, "float64": 1e308}

V_SMALL = [1, 2, 3, 7, 51, 130, 257, 1271, 2049, 5000]
V_HUGE = [32000, 50257, 128256]


@st.composite
def shapes(draw, v_small=V_SMALL, v_huge=V_HUGE, leads=None):
    """A leading shape (0 to 3 axes' worth of rows, zero rows possible) and V."""
    v = draw(st.sampled_from(v_small) if not v_huge or draw(st.integers(0, 9)) else st.sampled_from(v_huge))
    if leads is None:
        leads = ([(), (1,), (2,), (0,)] if v > 10_000 else
                 [(), (1,), (3,), (6,), (0,), (2, 3), (3, 0), (2, 1, 3)])
    return tuple(draw(st.sampled_from(leads))), v


class Drawn:
    """A ``cases.Source`` whose logits hypothesis draws: scale, offset, masks, NaN / +inf."""

    edges = False

    def __init__(self, draw, dtype):
        self.draw, self.fmax = draw, _FMAX[np.dtype(dtype).name]
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def logits(self, n, v):
        draw, rng = self.draw, self.rng
        scale = draw(st.sampled_from([1e-3, 1.0, 10.0, 300.0, 1e4]))
        offset = draw(st.sampled_from([0.0, 50.0, -50.0, 1e4, -1e4]))
        x = rng.standard_normal((n, v)) * scale + offset + rng.uniform(-5, 5, (n, 1))
        x[rng.random((n, v)) < draw(st.sampled_from([0.0, 0.1, 0.9, 1.0]))] = -np.inf
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
        with np.errstate(invalid="ignore"):              # keep +-inf and NaN, clip finite values
            return np.where(np.isfinite(x), np.clip(x, -self.fmax, self.fmax), x)


def _lay_out(a, layout):
    if layout == "big-endian" and a.dtype == C.BFLOAT16:   # bfloat16 has no byte-swapped dtype
        return a
    return C.LAYOUTS[layout](a)


def fuzz_args(data, case, dtypes, shape=None, mixed=True):
    """Drawn arguments for ``case`` (and the dtype the result is computed in)."""
    lead, v = data.draw(shapes()) if shape is None else shape
    dtype = data.draw(st.sampled_from(dtypes))
    args = case.args(None, lead, v, dtype, src=Drawn(data.draw, dtype))
    names = list(case.arrays)
    if mixed and len(names) > 1 and data.draw(st.booleans()):   # the second float array in another dtype
        args[names[1]] = args[names[1]].astype(data.draw(st.sampled_from(dtypes)))
    wide = np.float64 if any(args[k].dtype == np.float64 for k in names) else np.float32
    layout = data.draw(st.sampled_from(list(C.LAYOUTS)))
    return {k: (_lay_out(a, layout) if k in case.arrays else a) for k, a in args.items()}, wide


def check(case, got, args, backend, wide, reduction):
    """``got`` (any reduction) against the reference's per-row values."""
    if case.check is not None:
        case.check(got, args, backend, wide, case)
        return
    want_rows = np.asarray(case.want(args, backend), np.float64)
    lead = args[next(iter(case.arrays))].shape[:-1]
    if reduction == "none":
        got = np.asarray(got)
        assert got.shape == lead and got.dtype == wide, (case.id, got.shape, got.dtype, lead)
        C.assert_rows_close(got.reshape(-1), want_rows, wide, case.id, case.tol)
        return
    # A reduction of per-row values: allowed error = the sum of the allowed per-row errors.
    n = want_rows.size if case.denom is None or reduction == "sum" else case.denom(args)
    got = float(got)
    if n == 0:      # documented (fastdiv.reduce): sum 0, a mean over nothing NaN
        empty = 0.0 if reduction == "sum" else np.nan
        assert np.array_equal(got, empty, equal_nan=True), (case.id, reduction, got)
        return
    want = np.sum(want_rows) / (n if reduction == "mean" else 1)
    if not np.isfinite(want):
        assert np.array_equal(got, want, equal_nan=True), (case.id, reduction, got, want)
        return
    tol = C.TOL[wide]
    bound = (tol["kl"] if case.tol == "kl" else tol["rtol"]) * np.sum(1 + np.abs(want_rows))
    assert abs(got - want) <= bound / (n if reduction == "mean" else 1), (case.id, reduction, got, want)


def _params():
    for backend in C.ALL_HOST:
        rows = [c for c in C.CASES if backend in c.backends]
        fast = [d for d in C.DTYPES if C.fast(backend, d)]
        yield pytest.param(backend, None, fast, id=f"{backend}-any")
        for case in rows:
            yield pytest.param(backend, case, C.DTYPES, marks=pytest.mark.slow, id=f"{backend}-{case.id}")


@pytest.mark.parametrize("backend,case,dtypes", list(_params()))
@given(data=st.data())
def test_fuzz(backend, case, dtypes, data):
    if case is None:
        case = data.draw(st.sampled_from([c for c in C.CASES if backend in c.backends]))
    args, wide = fuzz_args(data, case, dtypes)
    reduction = data.draw(st.sampled_from(["none", "mean", "sum"])) if case.per_row else None
    kw = case.per_row if reduction is None else {"reduction": reduction}
    with np.errstate(all="ignore"):
        got = case.call(args, backend, **kw)
    check(case, got, args, backend, wide, reduction or "none")


# --------------------------------------------------------------------------- cuda (simulator)

#: numba's CUDA simulator runs every GPU thread in Python: small rows, few examples (1 in 50 of
#: the profile's, at least 20), the case drawn for each.  In the simulator (~0.5 s an example)
#: README's command runs half as many (test_fuzz_cuda) and the slow tier the full number again
#: (test_fuzz_cuda_more); on a real GPU both run on the device in the fast tier.
CUDA_EXAMPLES = max(20, settings().max_examples // 50)
V_CUDA = [1, 2, 7, 51, 130, 257]
_NO_CUDA = pytest.mark.skipif(not C.CUDA, reason=str(C._registry.unavailable_reason("cuda")))
#: the slow tier in the simulator; on a GPU every cuda cell is fast (cases.fast), and the
#: test keeps only its cuda marker
_SLOW_IN_SIM = pytest.mark.slow if C.SIM else pytest.mark.cuda


def _fuzz_cuda(data):
    case = data.draw(st.sampled_from([c for c in C.CASES if "cuda" in c.backends]))
    shape = data.draw(shapes(V_CUDA, (), [(1,), (3,), (2, 2), (0,)]))
    dtypes = [np.dtype(d) for d in (np.float16, np.float32, np.float64)]
    args, wide = fuzz_args(data, case, dtypes, shape, mixed=False)   # one dtype per call on the device
    with np.errstate(all="ignore"):
        got = case.call(args, "cuda", **case.per_row)
    check(case, got, args, "cuda", wide, "none")


@pytest.mark.cuda
@_NO_CUDA
@settings(max_examples=CUDA_EXAMPLES // 2)
@given(data=st.data())
def test_fuzz_cuda(data):
    _fuzz_cuda(data)


@pytest.mark.cuda
@_NO_CUDA
@_SLOW_IN_SIM
@settings(max_examples=CUDA_EXAMPLES)
@given(data=st.data())
def test_fuzz_cuda_more(data):
    _fuzz_cuda(data)
