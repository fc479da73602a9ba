"""CUDA kernels of the divergence family (issue 5): temperature-scaled entropy / KL / soft-target
CE, generalized JSD and top-k teacher KL.

One block per row (grid-stride over rows), threads striding over the columns, block
reductions in shared memory; sums are accumulated in float64 (values and exponentials in the
input's accumulation precision, float32 below float64).  Passes over a row: the maxima, the
normalising sums, then (JS) the terms -- each pass re-reads the row from global memory /
L2.  Written for correctness and clarity, not tuned: the unscaled entropy / KL / soft-target
CE run on the mergeable accumulators of ``accumulators.py`` (``short_rows.py``,
``long_rows.py``), these for ``temperature != 1`` and the new ops.  Both paths stay because
the tuned states read the logits unscaled: scaling there would change the scaled results'
bits (they sum in the accumulation type against a running max, these in float64 against the
row's).  KL uses both: the tuned kernel marks nearly equal rows ``-inf`` and ``OP_KL_EXACT``
recomputes only those, without cancellation, in float64 (float32 rows too).  Semantics:
``fastdiv.reference``.

Input kinds (``loaders.py``): float32, float64, float16, and bfloat16 as uint16 / int16 bits.
"""
from __future__ import annotations

import math
import threading

import numpy as np
from numba import cuda, float64, int64

from .. import _registry
from . import intrinsics as D
from .intrinsics import inline as _dj
from .loaders import Kind
from .reductions import RED_MAX_THREADS, block_max, block_sum

#: threads per block (a power of two <= 1024; tests patch it small for the simulator)
DIV_BLOCK = 128
#: most blocks launched (rows are grid-strided beyond)
DIV_GRID = 65536

#: the ops of ``k_rows``; OP_KL_EXACT recomputes, without cancellation, only the KL rows that
#: the tuned kernel marked -inf (a KL below _registry.KL_EXACT_BELOW, float64, or
#: KL32_NEAR_BELOW, float32, times the size of the terms its one pass subtracts:
#: accumulators.py, kl_logits' finish)
OP_ENTROPY, OP_KL, OP_CE_SOFT, OP_JS_LOGITS, OP_JS_LOG_PROBS, OP_JS_PROBS, OP_TOPK, OP_KL_EXACT = range(8)

_JSD = _registry.JSD_HALF_POLY
_lock = threading.Lock()
_cache: dict = {}


@_dj
def _two_diff(a, b):
    """(s, e): s = fl(a - b) and a - b = s + e exactly (TwoSum; finite a, b)."""
    s = a - b
    bv = s - a
    return s, (a - (s - bv)) - (b + bv)


#: 1/k!, k = 0..22: the series of expm1 and of phi(b) = b e^b - e^b + 1 (|b| < 1)
_INV_FACT = tuple(1.0 / math.factorial(k) for k in range(23))


@_dj
def _expm1_phi(b):
    """(expm1(b), phi(b)) for |b| < 1 by their series: no cancellation for small b."""
    e = 0.0
    f = 0.0
    for k in range(19, 0, -1):
        e = e * b + _INV_FACT[k]
    for k in range(22, 1, -1):
        f = f * b + (k - 1) * _INV_FACT[k]
    return e * b, f * b * b


@_dj
def _listed(idx, r0, k, j):
    """Whether column j is among the sorted classes idx[r0:r0 + k] (binary search)."""
    lo = int64(0)
    hi = int64(k)
    while lo < hi:
        mid = (lo + hi) // 2
        if idx[r0 + mid] < j:
            lo = mid + 1
        else:
            hi = mid
    return lo < k and idx[r0 + lo] == j


