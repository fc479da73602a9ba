"""The numba backend's row path: one row at a time, in chunks, for every V (rows of
``V <= short_rows.SMALL_V`` take it where ``short_rows.py`` has no block kernel, and for the rows
a block redoes).  Logsumexp, entropy and KL from logits and hard-label cross-entropy read each
row once into the row state of ``row_state.py``; entropy and KL from probabilities or
log-probabilities and the soft-target cross-entropy's second pass sum their terms in blocks of
``SUM_CHUNK``; KL from logits redoes nearly equal rows without the one pass's cancellation
(float64: ``_kl_exact``; float32: ``_kl_near32``).

Each kernel is compiled serial; its ``_mt`` twin runs it over shares of the rows
(``threads.py``).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .. import _registry
from .divergences import CHUNK as NEAR_CHUNK, _js_d, _js_min_d2, _js_near_max, _kl_near_f32, _near_d
from .row_state import _chunk_max, _finish_entropy, _finish_lse, _log_s, _row_state
from .threads import PAR, call, share
from .simd import INLINE, JIT, KL_SUB, cast, clamp_lo, exp_held, exp_hot, fexp, flog, jump_limit, load, maximum, prefer_wide_vectors, prefetch_ahead, add_exact, is_f64, nan_of, rel_entr, scale_of, sub_exact, two_diff

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
    inside = every x <= mx and every z <= mz (no NaN).  As in row_state._sums, the loop keeps no
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
            ex = exp_held(clamp_lo(dx))
            sx += ex
            sz += exp_held(clamp_lo(dz))
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


#: float64 KL from logits: a row with ``D < KL_EXACT_BELOW * L`` (nearly equal P and Q) is
#: recomputed by _kl_exact, which keeps D's relative precision; in float32 working precision
#: one with ``D < KL32_NEAR_BELOW * L`` is summed again class by class by _kl_near32
#: (fastdiv._registry has the figures).
KL_EXACT_BELOW = _registry.KL_EXACT_BELOW
KL32_NEAR_BELOW = _registry.KL32_NEAR_BELOW

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


@njit(fastmath=_INLINE["fastmath"], error_model=_INLINE["error_model"])
def _kl_near32(xr, zr, scale, mx, mz, sx, sz):
    """D(P || Q) of one float32 row pair (logits times ``scale``; mx, mz their maxima, sx, sz
    their sums of e^(x - max)) summed again class by class, as compare's second pass sums it
    (divergences._js_terms; the Cython kernels' fd_kl_near32 has the formulas): where a chunk
    has every |d| < 2, p (e^d - 1 - d) by divergences._kl_near_f32, elsewhere q - p and p d with
    d = lq - lp; sum (q - p) = 0 joins them.  Scaled rows are formed once, in new arrays (the
    rows this redoes are rare).  Called with both rows finite and no class of P masked in Q.

    Not inlined: numba's IR inlining of this body into its two callers (the long-row kernel
    and the C51 block path's _kl_tight) made the first float32 (and each 16-bit) kl_logits
    call compile for 42 s (long rows) and 37 s (C51 rows), against 8.4 s and 4.2 s as one
    function called per redone row (benchmarks/NOTES.md, 2026-12-07); the call costs C51
    rows that are all redone 3-12 % (4.0-4.4 -> 4.5-4.6 ns per element, in cache)."""
    if scale is None:
        return _kl_near32_rows(xr, zr, mx, mz, sx, sz)
    v = xr.shape[0]
    sc = scale_of(scale, mx)
    xs = np.empty(v, dtype=np.float32)
    zs = np.empty(v, dtype=np.float32)
    for j in range(v):
        xs[j] = load(xr[j]) * sc
        zs[j] = load(zr[j]) * sc
    return _kl_near32_rows(xs, zs, mx, mz, sx, sz)


@njit(**_INLINE)
def _kl_near32_rows(xs, zs, mx, mz, sx, sz):
    """_kl_near32 of unscaled rows (float32, or 16-bit bits widened by load)."""
    kp, _, qp, pd, _ = _kl_near32_sums(xs, zs, mx, mz, sx, sz)
    return kp + (qp - pd)


@njit(fastmath=_INLINE["fastmath"], error_model=_INLINE["error_model"])
def _kl_near32_pair(xs, zs, mx, mz, sx, sz):
    """(D(P || Q), D(Q || P)) of unscaled float32 rows in one read, as compare sums them
    (divergences._js_terms): D(Q || P) = sum (q - p) d - sum p (e^d - 1 - d) + sum q d -
    sum (q - p), the near classes' Jeffreys terms (q - p) d = p d^2 (1 + d E(d)).  Called
    with both rows finite and no class masked in one row only."""
    kp, kj, qp, pd, qd = _kl_near32_sums(xs, zs, mx, mz, sx, sz)
    return kp + (qp - pd), (kj - kp) + (qd - qp)


@njit(**_INLINE)
def _kl_near32_sums(xs, zs, mx, mz, sx, sz):
    """The sums of _kl_near32_rows and _kl_near32_pair: p (e^d - 1 - d) and the Jeffreys
    terms over the near chunks and classes, q - p, p d and q d over the others (the sums a
    caller does not use are dead code once inlined)."""
    v = xs.shape[0]
    zero = np.float32(0.0)
    mx = np.float32(mx)
    mz = np.float32(mz)
    lsx = np.float32(np.log(np.float64(sx)))
    lsz = np.float32(np.log(np.float64(sz)))
    cd = _near_d(mx, mz, sx, sz)
    four = np.float32(4.0)
    lo = np.float32(-1e30)
    kp = 0.0
    kj = 0.0
    qp = 0.0
    pd = 0.0
    qd = 0.0
    for j0 in range(0, v, NEAR_CHUNK):
        j1 = min(j0 + NEAR_CHUNK, v)
        xc = xs[j0:j1]
        zc = zs[j0:j1]
        akp = zero
        akj = zero
        aqp = zero
        apd = zero
        aqd = zero
        m, whole = _js_near_max(xc, zc, cd, four)
        if m < four:
            for j in range(xc.shape[0]):
                tkp, tkj = _kl_near_lane(xc[j], mx, lsx, _js_d(xc[j], zc[j], cd))
                akp += tkp
                akj += tkj
        elif _js_min_d2(xc, zc, cd) < four:
            # a near class among far ones (_kl_near32_mixed): sent to q - p - p d, it cancels
            # to its p's rounding (one class far above the rest in both rows, p ~ q ~ 1 -
            # 1e-10, independent tails: KL ~1e-10 10-90 % off where only chunks with at most
            # half their classes wide were summed so, 2026-12-07)
            akp, akj, aqp, apd, aqd = _kl_near32_mixed(xc, zc, mx, mz, lsx, lsz, cd, lo)
        else:
            for j in range(xc.shape[0]):
                tqp, tpd, tqd = _kl_far_lane(xc[j], zc[j], mx, mz, lsx, lsz, lo)
                aqp += tqp
                apd += tpd
                aqd += tqd
        kp += akp
        kj += akj
        qp += aqp
        pd += apd
        qd += aqd
    return kp, kj, qp, pd, qd


@njit(**_INLINE)
def _kl_near_lane(xj, mx, lsx, d):
    """A near class's p (e^d - 1 - d) = p d^2 E(d) and Jeffreys term (q - p) d = p d^2 (1 +
    d E(d)) (divergences._kl_near_f32)."""
    p = exp_hot(clamp_lo(sub_exact(sub_exact(load(xj), mx), lsx)))
    e = _kl_near_f32(d)
    ps = p * (d * d)
    return ps * e, ps * (d * e + np.float32(1.0))


@njit(**_INLINE)
def _kl_far_lane(xj, zj, mx, mz, lsx, lsz, lo):
    """A far class's q - p, p d and q d, d = lq - lp from the clamped log-probabilities: a
    class masked in P (p = 0) adds q and 0 (0 times lq - LO) to the first two."""
    lp = max(sub_exact(sub_exact(load(xj), mx), lsx), lo)
    lq = max(sub_exact(sub_exact(load(zj), mz), lsz), lo)
    p = exp_hot(clamp_lo(lp))
    q = exp_hot(clamp_lo(lq))
    d = lq - lp
    return q - p, p * d, q * d


@njit(fastmath=_INLINE["fastmath"], error_model=_INLINE["error_model"])
def _kl_near32_mixed(xc, zc, mx, mz, lsx, lsz, cd, lo):
    """_kl_near32_sums' chunk with near and far classes summed class by class: each near class
    by _kl_near_lane, each other one (far, or masked in P) by _kl_far_lane; both taken and
    weighted by 1 and 0, so the loop vectorises (see divergences._js_mixed_terms).  Returns
    the sums of p (e^d - 1 - d) and the Jeffreys terms over the near classes, of q - p, p d
    and q d over the others.  Not inlined: inside the row loop, the rare path cost rows 0.05
    apart 1.03-1.04x."""
    prefer_wide_vectors()
    zero = np.float32(0.0)
    one = np.float32(1.0)
    four = np.float32(4.0)
    akp = zero
    akj = zero
    aqp = zero
    apd = zero
    aqd = zero
    for j in range(xc.shape[0]):
        d = _js_d(xc[j], zc[j], cd)
        near = d * d < four
        w = one if near else zero
        u = one - w
        qp, pd, qd = _kl_far_lane(xc[j], zc[j], mx, mz, lsx, lsz, lo)
        kp, kj = _kl_near_lane(xc[j], mx, lsx, d if near else zero)
        akp += w * kp
        akj += w * kj
        aqp += u * qp
        apd += u * pd
        aqd += u * qd
    return akp, akj, aqp, apd, aqd


def _kl_redo(xr, zr, scale, mx, mz, sx, sz):  # pragma: no cover - replaced by the overload
    raise NotImplementedError


@overload(_kl_redo, inline="always")
def _ov_kl_redo(xr, zr, scale, mx, mz, sx, sz):
    """A row the one pass cannot finish (_kl_finish's redo), by the working precision of mx,
    chosen at compile time: _kl_exact (float64) or _kl_near32 (float32)."""
    if isinstance(mx, types.Float) and mx.bitwidth == 64:
        return lambda xr, zr, scale, mx, mz, sx, sz: _kl_exact(xr, zr, scale, mx, mz, np.log(sx) - np.log(sz))
    return lambda xr, zr, scale, mx, mz, sx, sz: _kl_near32(xr, zr, scale, mx, mz, sx, sz)


@njit(**_INLINE)
def _kl_tight(xr, zr, scale):
    """KL of a row pair the block path (short_rows._small_kl) found too small for its one
    pass: the rows' own maxima and sums, then _kl_redo (the block path handed such rows to the
    row path, which also ran its one pass again: a C51 batch of nearly equal rows took 6x the
    time of one of independent rows).  The block pass's own sums will not do: taken against
    the block's references, a row's largest term is not an exact 1, and a confident row's KL
    (~6e-14, every class but one far) came out 5e-8 off from the rounding of its two sums.
    Called with both rows finite, their sums normal, and no class of P masked in Q."""
    sc = scale_of(scale, load(xr[0]))
    v = xr.shape[0]
    mx = _chunk_max(xr, sc)
    mz = _chunk_max(zr, sc)
    sx = np.float64(_exp_sum(xr, 0, v, mx, sc))
    sz = np.float64(_exp_sum(zr, 0, v, mz, sc))
    return _kl_redo(xr, zr, scale, mx, mz, sx, sz)


@njit(**_INLINE)
def _kl_finish(w, sx, sz, moved, like):
    """(D, needs_exact): the one-pass KL from its float64 sums, and whether the row (float64
    when ``like`` is) must be redone by _kl_exact (see KL_EXACT_BELOW); ``moved``: how far the
    references rose while sums were carried (their rescales add to the error)."""
    return _kl_finish_logs(w, sx, np.log(sx), np.log(sz), moved, like)


@njit(**_INLINE)
def _kl_finish_logs(w, sx, lsx, lsz, moved, like):
    """_kl_finish with log sx and log sz given (_kls_of_state forms them once for both
    directions)."""
    wsx = w / sx
    d = wsx - lsx + lsz
    below = KL_EXACT_BELOW if is_f64(like) else KL32_NEAR_BELOW
    return d, d < below * _kl_scale(wsx, lsx, lsz, moved)


@njit(**_JIT)
def _kl_again(xr, zr, mx, mz, sx, sz):
    """_kl_redo of an unscaled row pair as a function (not inlined): _kls_again calls it
    from three places, and each inlined copy adds to evaluate's first-call compile."""
    return _kl_redo(xr, zr, None, mx, mz, sx, sz)


