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

import contextlib
import threading

import numba
import numpy as np
from numba import njit, prange

from .simd import FASTMATH, cast, clamp_lo, exp_hot, fence, fexp, flog, jump_limit, maximum, prefer_wide_vectors, prefetch

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


#: The fused loops work on sub-blocks of SUB elements and, before each, ask for the
#: sub-block PREFETCH_BYTES ahead: one prefetch per 64-byte line, spread through the
#: computation instead of in bursts (a burst stalls on the core's few fill buffers).
SUB = 512
PREFETCH_BYTES = 4096


@njit(**_INLINE)
def _prefetch_ahead(row, b0):
    step = 64 // row.itemsize
    p0 = b0 + PREFETCH_BYTES // row.itemsize
    for k in range(p0, min(p0 + SUB, row.shape[0]), step):
        prefetch(row, k)


@njit(**_INLINE)
def _sums(row, j0, j1, ref):
    """One pass over row[j0:j1]: (max, sum e, sum e*d) with e = exp(d), d = x - ref
    (clamped below at the smallest normal exponent)."""
    zero = cast(0.0, ref)
    cm = row[j0]
    s = zero
    w = zero
    for b0 in range(j0, j1, SUB):
        _prefetch_ahead(row, b0)
        xs = row[b0:min(b0 + SUB, j1)]   # slice first: a run-time loop start would gather
        for j in range(xs.shape[0]):
            cm = maximum(cm, xs[j])
            d = clamp_lo(xs[j] - ref)
            e = exp_hot(d)
            s += e
            w += e * d
    return cm, s, w


@njit(**_INLINE)
def _row_state(x):
    """(m, s, w) of a row of logits in one read: lse = m + log s, E_softmax[x - m] = w / s.

    The reference ``m`` is stale: each chunk is summed relative to the maximum of the
    chunks before it (the first finite element to start with) while its own maximum is
    found in the same pass.  Sums relative to a reference below the true maximum are as
    accurate as relative to the maximum, and cannot overflow while the chunk maximum is
    within ``jump_limit`` of it; a chunk that jumps further (or the first chunk after masked
    ones) is summed again from L1 against its own maximum.  Moving ``m`` up by ``delta``
    rescales ``s`` by e^-delta and shifts every d by -delta: ``w -> e^-delta (w - delta s)``.
    m is NaN for a row with NaN, +inf for a row with +inf (and no NaN).
    """
    v = x.shape[0]
    zero = cast(0.0, x[0])
    m = x[0]
    s = zero
    w = zero
    jump = jump_limit(x[0])
    for j0 in range(0, v, CHUNK):
        j1 = min(j0 + CHUNK, v)
        xc = x[j0:j1]
        if m == _INF:
            cm = _chunk_max(xc)          # only a NaN can change the answer now
            if cm != cm:
                return cm, s, w
            continue
        if m == -_INF:
            cm = _chunk_max(xc)
            if cm == -_INF:
                continue                 # still everything masked
            m = cm
            if m != m:                   # NaN: the row's answer is settled
                return m, s, w
            if m == _INF:
                continue
            _, s, w = _sums(x, j0, j1, m)
            continue
        cm, cs, cw = _sums(x, j0, j1, m)
        if not cm <= m + jump:          # NaN, +inf or a big jump
            if cm != cm or cm == _INF:
                m = cm
                if cm != cm:
                    return m, s, w
                continue
            delta = m - cm
            f = exp_hot(clamp_lo(delta))
            w = f * (w + delta * s)
            s = f * s
            m = cm
            _, cs, cw = _sums(x, j0, j1, m)
        s += cs
        w += cw
        if cm > m:
            delta = m - cm
            f = exp_hot(clamp_lo(delta))
            w = f * (w + delta * s)
            s = f * s
            m = cm
    return m, s, w


@njit(**_INLINE)
def _finish_lse(m, s):
    if m != m or m == _INF or m == -_INF:
        return m
    return m + np.log(s)


@njit(**_INLINE)
def _finish_entropy(m, s, w):
    """H = log s - w / s, with the row endings: NaN/+inf -> NaN, all masked -> 0."""
    if m != m or m == _INF:
        return _NAN
    if m == -_INF:
        return 0.0
    return np.log(s) - w / s


