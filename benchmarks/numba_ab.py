"""In-cache A/B of the numba kernels by CPU time of one thread: a snapshot of the kernels
(the "base", e.g. the previous commit) against the working tree, with Cython alongside (and,
with ``--cython-base``, a base build of the Cython extension against the working tree's).

The machine is shared and noisy, so wall-clock ratios from memory move by 10-25 %; CPU time
of one thread on cache-resident inputs, the two versions called alternately in one process,
is what showed the instruction-level changes of benchmarks/NOTES.md ("numba speed after the
rewrite").  Make the snapshot first:

    rm -rf /tmp/basek && mkdir /tmp/basek
    git archive HEAD~1 fastdiv/_numba | tar -x -C /tmp/basek && mv /tmp/basek/fastdiv/_numba /tmp/basek/basek
    NUMBA_NUM_THREADS=1 PYTHONPATH=. python benchmarks/numba_ab.py [--base /tmp/basek] \\
      [--dtype float64] [8x50257 16384x51 ...] [lse ce entropy kl kl_probs entropy_probs js_probs]

A base Cython build (``git archive BASE | tar -x -C /tmp/basec && (cd /tmp/basec && python
setup.py build_ext --inplace)``) is compared with ``--cython-base
/tmp/basec/fastdiv/_cython/_kernels.cpython-*.so``.

Prints ns per element (per pair for two-input ops) for base, new and Cython.
"""
import argparse
import importlib.machinery
import importlib.util
import sys
import time

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--base", default="/tmp/basek", help="folder holding the snapshot package 'basek'")
ap.add_argument("--cython-base", default=None, help="a base build of fastdiv/_cython/_kernels (.so) to A/B")
ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
ap.add_argument("--reps", type=int, default=15, help="interleaved rounds (the median is printed)")
ap.add_argument("args", nargs="*", help="shapes ROWSxV and ops (lse ce entropy kl kl_probs entropy_probs js_probs)")
a = ap.parse_args()
sys.path.insert(0, a.base)
# The backends' entry modules hold every contract function (the kernels live in several
# modules: js_probs in divergences.py); a snapshot from before the entry existed has them in
# kernels.py and divergences.py, merged here.
try:
    from basek import ops as O  # noqa: E402
except ImportError:
    import types

    from basek import divergences as _OD, kernels as _OK  # noqa: E402
    O = types.SimpleNamespace(**{**vars(_OD), **vars(_OK)})

from fastdiv._cython import _kernels as C  # noqa: E402
from fastdiv._numba import ops as N  # noqa: E402

CB = None
if a.cython_base:
    loader = importlib.machinery.ExtensionFileLoader("basec._kernels", a.cython_base)
    spec = importlib.util.spec_from_file_location("basec._kernels", a.cython_base, loader=loader)
    CB = importlib.util.module_from_spec(spec)
    loader.exec_module(CB)

shapes = [tuple(map(int, s.split("x"))) for s in a.args if "x" in s] or [(8, 50257), (16384, 51)]
ops = [s for s in a.args if "x" not in s] or ["lse", "ce", "entropy", "kl"]
dt = np.dtype(a.dtype)
rng = np.random.default_rng(0)
for n, v in shapes:
    x = (rng.standard_normal((n, v)) * 3).astype(dt)
    z = (rng.standard_normal((n, v)) * 3).astype(dt)
    p = rng.dirichlet(np.full(v, 0.5), size=n).astype(dt)
    q = rng.dirichlet(np.full(v, 0.5), size=n).astype(dt)
    t = rng.integers(0, v, n).astype(np.int64)
    w = np.ones(v, dt)
    out = np.empty(n, dt)

    def calls(K):
        return {"lse": lambda: K.lse(x, out, 1), "ce": lambda: K.ce_hard(x, t, -100, w, 0.0, out, 1),
                "entropy": lambda: K.entropy_logits(x, 1.0, out, 1), "kl": lambda: K.kl_logits(x, z, 1.0, out, 1),
                "kl_probs": lambda: K.kl_probs(p, q, out, 1), "entropy_probs": lambda: K.entropy_probs(p, out, 1),
                "js_probs": lambda: K.js_probs(p, q, 0.5, out, 1)}

    versions = [calls(O), calls(N), calls(C)] + ([calls(CB)] if CB is not None else [])
    reps = max(1, int(2e6 // (n * v)))
    for op in ops:
        fs = [vers[op] for vers in versions]
        for f in fs:
            f()
        times = [[] for _ in fs]
        for _ in range(a.reps):
            for f, acc in zip(fs, times):
                t0 = time.thread_time()
                for _ in range(reps):
                    f()
                acc.append((time.thread_time() - t0) / reps / (n * v) * 1e9)
        med = [float(np.median(s)) for s in times]
        line = (f"{n}x{v} {a.dtype} {op:13s} base {med[0]:6.3f}  new {med[1]:6.3f}  cython {med[2]:6.3f} ns/el   "
                f"new/base {med[1] / med[0]:.3f}  new/cython {med[1] / med[2]:.3f}")
        if CB is not None:
            line += f"   cython base {med[3]:6.3f}  cython new/base {med[2] / med[3]:.3f}"
        print(line, flush=True)