def _kl_pair_again(xr, zr, mx, mz, sx, sz):  # pragma: no cover - replaced by the overload
    raise NotImplementedError


@overload(_kl_pair_again, inline="always")
def _ov_kl_pair_again(xr, zr, mx, mz, sx, sz):
    """Both directions of _kl_again: float32 rows in one read (_kl_near32_pair)."""
    if isinstance(mx, types.Float) and mx.bitwidth == 64:
        return lambda xr, zr, mx, mz, sx, sz: (_kl_again(xr, zr, mx, mz, sx, sz), _kl_again(zr, xr, mz, mx, sz, sx))
    return lambda xr, zr, mx, mz, sx, sz: _kl_near32_pair(xr, zr, mx, mz, sx, sz)


@njit(**_INLINE)
def _kls_of_state(xr, zr, mx, mz, sx, sz, wxz, wzx, moved, flags):
    """(D(P || Q), D(Q || P)) of a row pair from an evaluate state's sums (maxima mx, mz, both
    finite; sx, sz; wxz = sum e^(x - mx) ((x - mx) - (z - mz)), wzx likewise; ``moved`` as
    _kl_finish's; flags: 1 = a class of P masked in Q, 2 = the other way, each a KL of +inf),
    finished as kl_logits finishes its rows.  Inlined, with log sx and log sz formed once: on
    C51 rows a call per row and four logs cost numba's evaluate 10 %.  The row pairs the one
    pass cannot finish go to _kls_again."""
    lsx = np.log(sx)
    lsz = np.log(sz)
    dmr, again_mr = _kl_finish_logs(wxz, sx, lsx, lsz, moved, mx)
    drm, again_rm = _kl_finish_logs(wzx, sz, lsz, lsx, moved, mz)
    if flags & 1:
        dmr, again_mr = _INF, False
    if flags & 2:
        drm, again_rm = _INF, False
    if again_mr or again_rm:
        return _kls_again(xr, zr, mx, mz, sx, sz, dmr, drm, again_mr, again_rm, flags)
    return dmr, drm


