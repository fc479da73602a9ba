"""Kernel factories: one mergeable per-row accumulator per op, four launch shapes.

Every op is an *accumulator*: a per-thread state tuple (for log-sum-exp style ops
``(m, s, ...)``: running max, ``sum exp(x - m)``, companion sums), a ``pre`` step that moves
the running max to a chunk's max (rescaling the sums by ``exp(m_old - m_new)``), an
``elem`` step folding one value in, an exact ``merge`` of two states (rescale the one with
the smaller max and add; a state whose max is ``-inf`` is empty and never gives
``exp(-inf - -inf)``), and a ``finish`` that applies the edge-case rules of
``fastdiv.reference``.  Sums are kept *relative to the running max*
(``w = sum e_j (x_j - m)``), which costs one multiply-add when the max moves and keeps
entropies / KL accurate when logits sit far from zero.  Chunk updates are generated
(``gen_chunk``) fully unrolled: LLVM does not always unroll a loop over a tuple, and a
tuple indexed at run time compiles to a switch per element.

Launch shapes (``kernels.py`` picks one from V at launch time):

* ``tile``   tiny V (C51: V = 51): a block stages T consecutive rows -- one contiguous
  range of the flat input -- in shared memory with coalesced 16-byte loads, then each
  thread reduces one row from shared memory (max pass, then one exp per value): no
  shuffles, every lane busy, odd row strides bank-conflict free (even V: rotated start).
* ``small``  V <= 8 * 32 when the tile does not fit: G <= 32 lanes per row, 8 strided
  values per lane in registers, shuffle max then shuffle sum.
* ``group``  medium V: one warp per row, online chunked update over 16-byte loads.
* ``block``  large V: one block per row (or per column slice of a row, merged by a
  second tiny kernel when there are few rows), online update over 16-byte loads
  (``ld.global.nc.v4``, ``unroll`` in flight per input and thread), warp shuffle merge,
  then a shared-memory merge across warps.

Indices are 64-bit throughout.  Block sizes are launch parameters, never compiled in,
so tests can patch them small.
"""
from __future__ import annotations

import linecache
import math

import numpy as np
from numba import cuda, float32, float64, int64, uint64

from . import _device as D

#: float64 KL from logits: rows whose one-pass KL is below this times the size of the terms it
#: subtracts are recomputed without cancellation (fastdiv/_numba/kernels.py, KL_EXACT_BELOW)
KL_EXACT_BELOW = 1e-3
#: values per lane in the small-V kernel (compiled in; ``SMALL_MAX_V = 32 * SMALL_K``)
SMALL_K = 8
#: 16-byte loads in flight per thread while the tile kernel stages rows in shared memory
TILE_UNROLL = 4


def _dj(fn):
    if D.SIM:  # plain Python: the simulator's device-function wrapper is slow
        return fn
    return cuda.jit(device=True, forceinline=True)(fn)


# ------------------------------------------------------------------------ input kinds


class Kind:
    """How to read one input dtype: accumulation type, vector width and the loaders."""

    def __init__(self, name):
        self.name = name
        self.acc = np.float64 if name == "f64" else np.float32
        self.vw = {"f32": 4, "f64": 2, "f16": 8, "bf16": 8}[name]
        self.sload, self.vload = _LOADERS[name]()


def _loaders_f32():
    bits = D.bits_to_f32
    ld = D.ld16_u32x4

    @_dj
    def sload(a, i):
        return a[i]

    @_dj
    def vload(a, i):
        w = ld(a, i)
        return (bits(w[0]), bits(w[1]), bits(w[2]), bits(w[3]))

    return sload, vload


def _loaders_f64():
    ld = D.ld16_f64x2

    @_dj
    def sload(a, i):
        return a[i]

    @_dj
    def vload(a, i):
        return ld(a, i)

    return sload, vload


def _loaders_f16():
    ld = D.ld16_u32x4
    hp = D.half_pair

    @_dj
    def sload(a, i):
        return float32(a[i])

    @_dj
    def vload(a, i):
        w = ld(a, i)
        h0 = hp(w[0])
        h1 = hp(w[1])
        h2 = hp(w[2])
        h3 = hp(w[3])
        return (h0[0], h0[1], h1[0], h1[1], h2[0], h2[1], h3[0], h3[1])

    return sload, vload


def _loaders_bf16():
    ld = D.ld16_u32x4
    bits = D.bits_to_f32

    @_dj
    def sload(a, i):
        return bits((int64(a[i]) & 0xFFFF) << 16)

    @_dj
    def vload(a, i):
        w = ld(a, i)
        return (
            bits(int64(w[0]) << 16), bits(int64(w[0]) & 0xFFFF0000),
            bits(int64(w[1]) << 16), bits(int64(w[1]) & 0xFFFF0000),
            bits(int64(w[2]) << 16), bits(int64(w[2]) & 0xFFFF0000),
            bits(int64(w[3]) << 16), bits(int64(w[3]) & 0xFFFF0000),
        )

    return sload, vload


_LOADERS = {"f32": _loaders_f32, "f64": _loaders_f64, "f16": _loaders_f16, "bf16": _loaders_bf16}


# ---------------------------------------------------------------- state-tuple helpers


def _state_helpers(ns):
    """shfl / load / store for a state tuple of ``ns`` values (arrays indexed ``[i, k]``)."""
    sh = D.shfl_xor
    if ns == 1:

        @_dj
        def shfl(st, off):
            return (sh(st[0], off),)

        @_dj
        def load(a, i):
            return (a[i, 0],)

    elif ns == 2:

        @_dj
        def shfl(st, off):
            return (sh(st[0], off), sh(st[1], off))

        @_dj
        def load(a, i):
            return (a[i, 0], a[i, 1])

    elif ns == 3:

        @_dj
        def shfl(st, off):
            return (sh(st[0], off), sh(st[1], off), sh(st[2], off))

        @_dj
        def load(a, i):
            return (a[i, 0], a[i, 1], a[i, 2])

    elif ns == 6:

        @_dj
        def shfl(st, off):
            return (
                sh(st[0], off), sh(st[1], off), sh(st[2], off),
                sh(st[3], off), sh(st[4], off), sh(st[5], off),
            )

        @_dj
        def load(a, i):
            return (a[i, 0], a[i, 1], a[i, 2], a[i, 3], a[i, 4], a[i, 5])

    elif ns == 7:

        @_dj
        def shfl(st, off):
            return (
                sh(st[0], off), sh(st[1], off), sh(st[2], off), sh(st[3], off),
                sh(st[4], off), sh(st[5], off), sh(st[6], off),
            )

        @_dj
        def load(a, i):
            return (a[i, 0], a[i, 1], a[i, 2], a[i, 3], a[i, 4], a[i, 5], a[i, 6])

    else:  # pragma: no cover
        raise ValueError(ns)

    if D.SIM:  # one emulated exchange for the whole tuple (same result, fewer barriers)

        def shfl(st, off):  # noqa: F811
            return tuple(sh(st, off))

    @_dj
    def store(a, i, st):
        for k in range(len(st)):
            a[i, k] = st[k]

    return shfl, load, store


