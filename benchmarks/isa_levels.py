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

import numpy as np

from _common import kernel_inputs, load_extension, ns_per_element, shapes_and_ops
from fastdiv._cython import _kernels as K

ap = argparse.ArgumentParser()
ap.add_argument("--base", default=None, help="another build of fastdiv/_cython/_kernels (.so) to compare")
ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
ap.add_argument("--reps", type=int, default=40, help="interleaved rounds")
ap.add_argument("args", nargs="*", help="shapes ROWSxV and ops (lse ce kl entropy)")
a = ap.parse_args()

B = None
if a.base:
    B = load_extension(a.base)
    print(f"base: {a.base} ({getattr(B, 'ISA_LEVEL', None) or B.SIMD_FLAGS or 'portable'}, {B.SIMD_ISA})")

levels = list(K.ISA_SUPPORTED)
print(f"levels: {', '.join(levels)} (built: {', '.join(K.ISA_LEVELS)}; dispatch={K.DISPATCH})")
shapes, ops = shapes_and_ops(a.args, [(16, 16000)], ["lse", "ce", "kl"])
for n, v in shapes:
    d = kernel_inputs(n, v, a.dtype)
    calls = {"lse": lambda M: M.lse(d.x, d.out, 1),
             "ce": lambda M: M.ce_hard(d.x, d.t, -100, d.w, 0.0, d.out, 1),
             "kl": lambda M: M.kl_logits(d.x, d.z, 1.0, d.out, 1),
             "entropy": lambda M: M.entropy_logits(d.x, 1.0, d.out, 1)}
    for op in ops:
        f = calls[op]
        runs = {lv: (lambda: f(K)) for lv in levels}
        if B is not None:
            runs["base"] = lambda: f(B)
        times = ns_per_element(runs, a.reps, n * v, before=lambda name: name in levels and K._use_level(name))
        top = min(times[levels[-1]])
        cells = "  ".join(f"{name} {min(s):6.3f} (med {np.median(s):6.3f}, x{min(s) / top:.2f})"
                          for name, s in times.items())
        print(f"{n}x{v} {a.dtype} {op:7s} ns/el best: {cells}", flush=True)
K._use_level(levels[-1])
