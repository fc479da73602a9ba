"""The row state of the numba kernels: a row of logits read once into ``(m, c, r, w)``, and the
finishes that turn it into logsumexp, entropy and a target's NLL.  Both drivers use it:
``long_rows.py`` for every row it computes, ``short_rows.py`` for the rows its blocks redo, and
``evaluate.py`` (``_row_state_t``).

Per row, one pass over the data in chunks of ``ROW_CHUNK`` elements, against the exact running
maximum ``m`` of the chunks before:

1. the chunk's exp-sums relative to ``m`` in one pass from memory, with a flag saying whether
   any entry reached ``m`` (the loop keeps no running maximum: a NaN-propagating maximum costs
   four vector instructions per 16 elements, the flag one);
2. only if the flag is set (rare after the first chunks: a new maximum) the chunk's maximum is
   taken from L1, the running sums are rescaled to it and, when several entries rose above
   ``m``, the chunk is summed again, from L1.

So every ``exp`` argument is ``<= 0`` (no overflow) and ``m`` is always the exact maximum of
what was summed.  The state is ``(m, c, r, w)``: ``c`` entries equal to ``m`` (each
contributes exactly 1, kept out of the vector sums), ``r = sum_{x<m} e^(x-m)`` and
``w = sum e^(x-m) (x-m)``, so ``s = c + r``.  Keeping the ones out matters for confident
rows: in float32 a lane holding a 1 swallows terms below 6e-8, and ``log(1 + r)`` computed as
``log1p(r)`` keeps a tiny cross-entropy's relative accuracy (reference: 100 % error at CE
~1e-8 before).  Chunk sums are accumulated in fresh accumulators that LLVM splits across
vector lanes, then added to the row totals; rows end in float64.

Row endings: NaN max -> NaN; +inf max -> lse = +inf and every softmax quantity NaN (but a
NaN later in the row still wins); max = -inf (all masked) -> lse = -inf and the results
documented in ``fastdiv.reference``.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .simd import INLINE, SUB, cast, clamp_lo, exp_held, exp_hot, load, maximum, prefetch_ahead, scale_of, sub_exact

#: Row chunk of _row_state_t: a new maximum costs a pass over its chunk from L1, so shorter
#: chunks make those cheaper, longer ones make the per-chunk work rarer.
ROW_CHUNK = 1024
_INLINE = INLINE
_NAN = np.nan
_INF = np.inf


@njit(**_INLINE)
def _chunk_max(xc, scale):
    m = load(xc[0]) * scale
    for j in range(xc.shape[0]):
        m = maximum(m, load(xc[j]) * scale)
    return m


@njit(**_INLINE)
def _count_ge(xc, scale, ref):
    """The number of entries of xc (times ``scale``) at or above ref."""
    zero = cast(0.0, ref)
    one = cast(1.0, ref)
    k = zero
    for j in range(xc.shape[0]):
        k += one if load(xc[j]) * scale >= ref else zero
    return k


@njit(**_INLINE)
def _sums(row, j0, j1, ref, scale, xt):
    """One pass over row[j0:j1] (times ``scale``) against ``ref``: (top, r, w, k, n) with
    r = sum e and w = sum e*d over the entries below ref (e = exp(d), d = x - ref <= 0),
    k = the number of entries at or above ref (they are left out of the sums: a term >= 1
    in a float32 lane would swallow the small ones, and one far above ref overflows),
    n = the number of entries above xt (a target's rank; xt = +inf folds it away), and
    top = the chunk's maximum when k > 0 or the chunk holds a NaN, else -inf.

    The loop keeps neither a running maximum nor k: a flag says whether every entry was
    below ref (one mask AND per vector, sharing the compare of the masked sums), and only
    when it is not (a new maximum, a tie or a NaN, rare after the first chunks) are the
    maximum and k taken from L1.  A NaN is not below ref, so top finds it."""
    zero = cast(0.0, ref)
    one = cast(1.0, ref)
    r = zero
    w = zero
    below = True                       # every entry below ref (NaN counts as not below)
    n = zero
    for b0 in range(j0, j1, SUB):
        prefetch_ahead(row, b0, SUB)
        xs = row[b0:min(b0 + SUB, j1)]   # slice first: a run-time loop start would gather
        for j in range(xs.shape[0]):
            xj = load(xs[j]) * scale
            d = clamp_lo(sub_exact(xj, ref))   # no fma with the scale: see simd.sub_exact
            e = exp_held(d)
            lo = xj < ref               # not lo: at or above ref, or NaN
            r += e if lo else zero
            w += e * d if lo else zero
            below &= lo
            n += one if xj > xt else zero
    top = cast(-_INF, ref)
    k = zero
    if not below:
        top = _chunk_max(row[j0:j1], scale)
        k = _count_ge(row[j0:j1], scale, ref)
    return top, r, w, k, n


@njit(**_INLINE)
def _row_state(x, scale):
    """(m, c, r, w) of a row of logits (times ``scale``) in one read; see _row_state_t."""
    m, c, r, w, _, _ = _row_state_t(x, scale, _INF)
    return m, c, r, w


@njit(**_INLINE)
def _row_state_t(x, scale, xt):
    """(m, c, r, w, n, jm) of a row of logits (times ``scale``) in one read (see the module
    docstring), n = #(x > xt) and jm = the start of the chunk where m was last raised.

    Each chunk is summed against the running maximum m (the first chunk's maximum is found
    first).  A chunk whose entries at or above m are a single new maximum needs no second
    pass: its other terms and the old state move to the new maximum by a rescale
    (``r -> e^-delta (c + r)``, ``w -> e^-delta (w - delta s)``) and the new maximum is the
    one c.  Only a chunk with several entries above m (early in a row) is summed again,
    from L1.  m is NaN for a row with NaN, +inf for a row with +inf (and no NaN), -inf for
    a row with every entry masked.
    """
    v = x.shape[0]
    scale = scale_of(scale, load(x[0]))   # a float64 scale must not widen float32 arithmetic
    xt = cast(xt, scale)
    zero = cast(0.0, scale)
    one = cast(1.0, scale)
    m = cast(-_INF, zero)
    c = zero
    r = zero
    w = zero
    n = 0
    jm = 0
    for j0 in range(0, v, ROW_CHUNK):
        j1 = min(j0 + ROW_CHUNK, v)
        if m > -_INF and m < _INF:      # fused pass against the running maximum
            cm, cr, cw, ck, cn = _sums(x, j0, j1, m, scale, xt)
            if cm <= m:                 # no new maximum; ck entries tie with m
                r += cr
                w += cw
                c += ck
                n += int(cn)
                continue
            if ck == 1 and cm < _INF:   # one new maximum
                delta = m - cm
                f = exp_hot(clamp_lo(delta))
                s_old = c + r + cr
                w = f * (w + cw + delta * s_old)
                r = f * s_old
                c = one
                m = cm
                n += int(cn)
                jm = j0
                continue
        else:
            cm = _chunk_max(x[j0:j1], scale)
            if m == _INF and cm == cm:  # only a NaN can change the answer now
                continue
        # cm > m (several entries above it), or NaN, or nothing finite so far
        if cm != cm:
            return cm, c, r, w, n, jm
        if cm == -_INF:
            continue
        jm = j0
        if cm == _INF:
            m = cm
            continue
        if m > -_INF:
            delta = m - cm
            f = exp_hot(clamp_lo(delta))
            w = f * (w + delta * (c + r))
            r = f * (c + r)
            c = zero
        m = cm
        _, cr, cw, ck, cn = _sums(x, j0, j1, m, scale, xt)
        r += cr
        w += cw
        c += ck
        n += int(cn)
    return m, c, r, w, n, jm


@njit(**_INLINE)
def _log_s(c, r):
    """log(c + r) in float64, as log c + log1p(r / c): keeps a tiny r (c >= 1)."""
    cf = np.float64(c)
    return np.log(cf) + np.log1p(np.float64(r) / cf)


@njit(**_INLINE)
def _finish_lse(m, c, r):
    if m != m or m == _INF or m == -_INF:
        return np.float64(m)
    return np.float64(m) + _log_s(c, r)


@njit(**_INLINE)
def _finish_entropy(m, c, r, w):
    """H = log s - w / s (both terms >= 0), with the row endings: NaN/+inf -> NaN, all masked -> 0."""
    if m != m or m == _INF:
        return _NAN
    if m == -_INF:
        return 0.0
    return _log_s(c, r) - np.float64(w) / (np.float64(c) + np.float64(r))


@njit(**_INLINE)
def _nll(m, c, r, xt):
    """-log q_t = (m - x_t) + log s (the two large numbers subtracted first), with the row
    endings: NaN/+inf -> NaN, all masked -> +inf (the target has probability 0)."""
    if m != m or m == _INF:
        return _NAN
    if m == -_INF:
        return _INF
    return np.float64(sub_exact(m, xt)) + _log_s(c, r)