# ------------------------------------------------------------------------- the ops


class Op:
    """Namespace of device functions and constants describing one accumulator.

    ``pre(st, cx, cz)`` moves the running maxima to a chunk's maxima (rescaling the sums),
    ``refs(st)`` gives the reference points exps are taken against, ``elem(st, r, x, z, j,
    ...)`` folds one value (column ``j``) in; ``_gen_chunk`` writes these out unrolled.
    """

    NIN = 1  # inputs read per element (x, or x and z)
    NMAX = 1  # running maxima (0, 1 or 2): what the small kernel pre-reduces
    NS = 2  # state length
    PERCOL = False  # elem reads per-column data (weights): vectors are not concatenated
    USES_TARGET = False


def _consts(acc):
    c = acc
    return dict(
        NEG_INF=c(-np.inf), INF=c(np.inf), NAN=c(np.nan), ZERO=c(0.0), ONE=c(1.0),
        NEG_BIG=c(-1e30),
    )


def make_op(name, kind, has_w):
    acc = kind.acc
    K = _consts(acc)
    NEG_INF, INF, NAN, ZERO, ONE, NEG_BIG = (K[k] for k in ("NEG_INF", "INF", "NAN", "ZERO", "ONE", "NEG_BIG"))
    fexp = D.exp_f64 if acc is np.float64 else D.exp_f32
    flog = D.log_any if acc is np.float64 else D.log_f32  # per-element log (probs inputs)
    LOG = D.log_any  # precise log, once per row
    fmax = D.fmax
    fmin = D.fmin
    sload = kind.sload
    HAS_W = bool(has_w)

    @_dj
    def safe(m):
        # the reference point exps are taken against: m when finite, else 0
        return m if (m > NEG_INF and m < INF) else ZERO

    @_dj
    def refs1(st):
        return (safe(st[0]), ZERO)

    @_dj
    def shift_sw(s, w, d):
        # (s, w) = (sum e_j, sum e_j t_j) with t_j = x_j - m, moved to the max m - d (d <= 0):
        # every e_j scales by exp(d), every t_j grows by d
        f = fexp(d)
        return (f * s, f * (w + d * s))

    @_dj
    def shift_su(s, U, C, d):
        # (s, U) = (sum e_j, sum c_j t_j) with C = sum c_j, moved to the max m - d (d <= 0)
        return (s * fexp(d), U + d * C)

    @_dj
    def log_kr(k, r):
        # log(k + r) as log k + log1p(r / k), k >= 1 the entries equal to the max (each
        # exactly exp(0) = 1): a row dominated by its max keeps its tiny r ([0, -40]: 4e-18)
        return LOG(k) + math.log1p(r / k)

    # The normaliser log s of an lse state: (m, k, r) for lse / ce_hard (log_kr keeps a tiny r),
    # (m, s, ...) for the smoothing / soft-target state.  NaN when the row has a NaN.
    if name in ("lse", "ce_hard"):

        @_dj
        def log_s(st):
            return log_kr(st[1], st[2])

        @_dj
        def has_nan(st):
            return st[2] != st[2]

    else:

        @_dj
        def log_s(st):
            return LOG(st[1])

        @_dj
        def has_nan(st):
            return st[1] != st[1]

    @_dj
    def hard_nll(st, row, x, tgt, wgt, V, ign):
        """The class-index part of cross-entropy from an lse state ``(m, ...)``:
        ``(done, w_t, lse - x_t)``; when ``done`` the row's value is already decided and is
        the second item (0 for an ignored row, NaN for a bad target or a NaN / +inf row)."""
        t = tgt[row]
        if t == ign:
            return (True, ZERO, ZERO)
        if t < 0 or t >= V:  # unvalidated device targets: NaN, never an out-of-bounds read
            return (True, NAN, ZERO)
        m = st[0]
        if has_nan(st) or m == INF:  # NaN / +inf rows: NaN whatever the weights
            return (True, NAN, ZERO)
        wt = acc(wgt[t]) if HAS_W else ONE
        if m == NEG_INF:
            nll = INF
        else:
            nll = (m - sload(x, int64(row) * V + t)) + log_s(st)   # (m - x_t) first: exact cancellation
        return (False, wt, nll)


    op = Op()
    op.name = name
    op.PADX = NEG_INF
    op.PADZ = NEG_INF
    op.NEG_INF = NEG_INF

    # ---------------------------------------------------------------- log-sum-exp
    if name in ("lse", "ce_hard"):
        # state (m, k, r): sum exp(x - m) = k + r, k the entries equal to the reference m
        # (each exactly exp(0) = 1) counted apart from the sum r of the others, so that a row
        # dominated by its max keeps r's relative precision (see log_kr)
        op.NS, op.NMAX = 3, 1

        @_dj
        def init():
            return (NEG_INF, ZERO, ZERO)

        @_dj
        def seed(mx, mz):
            return (mx, ZERO, ZERO)

        @_dj
        def pre(st, cx, cz):
            m = st[0]
            k = st[1]
            r = st[2]
            if cx > m:
                if m > NEG_INF:
                    r = (k + r) * fexp(m - safe(cx))
                    k = ZERO
                m = cx
            return (m, k, r)

        refs = refs1

        @_dj
        def elem(st, r, x, z, j, wgt, jend, p0, p1):
            t = x - r[0]
            if t == ZERO:
                return (st[0], st[1] + ONE, st[2])
            return (st[0], st[1], st[2] + fexp(t))   # NaN enters r

        @_dj
        def merge(a, b):
            ma = a[0]
            ka = a[1]
            ra = a[2]
            mb = b[0]
            kb = b[1]
            rb = b[2]
            M = ma if ma > mb else mb
            Ms = safe(M)
            if ma > NEG_INF and ma < M:
                ra = (ka + ra) * fexp(ma - Ms)
                ka = ZERO
            if mb > NEG_INF and mb < M:
                rb = (kb + rb) * fexp(mb - Ms)
                kb = ZERO
            return (M, ka + kb, ra + rb)

        @_dj
        def add(a, b):
            return (a[0], a[1] + b[1], a[2] + b[2])

        if name == "lse":

            @_dj
            def finish(st, row, x, tgt, wgt, V, ign, p0, p1):
                m = st[0]
                r = st[2]
                if r != r:
                    return NAN
                if m == INF:
                    return INF
                if m == NEG_INF:
                    return NEG_INF
                return m + log_kr(st[1], r)

        else:  # hard-label CE without label smoothing: lse and x[t] only
            op.USES_TARGET = True

            @_dj
            def finish(st, row, x, tgt, wgt, V, ign, p0, p1):
                done, wt, nll = hard_nll(st, row, x, tgt, wgt, V, ign)
                if done:
                    return wt
                a = ZERO if wt == ZERO else wt * nll
                return a * (ONE - p0)   # no smoothing here: p0 = eps = 0

    # ------------------------------------------------------------- entropy (logits)
    elif name == "entropy_logits":
        op.NS, op.NMAX = 3, 1

        @_dj
        def init():
            return (NEG_INF, ZERO, ZERO)

        @_dj
        def seed(mx, mz):
            return (mx, ZERO, ZERO)

        @_dj
        def pre(st, cx, cz):
            # w = sum_j e_j (x_j - m): when m moves, w' = f (w + (m_old - m_new) s)
            m = st[0]
            s = st[1]
            w = st[2]
            if cx > m:
                if m > NEG_INF:
                    s, w = shift_sw(s, w, m - safe(cx))
                m = cx
            return (m, s, w)

        refs = refs1

        @_dj
        def elem(st, r, x, z, j, wgt, jend, p0, p1):
            t = x - r[0]
            e = fexp(t)
            return (st[0], st[1] + e, st[2] + e * fmax(t, NEG_BIG))

        @_dj
        def merge(a, b):
            ma = a[0]
            sa = a[1]
            wa = a[2]
            mb = b[0]
            sb = b[1]
            wb = b[2]
            M = ma if ma > mb else mb
            Ms = safe(M)
            if ma > NEG_INF:
                sa, wa = shift_sw(sa, wa, ma - Ms)
            if mb > NEG_INF:
                sb, wb = shift_sw(sb, wb, mb - Ms)
            return (M, sa + sb, wa + wb)

        @_dj
        def add(a, b):
            return (a[0], a[1] + b[1], a[2] + b[2])

        @_dj
        def finish(st, row, x, tgt, wgt, V, ign, p0, p1):
            m = st[0]
            s = st[1]
            w = st[2]
            if s != s or m == INF:
                return NAN
            if m == NEG_INF:
                return ZERO
            return LOG(s) - w / s

    # ------------------------------------------------------------------ KL (logits)
    elif name == "kl_logits":
        # state (mx, sx, w, mz, sz, vm[, mv]); float64 adds mv, how far this state's references
        # rose while sums were carried (the rescales' error, see finish)
        F64 = acc is np.float64
        op.NS, op.NMAX, op.NIN = (7 if F64 else 6), 2, 2

        if F64:

            @_dj
            def init():
                return (NEG_INF, ZERO, ZERO, NEG_INF, ZERO, NEG_INF, ZERO)

            @_dj
            def seed(mx, mz):
                return (mx, ZERO, ZERO, mz, ZERO, NEG_INF, ZERO)

            @_dj
            def moved(st, mx, mz):
                # st's moves plus those to the references (mx, mz)
                mv = st[6]
                if st[0] > NEG_INF and mx > st[0]:
                    mv += mx - st[0]
                if st[3] > NEG_INF and mz > st[3]:
                    mv += mz - st[3]
                return mv

        else:

            @_dj
            def init():
                return (NEG_INF, ZERO, ZERO, NEG_INF, ZERO, NEG_INF)

            @_dj
            def seed(mx, mz):
                return (mx, ZERO, ZERO, mz, ZERO, NEG_INF)

            @_dj
            def moved(st, mx, mz):
                return ZERO

        @_dj
        def pre(st, cx, cz):
            # w = sum_j ex_j ((x_j - mx) - (z_j - mz))
            mx = st[0]
            sx = st[1]
            w = st[2]
            mz = st[3]
            sz = st[4]
            mv = moved(st, cx, cz)
            if cx > mx:
                if mx > NEG_INF:
                    sx, w = shift_sw(sx, w, mx - safe(cx))
                mx = cx
            if cz > mz:
                if mz > NEG_INF:
                    nz = safe(cz)
                    sz = sz * fexp(mz - nz)
                    w = w + (nz - mz) * sx
                mz = cz
            if F64:
                return (mx, sx, w, mz, sz, st[5], mv)
            return (mx, sx, w, mz, sz, st[5])

        @_dj
        def refs(st):
            return (safe(st[0]), safe(st[3]))

        @_dj
        def elem(st, r, x, z, j, wgt, jend, p0, p1):
            tx = x - r[0]
            tz = z - r[1]
            ex = fexp(tx)
            d = tx - tz  # +inf: P has mass where Q has none
            if F64:
                return (st[0], st[1] + ex, st[2] + ex * fmax(d, NEG_BIG), st[3], st[4] + fexp(tz), fmax(st[5], d),
                        st[6])
            return (st[0], st[1] + ex, st[2] + ex * fmax(d, NEG_BIG), st[3], st[4] + fexp(tz), fmax(st[5], d))

        @_dj
        def merge(a, b):
            mxa = a[0]
            sxa = a[1]
            wa = a[2]
            mza = a[3]
            sza = a[4]
            mxb = b[0]
            sxb = b[1]
            wb = b[2]
            mzb = b[3]
            szb = b[4]
            Mz = mza if mza > mzb else mzb
            Mzs = safe(Mz)
            if mza > NEG_INF:
                sza = sza * fexp(mza - Mzs)
                wa = wa + (Mzs - mza) * sxa
            if mzb > NEG_INF:
                szb = szb * fexp(mzb - Mzs)
                wb = wb + (Mzs - mzb) * sxb
            Mx = mxa if mxa > mxb else mxb
            Mxs = safe(Mx)
            if mxa > NEG_INF:
                sxa, wa = shift_sw(sxa, wa, mxa - Mxs)
            if mxb > NEG_INF:
                sxb, wb = shift_sw(sxb, wb, mxb - Mxs)
            if F64:
                # the larger of the two states' moves (each carries its own sums' error)
                mv = fmax(moved(a, Mx, Mz), moved(b, Mx, Mz))
                return (Mx, sxa + sxb, wa + wb, Mz, sza + szb, fmax(a[5], b[5]), mv)
            return (Mx, sxa + sxb, wa + wb, Mz, sza + szb, fmax(a[5], b[5]))

        @_dj
        def add(a, b):
            if F64:
                return (a[0], a[1] + b[1], a[2] + b[2], a[3], a[4] + b[4], fmax(a[5], b[5]), fmax(a[6], b[6]))
            return (a[0], a[1] + b[1], a[2] + b[2], a[3], a[4] + b[4], fmax(a[5], b[5]))

        @_dj
        def finish(st, row, x, tgt, wgt, V, ign, p0, p1):
            mx = st[0]
            sx = st[1]
            w = st[2]
            mz = st[3]
            sz = st[4]
            vm = st[5]
            if sx != sx or sz != sz or mx == INF or mz == INF:
                return NAN
            if mx == NEG_INF:
                return ZERO
            if vm == INF or mz == NEG_INF:
                return INF
            wsx = w / sx
            lsx = LOG(sx)
            lsz = LOG(sz)
            d = wsx - lsx + lsz
            if F64:
                # the one pass subtracts terms of order L and carries a few eps L; a KL below
                # KL_EXACT_BELOW L (nearly equal rows) is marked -inf (never a KL) for
                # divergences' exact pass (kernels.kl_logits), as the CPU backends redo it
                L = ONE + abs(wsx) + acc(2.0) * (abs(lsx) + abs(lsz)) + st[6]
                if d < acc(KL_EXACT_BELOW) * L:
                    return NEG_INF
            return d

    # ------------------------------------------------- literal sums (probs / log_probs)
    elif name in ("entropy_log_probs", "entropy_probs", "kl_log_probs", "kl_probs"):
        op.NS, op.NMAX = 1, 0
        op.NIN = 2 if name.startswith("kl") else 1

        @_dj
        def init():
            return (ZERO,)

        @_dj
        def seed(mx, mz):
            return (ZERO,)

        @_dj
        def pre(st, cx, cz):
            return st

        @_dj
        def refs(st):
            return (ZERO, ZERO)

        @_dj
        def merge(a, b):
            return (a[0] + b[0],)

        add = merge

        if name == "entropy_log_probs":

            @_dj
            def elem(st, r, x, z, j, wgt, jend, p0, p1):
                e = fexp(x)
                return (st[0] + (e * x if e != ZERO else ZERO),)

        elif name == "entropy_probs":
            op.PADX = ZERO

            @_dj
            def elem(st, r, x, z, j, wgt, jend, p0, p1):
                # term by term scipy.special.entr: 0 log 0 = 0; p < 0 (outside the domain) is
                # entr = -inf, i.e. +inf in sum p log p; NaN stays NaN
                if x > ZERO:
                    return (st[0] + x * flog(x),)
                return (st[0] + (ZERO if x == ZERO else (INF if x < ZERO else x)),)

        elif name == "kl_log_probs":
            op.PADZ = ZERO

            @_dj
            def elem(st, r, x, z, j, wgt, jend, p0, p1):
                e = fexp(x)
                d = x - z
                if e != ZERO:
                    t = e * d
                else:  # p = 0 (or underflow): 0, unless P has mass where Q has none
                    t = INF if d == INF else ZERO
                return (st[0] + (t if z == z else z),)  # NaN in Q poisons the row

        else:  # kl_probs
            op.PADX = ZERO
            op.PADZ = ONE

            TINY = acc(np.finfo(acc).tiny)
            HALF = acc(0.5)
            TWO = acc(2.0)

            @_dj
            def elem(st, r, x, z, j, wgt, jend, p0, p1):
                # term by term scipy.special.rel_entr: 0 where p = 0 <= q; +inf where p or q is
                # negative (outside the domain) or p > 0 = q; NaN for NaN (even where p = 0).
                # log(p / q) is log1p((p - q) / q) where p / q is in [1/2, 2] (p - q exact:
                # nearly equal p and q keep the term's relative precision, where log p - log q
                # cancels), log(p / q) elsewhere, log p - log q where p / q over/underflows
                if x != x or z != z:
                    return (st[0] + (x + z),)
                if x > ZERO and z > ZERO:
                    if x == INF or z == INF:
                        t = NAN if (x == INF and z == INF) else (INF if x == INF else NEG_INF)
                    else:
                        rr = x / z
                        if rr >= HALF and rr <= TWO:
                            t = x * math.log1p((x - z) / z)
                        elif rr >= TINY and rr < INF:
                            t = x * LOG(rr)
                        else:
                            t = x * (LOG(x) - LOG(z))
                    return (st[0] + t,)
                return (st[0] + (ZERO if (x == ZERO and z >= ZERO) else INF),)

        if name.startswith("entropy"):

            @_dj
            def finish(st, row, x, tgt, wgt, V, ign, p0, p1):
                return -st[0]

        else:

            @_dj
            def finish(st, row, x, tgt, wgt, V, ign, p0, p1):
                return st[0]

    # ------------------------------------ weighted sums: label smoothing, soft targets
    elif name in ("ce_hard_smooth", "ce_soft"):
        # state (m, s, C, U, Ep, En): C = sum c_j, U = sum c_j (x_j - m) over unmasked j,
        # Ep / En = largest / smallest coefficient on a masked (-inf) class.
        op.NS, op.NMAX, op.PERCOL = 6, 1, True
        soft = name == "ce_soft"
        op.NIN = 2 if soft else 1
        op.PADZ = ZERO

        if soft:

            @_dj
            def coef(zk, j, wgt, jend, p0, p1):
                if j >= jend:
                    return ZERO
                q = p0 * zk + p1
                return q * acc(wgt[j]) if HAS_W else q

        else:

            @_dj
            def coef(zk, j, wgt, jend, p0, p1):
                if j >= jend:
                    return ZERO
                return acc(wgt[j]) if HAS_W else ONE

        @_dj
        def init():
            return (NEG_INF, ZERO, ZERO, ZERO, ZERO, ZERO)

        @_dj
        def seed(mx, mz):
            return (mx, ZERO, ZERO, ZERO, ZERO, ZERO)

        @_dj
        def pre(st, cx, cz):
            m = st[0]
            s = st[1]
            U = st[3]
            if cx > m:
                if m > NEG_INF:
                    s, U = shift_su(s, U, st[2], m - safe(cx))
                m = cx
            return (m, s, st[2], U, st[4], st[5])

        refs = refs1

        @_dj
        def elem(st, r, x, z, j, wgt, jend, p0, p1):
            cj = coef(z, j, wgt, jend, p0, p1)
            t = x - r[0]
            cm = cj if t == NEG_INF else ZERO
            return (st[0], st[1] + fexp(t), st[2] + cj, st[3] + cj * fmax(t, NEG_BIG),
                    fmax(st[4], cm), fmin(st[5], cm))

        @_dj
        def merge(a, b):
            ma = a[0]
            sa = a[1]
            Ua = a[3]
            mb = b[0]
            sb = b[1]
            Ub = b[3]
            M = ma if ma > mb else mb
            Ms = safe(M)
            if ma > NEG_INF:
                sa, Ua = shift_su(sa, Ua, a[2], ma - Ms)
            if mb > NEG_INF:
                sb, Ub = shift_su(sb, Ub, b[2], mb - Ms)
            return (M, sa + sb, a[2] + b[2], Ua + Ub, fmax(a[4], b[4]), fmin(a[5], b[5]))

        @_dj
        def add(a, b):
            return (a[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], fmax(a[4], b[4]), fmin(a[5], b[5]))

        @_dj
        def smooth(st):
            # -sum_{c_j != 0} c_j log q_j, with reference.py's rules
            m = st[0]
            s = st[1]
            C = st[2]
            U = st[3]
            Ep = st[4]
            En = st[5]
            if C != C or U != U or s != s or m == INF:  # NaN / +inf rows: NaN whatever c
                return NAN
            if Ep > ZERO and En < ZERO:
                return NAN
            if Ep > ZERO:
                return INF
            if En < ZERO:
                return NEG_INF
            if m == NEG_INF:
                return ZERO
            return C * LOG(s) - U

        if soft:

            @_dj
            def finish(st, row, x, tgt, wgt, V, ign, p0, p1):
                return smooth(st)

        else:
            op.USES_TARGET = True

            @_dj
            def finish(st, row, x, tgt, wgt, V, ign, p0, p1):
                # p0 = eps, p1 = eps / V
                done, wt, nll = hard_nll(st, row, x, tgt, wgt, V, ign)
                if done:
                    return wt
                # a zero-weight term (w_t = 0, or eps = 1) is exactly 0, never 0 * inf
                a = ZERO if (wt == ZERO or p0 >= ONE) else wt * nll * (ONE - p0)
                return a + p1 * smooth(st)

    else:  # pragma: no cover
        raise ValueError(f"unknown op {name!r}")

    if op.USES_TARGET:

        @_dj
        def active(row, tgt, ign):
            return tgt[row] != ign

    else:

        @_dj
        def active(row, tgt, ign):
            return True

    op.init, op.seed, op.pre, op.refs, op.elem = init, seed, pre, refs, elem
    op.merge, op.add, op.finish, op.active = merge, add, finish, active
    op.shfl, op.load, op.store = _state_helpers(op.NS)
    return op


