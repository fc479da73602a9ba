"""numba kernel of the ``evaluate`` op: the mergeable per-row state in one read of the row(s).

Contract (inputs, the state's columns, row endings): ``fastdiv._registry``, op ``evaluate``.

Without a reference the row pass is numba's ``_row_state_t`` (fastdiv/_numba/row_state.py: the
exact running maximum, its copies kept out of the lane sums, the target's rank counted in the
same pass), so a confident row keeps its tiny NLL and entropy.  With a reference, per row,
chunks of ``CHUNK`` elements: the chunk maxima are found first (a read from memory, with the
chunk after next prefetched), the running sums are rescaled when a maximum grows, then the
chunk is summed again from L1 against the current maxima, in accumulators of the input's
precision (split across vector lanes by LLVM), added to float64 row totals per chunk.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .long_rows import _kls_of_state
from .row_state import ROW_CHUNK, _row_state_t
from . import threads
from .threads import PAR, call, share
from .simd import INLINE, JIT, cast, clamp_lo, exp_hot, maximum, prefer_wide_vectors, prefetch, read_only

CHUNK = 2048
_JIT = JIT
_INLINE = INLINE
_INF = np.inf


@njit(**_INLINE)
def _max_prefetch(xc, ahead, a0):
    """Maximum of the chunk xc (NaN-propagating), prefetching ahead[a0:a0 + len(xc)]."""
    m = xc[0]
    n = xc.shape[0]
    a1 = min(a0 + n, ahead.shape[0])
    for k in range(a0, a1, 64 // ahead.itemsize):
        prefetch(ahead, k)
    for j in range(n):
        m = maximum(m, xc[j])
    return m


@njit(**_INLINE)
def _locate(row, j0, chunk, m):
    """The first index of m in the chunk of ``chunk`` elements starting at j0 (where the
    running maximum was last raised): searched once per row (searching at each new maximum
    cost ~15 % at V = 50257)."""
    if not m > -_INF:
        return j0
    return j0 + _first_index(row[j0:min(j0 + chunk, row.shape[0])], m)


@njit(**_INLINE)
def _first_index(xc, value):
    """First j with xc[j] == value (0 if none), as a min-reduction (vectorises; no early exit)."""
    n = xc.shape[0]
    best = n
    for j in range(n):
        best = min(best, j if xc[j] == value else n)
    return best if best < n else 0


@njit(**_INLINE)
def _sums2(xc, zc, shx, shz, xt, es, fs):
    """The sums of row_state._sums for x, the same for z, the two KL sums and the flag counts.
    es, fs: None (evaluate: the stores are pruned at compile time), or where the compare op
    keeps the exponentials for its JS pass (divergences._js_terms)."""
    zero = cast(0.0, shx)
    sx = zero
    wx = zero
    sz = zero
    wxz = zero
    wzx = zero
    c = 0
    miss_z = 0
    miss_x = 0
    for j in range(xc.shape[0]):
        dx = xc[j] - shx
        dz = zc[j] - shz
        ex = exp_hot(clamp_lo(dx))
        ez = exp_hot(clamp_lo(dz))
        if es is not None:
            es[j] = ex
            fs[j] = ez
        sx += ex
        wx += ex * clamp_lo(dx)
        sz += ez
        if es is None:
            # compare sums its KLs class by class in its second pass instead
            # (divergences._js_terms), and counts against the base's top-1 there
            both = dx > -_INF and dz > -_INF
            wxz += ex * (dx - dz) if both else zero
            wzx += ez * (dz - dx) if both else zero
            c += 1 if xc[j] > xt else 0
        miss_z += 1 if dx > -_INF and dz == -_INF else 0
        miss_x += 1 if dz > -_INF and dx == -_INF else 0
    return sx, wx, sz, wxz, wzx, c, miss_z, miss_x


@njit(**_INLINE)
def _grow(m, cm, s, w):
    """Rescale (s, w) from the shift m to the larger maximum cm: w -> f (w + (m - cm) s)."""
    if m == -_INF:                  # the sums so far are of masked entries only: exactly 0
        return 0.0, 0.0
    delta = float(m) - float(cm)
    f = np.exp(delta)
    return f * s, f * (w + delta * s)


@njit(**_INLINE)
def _chunk_max(xc):
    m = xc[0]
    for j in range(xc.shape[0]):
        m = maximum(m, xc[j])
    return m


@njit(**_JIT)
def _evaluate_x(x, target, st, ix):
    n, v = x.shape
    for i in range(n):
        prefer_wide_vectors()
        row = x[i]
        t = target[i]
        xt = row[t] if 0 <= t < v else cast(st[i, 3], row[0])     # the caller's threshold, or NaN
        m, c, r, w, cnt, jm = _row_state_t(row, 1.0, xt)
        st[i, 0] = m
        st[i, 1] = np.float64(c) + np.float64(r)     # float64 keeps a confident row's tiny r
        st[i, 2] = w
        st[i, 3] = xt
        ix[i, 0] = _locate(row, jm, ROW_CHUNK, m)
        ix[i, 1] = cnt
        ix[i, 2] = 0


@njit(**_INLINE)
def _xz_row(row, zrow, xt, ex, ez, refs):
    """One row of x with reference z: (m, s, w, mz, sz, wxz, wzx, cnt, am, amz, flags, moved),
    am and amz the chunks where x's and z's first maxima were last raised, moved how far the
    two finite shifts rose while sums were carried (_kl_finish's).  ex, ez, refs: None
    (evaluate), or the compare op's scratch rows: chunk k's exponentials against its shifts
    refs[0, k], refs[1, k] (valid where neither row holds a NaN or +inf).  z's columns are
    its own whatever x holds."""
    v = row.shape[0]
    m = cast(-_INF, row[0])
    s = 0.0
    w = 0.0
    cnt = 0
    am = 0
    amz = 0
    mz = cast(-_INF, row[0])
    sz = 0.0
    wxz = 0.0
    wzx = 0.0
    miss_z = 0
    miss_x = 0
    moved = 0.0
    for j0 in range(0, v, CHUNK):
        j1 = min(j0 + CHUNK, v)
        xc = row[j0:j1]
        zc = zrow[j0:j1]
        cm = _max_prefetch(xc, row, j1 + CHUNK)
        cmz = _max_prefetch(zc, zrow, j1 + CHUNK)
        x_ok = m == m and m != _INF
        z_ok = mz == mz and mz != _INF
        if x_ok and cm > m and cm != _INF:
            # rescaling x's shift moves every (x - m): wxz -> f (wxz + delta sx), wzx -= delta sz
            delta = float(m) - float(cm)
            s, w = _grow(m, cm, s, w)
            wxz = wxz * np.exp(delta) + (delta * s if m > -_INF else 0.0)
            if m > -_INF:
                wzx -= delta * sz
                moved -= delta
            else:
                wxz = 0.0
            m = cm
            am = j0                  # the chunk of the first maximum, searched at the end
        elif not cm <= m:               # NaN or +inf in x: the model's quantities settle
            if cm == _INF and m == m:
                am = j0                  # the chunk of the first maximum, searched at the end
            m = maximum(m, cm)
        if z_ok and cmz > mz and cmz != _INF:
            delta = float(mz) - float(cmz)
            f = np.exp(delta) if mz > -_INF else 0.0
            if mz > -_INF:
                wzx = f * (wzx + delta * sz)
                wxz -= delta * s
                moved -= delta
            else:
                wzx = 0.0
            sz = f * sz
            mz = cmz
            amz = j0
        elif not cmz <= mz:
            if cmz == _INF and mz == mz:
                amz = j0
            mz = maximum(mz, cmz)
        x_ok = m == m and m != _INF
        z_ok = mz == mz and mz != _INF
        if not z_ok and not x_ok:
            if m != m and mz != mz:
                break
            continue
        shx = m if m > -_INF and x_ok else cast(0.0, row[0])
        shz = mz if mz > -_INF and z_ok else cast(0.0, row[0])
        if ex is None:
            csx, cwx, csz, cwxz, cwzx, cc, cmiss_z, cmiss_x = _sums2(xc, zc, shx, shz, xt, None, None)
        else:
            k = j0 // CHUNK
            refs[0, k] = shx
            refs[1, k] = shz
            csx, cwx, csz, cwxz, cwzx, cc, cmiss_z, cmiss_x = _sums2(xc, zc, shx, shz, xt, ex[j0:j1], ez[j0:j1])
        if x_ok:
            s += csx
            w += cwx
            cnt += cc
        if z_ok:
            sz += csz
        if x_ok and z_ok:
            wxz += cwxz
            wzx += cwzx
            miss_z += cmiss_z
            miss_x += cmiss_x
    flags = (1 if miss_z > 0 else 0) + (2 if miss_x > 0 else 0)
    return m, s, w, mz, sz, wxz, wzx, cnt, am, amz, flags, moved


@njit(**_INLINE)
def _store_xz(st, ix, i, row, xt, m, s, w, mz, sz, wxz, wzx, am, flags):
    """Row i's evaluate columns with a reference (all but the count) from _xz_row's values."""
    st[i, 0] = m
    st[i, 1] = s
    st[i, 2] = w
    st[i, 3] = xt
    st[i, 4] = mz
    st[i, 5] = sz
    st[i, 6] = wxz
    st[i, 7] = wzx
    ix[i, 0] = _locate(row, am, CHUNK, m)
    ix[i, 2] = flags


@njit(**_JIT)
def _evaluate_xz(x, z, target, st, ix):
    n, v = x.shape
    kl = st.shape[1] == 10
    for i in range(n):
        prefer_wide_vectors()
        row = x[i]
        zrow = z[i]
        t = target[i]
        xt = row[t] if 0 <= t < v else cast(st[i, 3], row[0])     # the caller's threshold, or NaN
        m, s, w, mz, sz, wxz, wzx, cnt, am, _, flags, moved = _xz_row(row, zrow, xt, None, None, None)
        _store_xz(st, ix, i, row, xt, m, s, w, mz, sz, wxz, wzx, am, flags)
        ix[i, 1] = cnt
        # the KL columns where both rows have a finite maximum and sums (the others end by
        # finish_rows' rules), the row pair summed again while in cache where its one pass
        # cancelled (_kls_of_state)
        if kl and -_INF < m < _INF and -_INF < mz < _INF and s == s and sz == sz:
            st[i, 8], st[i, 9] = _kls_of_state(row, zrow, m, mz, s, sz, wxz, wzx, np.float64(moved), flags)


@njit(**PAR)
def _evaluate_x_mt(e, x, target, st, ix, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        call(e, (x[lo:hi], target[lo:hi], st[lo:hi], ix[lo:hi]))


@njit(**PAR)
def _evaluate_xz_mt(e, x, z, target, st, ix, parts, align):
    for k in prange(parts):
        lo, hi = share(x.shape[0], k, parts, align)
        call(e, (x[lo:hi], z[lo:hi], target[lo:hi], st[lo:hi], ix[lo:hi]))


def evaluate(x, z, target, st, ix, nthreads):
    # O(1) shape checks: the jitted loop does no bounds checking (the API validated the rest).
    n, v = x.shape
    if v < 1 or (z.shape[0] and (z.shape != x.shape or z.dtype != x.dtype)):
        raise ValueError(f"evaluate: z must have 0 rows or x's shape {x.shape} and dtype, got {z.shape}, {z.dtype}")
    if target.shape != (n,) or st.shape not in ((n, 8), (n, 10)) or ix.shape != (n, 3):
        raise ValueError(f"evaluate: target must have shape ({n},), st ({n}, 8 or 10), ix ({n}, 3)")
    x, z, target = read_only(x, z, target)

    if z.shape[0]:
        threads.run(_evaluate_xz, _evaluate_xz_mt, "rrrrr", nthreads, (x, z, target, st, ix), x)
    else:
        threads.run(_evaluate_x, _evaluate_x_mt, "rrrr", nthreads, (x, target, st, ix), x)
