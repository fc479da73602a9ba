"""numba CPU kernels of the divergence family (issue 5): generalized JSD and top-k teacher KL.

The contract is ``fastdiv._registry``'s (js_logits, js_log_probs, js_probs, topk_kl);
semantics are ``fastdiv.reference.js_rows`` / ``topk_kl_rows``.  Built on the vectorisable
math of ``simd.py``; gathered with the other ops by ``ops.py``.

Inputs may be float32, float64 or half-precision bits (``HALF_INPUTS`` of ``ops.py``:
float16 as uint16, bfloat16 as int16), widened by ``simd.load`` as they are read.

Per row, the passes after the first read the row(s) from cache: a 50257-float row pair is
400 KB, well inside L2.  Sums are accumulated per chunk of ``CHUNK`` elements in a fresh
accumulator (which LLVM splits over vector lanes), then added to the row total: far more
accurate in float32 than one sequential sum.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from numba.extending import overload

from . import threads
from .. import _registry
from .threads import PAR, call, share
from .simd import (FASTMATH, INLINE, JIT, KL_SUB, _float_bits_to_int, _int_bits_to_float, cast, clamp_lo, exp_hot, fexp, flog,
                   guard, is_f64, load, maximum, prefer_wide_vectors, prefetch_ahead, read_only, sub_exact)

CHUNK = 2048
_JIT = JIT
_INLINE = INLINE
_INF = np.inf


@njit(**_INLINE)
def _logpos_f32(x):
    """log x for x > 0 finite and normal (finite garbage for 0 and subnormals), without the
    special-value selects of simd.log_f32, written so that LLVM vectorises it in a reduction
    loop (simd.flog stayed scalar there: 9 ns per element, 0.27 with this).  Cephes logf."""
    ix = np.int32(_float_bits_to_int(x) + np.int32(0x3F800000 - 0x3F3504F3))
    k = np.float32(np.int32(ix >> np.int32(23)) - np.int32(127))
    f = _int_bits_to_float(np.int32((ix & np.int32(0x007FFFFF)) + np.int32(0x3F3504F3))) - np.float32(1.0)
    z = f * f
    y = np.float32(7.0376836292E-2) * f - np.float32(1.1514610310E-1)
    y = y * f + np.float32(1.1676998740E-1)
    y = y * f - np.float32(1.2420140846E-1)
    y = y * f + np.float32(1.4249322787E-1)
    y = y * f - np.float32(1.6668057665E-1)
    y = y * f + np.float32(2.0000714765E-1)
    y = y * f - np.float32(2.4999993993E-1)
    y = y * f + np.float32(3.3333331174E-1)
    y = y * f * z - np.float32(0.5) * z
    return k * np.float32(0.6931471805599453) + (f + y)


@njit(**_INLINE)
def _logpos_f64(x):
    """The float64 twin of _logpos_f32 (fdlibm's log polynomial)."""
    ix = _float_bits_to_int(x) + np.int64(0x3FF0000000000000 - 0x3FE6A09E667F3BCD)
    k = np.float64((ix >> np.int64(52)) - np.int64(1023))
    f = _int_bits_to_float((ix & np.int64(0x000FFFFFFFFFFFFF)) + np.int64(0x3FE6A09E667F3BCD)) - 1.0
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * (3.999999999940941908e-01 + w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01))
    t2 = z * (6.666666666666735130e-01 + w * (2.857142874366239149e-01
                                              + w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)))
    hfsq = 0.5 * f * f
    return k * 0.6931471805599453 + (f - (hfsq - s * (hfsq + t1 + t2)))


def logpos(x):  # pragma: no cover - replaced by the overload inside jitted code
    return np.log(x)


@overload(logpos, fastmath=FASTMATH)
def _ov_logpos(x):
    from numba import types

    if x == types.float32:
        return lambda x: _logpos_f32(x)
    if x == types.float64:
        return lambda x: _logpos_f64(x)
    return None


@njit(**_INLINE)
def _max(row, j0, j1, m):
    """max(m, row[j0:j1]), NaN-propagating."""
    xs = row[j0:j1]
    for j in range(xs.shape[0]):
        m = maximum(m, load(xs[j]))
    return m


@njit(**_INLINE)
def _sum_exp(row, j0, j1, m):
    """sum exp(row[j0:j1] - m) (m finite and >= every term), chunk by chunk."""
    total = cast(0.0, m)
    for c0 in range(j0, j1, CHUNK):
        xs = row[c0:min(c0 + CHUNK, j1)]
        acc = cast(0.0, m)
        for j in range(xs.shape[0]):
            acc += fexp(load(xs[j]) - m)
        total += acc
    return total


#: Chunk of the JS first pass: the unit of a redo when a chunk holds a new maximum, and of
#: the per-chunk shift recorded for the second pass (8 KB of a float32 row pair, in L1).
JS_CHUNK = 1024

