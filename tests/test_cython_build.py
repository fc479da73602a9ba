"""Build-specific checks of the Cython/OpenMP backend (fastdiv._cython._kernels).

The numerical semantics are tested for every backend in test_kernels.py; here: what the build
recorded (OPENMP, SIMD_FLAGS, the ISA levels), that OpenMP threads really run, that results do not depend on
the thread count nor on the batch a row comes in, and the kernels' own argument checks.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

K = pytest.importorskip("fastdiv._cython._kernels", reason="the Cython extension is not built")


def test_build_attributes():
    assert isinstance(K.OPENMP, bool)
    assert isinstance(K.SIMD_FLAGS, str)
    assert K.SIMD_ISA in ("avx512f", "avx2", "avx", "sse4.2", "sse2", "neon", "generic")
    # the ISA levels (issue 21): several chosen at import, or one (native / baseline)
    assert isinstance(K.DISPATCH, bool)
    assert K.ISA_LEVEL in K.ISA_SUPPORTED and set(K.ISA_SUPPORTED) <= set(K.ISA_LEVELS)
    assert K.ISA_LEVELS[0] in K.ISA_SUPPORTED          # the lowest level runs on every CPU
    if K.DISPATCH:
        assert K.ISA_LEVELS == ("x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4")
        assert K.SIMD_FLAGS == f"-march={K.ISA_LEVEL}"
        if not os.environ.get("FASTDIV_ISA"):
            assert K.ISA_LEVEL == K.ISA_SUPPORTED[-1]
    else:
        assert K.ISA_LEVELS in (("native",), ("baseline",))
        assert K.SIMD_FLAGS == ("-march=native" if K.ISA_LEVELS == ("native",) else "")
    assert isinstance(K.max_threads(), int) and K.max_threads() >= 1
    if not K.OPENMP:
        assert K.max_threads() == 1


@pytest.mark.skipif(os.environ.get("FASTDIV_REQUIRE_OPENMP") != "1",
                    reason="FASTDIV_REQUIRE_OPENMP=1 not set")
def test_openmp_required():
    assert K.OPENMP, "built without OpenMP although FASTDIV_REQUIRE_OPENMP=1"


def test_threads_really_run():
    assert K._threads_used(1) == 1
    if K.OPENMP:
        assert K._threads_used(2) == 2
    else:
        assert K._threads_used(2) == 1


def test_argument_checks():
    x = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match="out has 3 elements"):
        K.lse(x, np.empty(3, np.float32), 1)
    with pytest.raises(ValueError, match="differ in shape"):
        K.kl_logits(x, np.zeros((4, 6), np.float32), 1.0, np.empty(4, np.float32), 1)
    with pytest.raises(ValueError, match="weight has"):
        K.ce_hard(x, np.zeros(4, np.int64), -100, np.ones(4, np.float32), 0.0, np.empty(4, np.float32), 1)
    with pytest.raises((TypeError, ValueError)):  # dtypes of one call must agree
        K.lse(x, np.empty(4, np.float64), 1)
    # a target out of range (the API rejects it first) gives NaN, never an out-of-bounds read
    out = np.empty(4, np.float32)
    K.ce_hard(x, np.array([0, 5, -1, 2], np.int64), -100, np.ones(5, np.float32), 0.0, out, 1)
    assert np.isnan(out[1]) and np.isnan(out[2]) and np.isfinite(out[0])
    big = np.zeros((2, 5000), np.float32)
    K.ce_hard(big, np.array([0, 5000], np.int64), -100, np.ones(5000, np.float32), 0.0,
              out[:2], 1)
    assert np.isnan(out[1])


def test_zero_rows():
    for dtype in (np.float32, np.float64):
        x = np.zeros((0, 7), dtype)
        out = np.empty(0, dtype)
        K.lse(x, out, 2)
        K.kl_logits(x, x, 1.0, out, 2)
        K.ce_hard(x, np.zeros(0, np.int64), -100, np.ones(7, dtype), 0.1, out, 2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("v", [2, 51, 3000])
def test_large_common_offsets_do_not_cancel(rng, dtype, v):
    """The kernels are compiled with -fassociative-math; differences of nearly equal large
    values (z - max z in KL, x - max x in exp, max - x_t in CE) must still be formed first.
    Regression: tcx - (z - shz) was once rewritten as (tcx + shz) - z (a KL of 1e-6 came out
    as -9e-5 for logits ~1e4)."""
    from fastdiv import reference as R

    n = 12
    x = (rng.standard_normal((n, v)) * 1e-3).astype(dtype)
    x[0, :2] = [0.00275573, 0.0]
    z = (x.astype(np.float64) + 1e4).astype(dtype)
    out = np.empty(n, dtype)
    K.kl_logits(x, z, 1.0, out, 2)
    tol = 3e-6 if dtype == np.float32 else 1e-12
    ref = R.kl_rows(x, z)
    np.testing.assert_allclose(out, ref, rtol=0, atol=tol * (1 + np.abs(ref)).max())
    xo = (rng.standard_normal((n, v)) * 3 + 1e4).astype(dtype)
    t = np.argmax(xo, axis=1).astype(np.int64)
    K.ce_hard(xo, t, -100, np.ones(v, dtype), 0.0, out, 2)
    ref = R.cross_entropy_hard_rows(xo, t)
    # the float64 reference itself forms x - lse at magnitude 1e4 (abs. error ~1e-12)
    atol = 1e-6 if dtype == np.float32 else 1e-11
    np.testing.assert_allclose(out, ref, rtol=1e-5 if dtype == np.float32 else 1e-12, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum64_blocks_do_not_depend_on_threads(rng, dtype):
    """fastdiv.reduce's float64 sum of per-row values: fixed blocks, so any thread count and
    any offset of the same values give the same bits; within float64 rounding of numpy's."""
    for n in (0, 1, 16383, 16384, 16385, 3 * 16384 + 5, 1 << 18):
        a = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(dtype)
        got = {K.sum64(a, nt) for nt in (1, 2, 3, 8)}
        assert len(got) == 1, (n, got)
        ro = a.copy()
        ro.flags.writeable = False
        assert K.sum64(ro, 2) == got.pop()
        want = np.sum(a, dtype=np.float64)
        assert abs(K.sum64(a, 2) - want) <= 1e-14 * max(np.sum(np.abs(a), dtype=np.float64), 1e-300)
    for bad in (np.zeros((2, 3), np.float32), np.zeros(4, np.int64), np.zeros(8, np.float32)[::2]):
        with pytest.raises(ValueError, match="1-D C-contiguous float32 or float64"):
            K.sum64(bad, 1)
