"""Threads for the numba kernels: each row kernel is compiled serial, and a thin parallel
entry (``*_mt`` in the kernel modules) runs it over contiguous shares of the rows.

Why two functions per kernel: numba's parfor lowering of a whole kernel (``parallel=True`` on
the row loop, with every inlined helper inside it) made each specialization 2-3x as costly to
compile as the serial kernel (float32, Zen 4, 2026-12-05, first call in a fresh process:
entropy 4.6 s parallel vs 2.3 s serial, KL from logits 8.4 vs 2.5 s).  The entry's parfor holds
one call, so it compiles in ~1-1.5 s, and it keeps numba's own thread pool, whose launch costs
a few microseconds (a Python thread pool's hand-off cost 30-75 us per call, 20 % of a 2 MiB
in-cache call on two threads).

A row's result does not depend on the split: the block kernels (V <= SMALL_V) get shares that
start on their block boundaries (``align``), so their blocks hold the same rows as in one call.
"""
from __future__ import annotations

import threading

import numba
from numba import njit

#: the parallel entries: a prange over shares, each one call of a serial kernel
PAR = dict(parallel=True, cache=True, nogil=True)

#: Elements per share below which a split costs more than it saves: a parallel launch
#: (the omp layer, threads warm) costs ~3 us, the kernels ~0.3 ns per element and thread.
#: 24576 gained 12-26 % at 50000-65000 elements (Zen 4, 2026-12-07), but it split
#: test_linear's identity-head js_div rows, and numba's js_div gives some rows an ulp apart
#: on one share and on two (benchmarks/NOTES.md, 2026-12-07): 32768 until that is fixed.
MIN_SHARE = 1 << 15


@njit(inline="always")
def share(n, k, parts, align):
    """Rows [lo, hi) of share k of ``parts``, its start a multiple of ``align``."""
    blocks = (n + align - 1) // align
    lo = min(n, (blocks * k // parts) * align)
    hi = min(n, (blocks * (k + 1) // parts) * align)
    return lo, hi


def parts(x, nthreads, align=1):
    """How many shares to split ``x``'s rows into on ``nthreads`` threads."""
    blocks = -(-x.shape[0] // align)
    return max(1, min(int(nthreads), blocks, x.size // MIN_SHARE))


_LOCK = threading.Lock()
_SAFE = []          # [whether the threading layer takes calls from several Python threads], once known


def _safe():
    """numba's ``omp`` and ``tbb`` threading layers accept parallel calls from several Python
    threads at once; its fallback ``workqueue`` layer does not (it aborts the process), so
    there the calls are serialised.  The layer is only known after the first launch."""
    if not _SAFE:
        try:
            _SAFE.append(numba.threading_layer() != "workqueue")
        except ValueError:              # nothing launched yet
            return False
    return _SAFE[0]


def launch(k, parallel, *args):
    """``parallel(*args)``, a parallel entry, on ``k`` of numba's threads (numba's setting is
    per calling thread).  A plain function, not a context manager: the launch's Python cost
    is ~1.5 us of a C51 call's ~15 (a context manager added 1)."""
    numba.set_num_threads(max(1, min(int(k), numba.config.NUMBA_NUM_THREADS)))
    if _safe():
        parallel(*args)
    else:
        with _LOCK:
            parallel(*args)


def run(serial, parallel, nthreads, args, x, align=1):
    """``serial(*args)`` on one share, else ``parallel(*args, shares, align)`` on numba's
    threads: the split rule of every numba kernel.  ``x`` sizes the split: the input rows,
    or the per-row output where a kernel's work is a few elements per row."""
    k = parts(x, nthreads, align)
    if k == 1:
        serial(*args)
        return
    launch(k, parallel, *args, k, align)


def max_threads():
    """Threads numba may use in this process (``NUMBA_NUM_THREADS``)."""
    return numba.config.NUMBA_NUM_THREADS
