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
The limit is taken by the first call that enters and given back by the last that leaves (a
``threadpoolctl.threadpool_limits`` block entered elsewhere meanwhile would take 1 for the
original and restore that).  threadpoolctl (scikit-learn's) finds and sets it, for the BLAS
numpy was built with (``numpy.__config__``: OpenBLAS, scipy-openblas, MKL or BLIS; every
loaded library of that kind); without threadpoolctl, or for another BLAS (Accelerate), heads
keep the BLAS threaded and the kernels on one thread.
"""
from __future__ import annotations

import contextlib
import importlib.util
import threading
from typing import Iterator

_lock = threading.Lock()
_depth = 0
_limits = None
_controller: list = []        # [controller of the loaded BLAS libraries, or None], once known


#: numpy's build names of its BLAS -> threadpoolctl's ``internal_api``
_INTERNAL_API = {"scipy-openblas": "openblas", "openblas": "openblas", "mkl": "mkl", "blis": "blis"}


def _numpy_blas():
    """threadpoolctl's ``internal_api`` of the BLAS numpy was built with, or None."""
    import numpy as np

    try:
        name = np.__config__.CONFIG["Build Dependencies"]["blas"]["name"]
    except (AttributeError, KeyError, TypeError):
        return None
    return _INTERNAL_API.get(str(name).lower())


def _blas():
    """threadpoolctl's controller of numpy's BLAS (every loaded library of its kind: numpy
    loads its own on import), or None where threadpoolctl is not installed, numpy's BLAS is
    of another kind or none is found."""
    if not _controller:
        ctl, api = None, _numpy_blas()
        try:
            import threadpoolctl
        except ImportError:
            api = None
        if api is not None:
            ctl = threadpoolctl.ThreadpoolController().select(internal_api=api)
            ctl = ctl if ctl.lib_controllers else None
        _controller.append(ctl)
    return _controller[0]


def describe() -> str:
    """How numpy heads run here, for ``show_config``."""
    ctl = _blas()
    if ctl is not None:
        info = ctl.info()[0]
        return (f"numpy heads by shares: numpy's BLAS ({info['internal_api']} {info['version']}) held to one "
                f"thread during a call, by threadpoolctl")
    if importlib.util.find_spec("threadpoolctl") is None:
        return "numpy heads one block at a time: threadpoolctl is not installed (the linear extra)"
    return f"numpy heads one block at a time: numpy's BLAS ({_numpy_blas() or 'unknown'}) cannot be set"


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