#: bytes in a cache line (x86-64 and most arm64 cores)
_LINE = 64
#: elements per scaled block of _js_logits_scaled (16 KB of float32)
_SCALED_BLOCK = 4096


@njit(**_INLINE)
def _exps_into(xs, es, r):
    """es = exp(xs - r): (sum es, every xs <= r).  One array per loop: both rows'
    exponentials in one loop ran out of vector registers (spills)."""
    acc = cast(0.0, r)
    inside = True
    for j in range(xs.shape[0]):
        xj = load(xs[j])
        inside &= xj <= r
        e = exp_hot(clamp_lo(xj - r))     # a masked class: exp(LO) = 0
        es[j] = e
        acc += e
    return acc, inside


@njit(**_INLINE)
def _js_exps(xr, zr, j0, j1, rx, rz, ex, ez):
    """e = exp(x - rx) and f = exp(z - rz) over [j0, j1) into the scratch rows:
    (inside, sum e, sum f), inside = every x <= rx and z <= rz (a NaN is not)."""
    zero = cast(0.0, rx)
    ax = zero
    az = zero
    inside = True
    for b0 in range(j0, j1, KL_SUB):
        prefetch_ahead(xr, b0, KL_SUB)
        prefetch_ahead(zr, b0, KL_SUB)
        b1 = min(b0 + KL_SUB, j1)
        a, ix = _exps_into(xr[b0:b1], ex[b0:b1], rx)
        c, iz = _exps_into(zr[b0:b1], ez[b0:b1], rz)
        ax += a
        az += c
        inside &= ix and iz
    return inside, ax, az


@njit(**_INLINE)
def _js_logits_row(xr, zr, b, c, ex, ez, refs):
    """JS of softmax(x) and softmax(z) for one row pair, 2 exp + 1 log per element, in two
    passes.

    First pass, the one read from memory: chunk by chunk, e = exp(x - r) against the
    running maximum r (as row_state._sums: no maximum kept in the loop, only a flag that
    every entry was at most r); e goes to the scratch row and r to ``refs``.  A chunk that
    holds a new maximum (rare after the first chunks), a NaN or +inf takes its maxima from
    L1 and is exponentiated again against them; the running sums move to the new maximum
    by a scalar factor.  While every entry so far is masked (-inf) the shift is 0 and every
    e is 0.

    Second pass, from L2: p = e beta e^(r - max) / s, one factor per chunk, and
    log p = (x - max) - log s, both subtractions by ``sub_exact``: instcombine turns
    (a - b) - c into a - (b + c) when the outer one may reassociate, and b + c rounds to
    the grid of |x| (log p off by 2e-4 at x ~ 5e3); then the terms with one log of m."""
    zero = cast(0.0, b)
    ninf = cast(-_INF, b)
    v = xr.shape[0]
    mx = ninf
    mz = ninf
    sx = zero
    sz = zero
    for j0 in range(0, v, JS_CHUNK):
        j1 = min(j0 + JS_CHUNK, v)
        k = j0 // JS_CHUNK
        if mx > ninf and mz > ninf:
            inside, ax, az = _js_exps(xr, zr, j0, j1, mx, mz, ex, ez)
            if inside:
                refs[0, k] = mx
                refs[1, k] = mz
                sx += ax
                sz += az
                continue
        cx = _max(xr, j0, j1, cast(load(xr[j0]), b))     # NaN-propagating
        cz = _max(zr, j0, j1, cast(load(zr[j0]), b))
        if cx != cx or cz != cz or cx == _INF or cz == _INF:     # NaN or +inf in a row
            return cast(np.nan, b)
        if cx > mx:
            if mx > ninf:
                sx *= exp_hot(clamp_lo(mx - cx))
            mx = cx
        if cz > mz:
            if mz > ninf:
                sz *= exp_hot(clamp_lo(mz - cz))
            mz = cz
        rx = mx if mx > ninf else zero
        rz = mz if mz > ninf else zero
        _, ax, az = _js_exps(xr, zr, j0, j1, rx, rz, ex, ez)
        refs[0, k] = rx
        refs[1, k] = rz
        sx += ax
        sz += az
    return _js_terms(xr, zr, b, c, ex, ez, refs, JS_CHUNK, mx, mz, sx, sz, False)[0]


#: fastdiv._registry.JSD_HALF_POLY as float32 constants
_JSD = tuple(np.float32(c) for c in _registry.JSD_HALF_POLY)


@njit(**_INLINE)
def _jsd_f32(s):
    """J(d / 2) for s = d^2 in [0, 4), J(x) = x tanh x - log cosh x: the Jensen-Shannon term
    at beta = 1/2 per unit of the mixture, m J(d / 2), of two classes whose log-probabilities
    differ by d (fastdiv._registry.JSD_HALF_POLY)."""
    q = _JSD[0]
    for k in range(1, len(_JSD)):
        q = q * s + _JSD[k]
    return s * q


