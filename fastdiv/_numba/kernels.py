"""numba CPU kernels: the per-row contract of ``fastdiv._registry``, parallel over rows.

Inputs may be float32, float64 or half-precision bits (``HALF_INPUTS``: float16 as uint16,
bfloat16 as int16); ``simd.load`` widens each element to the compute type as it is read.

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

import math

import numpy as np
from numba import njit, prange

from . import threads
from .threads import PAR, share
from .simd import _LN2, INLINE, JIT, KL_SUB, SUB, cast, clamp_lo, exp_hot, fexp, flog, jump_limit, load, maximum, prefer_wide_vectors, prefetch_ahead, read_only, add_exact, is_f64, log_parts_f64, nan_of, rel_entr, scale_of, sub_exact, two_diff

#: Kernels read float16/bfloat16 inputs directly (see the module docstring).
HALF_INPUTS = True

#: Row chunk of _row_state_t: a new maximum costs a pass over its chunk from L1, so shorter
#: chunks make those cheaper, longer ones make the per-chunk work rarer.
ROW_CHUNK = 1024
#: The KL kernel's chunk (two rows read at once).
KL_CHUNK = 2048
#: Sums of many terms of one sign (the cross-entropy's second pass, entropy and KL from
#: probabilities) run in the compute type over this many terms, then add into float64 totals:
#: one float32 total over ~1e5 near-equal terms drifts by ~1e-5 relative.
SUM_CHUNK = 256
_JIT = JIT
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
            e = exp_hot(d)
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


@njit(**_JIT)
def _lse(x, out):
    for i in range(x.shape[0]):
        prefer_wide_vectors()
        m, c, r, _ = _row_state(x[i], 1.0)
        out[i] = _finish_lse(m, c, r)


# --------------------------------------------------------------------------- entropy


@njit(**_JIT)
def _entropy_logits(x, scale, out):
    # H = log s - w / s with w = sum e_j d_j, d_j = x_j - m <= 0: no cancellation, since m
    # is the exact row maximum (both terms >= 0).
    for i in range(x.shape[0]):
        prefer_wide_vectors()
        m, c, r, w = _row_state(x[i], scale)
        out[i] = _finish_entropy(m, c, r, w)


@njit(**_JIT)
def _entropy_probs(p, out):
    for i in range(p.shape[0]):
        prefer_wide_vectors()
        row = p[i]
        zero = cast(0.0, load(row[0]))
        acc = 0.0                        # blocks of SUM_CHUNK terms, float64 total (see _ce_soft)
        for j0 in range(0, row.shape[0], SUM_CHUNK):
            part = zero
            blk = row[j0:j0 + SUM_CHUNK]    # slice first: a run-time loop start would gather
            for j in range(blk.shape[0]):
                pj = load(blk[j])
                # -p log p term by term scipy.special.entr: 0 log 0 = 0, and a negative p
                # (outside the domain) is entr = -inf, here +inf in sum p log p; NaN stays NaN
                part += pj * flog(pj) if pj > zero else (zero if pj == zero else -pj * _INF)
            acc += part
        out[i] = -acc


@njit(**_JIT)
def _entropy_log_probs(lp, out):
    for i in range(lp.shape[0]):
        prefer_wide_vectors()
        row = lp[i]
        zero = cast(0.0, load(row[0]))
        acc = 0.0
        for j0 in range(0, row.shape[0], SUM_CHUNK):
            part = zero
            blk = row[j0:j0 + SUM_CHUNK]
            for j in range(blk.shape[0]):
                lj = load(blk[j])
                part += fexp(lj) * lj if lj != -_INF else zero
            acc += part
        out[i] = -acc


# --------------------------------------------------------------------------- KL


@njit(**_INLINE)
def _exp_sum(row, j0, j1, ref, scale):
    """sum exp(x - ref) over row[j0:j1] (times ``scale``), every x <= ref."""
    acc = cast(0.0, ref)
    for j in range(j0, j1):
        acc += exp_hot(clamp_lo(sub_exact(load(row[j]) * scale, ref)))
    return acc


@njit(**_INLINE)
def _kl_sums(xr, zr, j0, j1, mx, mz, scale):
    """One pass over [j0, j1) of both rows: (inside, sum e^dx, sum e^dz, sum e^dx (dx - dz)),
    inside = every x <= mx and every z <= mz (no NaN).  As in _sums, the loop keeps no
    maxima: the caller takes them from L1 only when ``inside`` is false."""
    zero = cast(0.0, mx)
    sx = zero
    sz = zero
    w = zero
    inside = True
    for b0 in range(j0, j1, KL_SUB):
        prefetch_ahead(xr, b0, KL_SUB)
        prefetch_ahead(zr, b0, KL_SUB)
        b1 = min(b0 + KL_SUB, j1)
        xs = xr[b0:b1]
        zs = zr[b0:b1]
        for j in range(xs.shape[0]):
            xj = load(xs[j]) * scale
            zj = load(zs[j]) * scale
            inside &= xj <= mx
            inside &= zj <= mz
            dx = sub_exact(xj, mx)      # (x - mx) - (z - mz) as written: see simd.sub_exact
            dz = sub_exact(zj, mz)
            ex = exp_hot(clamp_lo(dx))
            sx += ex
            sz += exp_hot(clamp_lo(dz))
            # p_j = 0 (x_j = -inf) contributes exactly 0.  q_j = 0 < p_j (z_j = -inf)
            # contributes +inf, or NaN (0 * inf) where e^dx underflowed: the finish reads a
            # NaN w as +inf.  (A floor on e^dx would keep +inf but add floor * (dx - dz),
            # which is 0.25 at |dx - dz| ~ 2e37.)
            w += ex * (dx - dz) if dx > -_INF else zero
    return inside, sx, sz, w


@njit(**_INLINE)
def _kl_raise_x(w, sx, mx, cx):
    """(w, sx) moved from the x reference mx to cx > mx: with delta = mx - cx (exact in
    float64), e^dx scales by e^delta and every dx shifts by delta: w -> e^delta (w + delta sx).
    A w of +inf or NaN (Q misses P) stays; e^delta = 0 (a raise past the exp range) leaves
    (0, 0), never 0 * (delta sx = -inf)."""
    delta = np.float64(mx) - np.float64(cx)
    f = np.exp(delta)
    if not w < _INF:
        return w, f * sx
    if f == 0:
        return 0.0, 0.0
    return f * (w + delta * sx), f * sx


@njit(**_INLINE)
def _kl_raise_z(w, sx, sz, mz, cz):
    """(w, sz) moved from the z reference mz to cz > mz: every dz shifts by delta = mz - cz
    (exact in float64), so w -> w - delta sx and sz -> e^delta sz."""
    delta = np.float64(mz) - np.float64(cz)
    return w - delta * sx, sz * np.exp(delta)


#: float64 KL from logits: the one-pass ``D = w / sx - log sx + log sz`` subtracts terms of
#: order ``L = 1 + |w / sx| + |log sx| + |log sz|`` and carries an absolute error of a few eps L
#: (~1e-15 L).  A row with ``D < KL_EXACT_BELOW * L`` (nearly equal P and Q: D ~ |P - Q|^2) is
#: recomputed by _kl_exact, which keeps D's relative precision; 1e-3 keeps the one-pass result
#: within 1e-12 relative elsewhere (measured: its error stays below 6 eps L).  float32 rows keep
#: the one pass: their absolute error ~1e-7 L is the dtype's (pass float64 for a tiny KL).
KL_EXACT_BELOW = 1e-3

#: 1/k!, k = 1..19 (expm1's series), and (k - 1)/k!, k = 2..22 (phi's): |b| < 1 keeps the
#: truncation below 1e-17 relative
_EXPM1_C = np.array([1.0 / math.factorial(k) for k in range(1, 20)])
_PHI_C = np.array([(k - 1.0) / math.factorial(k) for k in range(2, 23)])


@njit(**_INLINE)
def _expm1_phi_series(b):
    """``(expm1(b), phi(b))`` for |b| < 1, ``phi(b) = b e^b - e^b + 1`` (>= 0), by their series:
    no cancellation for small b (``(b - 1) expm1(b) + b`` would cancel to eps / b)."""
    e = 0.0
    for k in range(_EXPM1_C.shape[0] - 1, -1, -1):
        e = e * b + _EXPM1_C[k]
    ph = 0.0
    for k in range(_PHI_C.shape[0] - 1, -1, -1):
        ph = ph * b + _PHI_C[k]
    return e * b, ph * b * b


@njit(**_INLINE)
def _kl_exact(xr, zr, scale, mx, mz, k):
    """D(P || Q) of one float64 row pair (logits times ``scale``, exact maxima mx, mz) in a
    form without cancellation, one more pass over both rows (from cache).

    With ``a_j = (x_j - z_j) - (mx - mz)`` (= log p_j - log q_j + c; the two differences are
    carried exactly by TwoSum, so a_j is a few ulp of itself however far x and z are apart),
    ``b_j = a_j - k`` (k: the one-pass estimate of c = log(sx / sz)),
    ``nu = E_q[expm1(b)]``: ``D = (E_q[phi(b)] - psi(nu)) / (1 + nu)`` with
    ``psi(nu) = (1 + nu) log1p(nu) - nu ~ nu^2 / 2`` (~1e-32 here).  E_q[phi(b)] sums terms >= 0
    (the terms ``q (r log r - r + 1)``, r = p / q, of D), so D keeps its relative precision
    down to the rounding of its inputs.  ``q_j e^b_j`` is formed as ``exp((x_j - mx) - k)``."""
    sc = scale_of(scale, load(xr[0]))
    mx = np.float64(mx)
    mz = np.float64(mz)
    dm, dme = two_diff(mx, mz)
    zero = 0.0
    d = 0.0
    for _ in range(2):
        s = 0.0
        nu = 0.0
        big_phi = 0.0
        for j in range(xr.shape[0]):
            xj = np.float64(load(xr[j]) * sc)
            zj = np.float64(load(zr[j]) * sc)
            ez = exp_hot(clamp_lo(sub_exact(zj, mz)))
            d1, d1e = two_diff(xj, zj)
            a = add_exact(sub_exact(d1, dm), sub_exact(d1e, dme))   # d1 - dm: exact where a is small
            a = a if (xj > -_INF and zj > -_INF) else sub_exact(d1, dm)   # masked: +-inf
            b = sub_exact(a, k)
            small = abs(b) < 1.0
            e1, ph = _expm1_phi_series(b if small else zero)
            qe = exp_hot(clamp_lo(sub_exact(sub_exact(xj, mx), k)))
            live = zj > -_INF                        # q_j > 0 (x_j = z_j = -inf: no term)
            s += ez
            nu += (ez * e1 if small else qe - ez) if live else zero
            # b = -inf (x_j = -inf, or x_j - z_j - (mx - mz) past the float range): p_j / q_j
            # = 0, the term q (r log r - r + 1) is q; qe (clamped, not 0) times -inf is not.
            big_phi += (ez * ph if small else (qe * (b - 1.0) + ez if b > -_INF else ez)) if live else zero
        nu = nu / s
        big_phi = big_phi / s
        psi = nu * nu * (0.5 - nu / 6.0 + nu * nu / 12.0) if abs(nu) < 1e-5 else (1.0 + nu) * np.log1p(nu) - nu
        d = (big_phi - psi) / (1.0 + nu)
        # E_q[phi(b)] and psi(nu) share ~nu^2 / 2, nu ~ k - c: with k off by 1e-16, a D below
        # ~1e-33 would lose digits to it.  Then one more pass from k + log1p(nu) = c.
        if not psi > 1e-3 * d:
            break
        k = k + np.log1p(nu)
    return d


@njit(**_INLINE)
def _kl_finish(w, sx, sz, moved, like):
    """(D, needs_exact): the one-pass KL from its float64 sums, and whether the row (float64
    when ``like`` is) must be redone by _kl_exact (see KL_EXACT_BELOW); ``moved``: how far the
    references rose while sums were carried (their rescales add to the error)."""
    wsx = w / sx
    lsx = np.log(sx)
    lsz = np.log(sz)
    d = wsx - lsx + lsz
    return d, is_f64(like) and d < KL_EXACT_BELOW * _kl_scale(wsx, lsx, lsz, moved)


@njit(**_INLINE)
def _kl_scale(wsx, lsx, lsz, moved):
    """The size L of the terms the one-pass KL subtracts: its absolute error is a few eps L."""
    return 1.0 + abs(wsx) + 2.0 * (abs(lsx) + abs(lsz)) + moved


@njit(**_JIT)
def _kl_logits(x, z, scale, out):
    # D = w / sx - log sx + log sz with w = sum e^dx (dx - dz), dx = x - mx, dz = z - mz:
    # shifted logits keep (dx - dz) small where P has mass.  References are stale as in
    # _row_state.  When mx grows by delta: e^dx scales by e^-delta and dx shifts by -delta,
    # w -> e^-delta (w - delta sx); when mz grows by delta: w -> w + delta sx.
    for i in range(x.shape[0]):
        prefer_wide_vectors()
        xr = x[i]
        zr = z[i]
        v = xr.shape[0]
        sc = scale_of(scale, load(xr[0]))
        mx = load(xr[0]) * sc
        mz = load(zr[0]) * sc
        x0 = mx
        z0 = mz
        sx = 0.0                         # row totals of the chunk sums in float64: a float32
        sz = 0.0                         # total of 1 + small chunk sums rounds the small ones
        w = 0.0
        q_misses_p = False               # P has mass on a class Q masks -> D = +inf
        jump = jump_limit(sc)
        for j0 in range(0, v, KL_CHUNK):
            j1 = min(j0 + KL_CHUNK, v)
            xc = xr[j0:j1]
            zc = zr[j0:j1]
            if abs(mx) < _INF and abs(mz) < _INF:
                inside, csx, csz, cw = _kl_sums(xr, zr, j0, j1, mx, mz, sc)
                if inside:
                    sx += csx
                    sz += csz
                    w += cw
                    continue
                cx = _chunk_max(xc, sc)
                cz = _chunk_max(zc, sc)
                if cx <= mx + jump and cz <= mz + jump:
                    # Keep the chunk's sums against the stale references and move the totals
                    # to the new maxima in float64.  The rounding of the chunk's largest e
                    # (e^(cx - mx), not exactly 1) stays in w / sx - log sx + log sz: up to
                    # ~1e-7 absolute in float32 on a peaked row (torch's float32 log_softmax
                    # route: 1e-7..1e-11; it was 2e-6 with float32 totals and rescales).
                    # Summing such chunks again from L1 against the maxima (exact 1s:
                    # 1e-8..1e-12) cost 15-19 % (benchmarks/NOTES.md, 2026-11-24 23:30 UTC).
                    sx += csx
                    sz += csz
                    w += cw
                    if cx > mx:
                        w, sx = _kl_raise_x(w, sx, mx, cx)
                        mx = cx
                    if cz > mz:
                        w, sz = _kl_raise_z(w, sx, sz, mz, cz)
                        mz = cz
                    continue
            # Rare path: a reference is -inf/+inf/NaN, or a chunk jumped far above it.
            cx = _chunk_max(xc, sc)
            cz = _chunk_max(zc, sc)
            if cx != cx or cz != cz or mx != mx or mz != mz:
                mx = cx + cz + mx + mz   # NaN
                break
            if mx == _INF or mz == _INF or cx == _INF or cz == _INF:
                mx = maximum(mx, cx)
                mz = maximum(mz, cz)
                continue                 # only a NaN can change the answer now
            if cx > mx:
                if mx > -_INF:
                    w, sx = _kl_raise_x(w, sx, mx, cx)
                mx = cx
            if cz > mz:
                if mz > -_INF:
                    w, sz = _kl_raise_z(w, sx, sz, mz, cz)
                mz = cz
            if mx == -_INF:              # P has no mass yet: only Q's normaliser
                if mz > -_INF:
                    sz += _exp_sum(zr, j0, j1, mz, sc)
                continue
            if mz == -_INF:              # Q masked everywhere so far
                if cx > -_INF:
                    q_misses_p = True
                sx += _exp_sum(xr, j0, j1, mx, sc)
                continue
            _, csx, csz, cw = _kl_sums(xr, zr, j0, j1, mx, mz, sc)
            sx += csx
            sz += csz
            w += cw
        if mx != mx or mz != mz or mx == _INF or mz == _INF:
            out[i] = _NAN
        elif mx == -_INF:
            out[i] = 0
        elif mz == -_INF or q_misses_p or not w < _INF:     # w NaN: see _kl_sums
            out[i] = _INF
        else:
            moved = ((mx - x0) if x0 > -_INF else 0.0) + ((mz - z0) if z0 > -_INF else 0.0)
            d, redo = _kl_finish(w, sx, sz, np.float64(moved), mx)
            out[i] = _kl_exact(xr, zr, scale, mx, mz, np.log(sx) - np.log(sz)) if redo else d


@njit(**_JIT)
def _kl_probs(p, q, out):
    for i in range(p.shape[0]):
        prefer_wide_vectors()
        pr = p[i]
        qr = q[i]
        zero = cast(0.0, load(pr[0]))
        acc = 0.0
        bad = zero
        for j0 in range(0, pr.shape[0], SUM_CHUNK):
            part = zero
            pb = pr[j0:j0 + SUM_CHUNK]
            qb = qr[j0:j0 + SUM_CHUNK]
            for j in range(pb.shape[0]):
                # simd.rel_entr: log(p / q) from the mantissas, so nearly equal p and q keep
                # the term's relative precision; scipy's values outside the domain.  A NaN in
                # P or Q poisons the row (in Q even where p = 0): nan_of, apart
                pj = load(pb[j])
                qj = load(qb[j])
                part += rel_entr(pj, qj)
                bad += nan_of(pj, qj)
            acc += part
        out[i] = acc + bad


@njit(**_JIT)
def _kl_log_probs(a, b, out):
    for i in range(a.shape[0]):
        prefer_wide_vectors()
        ar = a[i]
        br = b[i]
        zero = cast(0.0, load(ar[0]))
        acc = 0.0
        bad = zero
        for j0 in range(0, ar.shape[0], SUM_CHUNK):
            part = zero
            ab = ar[j0:j0 + SUM_CHUNK]
            bb = br[j0:j0 + SUM_CHUNK]
            for j in range(ab.shape[0]):
                aj = load(ab[j])
                bj = load(bb[j])
                d = aj - bj
                # exp(a) may underflow to 0 for a finite a: a finite a against b = -inf is +inf
                # (positive probability where Q has none), never 0 * inf = NaN.
                part += d if d == _INF else (fexp(aj) * d if aj != -_INF else zero)
                bad += bj if bj != bj else zero   # NaN in Q poisons the row even where p = 0
            acc += part
        out[i] = acc + bad


# --------------------------------------------------------------------------- cross-entropy


@njit(**_JIT)
def _row_parts(x, m_out, ls_out):
    """The row pass of hard-label CE without smoothing: m and log s per row, nothing else.

    Measured: a row kernel that also reads the target (or anything indexed by it) ran
    ~15 % slower than logsumexp at 8192 x 32000 -- not from the memory access (prefetching
    it changed nothing) -- so the targets are handled in a second, O(rows) pass."""
    for i in range(x.shape[0]):
        prefer_wide_vectors()
        m, c, r, _ = _row_state(x[i], 1.0)
        m_out[i] = m
        ls_out[i] = _log_s(c, r) if abs(m) < _INF else 0.0


@njit(**_INLINE)
def _weighted_nll(m, ls, xt, wt):
    """w_t ((m - x_t) + log s): the subtraction of two large numbers comes first.  Row
    endings: NaN/+inf -> NaN (even with w_t = 0), all masked -> +inf; w_t = 0 gives 0."""
    if m != m or m == _INF:
        return _NAN
    nll = _INF if m == -_INF else np.float64(sub_exact(m, xt)) + ls
    return 0.0 if wt == 0 else wt * nll


@njit(**_JIT)
def _ce_finish(x, target, ignore_index, weight, m_in, ls_in, out):
    for i in range(x.shape[0]):
        t = target[i]
        if t == ignore_index:
            out[i] = 0
            continue
        out[i] = _weighted_nll(m_in[i], ls_in[i], load(x[i, t]), weight[t])


@njit(**_JIT)
def _ce_hard(x, target, ignore_index, weight, eps, out):
    # loss = (1 - eps) w_t (lse - x_t) + eps / V * sum_j w_j (lse - x_j), with
    # lse - x_t = (m - x_t) + log s (no cancellation of two large numbers) and the
    # smoothing sum as W log s + sum_j w_j (m - x_j), W = sum_j w_j, read from cache in a
    # second pass once m is known.  Zero-weight terms are exactly 0.
    v = x.shape[1]
    big_w = 0.0
    for j in range(v):
        big_w += weight[j]
    for i in range(x.shape[0]):
        prefer_wide_vectors()
        t = target[i]
        if t == ignore_index:
            out[i] = 0
            continue
        row = x[i]
        m, c, r, _ = _row_state(row, 1.0)
        xt = load(row[t])
        wt = weight[t]
        if m != m or m == _INF:
            out[i] = _NAN
            continue
        if m == -_INF:                   # every class masked: the target has probability 0
            nll = _INF
            sm = _INF if big_w > 0 else 0.0
        else:
            logs = _log_s(c, r)
            nll = np.float64(sub_exact(m, xt)) + logs
            sm = 0.0
            if eps > 0:
                zero = cast(0.0, m)
                gap64 = 0.0              # chunk sums, float64 total (as in _ce_soft)
                for j0 in range(0, v, SUM_CHUNK):
                    gap = zero
                    wb = weight[j0:j0 + SUM_CHUNK]
                    xb = row[j0:j0 + SUM_CHUNK]
                    for j in range(xb.shape[0]):
                        gap += wb[j] * (m - load(xb[j])) if wb[j] != 0 else zero
                    gap64 += gap
                sm = big_w * logs + gap64
        # a zero-weight term (w_t = 0, or eps = 1) is exactly 0, never 0 * inf
        loss = (1.0 - eps) * (wt * nll) if wt != 0 and eps < 1.0 else 0.0
        if eps > 0:
            loss += eps / v * sm
        out[i] = loss


@njit(**_JIT)
def _ce_soft(x, p, weight, alpha, beta, scale, out):
    # loss = sum_j w_j q_j (lse - x_j), q_j = alpha p_j + beta, x_j the scaled logits,
    #      = Q log s + sum_j w_j q_j (m - x_j),  Q = sum_j w_j q_j,
    # the second sum read from cache once m is known; zero w_j q_j terms are exactly 0.
    v = x.shape[1]
    for i in range(x.shape[0]):
        prefer_wide_vectors()
        row = x[i]
        prow = p[i]
        m, c, r, _ = _row_state(row, scale)
        zero = cast(0.0, m)
        sc = cast(scale, zero)
        a = cast(alpha, zero)
        b = cast(beta, zero)
        gap = zero
        big_q = zero
        if m == -_INF:
            for j in range(v):
                big_q += weight[j] * (a * load(prow[j]) + b)
            out[i] = _INF if big_q != 0 else (big_q if big_q != big_q else 0)
            continue
        if m != m or m == _INF:
            out[i] = _NAN
            continue
        # Sums of SUM_CHUNK terms in the compute type, totals in float64: adding near-equal
        # terms to one float32 total drifts systematically (2.5e-5 relative over 32000 equal
        # terms, found by the thorough fuzz run).
        gap64 = 0.0
        q64 = 0.0
        for j0 in range(0, v, SUM_CHUNK):
            gap = zero
            big_q = zero
            wb = weight[j0:j0 + SUM_CHUNK]
            pb = prow[j0:j0 + SUM_CHUNK]
            xb = row[j0:j0 + SUM_CHUNK]
            for j in range(xb.shape[0]):
                wq = wb[j] * (a * load(pb[j]) + b)
                big_q += wq
                gap += wq * sub_exact(m, load(xb[j]) * sc) if wq != 0 else zero
            gap64 += gap
            q64 += big_q
        out[i] = q64 * _log_s(c, r) + gap64


# --------------------------------------------------------------------------- small V
#
# At V = 51 (C51) a row is 204 bytes: per-row costs (loop tails, horizontal reductions, a
# scalar log) would dominate.  Instead a block of rows is treated as one flat array: its
# maximum R, one long vectorised pass e = exp(x - R) into an L1 scratch buffer, short
# per-row sums of e, and a log per row.  Sums relative to the block's R instead of each row's
# own maximum are equally accurate as long as the result is not tiny; the tiny case, a
# confident row's loss on its target, is formed from the target's term and the sum of the
# others (see _small_lse); entropy works relative to each row's maximum throughout.  A row whose sum falls below SMALL_MIN_SUM (its maximum lies far
# below R, or it is all masked) and any block holding NaN or +inf go through the general
# per-row path.

SMALL_V = 128            # vocabularies up to this size use the block path (V=256 was faster per row)
SMALL_BLOCK = 8192       # elements per block: 32 KB of float32 scratch
SMALL_MIN_SUM = 1e-20    # below this a row is redone exactly (terms flushed at ~1e-38)
SMALL_GROUP = 16         # blocks per scratch allocation (~2 ns/row)


@njit(**_INLINE)
def block_rows(v, per_row):
    """Rows per block of the block path: ``per_row`` scratch rows of V per input row."""
    return max(1, SMALL_BLOCK // (per_row * v))


@njit(**_INLINE)
def _block_exp(flat, ref, scale, e):
    for k in range(flat.shape[0]):
        e[k] = exp_hot(clamp_lo(sub_exact(load(flat[k]) * scale, ref)))


@njit(**_INLINE)
def _block_exp_below(allx, k0, k1, ref, lim, e):
    """e = exp(x - ref) over allx[k0:k1] in one pass from memory, with the next sub-blocks
    prefetched (the whole array is contiguous, so 'next' crosses blocks); returns whether
    every x <= lim (False for a NaN).  A flag, not a maximum: see _sums."""
    ok = True
    for b0 in range(k0, k1, SUB):
        prefetch_ahead(allx, b0, SUB)
        xs = allx[b0:min(b0 + SUB, k1)]
        es = e[b0 - k0:b0 - k0 + xs.shape[0]]
        for k in range(xs.shape[0]):
            xk = load(xs[k])
            ok &= xk <= lim
            es[k] = exp_hot(clamp_lo(xk - ref))
    return ok


@njit(**_INLINE)
def _row_sums(e, rows, v, s):
    """s[r] = sum of the length-v segment r of e.  A 51-long loop never reaches LLVM's
    vector body (16 lanes x 4 unrolled) and one accumulator is a latency-bound chain, so
    four rows are summed interleaved: four independent chains (measured 9.5 -> ~4 ns/row)."""
    zero = cast(0.0, e[0])
    r = 0
    while r + 4 <= rows:
        e0 = e[r * v:(r + 1) * v]
        e1 = e[(r + 1) * v:(r + 2) * v]
        e2 = e[(r + 2) * v:(r + 3) * v]
        e3 = e[(r + 3) * v:(r + 4) * v]
        a0 = zero
        a1 = zero
        a2 = zero
        a3 = zero
        for j in range(v):
            a0 += e0[j]
            a1 += e1[j]
            a2 += e2[j]
            a3 += e3[j]
        s[r] = a0
        s[r + 1] = a1
        s[r + 2] = a2
        s[r + 3] = a3
        r += 4
    while r < rows:
        er = e[r * v:(r + 1) * v]
        acc = zero
        for j in range(v):
            acc += er[j]
        s[r] = acc
        r += 1


@njit(**_INLINE)
def _flat_max(flat, scale):
    m = load(flat[0]) * scale
    for k in range(flat.shape[0]):
        m = maximum(m, load(flat[k]) * scale)
    return m


@njit(**_JIT)
def _small_lse(x, out, ce_target, ignore_index):
    """lse per row, or (lse - x[t]) when ce_target holds class indices (hard-label CE)."""
    n, v = x.shape
    bs = block_rows(v, 1)
    nblocks = (n + bs - 1) // bs
    ngroups = (nblocks + SMALL_GROUP - 1) // SMALL_GROUP
    ce = ce_target.shape[0] == n
    allx = x.reshape(n * v)
    one = cast(1.0, load(allx[0]))
    jump = jump_limit(one)
    for g in range(ngroups):
        prefer_wide_vectors()
        e = np.empty(bs * v, dtype=out.dtype)
        s = np.empty(bs, dtype=out.dtype)
        ls = np.empty(bs, dtype=np.float64)
        lo = np.empty(bs, dtype=np.float64)
        for b in range(g * SMALL_GROUP, min((g + 1) * SMALL_GROUP, nblocks)):
            i0 = b * bs
            i1 = min(i0 + bs, n)
            rows = i1 - i0
            flat = allx[i0 * v:i1 * v]
            # One pass: exp against a stale reference (the block's first element, when
            # finite); redone from L1 against the block maximum only if some entry rose
            # past jump_limit above it (overflow risk) or is NaN.
            ref = load(flat[0])
            exact = ref == ref and abs(ref) < _INF
            if exact:
                if not _block_exp_below(allx, i0 * v, i1 * v, ref, ref + jump, e):
                    ref = _flat_max(flat, one)
                    exact = ref == ref and abs(ref) < _INF
                    if exact:
                        _block_exp(flat, ref, one, e)
            else:
                ref = _flat_max(flat, one)
                exact = ref == ref and abs(ref) < _INF
                if exact:
                    _block_exp(flat, ref, one, e)
            if exact:
                _row_sums(e, rows, v, s)
                if ce:
                    for r in range(rows):        # vectorised log (libm's is a scalar call)
                        ls[r] = flog(np.float64(s[r]))
                else:
                    for r in range(rows):        # log s = ls + lo, see below
                        ls[r], lo[r] = log_parts_f64(np.float64(s[r]))
            if not ce:
                # ref + log s carries absolute errors: the rounding of s (a few ulp of 1 in the
                # input's precision) and of each x - ref before its exp (eps |x - ref|, i.e.
                # about eps |log s|).  A result below 1 or below |log s| / 2 in magnitude (a row
                # dominated by its maximum near 0: [0, -40] is 4e-18, not 0; a row far from the
                # block's reference: 16 ulp) is redone on the row path, whose m + log c +
                # log1p(r / c) is a few ulp of itself when m >= 0 (measured: <= 3.5 ulp, float32
                # and float64; typical logits, lse > 2 and the reference a logit of the block, are
                # never redone).  log s comes in two parts, (ref + e ln2_hi) + (e ln2_lo + log m):
                # ref + log s would add log s's own rounding (12 ulp at lse 2.8, ref = -40).
                ref64 = np.float64(ref)
                for r in range(rows):
                    res = add_exact(add_exact(ref64, ls[r]), lo[r])
                    if exact and s[r] >= SMALL_MIN_SUM and abs(res) >= max(1.0, 0.5 * abs(ls[r])):
                        out[i0 + r] = res
                    else:
                        mr, cr, rr, _ = _row_state(x[i0 + r], one)
                        out[i0 + r] = _finish_lse(mr, cr, rr)
                continue
            for r in range(rows):
                i = i0 + r
                t = ce_target[i]
                if t == ignore_index:
                    out[i] = 0
                elif not (exact and s[r] >= SMALL_MIN_SUM):
                    mr, cr, rr, _ = _row_state(x[i], one)
                    out[i] = _nll(mr, cr, rr, load(x[i, t]))
                else:
                    loss = np.float64(sub_exact(ref, load(flat[r * v + t]))) + ls[r]
                    if loss < _LN2:
                        # A confident target (q_t > 1/2, to rounding): -log q_t = log1p(rest /
                        # e_t), rest the sum of the other terms, summed again from L1 without
                        # e_t (in s a term near 1 swallows the small ones): a tiny loss keeps its
                        # relative accuracy.  Above log 2, (ref - x_t) + log s is accurate.
                        er = e[r * v:(r + 1) * v]
                        rest = cast(0.0, ref)
                        for j in range(v):
                            rest += er[j] if j != t else cast(0.0, ref)
                        loss = np.log1p(np.float64(rest) / np.float64(er[t]))
                    out[i] = loss


@njit(**_INLINE)
def _entropy_exact(xr, er, ref, sc):
    """H of one short row from its exp values er = e^(x - ref) (in L1), relative to the row's
    own maximum m: with b = e^(m - ref) (exactly the e value of the maxima), S = sum e / b =
    c + r (in float64: a term near 1 swallows the small ones in float32) and W = sum e (x - m)
    / b <= 0, so H = log1p(S - 1) - W / S adds two non-negative terms.  NaN when the row lies
    far below ref (the caller then takes the general path)."""
    mr = _chunk_max(xr, sc)
    bm = exp_hot(clamp_lo(mr - ref))
    if bm < SMALL_MIN_SUM:
        return _NAN
    acc_s = 0.0
    acc_w = cast(0.0, ref)
    for j in range(xr.shape[0]):
        acc_s += np.float64(er[j])
        acc_w += er[j] * clamp_lo(sub_exact(load(xr[j]) * sc, mr))
    big_s = acc_s / np.float64(bm)
    return np.log1p(big_s - 1.0) - np.float64(acc_w) / np.float64(bm) / big_s


#: The block path's entropy log s - w / s (relative to the block maximum) carries an absolute
#: error of about ENTROPY_EPS * (1 + |log s| + |w / s|) times the dtype's epsilon; a row whose
#: entropy is not 1e5 times larger than that (a confident row) is recomputed by _entropy_exact.
ENTROPY_EPS = 4.0


#: A block's entropies are summed relative to the previous block's maximum (no maximum pass
#: over memory) unless its own maximum lies more than this far from it: every row's |log s|
#: and |w / s| then grow by at most this much, which keeps the accuracy test's redo rate
#: where it is with the block's own maximum (random rows: 0.7 % of rows; 12.6 % with the
#: block's first entry as the reference).
ENTROPY_REF_SLACK = 4.0


@njit(**_INLINE)
def _entropy_block_terms(allx, k0, k1, sc, ref, e, ed):
    """e = exp(d) and e d, d = sc x - ref, over allx[k0:k1] in one vectorised pass from
    memory (the next sub-blocks prefetched, as in _block_exp_below); returns the maximum of
    sc x (NaN if there is one: llvm.maximum vectorises as a reduction, a select does not)."""
    mb = cast(-_INF, ref)
    for b0 in range(k0, k1, SUB):
        prefetch_ahead(allx, b0, SUB)
        b1 = min(b0 + SUB, k1)
        xs = allx[b0:b1]
        es = e[b0 - k0:b1 - k0]
        eds = ed[b0 - k0:b1 - k0]
        for k in range(xs.shape[0]):
            xk = load(xs[k]) * sc
            mb = maximum(mb, xk)
            d = clamp_lo(sub_exact(xk, ref))
            ek = exp_hot(d)
            es[k] = ek
            eds[k] = ek * d
    return mb


@njit(**_JIT)
def _small_entropy(x, scale, out):
    n, v = x.shape
    allx = x.reshape(n * v)
    bs = block_rows(v, 2)                 # two scratch rows besides the input
    nblocks = (n + bs - 1) // bs
    ngroups = (nblocks + SMALL_GROUP - 1) // SMALL_GROUP
    for g in range(ngroups):
        prefer_wide_vectors()
        sc = scale_of(scale, load(allx[0]))   # None: 1, folded (see simd.scale_of)
        eps = np.float64(np.finfo(sc).eps) * ENTROPY_EPS * 1e5
        slack = cast(ENTROPY_REF_SLACK, sc)
        e = np.empty(bs * v, dtype=out.dtype)
        ed = np.empty(bs * v, dtype=out.dtype)
        s = np.empty(bs, dtype=out.dtype)
        w = np.empty(bs, dtype=out.dtype)
        hs = np.empty(bs, dtype=np.float64)
        prev = cast(_NAN, sc)               # the previous block's maximum (none yet)
        for b in range(g * SMALL_GROUP, min((g + 1) * SMALL_GROUP, nblocks)):
            i0 = b * bs
            i1 = min(i0 + bs, n)
            rows = i1 - i0
            flat = allx[i0 * v:i1 * v]
            # e and e d relative to the previous block's maximum, this block's maximum taken
            # in the same pass; redone from L1 against that maximum when it lies more than
            # the slack away (or on the group's first block, after a maximum pass)
            ref = prev
            if not abs(ref) < _INF:
                ref = _flat_max(flat, sc)
            exact = abs(ref) < _INF         # False for NaN and +-inf
            if exact:
                mb = _entropy_block_terms(allx, i0 * v, i1 * v, sc, ref, e, ed)
                if not (ref - slack <= mb <= ref + slack):
                    ref = mb
                    exact = abs(ref) < _INF
                    if exact:
                        _entropy_block_terms(allx, i0 * v, i1 * v, sc, ref, e, ed)
                prev = mb
            if exact:
                _row_sums(e, rows, v, s)
                _row_sums(ed, rows, v, w)
                for r in range(rows):           # vectorised: log, division, the accuracy test
                    ls = flog(np.float64(s[r]))
                    ws = np.float64(w[r]) / np.float64(s[r])
                    h = ls - ws
                    ok = s[r] >= SMALL_MIN_SUM and h > eps * (1.0 + abs(ls) + abs(ws))
                    hs[r] = h if ok else _NAN
            for r in range(rows):
                h = hs[r] if exact else _NAN
                if h != h and exact and s[r] >= SMALL_MIN_SUM:
                    h = _entropy_exact(flat[r * v:(r + 1) * v], e[r * v:(r + 1) * v], ref, sc)
                if h != h:
                    mr, cr, rr, wr = _row_state(x[i0 + r], sc)
                    h = _finish_entropy(mr, cr, rr, wr)
                out[i0 + r] = h


@njit(**_INLINE)
def _kl_block_terms(allx, allz, k0, k1, sc, rx, rz, limx, limz, ex, ez, wt):
    """e^dx, e^dz and the terms e^dx (dx - dz) of the flat block [k0, k1) (dx = sc x - rx,
    dz = sc z - rz) in one vectorised pass from memory, the next sub-blocks prefetched (as in
    _block_exp_below); returns whether every sc x <= limx and sc z <= limz (no NaN)."""
    zero = cast(0.0, rx)
    inside = True
    for b0 in range(k0, k1, KL_SUB):
        prefetch_ahead(allx, b0, KL_SUB)
        prefetch_ahead(allz, b0, KL_SUB)
        b1 = min(b0 + KL_SUB, k1)
        xs = allx[b0:b1]
        zs = allz[b0:b1]
        exs = ex[b0 - k0:b1 - k0]
        ezs = ez[b0 - k0:b1 - k0]
        wts = wt[b0 - k0:b1 - k0]
        for k in range(xs.shape[0]):
            xk = load(xs[k]) * sc
            zk = load(zs[k]) * sc
            inside &= xk <= limx
            inside &= zk <= limz
            dx = sub_exact(xk, rx)              # (x - rx) - (z - rz) as written
            dz = sub_exact(zk, rz)
            exk = exp_hot(clamp_lo(dx))
            exs[k] = exk
            ezs[k] = exp_hot(clamp_lo(dz))
            # p = 0 contributes exactly 0; q = 0 < p contributes +inf, or NaN where e^dx
            # underflowed (the row is then redone by _kl_logits): as in _kl_sums
            wts[k] = exk * (dx - dz) if dx > -_INF else zero
    return inside


@njit(**_JIT)
def _small_kl(x, z, scale, out, fallback):
    """KL per row in blocks (as _small_lse): one flat vectorised pass stores e^dx, e^dz and
    the terms e^dx (dx - dz), then short row sums.  The references are the block's first
    entries (stale, as in _small_lse: no separate maximum pass over memory), replaced by the
    block maxima only when some entry rose past jump_limit above them or is NaN; the shifts
    cancel in w / sx - log sx + log sz up to ~eps * jump_limit (7e-6 in float32, within the
    2e-5 tolerance)."""
    n, v = x.shape
    allx = x.reshape(n * v)
    allz = z.reshape(n * v)
    bs = block_rows(v, 2)                 # three scratch rows: keep them near L1
    nblocks = (n + bs - 1) // bs
    for b in range(nblocks):
        prefer_wide_vectors()
        i0 = b * bs
        i1 = min(i0 + bs, n)
        rows = i1 - i0
        fx = allx[i0 * v:i1 * v]
        fz = allz[i0 * v:i1 * v]
        sc = scale_of(scale, load(fx[0]))     # None: 1, folded (10 % of the terms pass)
        jump = jump_limit(sc)
        ex = np.empty(rows * v, dtype=out.dtype)
        ez = np.empty(rows * v, dtype=out.dtype)
        wt = np.empty(rows * v, dtype=out.dtype)
        rx = load(fx[0]) * sc
        rz = load(fz[0]) * sc
        ok = rx == rx and rz == rz and abs(rx) < _INF and abs(rz) < _INF
        if ok:
            ok = _kl_block_terms(allx, allz, i0 * v, i1 * v, sc, rx, rz, rx + jump, rz + jump, ex, ez, wt)
        if not ok:
            rx = _flat_max(fx, sc)
            rz = _flat_max(fz, sc)
            if not (rx == rx and rz == rz and abs(rx) < _INF and abs(rz) < _INF):
                for r in range(rows):
                    fallback[i0 + r] = True
                continue
            _kl_block_terms(allx, allz, i0 * v, i1 * v, sc, rx, rz, rx, rz, ex, ez, wt)
        sx = np.empty(rows, dtype=out.dtype)
        sz = np.empty(rows, dtype=out.dtype)
        w = np.empty(rows, dtype=out.dtype)
        _row_sums(ex, rows, v, sx)
        _row_sums(ez, rows, v, sz)
        _row_sums(wt, rows, v, w)
        tight = np.empty(rows, dtype=np.bool_)
        for r in range(rows):                   # vectorised: two logs and a division per row
            sxr = np.float64(sx[r])
            wsx = np.float64(w[r]) / sxr
            lsx = flog(sxr)
            lsz = flog(np.float64(sz[r]))
            d = wsx - lsx + lsz
            out[i0 + r] = d
            # float64: a KL too small for the one pass's absolute error goes to the row path,
            # which redoes it exactly (see KL_EXACT_BELOW); a constant False for float32
            tight[r] = is_f64(rx) and d < KL_EXACT_BELOW * _kl_scale(wsx, lsx, lsz, 0.0)
        for r in range(rows):
            if sx[r] < SMALL_MIN_SUM or sz[r] < SMALL_MIN_SUM or not w[r] < _INF or tight[r]:
                fallback[i0 + r] = True


# --------------------------------------------------------------------------- contract


def _guard(out, *arrays):
    """O(1) shape checks: the jitted loops do no bounds checking (defence in depth; the
    API has validated everything already)."""
    x = arrays[0]
    for a in arrays:
        if a.ndim != 2 or a.shape != x.shape or a.dtype != x.dtype:
            raise ValueError(f"kernel inputs must be 2-D arrays of one shape and dtype, got {[(b.shape, b.dtype) for b in arrays]}")
    if x.shape[1] < 1 or out.shape != (x.shape[0],):
        raise ValueError(f"out must have shape ({x.shape[0]},) and V >= 1, got out {out.shape} for input {x.shape}")


(_NO_TARGET,) = read_only(np.zeros(0, dtype=np.int64))      # read-only like every target (simd.read_only)


def _small(x):
    """The block path (one shift per block of rows) for 1 < V <= SMALL_V.  V = 1 takes the row
    path, whose shift is the row's own entry: lse = x, KL = 0 exactly (the block path's
    shared shift left ~1e-6 of rounding in both)."""
    return 1 < x.shape[1] <= SMALL_V


def _scale_arg(scale):
    """None for 1 (see simd.scale_of: the unscaled kernels skip the multiply), else a float."""
    return None if scale == 1.0 else float(scale)


# --------------------------------------------------------------------------- parallel entries
# Each runs its serial kernel over ``parts`` shares of the rows (fastdiv._numba.threads).


@njit(**PAR)
def _lse_mt(x, out, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        _lse(x[lo:hi], out[lo:hi])


@njit(**PAR)
def _entropy_logits_mt(x, scale, out, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        _entropy_logits(x[lo:hi], scale, out[lo:hi])


@njit(**PAR)
def _entropy_probs_mt(p, out, parts, align):
    for k in prange(parts):
        lo, hi = share(p.shape[0], k, parts, align)
        _entropy_probs(p[lo:hi], out[lo:hi])


@njit(**PAR)
def _entropy_log_probs_mt(lp, out, parts, align):
    for k in prange(parts):
        lo, hi = share(lp.shape[0], k, parts, align)
        _entropy_log_probs(lp[lo:hi], out[lo:hi])


@njit(**PAR)
def _kl_logits_mt(x, z, scale, out, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        _kl_logits(x[lo:hi], z[lo:hi], scale, out[lo:hi])


@njit(**PAR)
def _kl_probs_mt(p, q, out, parts, align):
    for k in prange(parts):
        lo, hi = share(p.shape[0], k, parts, align)
        _kl_probs(p[lo:hi], q[lo:hi], out[lo:hi])


@njit(**PAR)
def _kl_log_probs_mt(a, b, out, parts, align):
    for k in prange(parts):
        lo, hi = share(a.shape[0], k, parts, align)
        _kl_log_probs(a[lo:hi], b[lo:hi], out[lo:hi])


@njit(**PAR)
def _row_parts_mt(x, m, ls, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        _row_parts(x[lo:hi], m[lo:hi], ls[lo:hi])


@njit(**PAR)
def _ce_finish_mt(x, target, ignore_index, weight, m, ls, out, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        _ce_finish(x[lo:hi], target[lo:hi], ignore_index, weight, m[lo:hi], ls[lo:hi], out[lo:hi])


@njit(**PAR)
def _ce_hard_mt(x, target, ignore_index, weight, eps, out, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        _ce_hard(x[lo:hi], target[lo:hi], ignore_index, weight, eps, out[lo:hi])


@njit(**PAR)
def _ce_soft_mt(x, p, weight, alpha, beta, scale, out, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        _ce_soft(x[lo:hi], p[lo:hi], weight, alpha, beta, scale, out[lo:hi])


@njit(**PAR)
def _small_lse_mt(x, out, ce_target, ignore_index, parts, align):
    n = x.shape[0]
    for k in prange(parts):
        lo, hi = share(n, k, parts, align)
        t = ce_target[lo:hi] if ce_target.shape[0] == n else ce_target   # empty: no targets
        _small_lse(x[lo:hi], out[lo:hi], t, ignore_index)


@njit(**PAR)
def _small_entropy_mt(x, scale, out, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        _small_entropy(x[lo:hi], scale, out[lo:hi])


@njit(**PAR)
def _small_kl_mt(x, z, scale, out, fallback, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        _small_kl(x[lo:hi], z[lo:hi], scale, out[lo:hi], fallback[lo:hi])


# --------------------------------------------------------------------------- contract


def _small_align(x, per_row, group=1):
    """Shares of a block-path call start on a block boundary."""
    return block_rows.py_func(x.shape[1], per_row) * group


def lse(x, out, nthreads):
    _guard(out, x)
    (x,) = read_only(x)
    if _small(x):
        threads.run(_small_lse, _small_lse_mt, nthreads, (x, out, _NO_TARGET, np.int64(0)), x,
                    _small_align(x, 1, SMALL_GROUP))
    else:
        threads.run(_lse, _lse_mt, nthreads, (x, out), x)


def entropy_logits(x, scale, out, nthreads):
    _guard(out, x)
    (x,) = read_only(x)
    if _small(x):
        threads.run(_small_entropy, _small_entropy_mt, nthreads, (x, _scale_arg(scale), out), x,
                    _small_align(x, 2, SMALL_GROUP))
    else:
        threads.run(_entropy_logits, _entropy_logits_mt, nthreads, (x, _scale_arg(scale), out), x)


def entropy_probs(p, out, nthreads):
    _guard(out, p)
    (p,) = read_only(p)
    threads.run(_entropy_probs, _entropy_probs_mt, nthreads, (p, out), p)


def entropy_log_probs(lp, out, nthreads):
    _guard(out, lp)
    (lp,) = read_only(lp)
    threads.run(_entropy_log_probs, _entropy_log_probs_mt, nthreads, (lp, out), lp)


def kl_logits(x, z, scale, out, nthreads):
    _guard(out, x, z)
    x, z = read_only(x, z)
    sc = _scale_arg(float(scale))
    if not _small(x):
        threads.run(_kl_logits, _kl_logits_mt, nthreads, (x, z, sc, out), x)
        return
    redo = np.zeros(x.shape[0], dtype=np.bool_)
    threads.run(_small_kl, _small_kl_mt, nthreads, (x, z, sc, out, redo), x, _small_align(x, 2))
    if redo.any():                      # rare: NaN/inf blocks, masked or far-below rows
        idx = np.flatnonzero(redo)
        part = np.empty(idx.size, dtype=out.dtype)
        xr, zr = read_only(x[idx], z[idx])
        threads.run(_kl_logits, _kl_logits_mt, nthreads, (xr, zr, sc, part), xr)
        out[idx] = part


def kl_probs(p, q, out, nthreads):
    _guard(out, p, q)
    p, q = read_only(p, q)
    threads.run(_kl_probs, _kl_probs_mt, nthreads, (p, q, out), p)


def kl_log_probs(a, b, out, nthreads):
    _guard(out, a, b)
    a, b = read_only(a, b)
    threads.run(_kl_log_probs, _kl_log_probs_mt, nthreads, (a, b, out), a)


def ce_hard(x, target, ignore_index, weight, eps, out, nthreads):
    _guard(out, x)
    x, target, weight = read_only(x, target, weight)
    if target.shape != (x.shape[0],) or weight.shape != (x.shape[1],):
        raise ValueError(f"target must have shape ({x.shape[0]},) and weight ({x.shape[1]},)")
    ignore = np.int64(ignore_index)
    if _small(x) and eps == 0 and np.all(weight == 1):
        threads.run(_small_lse, _small_lse_mt, nthreads, (x, out, target, ignore), x,
                    _small_align(x, 1, SMALL_GROUP))
    elif eps == 0:
        m = np.empty_like(out)
        ls = np.empty(out.shape[0], dtype=np.float64)
        threads.run(_row_parts, _row_parts_mt, nthreads, (x, m, ls), x)
        threads.run(_ce_finish, _ce_finish_mt, nthreads, (x, target, ignore, weight, m, ls, out), x)
    else:
        threads.run(_ce_hard, _ce_hard_mt, nthreads, (x, target, ignore, weight, float(eps), out), x)


def ce_soft(x, p, weight, alpha, beta, scale, out, nthreads):
    _guard(out, x, p)
    x, p, weight = read_only(x, p, weight)
    if weight.shape != (x.shape[1],):
        raise ValueError(f"weight must have shape ({x.shape[1]},)")
    threads.run(_ce_soft, _ce_soft_mt, nthreads, (x, p, weight, float(alpha), float(beta), float(scale), out), x)
