"""CUDA kernel of the ``evaluate`` op (contract: ``fastdiv._registry``).

One block of ``BLOCK`` threads per row.  Each thread walks the columns ``tid, tid + BLOCK,
...`` keeping an online state in float64 (max, scaled sums, count of logits above the target's,
first argmax, KL sums with their own online rescaling), then the block merges the threads'
states in shared memory with the exact merge of ``fastdiv.states`` (rescale by
``exp(m_a - m)``, an all-masked part contributes nothing).  NaN and ``+inf`` are tracked as
flags, so no ``-inf - -inf`` or ``inf - inf`` is formed.  Functional, not tuned: float64
accumulation and one exp per element and input.  It stays apart from the tuned accumulators
(``accumulators.py``): its state (the target's rank, the first argmax, both KL cross sums,
NaN / +inf flags) is none of theirs, and moving its sums there would change its bits.

``evaluate(x, z, target, st, ix, nthreads=None, *, stream=None)``: ``x``, ``z`` 2-D
C-contiguous float32 / float64 device arrays (``z`` with 0 rows: no reference), ``target``
int64[rows], ``st`` float64[rows, 8], ``ix`` int64[rows, 3] device arrays.
"""
from __future__ import annotations

import math

import numpy as np

cuda = float64 = int64 = None     # numba.cuda, imported by the first launch (module globals: the
                                  # simulator swaps ``cuda`` inside kernels)

#: threads per block (a power of two; tests patch it small so the tree reduction runs)
BLOCK = 128

_cache: dict = {}


