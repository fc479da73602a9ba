"""The process's worker threads for the softcap pre-pass (``fastdiv.execute.run_blocks``):
one share of rows per worker, each transforming and reducing its rows (the compiled code
releases the GIL, so the shares run on separate cores).  A forked child gets its own pool (the
key holds the pid).  The numba kernels use numba's own threads instead: their hand-off is
cheaper (``fastdiv._numba.threads``)."""
from __future__ import annotations

import concurrent.futures
import os
import threading

_pools: dict = {}
_lock = threading.Lock()


def pool(n: int) -> concurrent.futures.ThreadPoolExecutor:
    """The pool of ``n`` workers of this process."""
    key = (os.getpid(), n)
    with _lock:
        if key not in _pools:
            _pools[key] = concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix="fastdiv")
        return _pools[key]


def edges(n: int, parts: int, align: int = 1) -> list[int]:
    """Boundaries of ``parts`` near-equal contiguous shares of ``range(n)``, each starting at a
    multiple of ``align`` (fewer shares when there are fewer aligned blocks)."""
    blocks = -(-n // align)
    parts = max(1, min(parts, blocks))
    return [min(n, (blocks * k // parts) * align) for k in range(parts + 1)]


def run(calls) -> None:
    """Run the zero-argument ``calls``: the first in this thread, the others on the pool, all
    finished before any error is raised (the first one's)."""
    calls = list(calls)
    if len(calls) == 1:
        calls[0]()
        return
    jobs = [pool(len(calls) - 1).submit(c) for c in calls[1:]]
    try:
        calls[0]()
    finally:
        concurrent.futures.wait(jobs)
    for job in jobs:
        job.result()