#: fastdiv._registry.KL_NEAR_POLY as float32 constants
_KLN = tuple(np.float32(c) for c in _registry.KL_NEAR_POLY)


@njit(**_INLINE)
def _kl_near_f32(d):
    """E(d) = (e^d - 1 - d) / d^2 for |d| < 2 (fastdiv._registry.KL_NEAR_POLY): a class's
    KL(p || q) term is p d^2 E(d), its Jeffreys term (q - p) d is p d^2 (1 + d E(d))."""
    e = _KLN[0]
    for k in range(1, len(_KLN)):
        e = e * d + _KLN[k]
    return e


#: elements at each end of a chunk that _js_near_max tests first (_js_near_max)
JS_PROBE = 8

#: a chunk that fails the near test is summed class by class (_js_mixed_terms), each class in
#: its own form, where at most 1 / MIXED_SHARE of its classes have d^2 >= MIXED_WIDE
#: (fastdiv._registry)
MIXED_SHARE = _registry.NEAR_MIXED_SHARE
JS_LANES_BELOW = _registry.JS_LANES_BELOW
MIXED_WIDE = _registry.NEAR_MIXED_WIDE ** 2


@njit(**_INLINE)
def _js_near_max(xs, zs, cd, lim):
    """(m, whole): m the largest d^2 of the chunk (d of _js_d: +inf for a class masked in one
    row only), and whole true; or, where 1 / MIXED_SHARE (half) or more of its first
    JS_PROBE classes and of its last JS_PROBE are wide (d^2 >= MIXED_WIDE), the largest of
    its first JS_PROBE but at least lim, and whole false.  The chunk is near where m is below lim.  A chunk of independent
    rows (90 % of classes wide) or of rows N(0, 1) apart (62 %) nearly always stops at the
    probes; one with a few noisy classes, or a block of them at one end, seldom does
    (_js_mixed).  Each a slice of its own: inside _js_terms, an exit inside the loop, an and
    of the tests, or a second loop over the same slice from JS_PROBE on kept the pass scalar
    (JS of rows 0.05 apart 0.87 -> 1.7 ns per pair); a maximum per slice vectorises as a
    reduction.  Random rows of 16000: 1.10x the JS time with one whole-chunk pass, 1.00x with
    a probe first."""
    n = xs.shape[0]
    k = min(n, JS_PROBE)
    m = _js_max_d2(xs[:k], zs[:k], cd)
    if (_js_wide_count(xs[:k], zs[:k], cd, True) * MIXED_SHARE >= k
            and _js_wide_count(xs[n - k:], zs[n - k:], cd, True) * MIXED_SHARE >= k):
        return maximum(m, lim), False
    return maximum(m, _js_max_d2(xs[k:], zs[k:], cd)), True


@njit(**_INLINE)
def _js_mixed(xs, zs, cd, m, whole):
    """Given (m, whole) = _js_near_max(xs, zs, cd, lim), m >= lim: whether the chunk is summed
    class by class (_js_mixed_terms) -- where it passed the probes (whole) or has a class
    masked in one row only (m = +inf), and at most 1 / MIXED_SHARE of its classes are wide,
    not counting those.  The log-based terms of a near class cancel down to m d^2 / 8 (off by
    ~eps |lm| 8 / d^2 of itself): rows 1e-3 apart with one noisy class (|d| ~ 3) per 190,
    whose chunks all took them, had JS 66 % off (benchmarks/js_nearby.py).  Rows N(0, 1)
    apart (most |d| above 1/2, a few above 2) keep them, accurate there to ~1e-6: class by
    class cost them 1.9x."""
    return (whole or m == _INF) and _js_wide_count(xs, zs, cd, False) * MIXED_SHARE <= xs.shape[0]


@njit(**_INLINE)
def _js_max_d2(xs, zs, cd):
    """max d^2 over xs, zs (d of _js_d): llvm.maximum vectorises as a reduction."""
    m = cast(0.0, cd[2])
    for j in range(xs.shape[0]):
        d = _js_d(xs[j], zs[j], cd)
        m = maximum(m, d * d)
    return m


@njit(**_INLINE)
def _js_min_d2(xs, zs, cd):
    """min d^2 over xs, zs (d of _js_d: 0 for a class masked in both rows)."""
    m = cast(_INF, cd[2])
    for j in range(xs.shape[0]):
        d = _js_d(xs[j], zs[j], cd)
        d2 = d * d
        m = d2 if d2 < m else m
    return m


@njit(**_INLINE)
def _js_wide_count(xs, zs, cd, one_sided):
    """#classes with d^2 >= MIXED_WIDE over xs, zs, those masked in one row only (d = +-inf)
    among them where one_sided (a constant); counted in floats under one test, which
    vectorise (an integer count, or the tests apart: 0.47 or 0.34 ns per element against
    0.21)."""
    lim = cast(MIXED_WIDE, cd[2])
    zero = cast(0.0, lim)
    one = cast(1.0, lim)
    n = zero
    for j in range(xs.shape[0]):
        d = _js_d(xs[j], zs[j], cd)
        n += zero if (d * d < lim or (not one_sided and _js_one(xs[j], zs[j]))) else one
    return n


