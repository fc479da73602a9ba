"""CUDA logit soft-capping: ``out = cap * tanh(x / cap)`` on a block of rows, on the device.

``softcap_rows(x, out, cap, *, stream)``: ``x`` a 2-D C-contiguous float16 / float32 / float64
device array (a row block of the logits), ``out`` a C-contiguous float32 / float64 device
array of its shape (float32 for float16 input: the accumulation type of the evaluate
kernel).  Semantics of ``fastdiv.reference.softcap_rows``: ``-inf`` (a masked class) stays
``-inf``, NaN stays NaN, ``+inf`` becomes ``cap``.  The value is computed in float64 (as the
evaluate kernel accumulates) with CUDA's ``tanh`` and rounded to the output's precision, as
the CPU backends round the soft-capped logits to the logits' dtype: float32 results are
then the correctly rounded capped logits but for rare double roundings, and ranks and ties
are those of the capped logits in that dtype.  One thread per element (grid-stride), no
synchronisation.
"""
from __future__ import annotations

import math

import numpy as np

cuda = None      # numba.cuda, imported by the first launch (a module global: the simulator
                 # swaps ``cuda`` inside kernels)

#: threads per block of the elementwise kernel
BLOCK = 256
#: blocks at most per launch (the kernel strides over the rest)
MAX_GRID = 4096

_kernel: list = []            # the compiled kernel, made by the first launch


def _make():
    global cuda
    from numba import cuda, float64

    NEG = -math.inf

    @cuda.jit
    def kern(x, out, cap):
        v = x.shape[1]
        n = x.shape[0] * v
        for k in range(cuda.grid(1), n, cuda.gridsize(1)):
            i = k // v
            j = k - i * v
            xv = float64(x[i, j])
            out[i, j] = NEG if xv == NEG else cap * math.tanh(xv / cap)

    return kern


def softcap_rows(x, out, cap, *, stream):
    """Launch the transform of ``x`` into ``out`` (see the module docstring) on ``stream``."""
    from . import kernels

    rows, v = (int(d) for d in x.shape)
    if tuple(out.shape) != (rows, v):
        raise ValueError(f"softcap_rows: out must have x's shape {(rows, v)}, got {tuple(out.shape)}")
    precision = np.dtype(out.dtype).name
    if precision not in ("float32", "float64"):
        raise TypeError(f"softcap_rows: out must be float32 or float64, got {out.dtype}")
    if not _kernel:
        _kernel.append(_make())
    kern = _kernel[0]
    n = rows * v
    if n == 0:
        return
    grid = min(MAX_GRID, -(-n // BLOCK))
    kernels._launch(kern, grid, BLOCK, stream, (x, out, np.float64(cap)))
