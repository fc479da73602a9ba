"""The numba backend's short-row blocks: logsumexp (and unweighted hard-label cross-entropy),
entropy and KL from logits for ``1 < V <= SMALL_V``.

At V = 51 (C51) a row is 204 bytes: per-row costs (loop tails, horizontal reductions, a
scalar log) would dominate.  Instead a block of rows is treated as one flat array: its
maximum R, one long vectorised pass e = exp(x - R) into an L1 scratch buffer, short
per-row sums of e, and a log per row.  Sums relative to the block's R instead of each row's
own maximum are equally accurate as long as the result is not tiny; the tiny case, a
confident row's loss on its target, is formed from the target's term and the sum of the
others (see _small_lse); entropy works relative to each row's maximum throughout.  A row
whose sum falls below SMALL_MIN_SUM (its maximum lies far below R, or it is all masked) and
any block holding NaN or +inf go through the row path (``row_state.py``, ``long_rows.py``).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .long_rows import KL32_NEAR_BELOW, KL_EXACT_BELOW, _kl_scale, _kl_tight
from .row_state import _chunk_max, _finish_entropy, _finish_lse, _nll, _row_state
from .threads import PAR, call, share
from .simd import _LN2, INLINE, JIT, KL_SUB, SUB, cast, clamp_lo, exp_hot, flog, jump_limit, load, log_parts_f64, maximum, prefer_wide_vectors, prefetch_ahead, add_exact, is_f64, scale_of, sub_exact

_JIT = JIT
_INLINE = INLINE
_NAN = np.nan
_INF = np.inf

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
    every x <= lim (False for a NaN).  A flag, not a maximum: see row_state._sums."""
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
            # a KL too small for the one pass's absolute error is redone below (see
            # KL_EXACT_BELOW, KL32_NEAR_BELOW)
            tight[r] = d < (KL_EXACT_BELOW if is_f64(rx) else KL32_NEAR_BELOW) * _kl_scale(wsx, lsx, lsz, 0.0)
        for r in range(rows):
            if sx[r] < SMALL_MIN_SUM or sz[r] < SMALL_MIN_SUM or not w[r] < _INF:
                fallback[i0 + r] = True
            elif tight[r]:
                out[i0 + r] = _kl_tight(x[i0 + r], z[i0 + r], scale)


def use_blocks(x):
    """The block path (one shift per block of rows) for 1 < V <= SMALL_V.  V = 1 takes the row
    path, whose shift is the row's own entry: lse = x, KL = 0 exactly (the block path's
    shared shift left ~1e-6 of rounding in both)."""
    return 1 < x.shape[1] <= SMALL_V


@njit(**_JIT)
def unit_weights(w):
    """Whether every class weight is 1 (the block path's CE is unweighted): one pass, without
    ``np.all(w == 1)``'s temporary and dispatch (2.6 us of a C51 call's ~8)."""
    for j in range(w.shape[0]):
        if w[j] != 1:
            return False
    return True


def block_align(x, per_row, group=1):
    """Shares of a block-path call start on a block boundary (its rows' results depend on
    the block), and on a group boundary (``group`` = SMALL_GROUP) for entropy, whose blocks
    start from the previous block's maximum within a group.  lse's and KL's blocks depend on
    nothing else: their shares may start on any block."""
    return block_rows.py_func(x.shape[1], per_row) * group


# --------------------------------------------------------------------------- parallel entries
# Each runs its serial kernel over ``parts`` shares of the rows (fastdiv._numba.threads).


@njit(**PAR)
def _small_lse_mt(e, x, out, ce_target, ignore_index, parts, align):
    n = x.shape[0]
    for k in prange(parts):
        lo, hi = share(n, k, parts, align)
        t = ce_target[lo:hi] if ce_target.shape[0] == n else ce_target   # empty: no targets
        call(e, (x[lo:hi], out[lo:hi], t, ignore_index))


@njit(**PAR)
def _small_entropy_mt(e, x, scale, out, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        call(e, (x[lo:hi], scale, out[lo:hi]))


@njit(**PAR)
def _small_kl_mt(e, x, z, scale, out, fallback, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        call(e, (x[lo:hi], z[lo:hi], scale, out[lo:hi], fallback[lo:hi]))