@njit(**_INLINE)
def _nll(m, s, xt):
    """-log q_t = (m - x_t) + log s (the two large numbers subtracted first), with the row
    endings: NaN/+inf -> NaN, all masked -> +inf (the target has probability 0)."""
    if m != m or m == _INF:
        return _NAN
    if m == -_INF:
        return _INF
    return (m - xt) + np.log(s)


@njit(**_JIT)
def _lse(x, out):
    for i in prange(x.shape[0]):
        prefer_wide_vectors()
        m, s, _ = _row_state(x[i])
        out[i] = _finish_lse(m, s)


# --------------------------------------------------------------------------- entropy


@njit(**_JIT)
def _entropy_logits(x, out):
    # H = log s - w / s with w = sum e_j d_j, d_j = x_j - m: no cancellation when m is the
    # row maximum (both terms >= 0), and m is within jump_limit of it.
    for i in prange(x.shape[0]):
        prefer_wide_vectors()
        m, s, w = _row_state(x[i])
        out[i] = _finish_entropy(m, s, w)


@njit(**_JIT)
def _entropy_probs(p, out):
    for i in prange(p.shape[0]):
        prefer_wide_vectors()
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
        prefer_wide_vectors()
        row = lp[i]
        zero = cast(0.0, row[0])
        acc = zero
        for j in range(row.shape[0]):
            lj = row[j]
            acc += fexp(lj) * lj if lj != -_INF else zero
        out[i] = -acc


# --------------------------------------------------------------------------- KL


@njit(**_INLINE)
def _kl_sums(xr, zr, j0, j1, mx, mz):
    """One pass over [j0, j1) of both rows: maxima, sum e^dx, sum e^dz, sum e^dx (dx - dz)."""
    zero = cast(0.0, mx)
    cx = xr[j0]
    cz = zr[j0]
    sx = zero
    sz = zero
    w = zero
    for b0 in range(j0, j1, SUB):
        _prefetch_ahead(xr, b0)
        _prefetch_ahead(zr, b0)
        b1 = min(b0 + SUB, j1)
        xs = xr[b0:b1]
        zs = zr[b0:b1]
        for j in range(xs.shape[0]):
            cx = maximum(cx, xs[j])
            cz = maximum(cz, zs[j])
            # Not fenced (simd.fence): here it stops vectorisation (6x slower); the error left
            # by reassociation stays within the float32 tolerance (2e-5 (1 + |KL|), tested).
            dx = xs[j] - mx
            dz = zs[j] - mz
            ex = exp_hot(clamp_lo(dx))
            sx += ex
            sz += exp_hot(clamp_lo(dz))
            # p_j = 0 (x_j = -inf) contributes exactly 0; q_j = 0 < p_j contributes +inf.
            w += ex * (dx - dz) if dx > -_INF else zero
    return cx, cz, sx, sz, w