@njit(**_JIT)
def _kls_again(xr, zr, mx, mz, sx, sz, dmr, drm, again_mr, again_rm, flags):
    """_kls_of_state's row pairs summed again while they are still in cache (_kl_again), in
    float32 both directions in one read when both are finite; a function, not inlined."""
    if flags == 0:
        return _kl_pair_again(xr, zr, mx, mz, sx, sz)
    if again_mr:
        dmr = _kl_again(xr, zr, mx, mz, sx, sz)
    if again_rm:
        drm = _kl_again(zr, xr, mz, mx, sz, sx)
    return dmr, drm


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
            out[i] = _kl_redo(xr, zr, scale, mx, mz, sx, sz) if redo else d


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


# --------------------------------------------------------------------------- parallel entries
# Each runs its serial kernel over ``parts`` shares of the rows (fastdiv._numba.threads).


@njit(**PAR)
def _lse_mt(e, x, out, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        call(e, (x[lo:hi], out[lo:hi]))


@njit(**PAR)
def _entropy_logits_mt(e, x, scale, out, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        call(e, (x[lo:hi], scale, out[lo:hi]))


@njit(**PAR)
def _entropy_probs_mt(e, p, out, parts, align):
    for k in prange(parts):
        lo, hi = share(p.shape[0], k, parts, align)
        call(e, (p[lo:hi], out[lo:hi]))


@njit(**PAR)
def _entropy_log_probs_mt(e, lp, out, parts, align):
    for k in prange(parts):
        lo, hi = share(lp.shape[0], k, parts, align)
        call(e, (lp[lo:hi], out[lo:hi]))


@njit(**PAR)
def _kl_logits_mt(e, x, z, scale, out, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        call(e, (x[lo:hi], z[lo:hi], scale, out[lo:hi]))


@njit(**PAR)
def _kl_probs_mt(e, p, q, out, parts, align):
    for k in prange(parts):
        lo, hi = share(p.shape[0], k, parts, align)
        call(e, (p[lo:hi], q[lo:hi], out[lo:hi]))


@njit(**PAR)
def _kl_log_probs_mt(e, a, b, out, parts, align):
    for k in prange(parts):
        lo, hi = share(a.shape[0], k, parts, align)
        call(e, (a[lo:hi], b[lo:hi], out[lo:hi]))


@njit(**PAR)
def _row_parts_mt(e, x, m, ls, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        call(e, (x[lo:hi], m[lo:hi], ls[lo:hi]))


@njit(**PAR)
def _ce_finish_mt(e, x, target, ignore_index, weight, m, ls, out, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        call(e, (x[lo:hi], target[lo:hi], ignore_index, weight, m[lo:hi], ls[lo:hi], out[lo:hi]))


@njit(**PAR)
def _ce_hard_mt(e, x, target, ignore_index, weight, eps, out, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        call(e, (x[lo:hi], target[lo:hi], ignore_index, weight, eps, out[lo:hi]))


@njit(**PAR)
def _ce_soft_mt(e, x, p, weight, alpha, beta, scale, out, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        call(e, (x[lo:hi], p[lo:hi], weight, alpha, beta, scale, out[lo:hi]))
