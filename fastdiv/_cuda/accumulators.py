"""The per-row accumulators: one mergeable state per op, shared by every launch shape.

Every op is an *accumulator*: a per-thread state tuple (for log-sum-exp style ops
``(m, s, ...)``: running max, ``sum exp(x - m)``, companion sums), a ``pre`` step that moves
the running max to a chunk's max (rescaling the sums by ``exp(m_old - m_new)``), an
``elem`` step folding one value in, an exact ``merge`` of two states (rescale the one with
the smaller max and add; a state whose max is ``-inf`` is empty and never gives
``exp(-inf - -inf)``), an ``add`` of two states already on the same maxima, and a ``finish``
that applies the edge-case rules of ``fastdiv.reference``.  Sums are kept *relative to the
running max* (``w = sum e_j (x_j - m)``), which costs one multiply-add when the max moves and
keeps entropies / KL accurate when logits sit far from zero.

The states: log-sum-exp and hard-label CE ``(m, k, r)``, the ``k`` entries equal to ``m``
(each exactly ``exp(0) = 1``) counted apart from the sum ``r`` of the others, so that a
confident row keeps ``r``'s relative precision (``log(k + r) = log k + log1p(r / k)``);
entropy ``(m, s, w)``; KL from logits ``(mx, sx, w, mz, sz, vm)``, in float64 with how far
the maxima moved, so that nearly equal rows are marked ``-inf`` for the exact pass of
``divergences.py`` (``KL_EXACT_BELOW``); the literal sums of probabilities / log-probabilities
a single sum; label smoothing and soft targets ``(m, s, C, U, Ep, En)``.  ``_state_helpers``
gives each state length its warp shuffle and its shared-memory load / store.
"""
from __future__ import annotations

import math

import numpy as np
from numba import int64

from .. import _registry
from . import intrinsics as D
from .intrinsics import inline as _dj



# ---------------------------------------------------------------- state-tuple helpers


def _shfl_whole(st, off):
    return tuple(D.shfl_xor(st, off))


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

    @_dj
    def store(a, i, st):
        for k in range(len(st)):
            a[i, k] = st[k]

    # the simulator: one emulated exchange for the whole tuple (same result, fewer barriers)
    return (_shfl_whole if D.SIM else shfl), load, store


# ------------------------------------------------------------------------- the ops


class Op:
    """Namespace of device functions and constants describing one accumulator.

    ``pre(st, cx, cz)`` moves the running maxima to a chunk's maxima (rescaling the sums),
    ``refs(st)`` gives the reference points exps are taken against, ``elem(st, r, x, z, j,
    ...)`` folds one value (column ``j``) in; ``codegen.gen_chunk`` writes these out unrolled.
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
            # (apart from ce_hard_smooth: this state is cheaper and keeps a confident row's tiny NLL)
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
        BELOW = _registry.KL_EXACT_BELOW if F64 else _registry.KL32_NEAR_BELOW
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
            # the one pass subtracts terms of order L and carries a few eps L; a KL below
            # KL_EXACT_BELOW L (float64) or KL32_NEAR_BELOW L (float32 working precision;
            # nearly equal rows) is marked -inf (never a KL) for divergences' exact pass
            # (kernels.kl_logits), as the CPU backends redo it
            L = ONE + abs(wsx) + acc(2.0) * (abs(lsx) + abs(lsz))
            if F64:
                L = L + st[6]
            if d < acc(BELOW) * L:
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