def _make(block):
    global cuda, float64, int64
    from numba import cuda, float64, int64

    NEG = -math.inf
    POS = math.inf

    @cuda.jit(device=True)
    def rescale(m_old, m_new):
        # e^(m_old - m_new) for m_old <= m_new; 0 for an empty (all masked) part
        if m_old == NEG:
            return 0.0
        return math.exp(m_old - m_new)

    @cuda.jit
    def kern(x, z, target, st, ix, has_ref):
        r = cuda.blockIdx.x
        tid = cuda.threadIdx.x
        V = x.shape[1]
        sm_f = cuda.shared.array((7, block), float64)      # m, s, w, mz, sz, wxz, wzx
        sm_i = cuda.shared.array((5, block), int64)        # count, argmax, first +inf, flags, bad bits
        t = target[r]
        xt = float64(x[r, t]) if t >= 0 and t < V else math.nan
        m = NEG
        s = 0.0
        w = 0.0
        mz = NEG
        sz = 0.0
        wxz = 0.0
        wzx = 0.0
        cnt = 0
        am = V
        am_inf = V
        flags = 0
        bad = 0                                            # 1 NaN in x, 2 +inf in x, 4 NaN in z, 8 +inf in z
        for j in range(tid, V, block):
            # both maxima first, then this element's terms: a rescale must only see the terms
            # already in the sums
            xv = float64(x[r, j])
            zv = float64(z[r, j]) if has_ref else 0.0
            x_ok = xv > NEG and xv < POS
            z_ok = has_ref and zv > NEG and zv < POS
            if xv > xt:
                cnt += 1
            if xv != xv:
                bad |= 1
            elif xv == POS:
                bad |= 2
                am_inf = min(am_inf, j)
            elif x_ok and xv > m:
                f = rescale(m, xv)
                delta = m - xv if m > NEG else 0.0
                w = f * (w + delta * s)
                wxz = f * (wxz + delta * s)
                wzx = wzx - delta * sz
                s = f * s
                m = xv
                am = j
            if has_ref:
                if zv != zv:
                    bad |= 4
                elif zv == POS:
                    bad |= 8
                elif z_ok and zv > mz:
                    f = rescale(mz, zv)
                    delta = mz - zv if mz > NEG else 0.0
                    wzx = f * (wzx + delta * sz)
                    wxz = wxz - delta * s
                    sz = f * sz
                    mz = zv
                if xv > NEG and zv == NEG:
                    flags |= 1
                if zv > NEG and xv == NEG:
                    flags |= 2
            if x_ok:
                dx = xv - m
                ex = math.exp(dx)
                s += ex
                w += ex * dx
            if z_ok:
                dz = zv - mz
                ez = math.exp(dz)
                sz += ez
                if x_ok:
                    wxz += ex * (dx - dz)
                    wzx += ez * (dz - dx)
        sm_f[0, tid] = m
        sm_f[1, tid] = s
        sm_f[2, tid] = w
        sm_f[3, tid] = mz
        sm_f[4, tid] = sz
        sm_f[5, tid] = wxz
        sm_f[6, tid] = wzx
        sm_i[0, tid] = cnt
        sm_i[1, tid] = am
        sm_i[2, tid] = am_inf
        sm_i[3, tid] = flags
        sm_i[4, tid] = bad
        cuda.syncthreads()
        half = block // 2
        while half > 0:
            if tid < half:
                o = tid + half
                ma = sm_f[0, tid]
                mb = sm_f[0, o]
                mm = max(ma, mb)
                fa = rescale(ma, mm)
                fb = rescale(mb, mm)
                da = ma - mm if ma > NEG else 0.0
                db = mb - mm if mb > NEG else 0.0
                mza = sm_f[3, tid]
                mzb = sm_f[3, o]
                mzm = max(mza, mzb)
                ga = rescale(mza, mzm)
                gb = rescale(mzb, mzm)
                ea = mza - mzm if mza > NEG else 0.0
                eb = mzb - mzm if mzb > NEG else 0.0
                sa = sm_f[1, tid]
                sb = sm_f[1, o]
                sza = sm_f[4, tid]
                szb = sm_f[4, o]
                sm_f[2, tid] = fa * (sm_f[2, tid] + da * sa) + fb * (sm_f[2, o] + db * sb)
                sm_f[5, tid] = fa * (sm_f[5, tid] + (da - ea) * sa) + fb * (sm_f[5, o] + (db - eb) * sb)
                sm_f[6, tid] = ga * (sm_f[6, tid] + (ea - da) * sza) + gb * (sm_f[6, o] + (eb - db) * szb)
                sm_f[1, tid] = fa * sa + fb * sb
                sm_f[4, tid] = ga * sza + gb * szb
                sm_f[0, tid] = mm
                sm_f[3, tid] = mzm
                if mb > ma or (mb == ma and sm_i[1, o] < sm_i[1, tid]):
                    sm_i[1, tid] = sm_i[1, o]
                sm_i[0, tid] += sm_i[0, o]
                sm_i[2, tid] = min(sm_i[2, tid], sm_i[2, o])
                sm_i[3, tid] |= sm_i[3, o]
                sm_i[4, tid] |= sm_i[4, o]
            cuda.syncthreads()
            half //= 2
        if tid == 0:
            bad = sm_i[4, 0]
            m = sm_f[0, 0]
            st[r, 0] = math.nan if bad & 1 else (POS if bad & 2 else m)
            st[r, 1] = sm_f[1, 0]
            st[r, 2] = sm_f[2, 0]
            st[r, 3] = xt
            ix[r, 0] = sm_i[2, 0] if bad & 2 else (sm_i[1, 0] if m > NEG else 0)
            ix[r, 1] = sm_i[0, 0]
            ix[r, 2] = sm_i[3, 0] if has_ref else 0
            if has_ref:
                st[r, 4] = math.nan if bad & 4 else (POS if bad & 8 else sm_f[3, 0])
                st[r, 5] = sm_f[4, 0]
                st[r, 6] = sm_f[5, 0]
                st[r, 7] = sm_f[6, 0]

    return kern


def evaluate(x, z, target, st, ix, nthreads=None, *, stream=None):
    from . import kernels

    rows, v = (int(d) for d in x.shape)
    has_ref = int(z.shape[0]) != 0
    if v < 1 or (has_ref and tuple(z.shape) != (rows, v)):
        raise ValueError(f"evaluate: z must have 0 rows or x's shape {(rows, v)}, got {tuple(z.shape)}")
    if tuple(target.shape) != (rows,) or tuple(st.shape) != (rows, 8) or tuple(ix.shape) != (rows, 3):
        raise ValueError(f"evaluate: target must have shape ({rows},), st ({rows}, 8), ix ({rows}, 3)")
    block = int(BLOCK)
    if block < 1 or block & (block - 1):
        raise ValueError(f"BLOCK must be a power of two, got {block}")
    kern = _cache.get(block)
    if kern is None:
        kern = _cache[block] = _make(block)
    if rows == 0:
        return
    zz = z if has_ref else x
    if stream is None:
        stream = cuda.default_stream()
    kernels._launch(kern, rows, block, stream, (x, zz, target, st, ix, np.int64(has_ref)))
