"""numba CPU kernels of the divergence family (issue 5): generalized JSD and top-k teacher KL.

The contract is ``fastdiv._registry``'s (js_logits, js_log_probs, js_probs, topk_kl);
semantics are ``fastdiv.reference.js_rows`` / ``topk_kl_rows``.  Built on the vectorisable
math of ``simd.py``; re-exported by ``kernels.py``.

Per row, the passes after the first read the row(s) from cache: a 50257-float row pair is
400 KB, well inside L2.  Sums are accumulated per chunk of ``CHUNK`` elements in a fresh
accumulator (which LLVM splits over vector lanes), then added to the row total: far more
accurate in float32 than one sequential sum.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .kernels import _threads
from .simd import FASTMATH, cast, fence, fexp, flog, maximum, prefer_wide_vectors

CHUNK = 2048
_JIT = dict(parallel=True, fastmath=FASTMATH, cache=True, nogil=True)
_INLINE = dict(inline="always", fastmath=FASTMATH)
_INF = np.inf


def _guard(out, x, z):
    """O(1) shape checks: the jitted loops do no bounds checking."""
    if x.ndim != 2 or x.shape != z.shape or x.dtype != z.dtype or x.shape[1] < 1:
        raise ValueError(f"kernel inputs must be 2-D arrays of one shape and dtype with V >= 1, "
                         f"got {x.shape} {x.dtype} and {z.shape} {z.dtype}")
    if out.shape != (x.shape[0],):
        raise ValueError(f"out must have shape ({x.shape[0]},), got {out.shape}")


@njit(**_INLINE)
def _max(row, j0, j1, m, sc):
    """max(m, sc * row[j0:j1]), NaN-propagating (sc > 0: the max of the scaled values is
    the scaled max, rounding being monotonic)."""
    xs = row[j0:j1]
    for j in range(xs.shape[0]):
        m = maximum(m, xs[j] * sc)
    return m


@njit(**_INLINE)
def _sum_exp(row, j0, j1, m, sc):
    """sum exp(sc * row[j0:j1] - m) (m finite and >= every term), chunk by chunk."""
    total = cast(0.0, m)
    for c0 in range(j0, j1, CHUNK):
        xs = row[c0:min(c0 + CHUNK, j1)]
        acc = cast(0.0, m)
        for j in range(xs.shape[0]):
            acc += fexp(fence(xs[j] * sc) - m)
        total += acc
    return total


@njit(**_INLINE)
def _shift_and_log_norm(row, sc):
    """(shift, log-normaliser) of a row of logits times sc: lp = (sc x - shift) - lognorm.
    NaN in the row or +inf gives a NaN shift; an all-masked row gives (0, 0), so every lp is
    -inf."""
    zero = cast(0.0, row[0])
    m = _max(row, 0, row.shape[0], row[0] * sc, sc)
    if m != m or m == _INF:
        return cast(np.nan, m), zero
    if m == -_INF:
        return zero, zero
    return m, flog(_sum_exp(row, 0, row.shape[0], m, sc))


@njit(**_INLINE)
def _js_pass(xr, zr, mode, b, c, sc, shx, lsx, shz, lsz):
    """sum b p (lp - lm) + c q (lq - lm), lm = log(b p + c q); zero-probability terms are 0.
    mode 0: logits (lp = (x - shx) - lsx); 1: log-probabilities; 2: probabilities."""
    zero = cast(0.0, b)
    total = zero
    v = xr.shape[0]
    for c0 in range(0, v, CHUNK):
        xs = xr[c0:min(c0 + CHUNK, v)]
        zs = zr[c0:min(c0 + CHUNK, v)]
        acc = zero
        for j in range(xs.shape[0]):
            if mode == 2:
                p = xs[j]
                q = zs[j]
                lp = flog(p)
                lq = flog(q)
            else:
                # fenced: (x - sh) - ls must not become x - (sh + ls) (cancels at |x| ~ 1e4)
                lp = fence(fence(xs[j] * sc) - shx) - lsx
                lq = fence(fence(zs[j] * sc) - shz) - lsz
                p = fexp(lp)
                q = fexp(lq)
            lm = flog(b * p + c * q)
            tp = b * p * (lp - lm) if p != zero else zero
            tq = c * q * (lq - lm) if q != zero else zero
            acc += tp + tq
        total += acc
    return total


@njit(**_JIT)
def _js(x, z, mode, beta, scale, out):
    for i in prange(x.shape[0]):
        prefer_wide_vectors()
        xr = x[i]
        zr = z[i]
        zero = cast(0.0, xr[0])
        b = cast(beta, xr[0])
        c = cast(1.0 - beta, xr[0])
        sc = cast(scale, xr[0])
        if mode == 0:
            shx, lsx = _shift_and_log_norm(xr, sc)
            shz, lsz = _shift_and_log_norm(zr, sc)
            if shx != shx or shz != shz:          # NaN or +inf in a row
                out[i] = np.nan
                continue
            out[i] = _js_pass(xr, zr, 0, b, c, sc, shx, lsx, shz, lsz)
        else:
            out[i] = _js_pass(xr, zr, mode, b, c, sc, zero, zero, zero, zero)


@njit(**_JIT)
def _topk(idx, t, z, bucket, out):
    k = idx.shape[1]
    for i in prange(z.shape[0]):
        prefer_wide_vectors()
        zr = z[i]
        ir = idx[i]
        tr = t[i]
        v = zr.shape[0]
        one = cast(1.0, zr[0])
        ok = True
        for a in range(k):                # the API sorts and validates: never read out of bounds
            if ir[a] < 0 or ir[a] >= v or (a > 0 and ir[a] <= ir[a - 1]):
                ok = False
        if not ok:
            out[i] = np.nan
            continue
        # the student's tail (unlisted classes), summed from its own entries
        mt = -_INF
        j0 = 0
        for a in range(k + 1):
            j1 = ir[a] if a < k else v
            if j1 > j0:
                mt = maximum(mt, np.float64(_max(zr, j0, j1, zr[j0], one)))
            j0 = j1 + 1
        bad = mt != mt or mt == _INF
        mall = mt
        for a in range(k):
            zi = np.float64(zr[ir[a]])
            ti = np.float64(tr[a])
            if zi != zi or zi == _INF or ti != ti:
                bad = True
            mall = max(mall, zi)
        if bad:
            out[i] = np.nan
            continue
        st = 0.0
        if mt != -_INF:
            j0 = 0
            for a in range(k + 1):
                j1 = ir[a] if a < k else v
                if j1 > j0:
                    st += np.float64(_sum_exp(zr, j0, j1, cast(mt, zr[0]), one))
                j0 = j1 + 1
        # log q_i = (z_i - mall) - ls; lst = log of the student's tail probability
        ls = 0.0
        lst = -_INF
        if mall != -_INF:
            sall = st * np.exp(mt - mall) if mt != -_INF else 0.0
            tail = sall
            for a in range(k):
                sall += np.exp(np.float64(zr[ir[a]]) - mall)
            ls = np.log(sall)
            if mt != -_INF:
                lst = np.log(tail) - ls
        res = 0.0
        inf = False
        if bucket == 0:
            tm = -_INF
            for a in range(k):
                tm = max(tm, np.float64(tr[a]))
            if tm == _INF:
                out[i] = np.nan
                continue
            if tm == -_INF:                   # empty teacher
                out[i] = 0.0
                continue
            s = 0.0
            for a in range(k):
                s += np.exp(np.float64(tr[a]) - tm)
            lt = np.log(s)
            for a in range(k):
                ta = np.float64(tr[a])
                if ta == -_INF:
                    continue
                lq = ((np.float64(zr[ir[a]]) - mall) - ls) if mall != -_INF else -_INF
                lp = (ta - tm) - lt
                if lq == -_INF:
                    inf = True
                else:
                    res += np.exp(lp) * (lp - lq)
        else:
            sp = 0.0
            for a in range(k):
                ta = np.float64(tr[a])
                if ta == -_INF:
                    continue
                lq = ((np.float64(zr[ir[a]]) - mall) - ls) if mall != -_INF else -_INF
                pa = np.exp(ta)
                sp += pa
                if lq == -_INF:
                    inf = True
                else:
                    res += pa * (ta - lq)
            r = 1.0 - sp                      # the teacher's tail mass; none when k = V
            if not inf and k < v and r > 0.0:
                if lst == -_INF:
                    inf = True
                else:
                    res += r * (np.log(r) - lst)
        out[i] = _INF if inf else res


def js_logits(x, z, beta, scale, out, nthreads):
    _guard(out, x, z)
    with _threads(nthreads):
        _js(x, z, 0, float(beta), float(scale), out)


def js_log_probs(a, b, beta, out, nthreads):
    _guard(out, a, b)
    with _threads(nthreads):
        _js(a, b, 1, float(beta), 1.0, out)


def js_probs(p, q, beta, out, nthreads):
    _guard(out, p, q)
    with _threads(nthreads):
        _js(p, q, 2, float(beta), 1.0, out)


def topk_kl(idx, t, z, bucket, out, nthreads):
    if idx.dtype != np.int64 or idx.ndim != 2 or idx.shape[0] != z.shape[0] or t.shape != idx.shape:
        raise ValueError(f"idx must be int64 of shape ({z.shape[0]}, k) and t of its shape, got {idx.shape}, {t.shape}")
    if z.ndim != 2 or z.shape[1] < 1 or out.shape != (z.shape[0],) or t.dtype != z.dtype:
        raise ValueError(f"z must be 2-D with V >= 1, t of z's dtype and out of shape ({z.shape[0]},)")
    with _threads(nthreads):
        _topk(idx, t, z, int(bool(bucket)), out)