@njit(**_JIT)
def _kl_logits(x, z, out):
    # D = w / sx - log sx + log sz with w = sum e^dx (dx - dz), dx = x - mx, dz = z - mz:
    # shifted logits keep (dx - dz) small where P has mass.  References are stale as in
    # _row_state.  When mx grows by delta: e^dx scales by e^-delta and dx shifts by -delta,
    # w -> e^-delta (w - delta sx); when mz grows by delta: w -> w + delta sx.
    for i in prange(x.shape[0]):
        prefer_wide_vectors()
        xr = x[i]
        zr = z[i]
        v = xr.shape[0]
        zero = cast(0.0, xr[0])
        mx = xr[0]
        mz = zr[0]
        sx = zero
        sz = zero
        w = zero
        q_misses_p = False               # P has mass on a class Q masks -> D = +inf
        jump = jump_limit(zero)
        for j0 in range(0, v, CHUNK):
            j1 = min(j0 + CHUNK, v)
            xc = xr[j0:j1]
            zc = zr[j0:j1]
            if abs(mx) < _INF and abs(mz) < _INF:
                cx, cz, csx, csz, cw = _kl_sums(xr, zr, j0, j1, mx, mz)
                if cx <= mx + jump and cz <= mz + jump:
                    sx += csx
                    sz += csz
                    w += cw
                    if cx > mx:
                        delta = mx - cx
                        f = exp_hot(clamp_lo(delta))
                        w = f * (w + delta * sx)
                        sx = f * sx
                        mx = cx
                    if cz > mz:
                        delta = mz - cz
                        sz = sz * exp_hot(clamp_lo(delta))
                        w = w - delta * sx
                        mz = cz
                    continue
            # Rare path: a reference is -inf/+inf/NaN, or a chunk jumped far above it.
            cx = _chunk_max(xc)
            cz = _chunk_max(zc)
            if cx != cx or cz != cz or mx != mx or mz != mz:
                mx = cx + cz + mx + mz   # NaN
                break
            if mx == _INF or mz == _INF or cx == _INF or cz == _INF:
                mx = maximum(mx, cx)
                mz = maximum(mz, cz)
                continue                 # only a NaN can change the answer now
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
            if mx == -_INF:              # P has no mass yet: only Q's normaliser
                if mz > -_INF:
                    _, sz_c, _ = _sums(zr, j0, j1, mz)
                    sz += sz_c
                continue
            if mz == -_INF:              # Q masked everywhere so far
                if cx > -_INF:
                    q_misses_p = True
                _, sx_c, _ = _sums(xr, j0, j1, mx)
                sx += sx_c
                continue
            _, _, csx, csz, cw = _kl_sums(xr, zr, j0, j1, mx, mz)
            sx += csx
            sz += csz
            w += cw
        if mx != mx or mz != mz or mx == _INF or mz == _INF:
            out[i] = _NAN
        elif mx == -_INF:
            out[i] = 0
        elif mz == -_INF or q_misses_p or w == _INF:
            out[i] = _INF
        else:
            out[i] = w / sx - np.log(sx) + np.log(sz)


@njit(**_JIT)
def _kl_probs(p, q, out):
    for i in prange(p.shape[0]):
        prefer_wide_vectors()
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
        prefer_wide_vectors()
        ar = a[i]
        br = b[i]
        zero = cast(0.0, ar[0])
        acc = zero
        bad = zero
        for j in range(ar.shape[0]):
            aj = ar[j]
            bj = br[j]
            d = aj - bj
            # exp(a) may underflow to 0 for a finite a: a finite a against b = -inf is +inf
            # (positive probability where Q has none), never 0 * inf = NaN.
            acc += d if d == _INF else (fexp(aj) * d if aj != -_INF else zero)
            bad += bj if bj != bj else zero   # NaN in Q poisons the row even where p = 0
        out[i] = acc + bad


# --------------------------------------------------------------------------- cross-entropy


@njit(**_JIT)
def _row_parts(x, m_out, s_out):
    """The row pass of hard-label CE without smoothing: (m, s) per row, nothing else.

    Measured: a row kernel that also reads the target (or anything indexed by it) ran
    ~15 % slower than logsumexp at 8192 x 32000 -- not from the memory access (prefetching
    it changed nothing) -- so the targets are handled in a second, O(rows) pass."""
    for i in prange(x.shape[0]):
        prefer_wide_vectors()
        m, s, _ = _row_state(x[i])
        m_out[i] = m
        s_out[i] = s


@njit(**_JIT)
def _ce_finish(x, target, ignore_index, weight, m_in, s_in, out):
    """w_t ((m - x_t) + log s): the subtraction of two large numbers comes first."""
    for i in prange(x.shape[0]):
        t = target[i]
        if t == ignore_index:
            out[i] = 0
            continue
        nll = _nll(m_in[i], s_in[i], x[i, t])
        wt = weight[t]
        # NaN wins over a zero weight (reference.py); a zero-weight term is exactly 0
        out[i] = nll if nll != nll else (0 if wt == 0 else wt * nll)


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
    for i in prange(x.shape[0]):
        prefer_wide_vectors()
        t = target[i]
        if t == ignore_index:
            out[i] = 0
            continue
        row = x[i]
        m, s, _ = _row_state(row)
        xt = row[t]
        wt = weight[t]
        if m != m or m == _INF:
            out[i] = _NAN
            continue
        if m == -_INF:                   # every class masked: the target has probability 0
            nll = _INF
            sm = _INF if big_w > 0 else 0.0
        else:
            logs = np.log(s)
            nll = (m - xt) + logs
            sm = 0.0
            if eps > 0:
                zero = cast(0.0, m)
                gap = zero
                for j in range(v):
                    gap += weight[j] * (m - row[j]) if weight[j] != 0 else zero
                sm = big_w * logs + gap
        # a zero-weight term (w_t = 0, or eps = 1) is exactly 0, never 0 * inf
        loss = (1.0 - eps) * (wt * nll) if wt != 0 and eps < 1.0 else 0.0
        if eps > 0:
            loss += eps / v * sm
        out[i] = loss


