"""Device-side reductions: block-wide trees in shared memory, and the sum / mean of per-row
results built on them.

``block_sum`` / ``block_max`` fold one value of every thread of a block in a fixed-order
tree in shared memory (``sh[t] = combine(sh[t], sh[t + s])``, ``s`` halving from half the
block), so their result does not depend on scheduling: the same input gives the same bits.
``divergences.py`` reduces its row passes with them.  ``k_reduce_partial`` sums a chunk of
the values per block, with the mean's denominator beside it (the row count, the rows whose
target is not ignored, or their class weights: torch's weighted-mean rule for
cross-entropy), and ``k_reduce_final`` adds the blocks' partials in one block, both in
float64 and through ``block_sum``; ``kernels.device_sum`` / ``device_mean`` launch them.
"""
from __future__ import annotations

import math

from numba import cuda, float64, int64

from . import intrinsics as D

#: most threads a block reduction serves: the length of its shared-memory buffer
RED_MAX_THREADS = 1024


def _syncing(fn):
    # A device function that calls cuda.syncthreads from kernels of other modules: the
    # simulator swaps its fake ``cuda`` into the launching kernel's module only, and into
    # this module through its own device-function wrapper.
    return cuda.jit(device=True)(fn) if D.SIM else D.inline(fn)


def _block_reduce(combine):
    """``reduce(sh, v, tid, nt)``: ``combine`` folded over v of every thread of the block
    (nt a power of two <= ``RED_MAX_THREADS``, a tree in ``sh``); every thread gets the result."""

    @_syncing
    def reduce(sh, v, tid, nt):
        sh[tid] = v
        cuda.syncthreads()
        s = nt // 2
        while s > 0:
            if tid < s:
                sh[tid] = combine(sh[tid], sh[tid + s])
            cuda.syncthreads()
            s //= 2
        r = sh[0]
        cuda.syncthreads()
        return r

    return reduce


@D.inline
def _add(a, b):
    return a + b


@D.inline
def _larger(a, b):
    """b where b > a, else a: a NaN never wins, so the max ignores NaN."""
    return b if b > a else a


#: sum over the block
block_sum = _block_reduce(_add)
#: NaN-ignoring max over the block
block_max = _block_reduce(_larger)


@cuda.jit
def k_reduce_partial(vals, n, tgt, wgt, has_t, has_w, ign, chunk, part):
    """part[b] = (sum vals[i], sum of the mean's denominator terms) over block b's chunk."""
    sh = cuda.shared.array(RED_MAX_THREADS, float64)
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
    an = block_sum(sh, an, tid, nthr)
    ad = block_sum(sh, ad, tid, nthr)
    if tid == 0:
        part[b, 0] = an
        part[b, 1] = ad


@cuda.jit
def k_reduce_final(part, nb, out, mean, empty):
    """out[0] = the sum of the partials' first column, or (``mean``) its ratio to the second's
    (``empty`` when that is 0)."""
    sh = cuda.shared.array(RED_MAX_THREADS, float64)
    tid = cuda.threadIdx.x
    nthr = cuda.blockDim.x
    an = float64(0.0)
    ad = float64(0.0)
    for i in range(tid, nb, nthr):
        an += part[i, 0]
        ad += part[i, 1]
    an = block_sum(sh, an, tid, nthr)
    ad = block_sum(sh, ad, tid, nthr)
    if tid == 0:
        if mean:
            out[0] = an / ad if ad != 0.0 else empty
        else:
            out[0] = an
