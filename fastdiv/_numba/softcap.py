"""Logit soft-capping ``c * tanh(x / c)`` in one compiled pass (numba, single-threaded).

``softcap_rows(x, inv, cap, out)``: ``x`` a 2-D float32 / float64 array (rows may be strided,
read-only is fine), ``out`` a C-contiguous array of the same shape and dtype; ``inv = 1 / cap``
and ``cap`` in that dtype.  Writes ``out = cap * tanh(x * inv)`` with the semantics of
``fastdiv.reference.softcap_rows``: a masked class (``-inf``) stays ``-inf`` (it is not moved to
``-cap``), NaN stays NaN, ``+inf`` becomes ``cap``.  The transform of every CPU backend
where the Cython extension is not built (otherwise its ``_softcap_rows.h``, the same
algorithm with _simd.h's exp, runs: ``fastdiv.execute.softcap_impl``).  The API
(``fastdiv.execute.run_blocks``) runs one worker per thread, each transforming an L2-sized
block of its rows and handing it to the backend's kernel (single-threaded); one transform
per process for all backends, so the soft-capped logits, and so ranks and ties, are
bit-identical on numba and Cython.  It releases the GIL.

numba lowers ``math.tanh`` to a scalar libm call; this tanh vectorises (selects, fma, one
division).  Numerics, with ``a = |y|``:

* ``a < 0.625``: the odd polynomial / rational of Cephes (``tanhf``: ``y + y z P(z)``, degree 5
  in z = y^2; ``tanh``: ``y + y z P(z) / Q(z)``, degrees 2 / 3), relative error ~1e-7 /
  ~2e-16 on that interval, and exact for tiny y (``tanh y = y`` to the last bit).
* ``a >= 0.625``: ``(1 - e) / (1 + e)`` with ``e = exp(-2a) <= 0.29``: no cancellation, and the
  exp's relative error is damped by ``2e / (1 - e^2) < 0.7``.  ``exp`` is the kernels' fast
  exp of a non-positive argument (``fastdiv._numba.simd.exp_hot``, clamped at its lower end,
  where it returns exactly 0: ``tanh = 1``, as it rounds in float32 beyond a ~ 9 and in
  float64 beyond a ~ 19).  The sign is put back by a select.

Measured against float64 ``np.tanh`` (tests/test_softcap.py): float32 within 1.9 ulp of the
correctly rounded result for cap = 1, 2.4 ulp for caps 15 and 30 (``x * inv`` rounds too) and
3.2 ulp for a cap that is not a float32 (0.01: the cap itself is rounded); float64 within
4e-16 relative.  NaN fails every comparison, so it
takes the second branch, where every operation propagates it.
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from .simd import FASTMATH, INLINE, JIT, cast, clamp_lo, exp_hot, prefer_wide_vectors, prefetch

# one thread per call (the callers run one worker per fastdiv thread); error model: see simd.JIT
_JIT = dict(JIT, parallel=False)
_INLINE = INLINE
_NEG_INF = -np.inf

# Cephes tanhf, |x| < 0.625: tanh x = x + x z P(z), z = x^2
_P32 = (-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1, -3.33332819422e-1)
# Cephes tanh (double), |x| < 0.625: tanh x = x + x z P(z) / Q(z), Q monic
_P64 = (-9.64399179425052238628e-1, -9.92877231001918586564e1, -1.61468768441708447952e3)
_Q64 = (1.12811678491632931402e2, 2.23548839060100448583e3, 4.84406305325125486048e3)


@njit(**_INLINE)
def _odd_f32(z):
    """``(tanh(y) - y) / (y z)`` for z = y^2 < 0.39 (float32)."""
    p = np.float32(_P32[0])
    p = p * z + np.float32(_P32[1])
    p = p * z + np.float32(_P32[2])
    p = p * z + np.float32(_P32[3])
    return p * z + np.float32(_P32[4])


@njit(**_INLINE)
def _odd_f64(z):
    """``(tanh(y) - y) / (y z)`` for z = y^2 < 0.39 (float64)."""
    p = (_P64[0] * z + _P64[1]) * z + _P64[2]
    q = ((z + _Q64[0]) * z + _Q64[1]) * z + _Q64[2]
    return p / q


def _odd(z):  # pragma: no cover - replaced by the overload inside jitted code
    return z


@overload(_odd, inline="always", fastmath=FASTMATH)
def _ov_odd(z):
    if z == types.float32:
        return lambda z: _odd_f32(z)
    if z == types.float64:
        return lambda z: _odd_f64(z)
    return None


@njit(**_INLINE)
def _capped(xv, inv, cap):
    """``cap * tanh(xv * inv)``, ``-inf`` kept (see the module docstring)."""
    y = xv * inv
    a = abs(y)
    z = y * y
    # near zero: cap tanh(y) = x (1 + z P(z)): x itself, not cap * y, carries the leading term
    near = xv + xv * (z * _odd(z))
    e = exp_hot(clamp_lo(cast(-2.0, xv) * a))
    far = (cap - cap * e) / (cast(1.0, xv) + e)
    far = -far if xv < cast(0.0, xv) else far
    far = xv if xv == cast(_NEG_INF, xv) else far     # a masked class stays masked
    return near if a < cast(0.625, xv) else far


#: elements per inner loop; the chunk AHEAD elements further on is prefetched meanwhile
CHUNK = 256
AHEAD = 4096


@njit(**_JIT)
def softcap_rows(x, inv, cap, out):
    # Software prefetch into L2, as in the kernels: one thread, (2048, 50257) float32 in
    # 5-row blocks from memory took 142 ms without it, 99 ms with 1024-element chunks and
    # 54-78 ms with 256 (prefetch distance 4096; 2048 and 8192 were slower).  The inner loop
    # runs over slices (seg, dseg): written as range(j0, j1) over the row it did not
    # vectorise (4x slower).
    prefer_wide_vectors()
    n, v = x.shape
    line = 64 // x.itemsize
    for i in range(n):
        row = x[i]
        dst = out[i]
        for j0 in range(0, v, CHUNK):
            j1 = min(j0 + CHUNK, v)
            ahead = j0 + AHEAD
            if ahead < v:
                for k in range(ahead, min(ahead + CHUNK, v), line):
                    prefetch(row, k)
            elif i + 1 < n:
                nxt = x[i + 1]
                for k in range(ahead - v, min(ahead - v + CHUNK, v), line):
                    prefetch(nxt, k)
            seg = row[j0:j1]
            dseg = dst[j0:j1]
            for j in range(seg.shape[0]):
                dseg[j] = _capped(seg[j], inv, cap)
