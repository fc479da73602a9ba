"""numba kernel of the ``compare`` op (#19): ``fastdiv.compare``'s per-row state in one read of
the model's and the base's rows.

Contract (inputs, the state's columns): ``fastdiv._registry``, op ``compare``.

Per row: evaluate's pass of the model x with the base z as reference (``evaluate._xz_row``),
which also keeps each chunk's exponentials and shifts in per-thread scratch rows; then, from
L2 (a 50257-float row pair and its exponentials are 800 KB), the Jensen-Shannon terms of
``divergences._js_terms`` -- one log per element -- with both KLs summed class by class
(exact near 0; the first pass leaves its one-pass KL sums out) and the count of the model's
classes above the base's top-1.  z's (m, s) from the first pass are its own whatever x holds
(the pass keeps z's sums going after x settles), so no row is read twice from memory.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import threads
from .divergences import _LINE, JS_WORK, _js_terms
from .evaluate import CHUNK, _locate, _store_xz, _xz_row
from .simd import INLINE, JIT, cast, prefer_wide_vectors, read_only
from .threads import PAR, call, share

_INF = np.inf


@njit(**INLINE)
def _count_above(row, xr):
    """#(row_j > xr), from cache."""
    n = 0
    for j in range(row.shape[0]):
        n += 1 if row[j] > xr else 0
    return n


@njit(**JIT)
def _compare(x, z, target, st, ix, scratch, refs):
    n, v = x.shape
    ex = scratch[0, :v]
    ez = scratch[1, :v]
    for i in range(n):
        prefer_wide_vectors()
        row = x[i]
        zrow = z[i]
        t = target[i]
        has_t = 0 <= t < v
        xt = row[t] if has_t else cast(np.nan, row[0])
        m, s, w, mz, sz, wxz, wzx, _, am, amz, flags, _ = _xz_row(row, zrow, xt, ex, ez, refs)
        _store_xz(st, ix, i, row, xt, m, s, w, mz, sz, wxz, wzx, am, flags)
        st[i, 8] = zrow[t] if has_t else np.nan
        top = _locate(zrow, amz, CHUNK, mz)
        ix[i, 3] = top
        if m == m and m != _INF and mz == mz and mz != _INF:     # no NaN, no +inf in either row
            half = cast(0.5, row[0])
            js, kq, kp = _js_terms(row, zrow, half, half, ex, ez, refs, CHUNK, m, mz, s, sz, True)
            st[i, 9] = js
            if m > -_INF and mz > -_INF:
                # flags 2: z has mass where x is masked; 1: the other way
                st[i, 10] = _INF if flags & 2 else kq
                st[i, 11] = _INF if flags & 1 else kp
        else:
            st[i, 9] = np.nan
        # the base's top-1 (finite or +inf maximum) within the model's finite row, unmasked
        xr = row[top]
        if mz > -_INF and m > -_INF and m < _INF and xr > -_INF:
            ix[i, 1] = _count_above(row, xr)
        else:
            ix[i, 1] = -1


@njit(**PAR)
def _compare_mt(e, x, z, target, st, ix, scratch, refs, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        call(e, (x[lo:hi], z[lo:hi], target[lo:hi], st[lo:hi], ix[lo:hi], scratch[k], refs[k]))


def compare(x, z, target, st, ix, nthreads):
    # O(1) shape checks: the jitted loop does no bounds checking (the API validated the rest).
    n, v = x.shape
    if v < 1 or z.shape != x.shape or z.dtype != x.dtype:
        raise ValueError(f"compare: z must have x's shape {x.shape} and dtype, got {z.shape}, {z.dtype}")
    if target.shape != (n,) or st.shape != (n, 12) or ix.shape != (n, 4):
        raise ValueError(f"compare: target must have shape ({n},), st ({n}, 12), ix ({n}, 4)")
    x, z, target = read_only(x, z, target)
    k = threads.parts(x, nthreads, work=JS_WORK)   # its pass is JS's and more
    # per share: the two rows' exponentials and the chunks' shifts, each row padded by a cache
    # line so that no two shares write to one line (see divergences.js_logits)
    pad = _LINE // x.dtype.itemsize
    scratch = np.empty((k, 2, v + pad), dtype=x.dtype)
    refs = np.empty((k, 2, -(-v // CHUNK) + pad), dtype=x.dtype)
    if k == 1:
        _compare(x, z, target, st, ix, scratch[0], refs[0])
        return
    threads.split(k, _compare_mt, _compare, "rrrrrkk", x, z, target, st, ix, scratch, refs)