@njit(**_INLINE)
def _js_one(xj, zj):
    """Whether the class is masked (-inf) in exactly one of the rows."""
    ninf = -_INF
    return (load(xj) == ninf) != (load(zj) == ninf)


@njit(**_INLINE)
def _near_d(shx, shz, sx, sz):
    """cd = (ax, az, c) of _js_d for two rows with a class each (shifts shx, shz; sums sx, sz
    of e^(x - shx), e^(z - shz)): (0, 0, (shz - shx) + log(sz / sx)), c's shift part a float
    difference as the elements' z - x (with equal normalisers, a one-class row, d is then 0
    to the bit, where the float64 shz - shx rounded once with the logs' part could round a
    tie the other way); where the maxima differ by 4 or more, z - x rounds at the size of the
    offset, and cd = (shx, shz, log(sz / sx)) (the Cython kernels' fd_near_c has the figures)."""
    zero = cast(0.0, shx)
    csh = sub_exact(shz, shx)
    offset = abs(csh) >= cast(4.0, shx)
    lsd = np.log(np.float64(sz)) - np.log(np.float64(sx))
    return (shx if offset else zero, shz if offset else zero,
            cast(lsd if offset else np.float64(csh) + lsd, shx))


@njit(**_INLINE)
def _js_d(xj, zj, cd):
    """d = ((z - az) - (x - ax)) - c, cd = (ax, az, c) of _near_d; 0 for a class masked in both rows (d = NaN, m = 0: its
    terms are 0).  Every subtraction exact (sub_exact): with the outer one free to
    reassociate, LLVM formed it in float64 from c's unrounded double (d half an ulp of z - x,
    not 0, for a one-class row)."""
    ax, az, c = cd
    d = sub_exact(sub_exact(sub_exact(load(zj), az), sub_exact(load(xj), ax)), c)
    return d if d == d else cast(0.0, c)


@njit(**_INLINE)
def _js_log_lane(xj, zj, bp, cq, shx, shz, lsx, lsz, lo):
    """A far class's terms (bp = b p, cq = c q): JS's bp (lp - lm) + cq (lq - lm),
    lm = log(bp + cq), and the KL terms cq - bp, bp d and cq d; a caller that does not add the
    last three leaves them to dead-code elimination.  d as lq - lp: to the size of |d| where
    the logits are large (z - x rounds at the size of |z|), and unclamped (a p that underflows
    keeps its q d).  A class masked in one row or both (d infinite or NaN) as d = 0: its terms
    are q - p, 0 and 0, and the flags make the KL +inf where it is masked in one row only."""
    lpr = sub_exact(sub_exact(load(xj), shx), lsx)
    lqr = sub_exact(sub_exact(load(zj), shz), lsz)
    lp = max(lpr, lo)
    lq = max(lqr, lo)
    lm = logpos(bp + cq)       # finite garbage where bp + cq = 0, multiplied by 0
    d = lqr - lpr
    d = d if abs(d) < cast(_INF, lo) else cast(0.0, lo)
    return bp * (lp - lm) + cq * (lq - lm), cq - bp, bp * d, cq * d


@njit(**_INLINE)
def _js_log_terms(xs, zs, es, fs, fx, fz, shx, shz, lsx, lsz, lo, kl):
    """sum of _js_log_lane's JS term over a chunk; with kl (a constant), also the sums of
    cq - bp, bp d and cq d (see _js_terms)."""
    acc = cast(0.0, fx)
    aqp = acc
    apd = acc
    aqd = acc
    for j in range(xs.shape[0]):
        t, qp, pd, qd = _js_log_lane(xs[j], zs[j], es[j] * fx, fs[j] * fz, shx, shz, lsx, lsz, lo)
        acc += t
        if kl:
            aqp += qp
            apd += pd
            aqd += qd
    return acc, aqp, apd, aqd