def _make(kind_name):
    kind = Kind(kind_name)
    acc = kind.acc
    sload = kind.sload
    fexp = D.exp_f64 if acc is np.float64 else D.exp_f32
    flog = D.log_any if acc is np.float64 else D.log_f32
    NEG_INF = acc(-np.inf)
    ZERO = acc(0.0)
    F64 = acc is np.float64
    KL_BELOW = _registry.KL_EXACT_BELOW if F64 else _registry.KL32_NEAR_BELOW

    @_dj
    def kl_exact_sums(x, z, base, V, tid, nt, sca, mx, mz, k):
        """This thread's share of (sum q_j, sum q_j expm1(b_j), sum q_j phi(b_j)) times sz,
        b_j = ((x_j - z_j) - (mx - mz)) - k: the terms of D(P || Q) = sum_j q_j phi(log r_j),
        r = p / q, each >= 0 (fastdiv/_numba/long_rows.py, _kl_exact)."""
        dm, dme = _two_diff(mx, mz)
        s = 0.0
        nu = 0.0
        ph = 0.0
        for j in range(tid, V, nt):
            xj = float64(sload(x, base + j) * sca)
            zj = float64(sload(z, base + j) * sca)
            if zj == -math.inf:
                continue
            ez = math.exp(zj - mz)
            s += ez
            if xj == -math.inf:
                nu -= ez
                ph += ez
                continue
            d1, d1e = _two_diff(xj, zj)
            b = ((d1 - dm) + (d1e - dme)) - k
            if abs(b) < 1.0:
                e1, f1 = _expm1_phi(b)
                nu += ez * e1
                ph += ez * f1
            else:
                qe = math.exp((xj - mx) - k)
                nu += qe - ez
                # b = -inf (past the float range): p / q = 0, the term is q (0 * -inf is NaN)
                ph += qe * (b - 1.0) + ez if b > -math.inf else ez
        return s, nu, ph

    @_dj
    def js_terms(p, q, lp, lq, a):
        """One class's JS terms a p (log p - log m) and (1 - a) q (log q - log m), m the
        mixture, in float64; a zero probability's term is exactly 0, never 0 * -inf.  (Added
        to the sum one after the other: 0.0 added to a sum that starts at +0.0 changes
        nothing, so the sums are those of adding only the non-zero terms.)"""
        m = acc(a) * p + acc(1.0 - a) * q
        if m == ZERO:                        # underflow: p, q at the range's bottom, their terms too
            return (0.0, 0.0)
        lm = flog(m)
        tp = float64(acc(a) * p * (lp - lm)) if p != ZERO else 0.0
        tq = float64(acc(1.0 - a) * q * (lq - lm)) if q != ZERO else 0.0
        return (tp, tq)

    @_dj
    def jsd(s):
        """J(d / 2) for s = d^2 < 4, J(x) = x tanh x - log cosh x: the JS term (beta = 1/2)
        per unit of the mixture of two classes whose log-probabilities differ by d
        (fastdiv._registry.JSD_HALF_POLY)."""
        q = acc(_JSD[0])
        for k in range(1, len(_JSD)):
            q = q * s + acc(_JSD[k])
        return s * q

    @cuda.jit
    def k_rows(x, z, w, idx, t, out, rows, V, K, op, sc, a, b, has_w):
        shd = cuda.shared.array(RED_MAX_THREADS, dtype=float64)
        tid = cuda.threadIdx.x
        nt = cuda.blockDim.x
        sca = acc(sc)
        if op == OP_KL_EXACT:
            op = OP_KL
            redo_only = True                 # only the rows the tuned kernels marked -inf
        else:
            redo_only = False
        for row in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
            if redo_only and out[row] != -math.inf:
                continue
            base = row * V
            r0 = row * K
            # ---- pass A: maxima (NaN-ignoring) and NaN counts
            mx = NEG_INF
            mz = NEG_INF
            nan = 0.0
            for j in range(tid, V, nt):
                if op == OP_TOPK:
                    if _listed(idx, r0, K, j):
                        continue
                    xv = sload(x, base + j)
                else:
                    xv = sload(x, base + j) * sca
                if xv != xv:
                    nan += 1.0
                elif xv > mx:
                    mx = xv
                if op == OP_KL or op == OP_JS_LOGITS:
                    zv = sload(z, base + j) * sca
                    if zv != zv:
                        nan += 1.0
                    elif zv > mz:
                        mz = zv
            nan = block_sum(shd, nan, tid, nt)
            MX = block_max(shd, float64(mx), tid, nt)
            MZ = block_max(shd, float64(mz), tid, nt)
            shx = acc(MX) if (MX > -math.inf and MX < math.inf) else ZERO
            shz = acc(MZ) if (MZ > -math.inf and MZ < math.inf) else ZERO
            # ---- pass B: sums relative to the maxima
            sx = 0.0
            sz = 0.0
            s1 = 0.0
            s2 = 0.0
            mxz = -math.inf
            for j in range(tid, V, nt):
                if op == OP_TOPK:
                    if _listed(idx, r0, K, j):
                        continue
                    sx += float64(fexp(sload(x, base + j) - shx))
                    continue
                if op == OP_JS_LOG_PROBS or op == OP_JS_PROBS:
                    xv = sload(x, base + j)
                    zv = sload(z, base + j)
                    if op == OP_JS_PROBS:
                        p = xv
                        q = zv
                        # outside the domain: a negative p or q is rel_entr's +inf (as kl_div);
                        # an infinite one makes m infinite too: NaN, as NaN itself
                        if p != p or q != q or p == math.inf or q == math.inf:
                            s1 += math.nan
                            continue
                        if p < ZERO or q < ZERO:
                            s1 += math.inf
                            continue
                        lp = flog(p)
                        lq = flog(q)
                    else:
                        lp = xv
                        lq = zv
                        p = fexp(lp)
                        q = fexp(lq)
                    tp, tq = js_terms(p, q, lp, lq, a)
                    s1 += tp
                    s1 += tq
                    continue
                tx = sload(x, base + j) * sca - shx
                ex = fexp(tx)
                sx += float64(ex)
                if op == OP_ENTROPY:
                    if ex != ZERO:
                        s1 += float64(ex * tx)
                elif op == OP_KL or op == OP_JS_LOGITS:
                    zraw = sload(z, base + j) * sca
                    tz = zraw - shz
                    sz += float64(fexp(tz))
                    if op == OP_KL:
                        if zraw == NEG_INF:
                            if tx + shx > mxz:
                                mxz = float64(tx + shx)
                        elif ex != ZERO:
                            s1 += float64(ex * (tx - tz))
                elif op == OP_CE_SOFT:
                    c = (w[j] if has_w else acc(1.0)) * (acc(a) * sload(z, base + j) + acc(b))
                    if c != ZERO:
                        s1 += float64(c * -tx)      # c (m - s x_j) >= 0 terms
                        s2 += float64(c)
            sx = block_sum(shd, sx, tid, nt)
            sz = block_sum(shd, sz, tid, nt)
            s1 = block_sum(shd, s1, tid, nt)
            s2 = block_sum(shd, s2, tid, nt)
            mxz = block_max(shd, mxz, tid, nt)
            # ---- pass C (KL of nearly equal rows): D without cancellation, in float64 for
            # float32 rows too (rare rows: KL below KL32_NEAR_BELOW L)
            kl_d = math.nan
            if op == OP_KL and nan == 0 and MX > -math.inf and MX < math.inf and MZ < math.inf \
                    and mxz == -math.inf:
                lsx = math.log(sx)
                lsz = math.log(sz)
                kl_d = s1 / sx - lsx + lsz
                scale_l = 1.0 + abs(s1 / sx) + 2.0 * (abs(lsx) + abs(lsz))
                if redo_only or kl_d < KL_BELOW * scale_l:
                    k = lsx - lsz
                    for _ in range(2):
                        es, nu, ph = kl_exact_sums(x, z, base, V, tid, nt, sca, MX, MZ, k)
                        es = block_sum(shd, es, tid, nt)
                        nu = block_sum(shd, nu, tid, nt) / es
                        ph = block_sum(shd, ph, tid, nt) / es
                        psi = nu * nu * (0.5 - nu / 6.0 + nu * nu / 12.0) if abs(nu) < 1e-5 else \
                            (1.0 + nu) * math.log1p(nu) - nu
                        kl_d = (ph - psi) / (1.0 + nu)
                        if not psi > 1e-3 * kl_d:      # see _numba/long_rows.py, _kl_exact
                            break
                        k += math.log1p(nu)
            # ---- pass C (JS from logits): the terms
            if op == OP_JS_LOGITS:
                lsx = acc(math.log(sx)) if MX > -math.inf else ZERO
                lsz = acc(math.log(sz)) if MZ > -math.inf else ZERO
                # beta = 1/2 in float32: a class whose |d| < 2, d = lq - lp formed from the
                # logits' difference, adds m J(d / 2), which keeps JS's relative accuracy as the
                # rows' difference goes to 0 (the log-based terms cancel there); per class here,
                # by vector in the Cython kernels (fd_js_half_term)
                half = (not F64) and a == 0.5 and MX > -math.inf and MZ > -math.inf
                # the shift part as a float difference, as the classes' zj - xj: d = 0 to the bit
                # for equal normalisers (a one-class row).  Where the maxima differ by 4 or
                # more, zj - xj rounds at the size of the offset: d from (zj - shz) - (xj - shx)
                # instead (as the Cython kernels' fd_js_terms)
                off = half and abs(shz - shx) >= acc(4.0)
                ax = shx if off else ZERO
                az = shz if off else ZERO
                cd = acc((0.0 if off else float64(shz - shx)) + (math.log(sz) - math.log(sx))) if half else ZERO
                for j in range(tid, V, nt):
                    xj = sload(x, base + j) * sca
                    zj = sload(z, base + j) * sca
                    lp = (xj - shx) - lsx
                    lq = (zj - shz) - lsz
                    p = fexp(lp)
                    q = fexp(lq)
                    d = ((zj - az) - (xj - ax)) - cd
                    if half and d * d < acc(4.0):
                        s2 += float64((acc(0.5) * p + acc(0.5) * q) * jsd(d * d))
                    else:
                        tp, tq = js_terms(p, q, lp, lq, a)
                        s2 += tp
                        s2 += tq
                s2 = block_sum(shd, s2, tid, nt)
            if tid != 0:
                continue
            # ---- finish (thread 0), the edge rules of fastdiv.reference
            bad = nan > 0 or MX == math.inf or MZ == math.inf
            if op == OP_ENTROPY:
                res = math.nan if bad else (0.0 if MX == -math.inf else math.log(sx) - s1 / sx)
            elif op == OP_KL:
                if bad or sx != sx or sz != sz:
                    res = math.nan
                elif MX == -math.inf:
                    res = 0.0
                elif mxz != -math.inf:
                    res = math.inf
                else:
                    res = kl_d
            elif op == OP_CE_SOFT:
                if bad or sx != sx:
                    res = math.nan
                elif MX == -math.inf:
                    res = s1                       # sum c_j * (+inf), 0 when every c is 0
                else:
                    res = s1 + s2 * math.log(sx)
            elif op == OP_JS_LOGITS:
                res = math.nan if bad else s2
            elif op == OP_TOPK:
                res = _topk_finish(x, idx, t, base, r0, V, K, b, MX, sx, bad)
            else:
                res = s1
            out[row] = res

    @_dj
    def _topk_finish(x, idx, t, base, r0, V, K, bucket, MT, st, bad):
        for i in range(K):
            if idx[r0 + i] < 0 or idx[r0 + i] >= V or (i > 0 and idx[r0 + i] <= idx[r0 + i - 1]):
                return math.nan
        mall = MT
        for i in range(K):
            zi = float64(sload(x, base + idx[r0 + i]))
            ti = float64(sload(t, r0 + i))
            if zi != zi or zi == math.inf or ti != ti:
                return math.nan
            if zi > mall:
                mall = zi
        if bad:
            return math.nan
        ls = 0.0
        lst = -math.inf
        if mall != -math.inf:
            sall = st * math.exp(MT - mall) if MT != -math.inf else 0.0
            for i in range(K):
                sall += math.exp(float64(sload(x, base + idx[r0 + i])) - mall)
            ls = math.log(sall)
            if MT != -math.inf:                # in log space: the tail's probability may underflow
                lst = ((MT - mall) + math.log(st)) - ls
        res = 0.0
        inf = False
        if bucket == 0:
            tm = -math.inf
            for i in range(K):
                ti = float64(sload(t, r0 + i))
                if ti > tm:
                    tm = ti
            if tm == math.inf:
                return math.nan
            if tm == -math.inf:
                return 0.0
            s = 0.0
            for i in range(K):
                s += math.exp(float64(sload(t, r0 + i)) - tm)
            lt = math.log(s)
            for i in range(K):
                ti = float64(sload(t, r0 + i))
                if ti == -math.inf:
                    continue
                lq = ((float64(sload(x, base + idx[r0 + i])) - mall) - ls) if mall != -math.inf else -math.inf
                lp = (ti - tm) - lt
                if lq == -math.inf:
                    inf = True
                else:
                    res += math.exp(lp) * (lp - lq)
            return math.inf if inf else res
        sp = 0.0
        for i in range(K):
            ti = float64(sload(t, r0 + i))
            if ti == -math.inf:
                continue
            lq = ((float64(sload(x, base + idx[r0 + i])) - mall) - ls) if mall != -math.inf else -math.inf
            pi = math.exp(ti)
            sp += pi
            if lq == -math.inf:
                inf = True
            else:
                res += pi * (ti - lq)
        if inf:
            return math.inf
        r = 1.0 - sp
        if K < V and r > 0.0:
            if lst == -math.inf:
                return math.inf
            res += r * (math.log(r) - lst)
        return res

    return k_rows


def kernel(kind_name):
    k = _cache.get(kind_name)
    if k is None:
        with _lock:
            k = _cache.get(kind_name)
            if k is None:
                k = _make(kind_name)
                _cache[kind_name] = k
    return k


def launch(op, kind_name, x, z, w, has_w, idx, t, out, rows, V, K, sc, a, b, stream):
    """Run op over ``rows`` rows (flat device arrays; unused ones may be any small array of
    their dtype, ``w`` one of the accumulation dtype when ``has_w`` is false)."""
    if rows == 0:
        return
    block = int(DIV_BLOCK)
    if block < 1 or block > RED_MAX_THREADS or block & (block - 1):
        raise ValueError(f"DIV_BLOCK must be a power of two <= {RED_MAX_THREADS}, got {block}")
    grid = min(rows, int(DIV_GRID))
    k = kernel(kind_name)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # small grids in tests
        k[grid, block, stream](x, z, w, idx, t, out, np.int64(rows), np.int64(V), np.int64(K),
                               np.int64(op), np.float64(sc), np.float64(a), np.float64(b), bool(has_w))