_gen_count = [0]


def _exec(src, ns, fname):
    """Compile generated source (registered with linecache so tracebacks show it)."""
    _gen_count[0] += 1
    filename = f"<fastdiv-cuda-gen-{_gen_count[0]}>"
    linecache.cache[filename] = (len(src), None, src.splitlines(True), filename)
    exec(compile(src, filename, "exec"), ns)
    return _dj(ns[fname])


def gen_maxv(n, NEG_INF):
    """``maxv(v)``: NaN-ignoring max of an ``n``-tuple, written out (no loop, no indexing)."""
    body = ["def maxv(v):", "    c = fmax(NEG_INF, v[0])"]
    body += [f"    c = fmax(c, v[{k}])" for k in range(1, n)]
    body.append("    return c")
    return _exec("\n".join(body) + "\n", {"fmax": D.fmax, "NEG_INF": NEG_INF}, "maxv")


def gen_chunk(op, n):
    """``chunk(st, xv, zv, wgt, j0, js, jend, p0, p1)`` folding ``n`` values, unrolled.

    Value ``k`` sits in column ``j0 + k * js``.  (A ``for k in range(len(xv))`` loop over a
    tuple is not always unrolled by LLVM; indexing a tuple with a run-time ``k`` then
    compiles to a switch per element.)
    """
    lines = ["def chunk(st, xv, zv, wgt, j0, js, jend, p0, p1):"]
    if op.NMAX >= 1:
        lines.append("    cx = maxx(xv)")
    else:
        lines.append("    cx = NEG_INF")
    lines.append("    cz = maxz(zv)" if op.NMAX == 2 else "    cz = NEG_INF")
    lines.append("    st = pre(st, cx, cz)")
    lines.append("    r = refs(st)")
    for k in range(n):
        col = "j0" if k == 0 else f"j0 + {k} * js"
        lines.append(f"    st = elem(st, r, xv[{k}], zv[{k}], {col}, wgt, jend, p0, p1)")
    lines.append("    return st")
    mx = gen_maxv(n, op.NEG_INF)
    ns = {"maxx": mx, "maxz": mx, "pre": op.pre, "refs": op.refs, "elem": op.elem, "NEG_INF": op.NEG_INF}
    return _exec("\n".join(lines) + "\n", ns, "chunk")