@njit(fastmath=_INLINE["fastmath"], error_model=_INLINE["error_model"])
def _js_mixed_terms(xs, zs, es, fs, fx, fz, cd, shx, shz, lsx, lsz, lo):
    """A chunk summed class by class (_js_mixed): a near class (|d| < 2) by _js_near_terms, a
    far one by _js_log_lane, one masked in one row only by its exact terms -- one of bp, cq is
    0 there, so its JS term is (bp + cq) ln 2; its KL terms are _js_log_lane's (q - p, and d
    taken as 0).  Both forms are taken for every class and weighted by 1 and 0, so the loop
    vectorises (with a select per sum it stayed scalar; the near form is given d = 0 where
    it is not kept, so its weight never meets an inf).  Returns the sums of the JS terms,
    p (e^d - 1 - d), (q - p) d (near classes), q - p, p d and q d (the others).  Not
    inlined: a rare path (see _kl_near32_mixed)."""
    prefer_wide_vectors()
    zero = cast(0.0, fx)
    one = cast(1.0, fx)
    four = cast(4.0, fx)
    ln2 = cast(np.log(2.0), fx)
    acc = zero
    akp = zero
    akj = zero
    aqp = zero
    apd = zero
    aqd = zero
    for j in range(xs.shape[0]):
        bp = es[j] * fx
        cq = fs[j] * fz
        d = _js_d(xs[j], zs[j], cd)
        near = d * d < four
        w = one if near else zero
        u = one - w
        t, tp, tj = _js_near_terms(bp, cq, d if near else zero, one)
        tf, qp, pd, qd = _js_log_lane(xs[j], zs[j], bp, cq, shx, shz, lsx, lsz, lo)
        tf = (bp + cq) * ln2 if _js_one(xs[j], zs[j]) else tf
        acc += w * t + u * tf
        akp += w * tp
        akj += w * tj
        aqp += u * qp
        apd += u * pd
        aqd += u * qd
    return acc, akp, akj, aqp, apd, aqd


@njit(**_INLINE)
def _js_near_terms(bp, cq, d, one):
    """A near class's terms (|d| < 2; bp = b p, cq = c q): JS's (bp + cq) J(d / 2), and the KL
    terms bp (e^d - 1 - d) and bp (e^d - 1) d from E(d) (_kl_near_f32); a caller that does not
    add the last two leaves them to dead-code elimination."""
    s = d * d
    e = _kl_near_f32(d)
    ps = bp * s
    return (bp + cq) * _jsd_f32(s), ps * e, ps * (d * e + one)


@njit(**_INLINE)
def _js_terms(xr, zr, b, c, ex, ez, refs, chunk, mx, mz, sx, sz, kl):
    """_js_pass; where a float32 row pair at b = c = 1/2 has JS < JS_LANES_BELOW and some
    chunk took the log-based terms, the pass again with every chunk that is not near summed
    class by class: those terms of a near class with a large mass cancel to ~eps (p + q) of
    it (rows with one class far above the rest in both, p ~ q ~ 1 - 1e-10, and independent
    tails: JS ~1e-11 1.5x off at 32000 classes, 2026-12-07; fastdiv._registry.JS_LANES_BELOW).
    The second try is the same inlined pass with ``lanes`` set at run time: a second copy of
    it, compiled with ``lanes`` a constant, took js_div's first call from 10.9 to 16.5 s of
    compiling."""
    lanes = False
    while True:
        total, kq, kp, logs = _js_pass(xr, zr, b, c, ex, ez, refs, chunk, mx, mz, sx, sz, kl, lanes)
        if lanes or not (logs and total < JS_LANES_BELOW and not is_f64(b) and b == c
                         and mx > -_INF and mz > -_INF):
            return total, kq, kp
        lanes = True


