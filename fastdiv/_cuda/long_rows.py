"""Long rows: the group and block launch shapes, an online pass over 16-byte loads.

* ``group``  medium V (``kernels.GROUP_MAX_V``): one warp per row.
* ``block``  large V: one block per row, or per column slice of a row when there are too few
  rows to fill the GPU (``kernels.SPLIT_*``); the slices' states are merged by the second,
  tiny kernel ``merge``, one thread per row.

Each lane of a row's warp / block folds its share of the row into an accumulator state
(``accumulators.py``) with ``accumulate``: scalar loads for the unaligned head and tail, and
in between ``unroll`` 16-byte loads (``ld.global.nc``) per input and lane issued before
any use, their values folded as one chunk (one max test and at most one rescale per chunk).
The lanes' states are then merged exactly by warp shuffles (``shfl.xor``, a fixed tree) and,
in a block, across warps through shared memory.  Indices are 64-bit; the block size is a
launch parameter (tests patch it small).
"""
from __future__ import annotations

from numba import cuda, int64

from .codegen import compile_source, gen_chunk


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
    return compile_source("\n".join(L) + "\n", ns, "accumulate")



def make_kernels(op, kind, unroll):
    """``{"group", "block", "merge"}`` -> kernel for the accumulator ``op`` on input ``kind``.

    ``unroll``: 16-byte loads in flight per input and thread (compiled in).
    """
    ACC = kind.acc
    VW = kind.vw
    NS = op.NS
    init, merge, finish, active = op.init, op.merge, op.finish, op.active
    shfl, load, store = op.shfl, op.load, op.store
    chunk1 = gen_chunk(op, 1)  # scalar head / tail
    chunkv = gen_chunk(op, VW)  # one 16-byte vector
    accumulate = gen_accumulate(op, kind, unroll, init, chunk1, chunkv)

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

    return dict(group=k_group, block=k_block, merge=k_merge)