def gen_accumulate(op, kind, unroll, init, chunk1, chunkv):
    """``accumulate(x, z, wgt, e0, e1, rb, lane, nl, vec_ok, V, p0, p1)``: the state of the
    elements ``[e0, e1)`` of flat arrays seen by lane ``lane`` of ``nl`` cooperating lanes.

    Scalar loads for the unaligned head and tail (or everything when ``vec_ok`` is false),
    and in between ``unroll`` 16-byte loads per input issued before any use; values of the
    ``unroll`` vectors are folded as one chunk (one max / rescale test) unless the op reads
    per-column data.
    """
    VW = kind.vw
    U = int(unroll)
    two = op.NIN == 2
    L = []
    a = L.append
    a("def accumulate(x, z, wgt, e0, e1, rb, lane, nl, vec_ok, V, p0, p1):")
    a("    st = init()")
    a("    if vec_ok:")
    a(f"        a0 = (e0 + {VW - 1}) // {VW} * {VW}")
    a("        if a0 > e1:")
    a("            a0 = e1")
    a(f"        a1 = a0 + (e1 - a0) // {VW} * {VW}")
    a("    else:")
    a("        a0 = e1")
    a("        a1 = e1")
    a("    for e in range(e0 + lane, a0, nl):")
    a("        xv = (sload(x, e),)")
    a("        zv = (sload(z, e),)" if two else "        zv = xv")
    a("        st = chunk1(st, xv, zv, wgt, e - rb, 1, V, p0, p1)")
    a(f"    step = int64(nl) * {VW}")
    a(f"    i = a0 + int64(lane) * {VW}")
    if U > 1:
        a(f"    while i + {U - 1} * step < a1:")
        for u in range(U):
            off = "" if u == 0 else f" + {u} * step"
            a(f"        x{u} = vload(x, i{off})")
        for u in range(U):
            off = "" if u == 0 else f" + {u} * step"
            a(f"        z{u} = vload(z, i{off})" if two else f"        z{u} = x{u}")
        if op.PERCOL:
            for u in range(U):
                off = "" if u == 0 else f" + {u} * step"
                a(f"        st = chunkv(st, x{u}, z{u}, wgt, i{off} - rb, 1, V, p0, p1)")
        else:
            xs = " + ".join(f"x{u}" for u in range(U))
            zs = " + ".join(f"z{u}" for u in range(U))
            a(f"        st = chunku(st, {xs}, {zs}, wgt, i - rb, 1, V, p0, p1)")
        a(f"        i += {U} * step")
    a("    while i < a1:")
    a("        xa = vload(x, i)")
    a("        za = vload(z, i)" if two else "        za = xa")
    a("        st = chunkv(st, xa, za, wgt, i - rb, 1, V, p0, p1)")
    a("        i += step")
    a("    for e in range(a1 + lane, e1, nl):")
    a("        xv = (sload(x, e),)")
    a("        zv = (sload(z, e),)" if two else "        zv = xv")
    a("        st = chunk1(st, xv, zv, wgt, e - rb, 1, V, p0, p1)")
    a("    return st")
    ns = dict(init=init, chunk1=chunk1, chunkv=chunkv, sload=kind.sload, vload=kind.vload, int64=int64)
    if U > 1 and not op.PERCOL:
        ns["chunku"] = gen_chunk(op, U * VW)
    return _exec("\n".join(L) + "\n", ns, "accumulate")