@njit(**_INLINE)
def _js_pass(xr, zr, b, c, ex, ez, refs, chunk, mx, mz, sx, sz, kl, lanes):
    """The second pass of _js_logits_row (and of the compare op, ops.py), from L2: the
    exponentials of chunk k (of ``chunk`` elements) were taken against refs[0, k] (x) and
    refs[1, k] (z); mx, mz are the rows' maxima and sx, sz their sums of e^(x - max).
    At beta = 1/2 in float32, a chunk whose |d| < 2 everywhere, d = lq - lp = (z - x) - cd
    formed from the logits' difference, takes its terms as m J(d / 2) (_jsd_f32), which keep
    JS's relative accuracy as the rows' difference goes to 0; a chunk with a few far classes
    (or classes masked in one row only, d = +-inf) is summed class by class (_js_mixed); other
    chunks (a far difference) take the log-based terms.  The Cython kernels choose by vector
    (fd_js_half_term): numba's loops, split into blocks of 16 with a choice in each, no longer
    vectorised (JS 1.0 -> 1.8 ns per pair on random rows).

    lanes (_js_terms' second try): every chunk that is not near summed class by class.

    Returns (JS, D(z || x), D(x || z), whether some chunk took the log-based terms); the KLs
    only with kl (compare, b = c = 1/2, rows with a class each; else 0), summed class by
    class from terms that do not cancel
    as the rows' difference goes to 0, where the first pass's sum of p (x - z) less
    log sz - log sx does: a near chunk adds p (e^d - 1 - d) and the Jeffreys term (q - p) d
    (_kl_near_f32), any other q - p, p d and q d with d = lq - lp (float64: every chunk),
    which do not cancel where |d| >= 2; sum (q - p) = 0 joins them (the Cython kernels'
    fd_js_terms has the formulas)."""
    zero = cast(0.0, b)
    ninf = cast(-_INF, b)
    v = xr.shape[0]
    shx = mx if mx > ninf else zero           # an all-masked row: every e is 0
    shz = mz if mz > ninf else zero
    # every constant of the terms loop cast to the working type: one float64 operand (a
    # python float, or flog's result) widened the whole float32 loop to float64 (1.3 ns/pair)
    lsx = cast(flog(sx), b) if mx > ninf else zero
    lsz = cast(flog(sz), b) if mz > ninf else zero
    gx = cast(b / sx, b) if mx > ninf else zero
    gz = cast(c / sz, b) if mz > ninf else zero
    # float32 working precision, rows with a class each (cd finite)
    half = not is_f64(zero) and b == c and mx > ninf and mz > ninf
    cd = _near_d(shx, shz, sx, sz) if half else (zero, zero, zero)
    four = cast(4.0, b)
    one = cast(1.0, b)
    # log p clamped at the exp clamp LO: a masked class (p = 0) adds 0 * (LO - ...) = 0,
    # never 0 * -inf
    lo = cast(clamp_lo(ninf), b)
    total = zero
    kp = zero       # sum p (e^d - 1 - d), near chunks
    kj = zero       # sum (q - p) d, near chunks
    qp = zero       # sum q - p, far chunks
    pd = zero       # sum p d, far chunks
    qd = zero       # sum q d, far chunks
    logs = False
    for j0 in range(0, v, chunk):
        j1 = min(j0 + chunk, v)
        k = j0 // chunk
        # refs <= the final maximum, except the 0 of chunks that were all masked (their e
        # are 0): min keeps that factor finite
        fx = gx * exp_hot(clamp_lo(min(refs[0, k] - shx, zero)))
        fz = gz * exp_hot(clamp_lo(min(refs[1, k] - shz, zero)))
        xs = xr[j0:j1]
        zs = zr[j0:j1]
        es = ex[j0:j1]
        fs = ez[j0:j1]
        m, whole = _js_near_max(xs, zs, cd, four) if half else (zero, False)
        if half and m < four:
            acc = zero
            akp = zero
            akj = zero
            for j in range(xs.shape[0]):
                t, tp, tj = _js_near_terms(es[j] * fx, fs[j] * fz, _js_d(xs[j], zs[j], cd), one)
                acc += t
                if kl:
                    akp += tp
                    akj += tj
            kp += akp
            kj += akj
        elif half and (lanes or _js_mixed(xs, zs, cd, m, whole)):
            acc, akp, akj, aqp, apd, aqd = _js_mixed_terms(xs, zs, es, fs, fx, fz, cd, shx, shz, lsx, lsz, lo)
            kp += akp
            kj += akj
            qp += aqp
            pd += apd
            qd += aqd
        else:
            acc, aqp, apd, aqd = _js_log_terms(xs, zs, es, fs, fx, fz, shx, shz, lsx, lsz, lo, kl)
            qp += aqp
            pd += apd
            qd += aqd
            logs = True
        total += acc
    # bp = b p, cq = c q with b = c = 1/2 where kl
    two = cast(2.0, b)
    return total, two * ((kj - kp) + (qd - qp)), two * (kp + (qp - pd)), logs


@njit(**_INLINE)
def _scaled_into(row, dst, sc):
    """dst = sc * row, rounded to the working type by the store.  Both passes of
    _js_logits_row then read the same sc x: a product formed in each pass is not the same
    number, because LLVM contracts sc * x - r into one fma (the unrounded product) whatever
    the instruction flags -- on a row's own maximum that gave exp(-1.7e-4), not 1, at
    sc x ~ 5e3 (JS off by 1e-4)."""
    for j in range(row.shape[0]):
        dst[j] = load(row[j]) * sc


@njit(**_JIT)
def _js_logits(x, z, beta, out, scratch, refs):
    """One share of rows (the whole call, or one share of _js_logits_mt) with its scratch
    rows of exponentials."""
    prefer_wide_vectors()
    v = x.shape[1]                      # the scratch rows are padded past V
    ex = scratch[0, :v]
    ez = scratch[1, :v]
    for i in range(x.shape[0]):
        b = cast(beta, load(x[i, 0]))
        c = cast(1.0 - beta, b)
        out[i] = _js_logits_row(x[i], z[i], b, c, ex, ez, refs)


@njit(**_JIT)
def _js_logits_scaled(x, z, beta, scale, out, scratch, refs, blocks, rows):
    """At a temperature: the rows scaled by blocks of n rows into ``blocks[:n]`` and
    ``blocks[n:2n]`` (L1 size; its last row pads one share's blocks from the next's), then
    _js_logits on each block through its entry ``rows`` (threads.Entry), not inlined.  One
    kernel that branched on ``scale is None`` kept both branches for a float scale (numba
    does not prune it), two inlined copies of the row body: its first call compiled in 15.2 s
    against 7.5 s unscaled (float32, Zen 4, 2026-12-07).  The blocks must stay C-contiguous:
    _js_logits on strided ('A') views ran 6.6x slower (its loops were not vectorised)."""
    n = (blocks.shape[0] - 1) // 2
    xs = blocks[:n]
    zs = blocks[n:2 * n]
    sc = cast(scale, xs[0, 0])          # the working type: float32 for half bits
    for i0 in range(0, x.shape[0], n):
        i1 = min(i0 + n, x.shape[0])
        for i in range(i0, i1):
            _scaled_into(x[i], xs[i - i0], sc)
            _scaled_into(z[i], zs[i - i0], sc)
        call(rows, (xs[:i1 - i0], zs[:i1 - i0], beta, out[i0:i1], scratch, refs))


