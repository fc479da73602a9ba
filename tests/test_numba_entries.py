"""numba's parallel entries run the serial kernel's own compiled code (fastdiv._numba.threads:
``Entry``, ``call``), so a result's bits depend neither on the thread count nor on whether the
process compiled its kernels or loaded them from numba's cache."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from numba import njit, prange, typeof, types
from numba.core.errors import TypingError

from fastdiv._numba import threads


@njit(cache=False)
def _fill(out, value):
    for i in range(out.shape[0]):
        out[i] = value


@njit(cache=False, parallel=True)
def _fill_mt(e, out, value, parts, align):
    for k in prange(parts):
        lo, hi = threads.share(out.shape[0], k, parts, align)
        threads.call(e, (out[lo:hi], value))


def test_an_entry_calls_its_kernel_on_each_share():
    out = np.zeros(10)
    threads.split(3, _fill_mt, _fill, "r=", out, 2.5)
    assert (out == 2.5).all()
    assert threads.entry(_fill, threads.rows(typeof(out)), types.float64) is \
        threads.entry(_fill, threads.rows(typeof(out)), types.float64)


def test_an_entry_for_other_argument_types_does_not_compile():
    """A call whose arguments are not the entry's signature would run the kernel on the wrong
    layout: it fails to type instead."""
    out = np.zeros(10)
    e = threads.entry(_fill, threads.rows(typeof(out.astype(np.float32))), types.float64)
    with pytest.raises(TypingError, match="an entry compiled for"):
        _fill_mt(e, out, 2.5, 2, 1)


_SCRIPT = r"""
import numpy as np
import fastdiv
from fastdiv._numba import threads
threads.MIN_SHARE = 1              # two shares for any input
rng = np.random.default_rng(1)
x = (rng.standard_normal((75, 1271)) * 3).astype(np.float32)
z = (x + rng.standard_normal((75, 1271)) * 0.5).astype(np.float32)
bits = []
for t in (1.0, 2.5):
    for n in (2, 1):               # the parallel entry first: it used to keep its own copy
        with fastdiv.threads(n):
            r = fastdiv.js_div(x, z, temperature=t, reduction="none", backend="numba")
        bits.append(r.view(np.int32).tolist())
print(bits)
"""


@pytest.mark.slow
def test_js_div_bits_do_not_depend_on_the_numba_cache(tmp_path):
    """Before the entries, a process that loaded numba's js_div entry from the cache before its
    serial kernel ran the entry's own copy of it, optimised twice: 8 of these 75 rows came out
    an ulp away from one share (benchmarks/NOTES.md, 2026-12-08).  The first process compiles
    (a fresh cache), the second loads everything from the cache."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "cache"), FASTDIV_NUM_THREADS="2")
    runs = [subprocess.run([sys.executable, "-c", _SCRIPT], env=env, cwd=tmp_path, capture_output=True, text=True,
                           check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1]
    one, two, one_t, two_t = eval(runs[0])
    assert one == two and one_t == two_t
