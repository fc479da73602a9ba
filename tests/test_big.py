"""64-bit indexing: N * V > 2^31 elements handed to the kernels whole (no row blocking).

The array is np.zeros (calloc): untouched pages are the kernel's shared zero page, so 8.7 GB
of virtual memory costs little RAM; only the first and last rows are written."""
from __future__ import annotations

import numpy as np
import pytest

import fastdiv
from fastdiv import reference as R

from conftest import COMPILED, assert_rows_close

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backend", COMPILED)
def test_more_than_2_31_elements(backend, rng):
    rows, v = 17000, 128256                          # 2.18e9 elements > 2^31
    assert rows * v > 2**31
    try:
        x = np.zeros((rows, v), dtype=np.float32)
    except MemoryError:
        pytest.skip("cannot reserve 8.7 GB of virtual memory here")
    x[:2] = rng.standard_normal((2, v)) * 3
    x[-2:] = rng.standard_normal((2, v)) * 3
    x[-1, : v // 3] = -np.inf
    t = np.zeros(rows, dtype=np.int64)
    t[-2:] = [v - 1, v - 2]                          # targets beyond element 2^31
    for lo, hi in ((0, 2), (rows - 2, rows)):
        want = R.logsumexp_rows(x[lo:hi])
        assert_rows_close(fastdiv.logsumexp(x, backend=backend)[lo:hi], want, np.float32, "big lse")
    ce = fastdiv.cross_entropy(x, t, reduction="none", backend=backend)
    assert_rows_close(ce[-2:], R.cross_entropy_hard_rows(x[-2:], t[-2:]), np.float32, "big ce")
    assert np.allclose(ce[2:-2], np.log(v), rtol=1e-6)  # all-zero rows: uniform
