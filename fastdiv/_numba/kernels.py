"""numba CPU kernels: the per-row contract of ``fastdiv._registry``, parallel over rows.

Per row, one pass over the data in chunks of ``CHUNK`` elements.  For each chunk:

1. its maximum (``llvm.maximum``: vectorises, propagates NaN), read from memory;
2. if it raises the running maximum ``m``, rescale the running sums to the new ``m``
   (one scalar exp; an empty state with ``m = -inf`` has nothing to rescale);
3. the exp-sums relative to ``m``, reading the chunk again, now from L1.

So memory is read once, every ``exp`` argument is ``<= 0`` (no overflow), and the state
``(m, s = sum e^(x-m), w = sum e^(x-m) y)`` is the mergeable one of DESIGN.md.  Chunk sums
are accumulated in a fresh accumulator that LLVM splits across vector lanes, then added
to the row total: this is far more accurate in float32 than one sequential sum.

Row endings: NaN max -> NaN; +inf max -> lse = +inf and every softmax quantity NaN (but a
NaN later in the row still wins); max = -inf (all masked) -> lse = -inf and the results
documented in ``fastdiv.reference``.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .simd import FASTMATH, cast, clamp_lo, exp_hot, fexp, flog, maximum

CHUNK = 2048
_JIT = dict(parallel=True, fastmath=FASTMATH, cache=True, nogil=True)
_INLINE = dict(inline="always", fastmath=FASTMATH)
_NAN = np.nan
_INF = np.inf


@njit(**_INLINE)
def _chunk_max(xc):
    m = xc[0]
    for j in range(xc.shape[0]):
        m = maximum(m, xc[j])
    return m


@njit(**_INLINE)
def _sum_exp(xc, m):
    acc = cast(0.0, xc[0])
    for j in range(xc.shape[0]):
        acc += exp_hot(clamp_lo(xc[j] - m))
    return acc


@njit(**_INLINE)
def _row_lse_state(x):
    """(m, s) with lse = m + log(s); m is NaN for a NaN row, +inf for a row with +inf."""
    v = x.shape[0]
    m = cast(-_INF, x[0])
    s = cast(0.0, x[0])
    for j0 in range(0, v, CHUNK):
        xc = x[j0:min(j0 + CHUNK, v)]
        cm = _chunk_max(xc)
        if cm != cm:
            return cm, s
        if m == _INF:
            continue                     # only looking for a NaN now
        if cm > m:
            if m > -_INF:
                s = s * exp_hot(clamp_lo(m - cm))
            m = cm
            if m == _INF:
                continue
        if m == -_INF:
            continue                     # everything so far is masked
        s += _sum_exp(xc, m)
    return m, s


@njit(**_INLINE)
def _finish_lse(m, s):
    if m != m or m == _INF or m == -_INF:
        return m
    return m + np.log(s)


@njit(**_JIT)
def _lse(x, out):
    for i in prange(x.shape[0]):
        m, s = _row_lse_state(x[i])
        out[i] = _finish_lse(m, s)


# --------------------------------------------------------------------------- entropy


@njit(**_JIT)
def _entropy_logits(x, out):
    # H = log s - w / s with w = sum e_j d_j, d_j = x_j - m <= 0: two non-negative terms,
    # no cancellation.  When m grows by delta, e scales by e^-delta and d shifts by -delta.
    for i in prange(x.shape[0]):
        row = x[i]
        v = row.shape[0]
        zero = cast(0.0, row[0])
        m = cast(-_INF, row[0])
        s = zero
        w = zero
        for j0 in range(0, v, CHUNK):
            xc = row[j0:min(j0 + CHUNK, v)]
            cm = _chunk_max(xc)
            if cm != cm:
                m = cm
                break
            if m == _INF:
                continue
            if cm > m:
                if m > -_INF:
                    delta = m - cm
                    f = exp_hot(clamp_lo(delta))
                    w = f * (w + delta * s)
                    s = f * s
                m = cm
                if m == _INF:
                    continue
            if m == -_INF:
                continue
            acc_s = zero
            acc_w = zero
            for j in range(xc.shape[0]):
                d = clamp_lo(xc[j] - m)
                e = exp_hot(d)
                acc_s += e
                acc_w += e * d
            s += acc_s
            w += acc_w
        if m != m or m == _INF:
            out[i] = _NAN
        elif m == -_INF:
            out[i] = 0
        else:
            out[i] = np.log(s) - w / s


@njit(**_JIT)
def _entropy_probs(p, out):
    for i in prange(p.shape[0]):
        row = p[i]
        zero = cast(0.0, row[0])
        acc = zero
        for j in range(row.shape[0]):
            pj = row[j]
            acc += pj * flog(pj) if pj != 0 else zero
        out[i] = -acc


@njit(**_JIT)
def _entropy_log_probs(lp, out):
    for i in prange(lp.shape[0]):
        row = lp[i]
        zero = cast(0.0, row[0])
        acc = zero
        for j in range(row.shape[0]):
            lj = row[j]
            acc += fexp(lj) * lj if lj != -_INF else zero
        out[i] = -acc


# --------------------------------------------------------------------------- KL


@njit(**_JIT)
def _kl_logits(x, z, out):
    # D = w / sx - log sx + log sz, with w = sum e^(x_j - mx) * y_j and
    # y_j = (x_j - mx) - (z_j - mz): both shifted logits, so y is small where P has mass.
    # A class with x_j = -inf contributes exactly 0 (selected), one with z_j = -inf and
    # x_j finite contributes +inf.  When mx grows by dx, e scales by e^-dx and y shifts
    # by -dx; when mz grows by dz, y shifts by +dz.
    for i in prange(x.shape[0]):
        xr = x[i]
        zr = z[i]
        v = xr.shape[0]
        zero = cast(0.0, xr[0])
        mx = cast(-_INF, xr[0])
        mz = mx
        sx = zero
        sz = zero
        w = zero
        for j0 in range(0, v, CHUNK):
            j1 = min(j0 + CHUNK, v)
            xc = xr[j0:j1]
            zc = zr[j0:j1]
            cx = _chunk_max(xc)
            cz = _chunk_max(zc)
            if cx != cx or cz != cz:
                mx = cx + cz
                break
            if mx == _INF or mz == _INF:
                mx = maximum(mx, cx)
                mz = maximum(mz, cz)
                continue
            if cx > mx:
                if mx > -_INF:
                    delta = mx - cx
                    f = exp_hot(clamp_lo(delta))
                    w = f * (w + delta * sx)
                    sx = f * sx
                mx = cx
            if cz > mz:
                if mz > -_INF:
                    delta = mz - cz
                    sz = sz * exp_hot(clamp_lo(delta))
                    w = w - delta * sx
                mz = cz
            if mx == _INF or mz == _INF:
                continue
            if mx == -_INF:
                # P has no mass here; Q still needs its normaliser.
                if mz > -_INF:
                    sz += _sum_exp(zc, mz)
                continue
            if mz == -_INF:
                # Q is masked everywhere so far while P has mass: D = +inf, but keep
                # reading for a later NaN and for P's own normaliser.
                sx += _sum_exp(xc, mx)
                w = cast(_INF, zero)
                continue
            acc_sx = zero
            acc_sz = zero
            acc_w = zero
            for j in range(xc.shape[0]):
                dx = xc[j] - mx
                dz = zc[j] - mz
                ex = exp_hot(clamp_lo(dx))
                acc_sx += ex
                acc_sz += exp_hot(clamp_lo(dz))
                acc_w += ex * (dx - dz) if dx > -_INF else zero
            sx += acc_sx
            sz += acc_sz
            w += acc_w
        if mx != mx or mx == _INF or mz == _INF:
            out[i] = _NAN
        elif mx == -_INF:
            out[i] = 0
        elif mz == -_INF or w == _INF:
            out[i] = _INF
        else:
            out[i] = w / sx - np.log(sx) + np.log(sz)


@njit(**_JIT)
def _kl_probs(p, q, out):
    for i in prange(p.shape[0]):
        pr = p[i]
        qr = q[i]
        zero = cast(0.0, pr[0])
        acc = zero
        bad = zero
        for j in range(pr.shape[0]):
            pj = pr[j]
            qj = qr[j]
            acc += pj * (flog(pj) - flog(qj)) if pj != 0 else zero
            bad += qj if qj != qj else zero   # NaN in Q poisons the row even where p = 0
        out[i] = acc + bad


@njit(**_JIT)
def _kl_log_probs(a, b, out):
    for i in prange(a.shape[0]):
        ar = a[i]
        br = b[i]
        zero = cast(0.0, ar[0])
        acc = zero
        bad = zero
        for j in range(ar.shape[0]):
            aj = ar[j]
            bj = br[j]
            acc += fexp(aj) * (aj - bj) if aj != -_INF else zero
            bad += bj if bj != bj else zero   # NaN in Q poisons the row even where p = 0
        out[i] = acc + bad


# --------------------------------------------------------------------------- cross-entropy


@njit(**_INLINE)
def _weighted_gap(xc, wc, c):
    """sum_j w_j (c - x_j) with zero-weight terms exactly 0 (a masked x_j gives +inf)."""
    zero = cast(0.0, xc[0])
    acc = zero
    for j in range(xc.shape[0]):
        acc += wc[j] * (c - xc[j]) if wc[j] != 0 else zero
    return acc


@njit(**_JIT)
def _ce_hard(x, target, ignore_index, weight, eps, out):
    # loss = (1 - eps) w_t (lse - x_t) + eps / V * sum_j w_j (lse - x_j), with
    # lse - x_t = (m - x_t) + log s (no cancellation of two large numbers) and the
    # smoothing sum as W log s + sum_j w_j (c - x_j) + W (m - c), where c is a fixed
    # shift (the first chunk's maximum) so the sum needs no rescaling when m grows.
    v = x.shape[1]
    big_w = 0.0
    for j in range(v):
        big_w += weight[j]
    smooth = eps > 0
    for i in prange(x.shape[0]):
        t = target[i]
        if t == ignore_index:
            out[i] = 0
            continue
        row = x[i]
        zero = cast(0.0, row[0])
        m = cast(-_INF, zero)
        s = zero
        gap = zero
        c = zero
        for j0 in range(0, v, CHUNK):
            j1 = min(j0 + CHUNK, v)
            xc = row[j0:j1]
            cm = _chunk_max(xc)
            if cm != cm:
                m = cm
                break
            if j0 == 0 and cm > -_INF and cm < _INF:
                c = cm
            if smooth:
                gap += _weighted_gap(xc, weight[j0:j1], c)
            if m == _INF:
                continue
            if cm > m:
                if m > -_INF:
                    s = s * exp_hot(clamp_lo(m - cm))
                m = cm
                if m == _INF:
                    continue
            if m == -_INF:
                continue
            s += _sum_exp(xc, m)
        wt = weight[t]
        if m != m or m == _INF:
            out[i] = _NAN
            continue
        if m == -_INF:
            nll = cast(_INF, zero)      # the target (like every class) has probability 0
            logs = cast(-_INF, zero)
        else:
            logs = np.log(s)
            nll = (m - row[t]) + logs
        loss = (1.0 - eps) * (wt * nll) if wt != 0 else 0.0
        if smooth:
            if m == -_INF:
                sm = _INF if big_w > 0 else 0.0
            else:
                sm = big_w * logs + gap + big_w * (m - c)
            loss += eps / v * sm
        out[i] = loss


@njit(**_JIT)
def _ce_soft(x, p, weight, alpha, beta, out):
    # loss = sum_j w_j q_j (lse - x_j), q_j = alpha p_j + beta
    #      = Q log s + sum_j w_j q_j (c - x_j) + Q (m - c),  Q = sum_j w_j q_j,
    # with c fixed per row as in _ce_hard; zero w_j q_j terms are exactly 0.
    v = x.shape[1]
    for i in prange(x.shape[0]):
        row = x[i]
        prow = p[i]
        zero = cast(0.0, row[0])
        a = cast(alpha, zero)
        b = cast(beta, zero)
        m = cast(-_INF, zero)
        s = zero
        gap = zero
        big_q = zero
        c = zero
        for j0 in range(0, v, CHUNK):
            j1 = min(j0 + CHUNK, v)
            xc = row[j0:j1]
            pc = prow[j0:j1]
            wc = weight[j0:j1]
            cm = _chunk_max(xc)
            if cm != cm:
                m = cm
                break
            if j0 == 0 and cm > -_INF and cm < _INF:
                c = cm
            acc_g = zero
            acc_q = zero
            for j in range(xc.shape[0]):
                wq = wc[j] * (a * pc[j] + b)
                acc_q += wq
                acc_g += wq * (c - xc[j]) if wq != 0 else zero
            gap += acc_g
            big_q += acc_q
            if m == _INF:
                continue
            if cm > m:
                if m > -_INF:
                    s = s * exp_hot(clamp_lo(m - cm))
                m = cm
                if m == _INF:
                    continue
            if m == -_INF:
                continue
            s += _sum_exp(xc, m)
        if m != m or m == _INF or big_q != big_q:
            out[i] = _NAN
        elif m == -_INF:
            out[i] = _INF if big_q != 0 else 0
        else:
            out[i] = big_q * np.log(s) + gap + big_q * (m - c)


# --------------------------------------------------------------------------- contract


def _threads(n):
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))


def lse(x, out, nthreads):
    _threads(nthreads)
    _lse(x, out)


def entropy_logits(x, out, nthreads):
    _threads(nthreads)
    _entropy_logits(x, out)


def entropy_probs(p, out, nthreads):
    _threads(nthreads)
    _entropy_probs(p, out)


def entropy_log_probs(lp, out, nthreads):
    _threads(nthreads)
    _entropy_log_probs(lp, out)


def kl_logits(x, z, out, nthreads):
    _threads(nthreads)
    _kl_logits(x, z, out)


def kl_probs(p, q, out, nthreads):
    _threads(nthreads)
    _kl_probs(p, q, out)


def kl_log_probs(a, b, out, nthreads):
    _threads(nthreads)
    _kl_log_probs(a, b, out)


def ce_hard(x, target, ignore_index, weight, eps, out, nthreads):
    _threads(nthreads)
    _ce_hard(x, target, np.int64(ignore_index), weight, float(eps), out)


def ce_soft(x, p, weight, alpha, beta, out, nthreads):
    _threads(nthreads)
    _ce_soft(x, p, weight, float(alpha), float(beta), out)


def max_threads():
    """Threads numba may use in this process (``NUMBA_NUM_THREADS``)."""
    return numba.config.NUMBA_NUM_THREADS
