"""In-cache A/B of the numba kernels by CPU time of one thread: a snapshot of the kernels
(the "base", e.g. the previous commit) against the working tree, with Cython alongside.

The machine is shared and noisy, so wall-clock ratios from memory move by 10-25 %; CPU time
of one thread on cache-resident inputs, the two versions called alternately in one process,
is what showed the instruction-level changes of benchmarks/NOTES.md ("numba speed after the
rewrite").  Make the snapshot first:

    rm -rf /tmp/basek && mkdir /tmp/basek
    git archive HEAD~1 fastdiv/_numba | tar -x -C /tmp/basek && mv /tmp/basek/fastdiv/_numba /tmp/basek/basek
    NUMBA_NUM_THREADS=1 PYTHONPATH=. python benchmarks/numba_ab.py [--base /tmp/basek] \\
      [8x50257 16384x51 ...] [lse ce entropy kl]

Prints ns per element (per pair for KL) for base, new and Cython.
"""
import argparse
import sys
import time

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--base", default="/tmp/basek", help="folder holding the snapshot package 'basek'")
ap.add_argument("args", nargs="*", help="shapes ROWSxV and ops (lse ce entropy kl)")
a = ap.parse_args()
sys.path.insert(0, a.base)
from basek import kernels as O  # noqa: E402

from fastdiv._cython import _kernels as C  # noqa: E402
from fastdiv._numba import kernels as N  # noqa: E402

shapes = [tuple(map(int, s.split("x"))) for s in a.args if "x" in s] or [(8, 50257), (16384, 51)]
ops = [s for s in a.args if "x" not in s] or ["lse", "ce", "entropy", "kl"]
rng = np.random.default_rng(0)
for n, v in shapes:
    x = rng.standard_normal((n, v), dtype=np.float32) * 3
    z = rng.standard_normal((n, v), dtype=np.float32) * 3
    t = rng.integers(0, v, n).astype(np.int64)
    w = np.ones(v, np.float32)
    out = np.empty(n, np.float32)

    def calls(K):
        return {"lse": lambda: K.lse(x, out, 1), "ce": lambda: K.ce_hard(x, t, -100, w, 0.0, out, 1),
                "entropy": lambda: K.entropy_logits(x, 1.0, out, 1), "kl": lambda: K.kl_logits(x, z, 1.0, out, 1)}

    base, new, cy = calls(O), calls(N), calls(C)
    reps = max(1, int(2e6 // (n * v)))
    for op in ops:
        fs = (base[op], new[op], cy[op])
        for f in fs:
            f()
        times = [[], [], []]
        for _ in range(15):
            for f, acc in zip(fs, times):
                t0 = time.thread_time()
                for _ in range(reps):
                    f()
                acc.append((time.thread_time() - t0) / reps / (n * v) * 1e9)
        o, nn, c = (float(np.median(s)) for s in times)
        print(f"{n}x{v} {op:8s} base {o:6.3f}  new {nn:6.3f}  cython {c:6.3f} ns/el   new/base {nn / o:.3f}  "
              f"new/cython {nn / c:.3f}", flush=True)
