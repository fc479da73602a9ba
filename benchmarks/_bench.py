"""Shared benchmark pieces: regimes, seeded inputs, the read-bandwidth probe, peers, timing.

Used by the pytest-benchmark suite (``test_bench.py``), the regression gate (``gate.py``)
and ``fastdiv bench``.  Speed is only ever judged as a ratio to something measured in the
same process, because the 2-core machines this runs on drift +-10-25 % between runs.
"""
from __future__ import annotations

import functools
import statistics
import time

import numpy as np
from numba import njit, prange

import fastdiv
from fastdiv import _registry

#: name -> (rows, V): about 200-400 MB of float32 each, far beyond L2, like real eval jobs.
REGIMES = {
    "V32000": (2048, 32000),
    "V50257": (2048, 50257),
    "V128256": (512, 128256),
    "V256000": (256, 256000),
    "V1024": (65536, 1024),
    "C51": (1 << 20, 51),
}
OPS = ("logsumexp", "entropy", "cross_entropy", "kl_div")
DTYPES = ("float32", "float64", "float16")
#: arrays of logits an op reads (KL reads two)
N_ARRAYS = {"logsumexp": 1, "entropy": 1, "cross_entropy": 1, "kl_div": 2}


@njit(parallel=True, fastmath={"reassoc", "contract", "nsz", "arcp"}, cache=True)
def _probe_sum(a):
    """The read-bandwidth probe: a parallel sum over every element, the cheapest possible
    reader of the same bytes (rows split across threads like the kernels)."""
    total = 0.0
    for i in prange(a.shape[0]):
        row = a[i]
        acc = row[0] * 0
        for j in range(row.shape[0]):
            acc += row[j]
        total += acc
    return total


def probe(*arrays):
    for a in arrays:
        _probe_sum(a.view(np.uint16) if a.dtype.itemsize == 2 else a)


@functools.lru_cache(maxsize=4)
def inputs(rows, v, dtype, seed=0):
    """Seeded logits x, z (for KL) and targets; float16 is generated in float32 then cast."""
    rng = np.random.default_rng(seed)
    gen = np.float64 if dtype == "float64" else np.float32
    x = rng.standard_normal((rows, v), dtype=gen)
    x *= 2
    z = rng.standard_normal((rows, v), dtype=gen)
    z *= 2
    t = rng.integers(0, v, rows)
    if dtype == "float16":
        x, z = x.astype(np.float16), z.astype(np.float16)
    return x, z, t


def fastdiv_call(op, backend, x, z, t):
    if op == "logsumexp":
        return lambda: fastdiv.logsumexp(x, backend=backend)
    if op == "entropy":
        return lambda: fastdiv.entropy(x, backend=backend)
    if op == "cross_entropy":
        return lambda: fastdiv.cross_entropy(x, t, backend=backend)
    return lambda: fastdiv.kl_div(x, z, backend=backend)


def peer_call(peer, op, x, z, t):
    """The same quantity computed by a peer library, or None if it is not installed."""
    if peer == "numpy":
        return fastdiv_call(op, "numpy", x, z, t)
    if peer == "torch":
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            return None
        tx, tz, tt = torch.from_numpy(x), torch.from_numpy(z), torch.from_numpy(t)
        return {
            "logsumexp": lambda: torch.logsumexp(tx, -1),
            "entropy": lambda: torch.distributions.Categorical(logits=tx).entropy(),
            "cross_entropy": lambda: F.cross_entropy(tx, tt),
            "kl_div": lambda: F.kl_div(F.log_softmax(tz, -1), F.log_softmax(tx, -1), log_target=True,
                                       reduction="batchmean"),
        }[op]
    if peer == "scipy":
        try:
            import scipy.special as sps
        except ImportError:
            return None
        return {
            "logsumexp": lambda: sps.logsumexp(x, axis=-1),
            "entropy": lambda: sps.entr(sps.softmax(x, axis=-1)).sum(-1),
            "cross_entropy": lambda: np.mean(sps.logsumexp(x, axis=-1) - x[np.arange(len(t)), t]),
            "kl_div": lambda: np.mean(sps.rel_entr(sps.softmax(x, axis=-1), sps.softmax(z, axis=-1)).sum(-1)),
        }[op]
    raise ValueError(peer)


def available_backends():
    return [b for b in ("numba", "cython") if _registry.unavailable_reason(b) is None]


def median_time(fn, repeat=7, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def interleaved_ratio(kernel, reference, repeat=9):
    """Median kernel time / median reference time, measured alternately so that both see
    the same machine state (drift, a neighbour's load) within one run."""
    kernel()
    reference()
    tk, tr = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        reference()
        t1 = time.perf_counter()
        kernel()
        t2 = time.perf_counter()
        tr.append(t1 - t0)
        tk.append(t2 - t1)
    return statistics.median(tk) / statistics.median(tr), statistics.median(tk), statistics.median(tr)


def nbytes(op, x):
    return N_ARRAYS[op] * x.nbytes