def gen_copy_tile(kind, unroll):
    """``copy_tile(a, sh, off, a0, e0, e1, total, tid, nthr, vec_ok)``: decode the flat
    elements ``[a0, e1)`` of ``a`` into ``sh[off + e - a0]`` (``a0`` = ``e0`` rounded down to
    a 16-byte boundary when ``vec_ok``), ``unroll`` 16-byte loads in flight per thread.
    Vector loads never pass the array's end (``total`` elements); the last partial vector
    is read element by element.  Up to one vector of elements past ``e1`` may be written.
    """
    VW = kind.vw
    U = int(unroll)
    L = []
    a = L.append
    a("def copy_tile(a, sh, off, a0, e0, e1, total, tid, nthr, vec_ok):")
    a("    if vec_ok:")
    a(f"        step = int64(nthr) * {VW}")
    a(f"        g = a0 + int64(tid) * {VW}")
    a(f"        gv = total - {VW - 1}")
    a("        if gv > e1:")
    a("            gv = e1")
    if U > 1:
        a(f"        while g + {U - 1} * step < gv:")
        for u in range(U):
            a(f"            v{u} = vload(a, g{'' if u == 0 else f' + {u} * step'})")
        for u in range(U):
            base = f"off + g - a0{'' if u == 0 else f' + {u} * step'}"
            a(f"            o = uint64({base})")
            for k in range(VW):
                a(f"            sh[o{'' if k == 0 else f' + K{k}'}] = v{u}[{k}]")
        a(f"            g += {U} * step")
    a("        while g < gv:")
    a("            v0 = vload(a, g)")
    a("            o = uint64(off + g - a0)")
    for k in range(VW):
        a(f"            sh[o{'' if k == 0 else f' + K{k}'}] = v0[{k}]")
    a("            g += step")
    a("        if g < e1:")
    a(f"            for k in range({VW}):")
    a("                if g + k < total:")
    a("                    sh[off + g + k - a0] = sload(a, g + k)")
    a("    else:")
    a("        for e in range(e0 + tid, e1, nthr):")
    a("            sh[off + e - a0] = sload(a, e)")
    ns = dict(vload=kind.vload, sload=kind.sload, int64=int64, uint64=uint64)
    ns.update({f"K{k}": np.uint64(k) for k in range(VW)})
    return _exec("\n".join(L) + "\n", ns, "copy_tile")


