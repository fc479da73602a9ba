"""Device-side reductions of per-row results: a deterministic sum or mean on the GPU.

``k_reduce_partial`` sums a chunk of the values per block, with the mean's denominator
beside it (the row count, the rows whose target is not ignored, or their class weights:
torch's weighted-mean rule for cross-entropy), and ``k_reduce_final`` adds the blocks'
partials in one block.  Both accumulate in float64 and add in a fixed-order tree in shared
memory, so the result does not depend on scheduling: the same input gives the same bits.
``kernels.device_sum`` / ``device_mean`` launch them.
"""
from __future__ import annotations

import math

from numba import cuda, float64, int64

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