@njit(**_INLINE)
def _js_prob_row(xr, zr, beta, logs):
    """JS of one row pair of probabilities (``logs`` False) or log-probabilities (``logs``
    True, a compile-time constant: the branches on it fold away and both kernels keep one
    straight vectorisable loop).  A zero probability contributes exactly 0, never
    0 * (log 0 - lm); log p is taken only where p != 0."""
    zero = cast(0.0, load(xr[0]))
    inf = cast(np.inf, zero)
    nan = cast(np.nan, zero)
    b = cast(beta, load(xr[0]))
    c = cast(1.0 - beta, load(xr[0]))
    total = zero
    v = xr.shape[0]
    for c0 in range(0, v, CHUNK):
        xs = xr[c0:min(c0 + CHUNK, v)]
        zs = zr[c0:min(c0 + CHUNK, v)]
        acc = zero
        for j in range(xs.shape[0]):
            u = load(xs[j])
            w = load(zs[j])
            p = fexp(u) if logs else u
            q = fexp(w) if logs else w
            lm = logpos(b * p + c * q)      # finite where it is 0: selected away
            tp = b * p * ((u if logs else flog(p)) - lm) if p != zero else zero
            tq = c * q * ((w if logs else flog(q)) - lm) if q != zero else zero
            t = tp + tq
            if not logs:
                # outside the domain: a negative p or q is rel_entr's +inf (as in kl_div); an
                # infinite one makes M infinite too: NaN, as a NaN p or q already made t.
                # (& and |, not and / or: a short-circuit is a branch, which keeps the loop
                # scalar.  Checking the row's range at its end instead was slower.)
                t = inf if ((p < zero) | (q < zero)) else t
                t = nan if ((p == inf) | (q == inf)) else t
            acc += t
        total += acc
    return total


@njit(**_JIT)
def _js_log_probs(x, z, beta, out):
    for i in range(x.shape[0]):
        prefer_wide_vectors()
        out[i] = _js_prob_row(x[i], z[i], beta, True)


@njit(**_JIT)
def _js_probs(x, z, beta, out):
    for i in range(x.shape[0]):
        prefer_wide_vectors()
        out[i] = _js_prob_row(x[i], z[i], beta, False)


@njit(**_JIT)
def _topk(idx, t, z, bucket, out):
    k = idx.shape[1]
    for i in range(z.shape[0]):
        prefer_wide_vectors()
        zr = z[i]
        ir = idx[i]
        tr = t[i]
        v = zr.shape[0]
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
                mt = maximum(mt, np.float64(_max(zr, j0, j1, load(zr[j0]))))
            j0 = j1 + 1
        bad = mt != mt or mt == _INF
        mall = mt
        for a in range(k):
            zi = np.float64(load(zr[ir[a]]))
            ti = np.float64(load(tr[a]))
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
                    st += np.float64(_sum_exp(zr, j0, j1, cast(mt, load(zr[0]))))
                j0 = j1 + 1
        # log q_i = (z_i - mall) - ls; lst = log of the student's tail probability
        ls = 0.0
        lst = -_INF
        if mall != -_INF:
            sall = st * np.exp(mt - mall) if mt != -_INF else 0.0
            for a in range(k):
                sall += np.exp(np.float64(load(zr[ir[a]])) - mall)
            ls = np.log(sall)
            if mt != -_INF:     # in log space: the tail's probability may underflow
                lst = ((mt - mall) + np.log(st)) - ls
        res = 0.0
        inf = False
        if bucket == 0:
            tm = -_INF
            for a in range(k):
                tm = max(tm, np.float64(load(tr[a])))
            if tm == _INF:
                out[i] = np.nan
                continue
            if tm == -_INF:                   # empty teacher
                out[i] = 0.0
                continue
            s = 0.0
            for a in range(k):
                s += np.exp(np.float64(load(tr[a])) - tm)
            lt = np.log(s)
            for a in range(k):
                ta = np.float64(load(tr[a]))
                if ta == -_INF:
                    continue
                lq = ((np.float64(load(zr[ir[a]])) - mall) - ls) if mall != -_INF else -_INF
                lp = (ta - tm) - lt
                if lq == -_INF:
                    inf = True
                else:
                    res += np.exp(lp) * (lp - lq)
        else:
            sp = 0.0
            for a in range(k):
                ta = np.float64(load(tr[a]))
                if ta == -_INF:
                    continue
                lq = ((np.float64(load(zr[ir[a]])) - mall) - ls) if mall != -_INF else -_INF
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