# ------------------------------------------------------------------------- kernels


def make_kernels(name, kind_name, has_w, unroll=2):
    """``{"small", "group", "block", "merge"}`` -> kernel for op ``name`` on input kind.

    ``unroll``: 16-byte loads in flight per input and thread in the group / block kernels.
    """
    kind = Kind(kind_name)
    op = make_op(name, kind, has_w)
    ACC = kind.acc
    VW = kind.vw
    NS = op.NS
    NIN = op.NIN
    NMAX = op.NMAX
    PADX = op.PADX
    PADZ = op.PADZ
    sload = kind.sload
    init, seed, merge, add, finish, active = (
        op.init, op.seed, op.merge, op.add, op.finish, op.active,
    )
    shfl, load, store = op.shfl, op.load, op.store
    chunk1 = gen_chunk(op, 1)  # scalar head / tail
    chunkv = gen_chunk(op, VW)  # one 16-byte vector
    chunkk = gen_chunk(op, SMALL_K)  # the small kernel's K strided values
    maxk = gen_maxv(SMALL_K, op.NEG_INF)
    SH = D.shfl_xor
    NEG_INF = ACC(-np.inf)

    accumulate = gen_accumulate(op, kind, unroll, init, chunk1, chunkv)
    @_dj
    def loadk(a, rb, j0, js, n, pad):
        j = j0
        v0 = sload(a, rb + j) if j < n else pad
        j += js
        v1 = sload(a, rb + j) if j < n else pad
        j += js
        v2 = sload(a, rb + j) if j < n else pad
        j += js
        v3 = sload(a, rb + j) if j < n else pad
        j += js
        v4 = sload(a, rb + j) if j < n else pad
        j += js
        v5 = sload(a, rb + j) if j < n else pad
        j += js
        v6 = sload(a, rb + j) if j < n else pad
        j += js
        v7 = sload(a, rb + j) if j < n else pad
        return (v0, v1, v2, v3, v4, v5, v6, v7)

    assert SMALL_K == 8

    @cuda.jit
    def k_small(x, z, tgt, wgt, out, rows, V, G, ign, p0, p1):
        tid = cuda.threadIdx.x
        lane = tid % G
        gpb = cuda.blockDim.x // G
        grp = tid // G
        for r0 in range(int64(cuda.blockIdx.x) * gpb, rows, int64(cuda.gridDim.x) * gpb):
            row = r0 + grp
            rb = row * V
            n = int64(0)
            if row < rows:
                if active(row, tgt, ign):
                    n = V
            xs = loadk(x, rb, lane, G, n, PADX)
            if NIN == 2:
                zs = loadk(z, rb, lane, G, n, PADZ)
            else:
                zs = xs
            if NMAX > 0:
                mx = maxk(xs)
                mz = maxk(zs) if NMAX == 2 else NEG_INF
                off = G >> 1
                while off > 0:
                    o = SH(mx, off)
                    mx = o if o > mx else mx
                    if NMAX == 2:
                        o2 = SH(mz, off)
                        mz = o2 if o2 > mz else mz
                    off >>= 1
                st = seed(mx, mz)
            else:
                st = init()
            st = chunkk(st, xs, zs, wgt, lane, G, n, p0, p1)
            off = G >> 1
            while off > 0:
                st = add(st, shfl(st, off))
                off >>= 1
            if lane == 0 and row < rows:
                out[row] = finish(st, row, x, tgt, wgt, V, ign, p0, p1)

    @cuda.jit
    def k_group(x, z, tgt, wgt, out, rows, V, G, vec_ok, ign, p0, p1):
        tid = cuda.threadIdx.x
        lane = tid % G
        gpb = cuda.blockDim.x // G
        grp = tid // G
        for r0 in range(int64(cuda.blockIdx.x) * gpb, rows, int64(cuda.gridDim.x) * gpb):
            row = r0 + grp
            rb = row * V
            e1 = rb
            if row < rows:
                if active(row, tgt, ign):
                    e1 = rb + V
            st = accumulate(x, z, wgt, rb, e1, rb, lane, G, vec_ok, V, p0, p1)
            off = G >> 1
            while off > 0:
                st = merge(st, shfl(st, off))
                off >>= 1
            if lane == 0 and row < rows:
                out[row] = finish(st, row, x, tgt, wgt, V, ign, p0, p1)

    @cuda.jit
    def k_block(x, z, tgt, wgt, out, part, rows, V, nsplit, clen, vec_ok, ign, p0, p1):
        sh = cuda.shared.array((32, NS), ACC)
        tid = cuda.threadIdx.x
        nthr = cuda.blockDim.x
        lane = tid & 31
        warp = tid >> 5
        nw = (nthr + 31) >> 5
        units = rows * nsplit
        for u in range(int64(cuda.blockIdx.x), units, int64(cuda.gridDim.x)):
            row = u // nsplit
            sp = u - row * nsplit
            rb = row * V
            c0 = sp * clen
            c1 = c0 + clen
            if c1 > V:
                c1 = V
            if not active(row, tgt, ign):
                c1 = c0
            st = accumulate(x, z, wgt, rb + c0, rb + c1, rb, tid, nthr, vec_ok, V, p0, p1)
            off = 16
            while off > 0:
                st = merge(st, shfl(st, off))
                off >>= 1
            if lane == 0:
                store(sh, warp, st)
            cuda.syncthreads()
            if warp == 0:
                st = load(sh, lane) if lane < nw else init()
                off = 16
                while off > 0:
                    st = merge(st, shfl(st, off))
                    off >>= 1
                if lane == 0:
                    if nsplit == 1:
                        out[row] = finish(st, row, x, tgt, wgt, V, ign, p0, p1)
                    else:
                        store(part, u, st)
            cuda.syncthreads()

    @cuda.jit
    def k_merge(part, out, rows, nsplit, x, tgt, wgt, V, ign, p0, p1):
        row = cuda.grid(1)
        if row < rows:
            st = init()
            for k in range(nsplit):
                st = merge(st, load(part, int64(row) * nsplit + k))
            out[row] = finish(st, row, x, tgt, wgt, V, ign, p0, p1)

    copy_tile = gen_copy_tile(kind, TILE_UNROLL)
    ACC_NB = float64 if ACC is np.float64 else float32
    elem, refs = op.elem, op.refs
    fmax = D.fmax

    U1 = np.uint64(1)
    U2 = np.uint64(2)
    U3 = np.uint64(3)
    U4 = np.uint64(4)

    @_dj
    def tile_max(sh, u, end, dz, mx, mz):
        # NaN-ignoring maxima of sh[u:end] (and of sh[u+dz:end+dz] for two inputs), 4 at a time
        while u + U3 < end:
            mx = fmax(fmax(mx, sh[u]), fmax(sh[u + U1], fmax(sh[u + U2], sh[u + U3])))
            if NMAX == 2:
                v = u + dz
                mz = fmax(fmax(mz, sh[v]), fmax(sh[v + U1], fmax(sh[v + U2], sh[v + U3])))
            u += U4
        while u < end:
            mx = fmax(mx, sh[u])
            if NMAX == 2:
                mz = fmax(mz, sh[u + dz])
            u += U1
        return mx, mz

    @_dj
    def tile_pass(st, r, sh, u, end, dz, j, wgt, V, p0, p1):
        # fold sh[u:end] (columns j, j+1, ...) into the state, 4 at a time
        while u + U3 < end:
            v = u + dz
            st = elem(st, r, sh[u], sh[v], j, wgt, V, p0, p1)
            st = elem(st, r, sh[u + U1], sh[v + U1], j + 1, wgt, V, p0, p1)
            st = elem(st, r, sh[u + U2], sh[v + U2], j + 2, wgt, V, p0, p1)
            st = elem(st, r, sh[u + U3], sh[v + U3], j + 3, wgt, V, p0, p1)
            u += U4
            j += 4
        while u < end:
            st = elem(st, r, sh[u], sh[u + dz], j, wgt, V, p0, p1)
            u += U1
            j += 1
        return st

    @cuda.jit
    def k_tile(x, z, tgt, wgt, out, rows, V, T, cap, vec_ok, total, ign, p0, p1):
        # Tiny V: a block stages T consecutive rows (one contiguous range of the flat
        # input) in shared memory with coalesced 16-byte loads, then each thread reduces
        # one row from shared memory: no shuffles, every lane does useful work.
        sh = cuda.shared.array(0, ACC_NB)
        tid = cuda.threadIdx.x
        nthr = cuda.blockDim.x
        skew = int64(1) if V % 2 == 0 else int64(0)  # even V: rotate columns, no bank conflicts
        for r0 in range(int64(cuda.blockIdx.x) * T, rows, int64(cuda.gridDim.x) * T):
            r1 = r0 + T
            if r1 > rows:
                r1 = rows
            e0 = r0 * V
            e1 = r1 * V
            a0 = e0 // VW * VW if vec_ok else e0
            copy_tile(x, sh, 0, a0, e0, e1, total, tid, nthr, vec_ok)
            if NIN == 2:
                copy_tile(z, sh, cap, a0, e0, e1, total, tid, nthr, vec_ok)
            cuda.syncthreads()
            row = r0 + tid
            if tid < T and row < rows:
                # unsigned shared-memory offsets: numba adds no negative-index fix-ups
                b = uint64(row * V - a0)
                dz = uint64(cap) if NIN == 2 else uint64(0)
                j0 = (tid * skew) % V  # columns j0..V-1 then 0..j0-1
                mid = b + uint64(j0)
                end = b + uint64(V)
                if active(row, tgt, ign):
                    if NMAX > 0:
                        mx, mz = tile_max(sh, mid, end, dz, NEG_INF, NEG_INF)
                        mx, mz = tile_max(sh, b, mid, dz, mx, mz)
                        st = seed(mx, mz)
                    else:
                        st = init()
                    r = refs(st)
                    st = tile_pass(st, r, sh, mid, end, dz, j0, wgt, V, p0, p1)
                    st = tile_pass(st, r, sh, b, mid, dz, int64(0), wgt, V, p0, p1)
                else:
                    st = init()
                out[row] = finish(st, row, x, tgt, wgt, V, ign, p0, p1)
            cuda.syncthreads()

    return dict(small=k_small, group=k_group, block=k_block, merge=k_merge, tile=k_tile, op=op, kind=kind)


