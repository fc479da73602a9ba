"""The compiled kernels' numerical regressions: rows built to reach one code path or one past
bug (rising and late maxima, blocks of shifting scale, near-equal large logits, a masked
start followed by NaN, confident rows, offsets of 1e10, V = 1).  Every kernel against the
reference on random inputs, every dtype, shape and layout: tests/test_cases.py."""
from __future__ import annotations

import numpy as np
import pytest

import fastdiv
from fastdiv import reference as R

from conftest import assert_rows_close, backend_params, make_logits

DTYPES = [np.float32, np.float64]
pytestmark = pytest.mark.parametrize("backend", backend_params())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v", [7, 5000])
def test_stale_reference_paths(backend, dtype, v, rng):
    """Rows whose maximum rises chunk after chunk, jumps late, or starts masked."""
    x = np.empty((6, v))
    x[0] = np.linspace(-50, 50, v)                         # max rises every chunk
    x[1] = np.linspace(50, -50, v)
    x[2] = rng.normal(size=v); x[2, -1] = 700              # jump beyond float32's limit at the end
    x[3] = -np.inf; x[3, -1] = 3.0                         # finite only at the very end
    x[4] = rng.normal(size=v) - 1e4; x[4, v // 2] = 1e4    # one dominant class mid-row
    x[5] = rng.normal(size=v); x[5, 0] = -np.inf
    xd = x.astype(dtype)
    z = xd[::-1].copy()
    assert_rows_close(fastdiv.logsumexp(xd, backend=backend), R.logsumexp_rows(xd), dtype, "lse")
    assert_rows_close(fastdiv.entropy(xd, backend=backend), R.entropy_rows(xd), dtype, "entropy")
    assert_rows_close(fastdiv.kl_div(xd, z, reduction="none", backend=backend),
                      R.kl_rows(xd, z), dtype, "kl", kind="kl")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("v", [7, 51])
def test_many_blocks_of_shifting_scale(backend, dtype, v, rng):
    """The short-row kernels work in blocks of rows (several groups of blocks here) and sum a
    block against a reference carried over from the block before (numba entropy: the previous
    block's maximum): blocks whose level jumps up or down, by a little or by 1e4, whole blocks
    masked or poisoned, and the edge rows scattered among them."""
    n = 3000
    level = np.repeat(rng.choice([0.0, 1.5, -3.0, 3.9, 30.0, -200.0, 1e4], size=n // 37 + 1), 37)[:n]
    x = rng.standard_normal((n, v)) * 3 + level[:, None]
    x[800:1000] = -np.inf                                       # a masked stretch over whole blocks
    x[1500:1503, 0] = np.nan                                    # a NaN at the start of a block
    x[2100] = np.inf
    edges = make_logits(rng, 10, v, np.float64)
    x[rng.choice(n, 10, replace=False)] = edges
    x = x.astype(dtype)
    z = np.roll(x, 1, axis=0)
    t = rng.integers(0, v, n)
    for temp in (1.0, 0.5):
        assert_rows_close(fastdiv.entropy(x, temperature=temp, backend=backend),
                          R.entropy_rows(x.astype(np.float64) / temp), dtype, f"entropy T={temp}")
        assert_rows_close(fastdiv.kl_div(x, z, temperature=temp, reduction="none", backend=backend),
                          R.kl_rows(x.astype(np.float64) / temp, z.astype(np.float64) / temp),
                          dtype, f"kl T={temp}", kind="kl")
    assert_rows_close(fastdiv.logsumexp(x, backend=backend), R.logsumexp_rows(x), dtype, "lse")
    assert_rows_close(fastdiv.cross_entropy(x, t, reduction="none", backend=backend),
                      R.cross_entropy_hard_rows(x, t), dtype, "ce")


@pytest.mark.parametrize("dtype", DTYPES)
def test_kl_of_nearly_equal_large_logits(backend, dtype, rng):
    """Regression: fast-math reassociation once turned (x - mx) - (z - mz) into
    (x + mz) - (z + mx) ... at |x| ~ 1e4, making a KL of 1e-6 come out as -9e-5."""
    x = rng.standard_normal((16, 3000)) * 1e4
    z = x + rng.standard_normal((16, 3000)) * 1e-3
    x, z = x.astype(dtype), z.astype(dtype)
    got = fastdiv.kl_div(x, z, reduction="none", backend=backend)
    assert_rows_close(got, R.kl_rows(x, z), dtype, "kl near-equal", kind="kl")
    assert np.all(got >= -TOL_KL[dtype])


TOL_KL = {np.float32: 2e-5, np.float64: 1e-12}


def test_kl_small_vocabulary_at_large_offsets(backend):
    """Regression (hypothesis): V = 2, x = [0, 0.0012], z = [1e4, 1e4]; the small-V numba path
    returned 1.1e-4 for a KL of 1.8e-7 (reassociation at the 1e4 scale)."""
    x = np.array([[0.0, 0.00119209]] * 3, np.float32)
    z = np.full((3, 2), 1e4, np.float32)
    got = fastdiv.kl_div(x, z, reduction="none", backend=backend)
    assert_rows_close(got, R.kl_rows(x, z), np.float32, "kl small V", kind="kl")


@pytest.mark.parametrize("dtype", DTYPES)
def test_full_label_smoothing_with_a_masked_target(backend, dtype):
    """eps = 1 gives the target term weight 0: the loss is the smoothing term alone
    (+inf when a class with positive weight is masked), never inf * 0 = NaN."""
    x = np.array([[0.0, -np.inf, 1.0], [0.0, 2.0, 1.0]], dtype)
    t = np.array([1, 1])
    got = fastdiv.cross_entropy(x, t, label_smoothing=1.0, reduction="none", backend=backend)
    assert_rows_close(got, R.cross_entropy_hard_rows(x, t, label_smoothing=1.0), dtype, "ce eps=1")
    assert got[0] == np.inf and np.isfinite(got[1])
    w = np.array([1.0, 0.0, 1.0])                     # the masked class has weight 0: finite
    got = fastdiv.cross_entropy(x, t, weight=w, label_smoothing=1.0, reduction="none", backend=backend)
    assert np.all(np.isfinite(got))
    assert_rows_close(got, R.cross_entropy_hard_rows(x, t, -100, w, 1.0), dtype, "ce eps=1 weighted")


@pytest.mark.parametrize("pos", [0, 1, 2047, 2048, 4100])
def test_nan_after_a_masked_start_poisons_the_row(backend, pos):
    """Regression (found by the fuzzer): a row starting with -inf with a NaN in its first
    chunk lost the NaN when a later chunk moved the reference maximum."""
    x = np.full((2, 4101), -np.inf, np.float32)
    x[0, pos] = np.nan
    x[1, 4100] = 1.0
    z = x[::-1].copy()
    assert np.isnan(fastdiv.logsumexp(x, backend=backend)[0])
    assert np.isnan(fastdiv.entropy(x, backend=backend)[0])
    assert np.isnan(fastdiv.cross_entropy(x, np.array([3, 4100]), reduction="none", backend=backend)[0])
    assert np.isnan(fastdiv.kl_div(x, z, reduction="none", backend=backend)).all()


def test_near_one_hot_rows_keep_relative_accuracy(backend, rng):
    """A confident prediction's CE is log(1 + small): float32 must keep the small part."""
    worst = 0.0
    for v in (7, 51, 300, 5000):
        x = (rng.standard_normal((16, v)) * 3).astype(np.float32)
        x[np.arange(16), rng.integers(0, v, 16)] += rng.uniform(4, 12, 16)
        t = x.argmax(axis=1)
        for got, want in ((fastdiv.entropy(x, backend=backend), R.entropy_rows(x)),
                          (fastdiv.cross_entropy(x, t, reduction="none", backend=backend),
                           R.cross_entropy_hard_rows(x, t))):
            worst = max(worst, float(np.max(np.abs(got - want) / np.abs(want))))
    assert worst <= 1e-5, worst


@pytest.mark.parametrize("dtype", [np.float64])
@pytest.mark.parametrize("v", [51, 1000])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_cross_entropy_of_offset_float64_logits(backend, dtype, v, smoothing, rng):
    """(m - x_t) + log s with both large: the subtraction must come first.  numba's fast-math
    once regrouped it as (m + log s) - x_t, which rounds log s to the grid of |m|: 1e-7
    relative at an offset of 1e10, 0 instead of log V for a row of -1e30."""
    x = rng.standard_normal((16, v)) + 1e10
    x[0] = -1e30
    t = rng.integers(0, v, 16)
    assert_rows_close(fastdiv.cross_entropy(x, t, label_smoothing=smoothing, reduction="none", backend=backend),
                      R.cross_entropy_hard_rows(x, t, label_smoothing=smoothing), np.float64, "ce")


@pytest.mark.parametrize("dtype", DTYPES)
def test_one_class_rows_are_exact(backend, dtype, rng):
    """V = 1: every distribution is [1], so lse = x and KL = entropy = CE = 0 to the bit (numba's
    shared block shift once left ~1e-6 of rounding in lse and KL)."""
    x = (rng.standard_normal((3000, 1)) * 5).astype(dtype)
    z = (rng.standard_normal((3000, 1)) * 5).astype(dtype)
    np.testing.assert_array_equal(fastdiv.logsumexp(x, backend=backend), x[:, 0])
    for got in (fastdiv.kl_div(x, z, reduction="none", backend=backend), fastdiv.entropy(x, backend=backend),
                fastdiv.cross_entropy(x, np.zeros(3000, np.int64), reduction="none", backend=backend),
                fastdiv.js_div(x, z, reduction="none", backend=backend)):
        np.testing.assert_array_equal(got, 0)
