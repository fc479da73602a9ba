"""In-cache ns per element of the Cython kernels at each ISA level of the dispatch build
(issue 21), one thread, the levels called alternately in one process (CPU time of the thread,
so that the shared machine's noise hits every level alike); optionally against another build
of the extension, e.g. the former ``-march=native`` one:

    git worktree add /tmp/nat BASE && (cd /tmp/nat && FASTDIV_NATIVE=1 python setup.py build_ext --inplace)
    PYTHONPATH=. python benchmarks/isa_levels.py [--base /tmp/nat/fastdiv/_cython/_kernels.cpython-*.so]
        [--dtype float64] [16x16000 ...] [lse ce kl entropy]

Calls the extension's contract entry points (``K.lse(x, out, 1)``, ...), the layer under
``fastdiv.logsumexp(..., backend="cython")``: the API's per-call checks are the same for every
level and would only dilute the differences.  Prints, per op, the best and the median of
``--reps`` rounds for each level (and the base), and each level's best relative to the top
level's.
"""
import argparse
import importlib.machinery
import importlib.util
import time

import numpy as np

from fastdiv._cython import _kernels as K

ap = argparse.ArgumentParser()
ap.add_argument("--base", default=None, help="another build of fastdiv/_cython/_kernels (.so) to compare")
ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
ap.add_argument("--reps", type=int, default=40, help="interleaved rounds")
ap.add_argument("args", nargs="*", help="shapes ROWSxV and ops (lse ce kl entropy)")
a = ap.parse_args()

B = None
if a.base:
    loader = importlib.machinery.ExtensionFileLoader("basec._kernels", a.base)
    spec = importlib.util.spec_from_file_location("basec._kernels", a.base, loader=loader)
    B = importlib.util.module_from_spec(spec)
    loader.exec_module(B)
    print(f"base: {a.base} ({getattr(B, 'ISA_LEVEL', None) or B.SIMD_FLAGS or 'portable'}, {B.SIMD_ISA})")

levels = list(K.ISA_SUPPORTED)
print(f"levels: {', '.join(levels)} (built: {', '.join(K.ISA_LEVELS)}; dispatch={K.DISPATCH})")
shapes = [tuple(map(int, s.split("x"))) for s in a.args if "x" in s] or [(16, 16000)]
ops = [s for s in a.args if "x" not in s] or ["lse", "ce", "kl"]
dt = np.dtype(a.dtype)
rng = np.random.default_rng(0)
for n, v in shapes:
    x = (rng.standard_normal((n, v)) * 3).astype(dt)
    z = (rng.standard_normal((n, v)) * 3).astype(dt)
    t = rng.integers(0, v, n).astype(np.int64)
    w = np.ones(v, dt)
    out = np.empty(n, dt)
    calls = {"lse": lambda M: M.lse(x, out, 1),
             "ce": lambda M: M.ce_hard(x, t, -100, w, 0.0, out, 1),
             "kl": lambda M: M.kl_logits(x, z, 1.0, out, 1),
             "entropy": lambda M: M.entropy_logits(x, 1.0, out, 1)}
    reps = max(1, int(1e6 // (n * v)))
    for op in ops:
        f = calls[op]
        runs = [(lv, K) for lv in levels] + ([("base", B)] if B is not None else [])
        times = {name: [] for name, _ in runs}
        for _ in range(a.reps):
            for name, M in runs:
                if M is K:
                    K._use_level(name)
                f(M)
                t0 = time.thread_time()
                for _ in range(reps):
                    f(M)
                times[name].append((time.thread_time() - t0) / reps / (n * v) * 1e9)
        top = min(times[levels[-1]])
        cells = "  ".join(f"{name} {min(s):6.3f} (med {np.median(s):6.3f}, x{min(s) / top:.2f})"
                          for name, s in times.items())
        print(f"{n}x{v} {a.dtype} {op:7s} ns/el best: {cells}", flush=True)
K._use_level(levels[-1])