# ------------------------------------------------------------- device-side reductions

RED_MAX_THREADS = 1024


@cuda.jit
def k_reduce_partial(vals, n, tgt, wgt, has_t, has_w, ign, chunk, part):
    """part[b] = (sum vals[i], sum of the mean's denominator terms) over block b's chunk."""
    shn = cuda.shared.array(RED_MAX_THREADS, float64)
    shd = cuda.shared.array(RED_MAX_THREADS, float64)
    tid = cuda.threadIdx.x
    nthr = cuda.blockDim.x
    b = cuda.blockIdx.x
    start = int64(b) * chunk
    end = start + chunk
    if end > n:
        end = n
    an = float64(0.0)
    ad = float64(0.0)
    for i in range(start + tid, end, nthr):
        an += float64(vals[i])
        if has_t:
            t = tgt[i]
            if t != ign:
                if not has_w:
                    ad += float64(1.0)
                elif t >= 0 and t < wgt.shape[0]:
                    ad += float64(wgt[t])
                else:  # an out-of-range device target: NaN (its row is NaN too), no stray read
                    ad += float64(math.nan)
        else:
            ad += float64(1.0)
    shn[tid] = an
    shd[tid] = ad
    cuda.syncthreads()
    h = nthr >> 1
    while h > 0:  # fixed-order tree: deterministic
        if tid < h:
            shn[tid] += shn[tid + h]
            shd[tid] += shd[tid + h]
        cuda.syncthreads()
        h >>= 1
    if tid == 0:
        part[b, 0] = shn[0]
        part[b, 1] = shd[0]


@cuda.jit
def k_reduce_final(part, nb, out, mean, empty):
    shn = cuda.shared.array(RED_MAX_THREADS, float64)
    shd = cuda.shared.array(RED_MAX_THREADS, float64)
    tid = cuda.threadIdx.x
    nthr = cuda.blockDim.x
    an = float64(0.0)
    ad = float64(0.0)
    for i in range(tid, nb, nthr):
        an += part[i, 0]
        ad += part[i, 1]
    shn[tid] = an
    shd[tid] = ad
    cuda.syncthreads()
    h = nthr >> 1
    while h > 0:
        if tid < h:
            shn[tid] += shn[tid + h]
            shd[tid] += shd[tid + h]
        cuda.syncthreads()
        h >>= 1
    if tid == 0:
        if mean:
            out[0] = shn[0] / shd[0] if shd[0] != 0.0 else empty
        else:
            out[0] = shn[0]


__all__ = ["make_kernels", "k_reduce_partial", "k_reduce_final", "SMALL_K", "RED_MAX_THREADS"]
_ = math  # keep the import (used by device helpers on some numba-cuda versions)