@njit(**PAR)
def _js_logits_mt(e, x, z, beta, out, scratch, refs, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        call(e, (x[lo:hi], z[lo:hi], beta, out[lo:hi], scratch[k], refs[k]))


@njit(**PAR)
def _js_logits_scaled_mt(e, x, z, beta, scale, out, scratch, refs, blocks, rows, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        call(e, (x[lo:hi], z[lo:hi], beta, scale, out[lo:hi], scratch[k], refs[k], blocks[k], rows))


@njit(**PAR)
def _js_log_probs_mt(e, a, b, beta, out, parts, align):
    for k in prange(parts):
        lo, hi = share(a.shape[0], k, parts, align)
        call(e, (a[lo:hi], b[lo:hi], beta, out[lo:hi]))


@njit(**PAR)
def _js_probs_mt(e, p, q, beta, out, parts, align):
    for k in prange(parts):
        lo, hi = share(p.shape[0], k, parts, align)
        call(e, (p[lo:hi], q[lo:hi], beta, out[lo:hi]))


@njit(**PAR)
def _topk_mt(e, idx, t, z, bucket, out, parts, align):
    for k in prange(parts):
        lo, hi = share(z.shape[0], k, parts, align)
        call(e, (idx[lo:hi], t[lo:hi], z[lo:hi], bucket, out[lo:hi]))


#: JS from logits costs ~4-6x logsumexp per element (V = 51: 280 against 43 us at 600 rows): its
#: shares may be that much smaller (threads.parts)
JS_WORK = 4


def js_logits(x, z, beta, scale, out, nthreads):
    guard(out, x, z)
    x, z = read_only(x, z)
    acc = np.float32 if x.dtype.itemsize == 2 else x.dtype             # half bits: float32
    v = x.shape[1]
    k = threads.parts(x, nthreads, work=JS_WORK)
    # Per share: the exponentials, and the scaled rows at a temperature: O(threads x V).
    # Each share's scratch is padded by a cache line or more, so no two shares write to one
    # line: at V = 51 the shares' rows were neighbours and two threads took 1.6-1.9x as long
    # as one in most processes (false sharing; the gate's numba/js_div/C51/2t, Zen 4,
    # 2026-12-05).
    pad = _LINE // np.dtype(acc).itemsize
    scratch = np.empty((k, 2, v + pad), dtype=acc)
    refs = np.empty((k, 2, -(-v // JS_CHUNK) + pad), dtype=acc)
    if float(scale) == 1.0:
        if k == 1:
            _js_logits(x, z, float(beta), out, scratch[0], refs[0])
            return
        threads.split(k, _js_logits_mt, _js_logits, "rr=rkk", x, z, float(beta), out, scratch, refs)
        return
    # the scaled rows by blocks of ~16 KB each (L1), a row at least
    n = max(1, min(-(-x.shape[0] // k), _SCALED_BLOCK // v))
    blocks = np.empty((k, 2 * n + 1, v), dtype=acc)
    # _js_logits_scaled passes _js_logits rows of a share's blocks, as _js_logits_mt its rows
    rows = threads.entry_for(_js_logits, "rr=rkk", blocks[0], blocks[0], float(beta), out, scratch, refs)
    if k == 1:
        args = (x, z, float(beta), float(scale), out, scratch[0], refs[0], blocks[0], rows)
        threads.native(_js_logits_scaled, *args)(*args)
        return
    threads.split(k, _js_logits_scaled_mt, _js_logits_scaled, "rr==rkkk=",
                  x, z, float(beta), float(scale), out, scratch, refs, blocks, rows)


def js_log_probs(a, b, beta, out, nthreads):
    guard(out, a, b)
    a, b = read_only(a, b)
    threads.run(_js_log_probs, _js_log_probs_mt, "rr=r", nthreads, (a, b, float(beta), out), a)


def js_probs(p, q, beta, out, nthreads):
    guard(out, p, q)
    p, q = read_only(p, q)
    threads.run(_js_probs, _js_probs_mt, "rr=r", nthreads, (p, q, float(beta), out), p)


def topk_kl(idx, t, z, bucket, out, nthreads):
    if idx.dtype != np.int64 or idx.ndim != 2 or idx.shape[0] != z.shape[0] or t.shape != idx.shape:
        raise ValueError(f"idx must be int64 of shape ({z.shape[0]}, k) and t of its shape, got {idx.shape}, {t.shape}")
    if z.ndim != 2 or z.shape[1] < 1 or out.shape != (z.shape[0],) or t.dtype != z.dtype:
        raise ValueError(f"z must be 2-D with V >= 1, t of z's dtype and out of shape ({z.shape[0]},)")
    idx, t, z = read_only(idx, t, z)
    threads.run(_topk, _topk_mt, "rrr=r", nthreads, (idx, t, z, int(bool(bucket)), out), z)
