"""numpy's BLAS held to one thread while fastdiv's own threads each compute a share of a head's
rows (``fastdiv.linear`` on numpy arrays, #20).

Why: a threaded BLAS keeps its workers spinning for a while after each matmul (OpenBLAS about
2^28 cycles; MKL alike), so a kernel that follows a tile's matmul on every core loses one core
to a spinner, and even one kernel thread leaves the other core idle: at 2048 x D 256 -> V 50257
in float32 (2-core Zen 4, 2026-12-06) the 13 tile matmuls took 272 ms on the BLAS's two threads
and the kernels 31-36 ms more on one.  With the BLAS on one thread and one share of the rows
per core (its own matmuls and kernels, nothing shared but the weight), the whole call took
0.56-0.58x of a single-threaded whole matmul.

The BLAS's thread count is a process-wide setting (OpenBLAS's "local" setter changes it for
every thread too), so other threads' BLAS calls run single-threaded while a call holds it.
The limit is taken by the first call that enters and given back by the last that leaves.
threadpoolctl (scikit-learn's, for every BLAS numpy may be built with: OpenBLAS, MKL, BLIS,
FlexiBLAS) finds and sets it; without it, heads keep the BLAS threaded and the kernels on one
thread.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Iterator

_lock = threading.Lock()
_depth = 0
_limits = None
_controller: list = []        # [controller of the loaded BLAS libraries, or None], once known


def _blas():
    """threadpoolctl's controller of the BLAS libraries loaded in this process (numpy's among
    them: numpy loads its BLAS on import), or None where threadpoolctl is not installed or
    finds none."""
    if not _controller:
        try:
            import threadpoolctl
        except ImportError:
            ctl = None
        else:
            ctl = threadpoolctl.ThreadpoolController().select(user_api="blas")
            ctl = ctl if ctl.lib_controllers else None
        _controller.append(ctl)
    return _controller[0]


def available() -> bool:
    """Whether the BLAS's thread count can be set here (threadpoolctl installed and a BLAS found)."""
    return _blas() is not None


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Hold every loaded BLAS to one thread for the block (nested and concurrent blocks share
    one limit; the last to leave restores the BLAS's own setting)."""
    global _depth, _limits
    with _lock:
        if _depth == 0:
            _limits = _blas().limit(limits=1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _limits.restore_original_limits()
                _limits = None
