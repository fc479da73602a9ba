"""The numba building blocks whose exactness the kernels rely on (fastdiv._numba.simd).

numba's fastmath pass adds the kernel's flags to every float instruction that has none, and
LLVM contracts a product into a following subtraction whenever that subtraction may
contract.  ``sub_exact`` must survive both, inside a vectorised fast-math loop: these
tests pin the behaviour so that a numba or LLVM upgrade that changes it fails here, not as
a 1e-4 error in one temperature-scaled row.
"""
from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from fastdiv._numba.simd import INLINE, sub_exact  # noqa: E402

_FAST = {k: v for k, v in INLINE.items() if k != "inline"}


@numba.njit(**_FAST)
def _shift_then_offset(x, m, c, out):
    # (x - m) - c: instcombine may rewrite a - b - c as a - (b + c) when the outer
    # subtraction can reassociate, and b + c rounds to the grid of |x|
    for j in range(x.shape[0]):
        out[j] = sub_exact(sub_exact(x[j], m), c)


@numba.njit(**_FAST)
def _scaled_minus_ref(x, s, r, out):
    # sc * x - r: fused into one fma it would use the unrounded product
    for j in range(x.shape[0]):
        out[j] = sub_exact(x[j] * s, r)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sub_exact_is_not_reassociated(dtype):
    x = np.full(64, 5312.744, dtype)            # long enough for the vectorised loop
    m = x[0]
    c = dtype(0.031532805)
    out = np.empty_like(x)
    _shift_then_offset(x, m, c, out)
    assert np.all(out == -c), out[:4]            # (x - m) = 0 exactly, then - c


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sub_exact_is_not_contracted_with_a_product(dtype):
    x = np.full(64, 38783.03, dtype)
    s = dtype(1 / 7.3)
    r = dtype(x[0] * s)                          # the rounded product
    out = np.empty_like(x)
    _scaled_minus_ref(x, s, r, out)
    assert np.all(out == 0), out[:4]
