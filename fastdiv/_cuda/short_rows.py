"""Short rows: the tile and small launch shapes, whole rows per block.

* ``tile``   tiny V (C51: V = 51): a block stages T consecutive rows -- one contiguous
  range of the flat input -- in shared memory with coalesced 16-byte loads (``copy_tile``,
  ``TILE_UNROLL`` loads in flight per thread), then each thread reduces one row from shared
  memory (max pass, then one exp per value): no shuffles, every lane busy, odd row strides
  bank-conflict free (even V: each thread starts at a rotated column).
* ``small``  V <= 8 * 32 when the tile does not fit: G <= 32 lanes per row, ``SMALL_K`` = 8
  strided values per lane in registers, a shuffle max, then one chunk update per lane against
  the row's max and a shuffle sum (``add``: every lane's state already sits on that max).

Either folds values into the accumulator states of ``accumulators.py``; ``kernels.launch_plan``
picks the shape and the rows per block, which are launch parameters (tests patch them small).
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, float64, int64, uint64

from . import intrinsics as D
from .intrinsics import inline as _dj
from .codegen import compile_source, gen_chunk, gen_maxv

#: values per lane in the small-V kernel (compiled in; ``SMALL_MAX_V = 32 * SMALL_K``)
SMALL_K = 8
#: 16-byte loads in flight per thread while the tile kernel stages rows in shared memory
TILE_UNROLL = 4


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
    return compile_source("\n".join(L) + "\n", ns, "copy_tile")


def make_kernels(op, kind):
    """``{"tile", "small"}`` -> kernel for the accumulator ``op`` on input ``kind``."""
    ACC = kind.acc
    VW = kind.vw
    NIN = op.NIN
    NMAX = op.NMAX
    PADX = op.PADX
    PADZ = op.PADZ
    sload = kind.sload
    init, seed, add, finish, active = op.init, op.seed, op.add, op.finish, op.active
    shfl = op.shfl
    chunkk = gen_chunk(op, SMALL_K)  # the small kernel's K strided values
    maxk = gen_maxv(SMALL_K, op.NEG_INF)
    SH = D.shfl_xor
    NEG_INF = ACC(-np.inf)

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

    return dict(tile=k_tile, small=k_small)