@njit(**_JIT)
def _ce_soft(x, p, weight, alpha, beta, out):
    # loss = sum_j w_j q_j (lse - x_j), q_j = alpha p_j + beta
    #      = Q log s + sum_j w_j q_j (m - x_j),  Q = sum_j w_j q_j,
    # the second sum read from cache once m is known; zero w_j q_j terms are exactly 0.
    v = x.shape[1]
    for i in prange(x.shape[0]):
        prefer_wide_vectors()
        row = x[i]
        prow = p[i]
        m, s, _ = _row_state(row)
        zero = cast(0.0, m)
        a = cast(alpha, zero)
        b = cast(beta, zero)
        gap = zero
        big_q = zero
        if m == -_INF:
            for j in range(v):
                big_q += weight[j] * (a * prow[j] + b)
            out[i] = _INF if big_q != 0 else (big_q if big_q != big_q else 0)
            continue
        if m != m or m == _INF:
            out[i] = _NAN
            continue
        for j in range(v):
            wq = weight[j] * (a * prow[j] + b)
            big_q += wq
            gap += wq * (m - row[j]) if wq != 0 else zero
        out[i] = big_q * np.log(s) + gap


# --------------------------------------------------------------------------- small V
#
# At V = 51 (C51) a row is 204 bytes: per-row costs (loop tails, horizontal reductions, a
# scalar log) would dominate.  Instead a block of rows is treated as one flat array: its
# maximum R, one long vectorised pass e = exp(x - R) into an L1 scratch buffer, short
# per-row sums of e, and a vectorised log over the block's rows.  Sums relative to the
# block's R instead of each row's own maximum are equally accurate while they are not
# tiny; a row whose sum falls below SMALL_MIN_SUM (its maximum lies far below R, or it is
# all masked) and any block holding NaN or +inf go through the general per-row path.

SMALL_V = 128            # vocabularies up to this size use the block path (V=256 was faster per row)
SMALL_BLOCK = 8192       # elements per block: 32 KB of float32 scratch
SMALL_MIN_SUM = 1e-20    # below this a row is redone exactly (terms flushed at ~1e-38)


@njit(**_INLINE)
def _block_exp(flat, ref, e):
    for k in range(flat.shape[0]):
        e[k] = exp_hot(clamp_lo(flat[k] - ref))


@njit(**_INLINE)
def _block_exp_max(allx, k0, k1, ref, e):
    """e = exp(x - ref) over allx[k0:k1] and its maximum, in one pass from memory, with the
    next sub-blocks prefetched (the whole array is contiguous, so 'next' crosses blocks)."""
    m = allx[k0]
    for b0 in range(k0, k1, SUB):
        _prefetch_ahead(allx, b0)
        xs = allx[b0:min(b0 + SUB, k1)]
        es = e[b0 - k0:b0 - k0 + xs.shape[0]]
        for k in range(xs.shape[0]):
            m = maximum(m, xs[k])
            es[k] = exp_hot(clamp_lo(xs[k] - ref))
    return m


@njit(**_INLINE)
def _flat_max(flat):
    m = flat[0]
    for k in range(flat.shape[0]):
        m = maximum(m, flat[k])
    return m


