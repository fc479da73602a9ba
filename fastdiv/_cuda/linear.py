"""The rows of a linear head's logits on numba device arrays, for ``fastdiv.linear``.

torch and CuPy device arrays go through their own library's matmul; numba device arrays have
none, so ``linear_rows(h, w, b, r0, out, *, stream)`` computes ``out[i, j] = h[r0 + i] . w[j]
(+ b[j])`` with one thread per logit, the dot product summed in float64 and rounded once to
``out``'s dtype (float32 or float64).  It is correct, not fast (no shared-memory tiling): it
serves numba arrays, small heads and the simulator's tests of the device path; heads of
real size belong to torch's or CuPy's matmul.
"""
from __future__ import annotations

import numpy as np

cuda = None      # numba.cuda, imported by the first launch (the simulator swaps it in kernels)

#: threads per block along each axis (rows x classes)
BLOCK = 16

_kernel: list = []


def _make():
    global cuda
    from numba import cuda, float64

    @cuda.jit
    def kern(h, w, b, has_bias, r0, out):
        i, j = cuda.grid(2)
        if i < out.shape[0] and j < out.shape[1]:
            acc = float64(0.0)
            for d in range(h.shape[1]):
                acc += float64(h[r0 + i, d]) * float64(w[j, d])
            if has_bias:
                acc += float64(b[j])
            out[i, j] = acc

    return kern


def linear_rows(h, w, b, r0, out, *, stream):
    """Launch ``out = h[r0 : r0 + len(out)] @ w.T + b`` (``b`` None: no bias) on ``stream``."""
    import warnings

    rows, v = (int(s) for s in out.shape)
    if rows == 0:
        return
    if not _kernel:
        _kernel.append(_make())
    has_bias = b is not None
    if not has_bias:
        from numba import cuda as _cuda

        b = _cuda.device_array(1, dtype=np.dtype(out.dtype), stream=stream)
    grid = (-(-rows // BLOCK), -(-v // BLOCK))
    with warnings.catch_warnings():         # numba warns about small grids: tiny heads are fine
        warnings.simplefilter("ignore")
        _kernel[0][grid, (BLOCK, BLOCK), stream](h, w, b, has_bias, np.int64(r0), out)