@njit(**_INLINE)
def _row_sums(e, rows, v, s):
    """Sums of consecutive length-v segments of e.  A 51-long loop never reaches LLVM's
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


@njit(**_JIT)
def _small_lse(x, out, ce_target, ignore_index):
    """lse per row, or (lse - x[t]) when ce_target holds class indices (hard-label CE)."""
    n, v = x.shape
    bs = max(1, SMALL_BLOCK // v)
    nblocks = (n + bs - 1) // bs
    ce = ce_target.shape[0] == n
    allx = x.reshape(n * v)
    jump = jump_limit(allx[0])
    for b in prange(nblocks):
        prefer_wide_vectors()
        i0 = b * bs
        i1 = min(i0 + bs, n)
        rows = i1 - i0
        flat = allx[i0 * v:i1 * v]
        e = np.empty(rows * v, dtype=x.dtype)
        s = np.empty(rows, dtype=x.dtype)
        # One pass: exp against a stale reference (the block's first element, when finite)
        # while finding the block maximum; redone from L1 only if the maximum jumped past
        # jump_limit (overflow risk) -- as _row_state does per chunk.
        ref = flat[0]
        exact = ref == ref and abs(ref) < _INF
        if exact:
            bmax = _block_exp_max(allx, i0 * v, i1 * v, ref, e)
            if not (bmax <= ref + jump):
                ref = bmax
                exact = ref == ref and abs(ref) < _INF
                if exact:
                    _block_exp(flat, ref, e)
        else:
            ref = _flat_max(flat)
            exact = ref == ref and abs(ref) < _INF
            if exact:
                _block_exp(flat, ref, e)
        if exact:
            _row_sums(e, rows, v, s)
            for r in range(rows):
                ls = np.log(s[r])
                if ce:
                    t = ce_target[i0 + r]
                    out[i0 + r] = (ref - x[i0 + r, t]) + ls if t != ignore_index else 0
                else:
                    out[i0 + r] = ref + ls
        for r in range(rows):
            if exact and s[r] >= SMALL_MIN_SUM:
                continue
            i = i0 + r
            if ce and ce_target[i] == ignore_index:
                out[i] = 0
                continue
            m, sr, _ = _row_state(x[i])
            out[i] = _nll(m, sr, x[i, ce_target[i]]) if ce else _finish_lse(m, sr)


@njit(**_JIT)
def _small_entropy(x, out):
    n, v = x.shape
    bs = max(1, SMALL_BLOCK // v)
    nblocks = (n + bs - 1) // bs
    for b in prange(nblocks):
        prefer_wide_vectors()
        i0 = b * bs
        i1 = min(i0 + bs, n)
        rows = i1 - i0
        flat = x[i0:i1].reshape(rows * v)
        e = np.empty(rows * v, dtype=x.dtype)
        s = np.empty(rows, dtype=x.dtype)
        w = np.empty(rows, dtype=x.dtype)
        ref = _flat_max(flat)
        exact = ref == ref and abs(ref) < _INF
        if exact:
            _block_exp(flat, ref, e)
            for r in range(rows):
                er = e[r * v:(r + 1) * v]
                xr = flat[r * v:(r + 1) * v]
                acc_s = cast(0.0, ref)
                acc_w = acc_s
                for j in range(v):
                    acc_s += er[j]
                    acc_w += er[j] * clamp_lo(xr[j] - ref)
                s[r] = acc_s
                w[r] = acc_w
            for r in range(rows):
                out[i0 + r] = np.log(s[r]) - w[r] / s[r]
        for r in range(rows):
            if exact and s[r] >= SMALL_MIN_SUM:
                continue
            m, sr, wr = _row_state(x[i0 + r])
            out[i0 + r] = _finish_entropy(m, sr, wr)


@njit(**_JIT)
def _small_kl(x, z, out, fallback):
    n, v = x.shape
    bs = max(1, SMALL_BLOCK // v)
    nblocks = (n + bs - 1) // bs
    for b in prange(nblocks):
        prefer_wide_vectors()
        i0 = b * bs
        i1 = min(i0 + bs, n)
        rows = i1 - i0
        fx = x[i0:i1].reshape(rows * v)
        fz = z[i0:i1].reshape(rows * v)
        ex = np.empty(rows * v, dtype=x.dtype)
        ez = np.empty(rows * v, dtype=x.dtype)
        rx = _flat_max(fx)
        rz = _flat_max(fz)
        zero = cast(0.0, rx)
        if not (rx == rx and rz == rz and abs(rx) < _INF and abs(rz) < _INF):
            for r in range(rows):
                fallback[i0 + r] = True
            continue
        _block_exp(fx, rx, ex)
        _block_exp(fz, rz, ez)
        for r in range(rows):
            xr = fx[r * v:(r + 1) * v]           # slice first: a run-time loop start would gather
            zr = fz[r * v:(r + 1) * v]
            exr = ex[r * v:(r + 1) * v]
            ezr = ez[r * v:(r + 1) * v]
            sx = zero
            sz = zero
            w = zero
            for j in range(v):
                dx = fence(xr[j] - rx)       # fenced: see simd.fence
                sx += exr[j]
                sz += ezr[j]
                w += exr[j] * (dx - fence(zr[j] - rz)) if dx > -_INF else zero
            if sx < SMALL_MIN_SUM or sz < SMALL_MIN_SUM or w == _INF:
                fallback[i0 + r] = True
            else:
                out[i0 + r] = w / sx - np.log(sx) + np.log(sz)


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


_LOCK = threading.Lock()


@contextlib.contextmanager
def _threads(n):
    """Use ``n`` threads (numba's setting is per calling thread) for one kernel call.

    numba's ``omp`` and ``tbb`` threading layers accept parallel calls from several Python
    threads at once; its fallback ``workqueue`` layer does not (it aborts the process), so
    there the calls are serialised.  The layer is only known after the first launch."""
    numba.set_num_threads(max(1, min(int(n), numba.config.NUMBA_NUM_THREADS)))
    try:
        safe = numba.threading_layer() != "workqueue"
    except ValueError:                  # nothing launched yet
        safe = False
    if safe:
        yield
    else:
        with _LOCK:
            yield


_NO_TARGET = np.zeros(0, dtype=np.int64)


def _small(x):
    return x.shape[1] <= SMALL_V


def lse(x, out, nthreads):
    _guard(out, x)
    with _threads(nthreads):
        if _small(x):
            _small_lse(x, out, _NO_TARGET, np.int64(0))
        else:
            _lse(x, out)


def entropy_logits(x, out, nthreads):
    _guard(out, x)
    with _threads(nthreads):
        if _small(x):
            _small_entropy(x, out)
        else:
            _entropy_logits(x, out)


def entropy_probs(p, out, nthreads):
    _guard(out, p)
    with _threads(nthreads):
        _entropy_probs(p, out)


def entropy_log_probs(lp, out, nthreads):
    _guard(out, lp)
    with _threads(nthreads):
        _entropy_log_probs(lp, out)


def kl_logits(x, z, out, nthreads):
    _guard(out, x, z)
    with _threads(nthreads):
        if not _small(x):
            _kl_logits(x, z, out)
            return
        redo = np.zeros(x.shape[0], dtype=np.bool_)
        _small_kl(x, z, out, redo)
        if redo.any():                      # rare: NaN/inf blocks, masked or far-below rows
            idx = np.flatnonzero(redo)
            part = np.empty(idx.size, dtype=out.dtype)
            _kl_logits(np.ascontiguousarray(x[idx]), np.ascontiguousarray(z[idx]), part)
            out[idx] = part


def kl_probs(p, q, out, nthreads):
    _guard(out, p, q)
    with _threads(nthreads):
        _kl_probs(p, q, out)


def kl_log_probs(a, b, out, nthreads):
    _guard(out, a, b)
    with _threads(nthreads):
        _kl_log_probs(a, b, out)


def ce_hard(x, target, ignore_index, weight, eps, out, nthreads):
    _guard(out, x)
    if target.shape != (x.shape[0],) or weight.shape != (x.shape[1],):
        raise ValueError(f"target must have shape ({x.shape[0]},) and weight ({x.shape[1]},)")
    with _threads(nthreads):
        if _small(x) and eps == 0 and np.all(weight == 1):
            _small_lse(x, out, target, np.int64(ignore_index))
        else:
            if eps == 0:
                m = np.empty_like(out)
                s = np.empty_like(out)
                _row_parts(x, m, s)
                _ce_finish(x, target, np.int64(ignore_index), weight, m, s, out)
            else:
                _ce_hard(x, target, np.int64(ignore_index), weight, float(eps), out)


def ce_soft(x, p, weight, alpha, beta, out, nthreads):
    _guard(out, x, p)
    if weight.shape != (x.shape[1],):
        raise ValueError(f"weight must have shape ({x.shape[1]},)")
    with _threads(nthreads):
        _ce_soft(x, p, weight, float(alpha), float(beta), out)


def max_threads():
    """Threads numba may use in this process (``NUMBA_NUM_THREADS``)."""
    return numba.config.NUMBA_NUM_THREADS
from .divergences import js_log_probs, js_logits, js_probs, topk_kl  # noqa: E402,F401  (issue 5)
