"""In-cache A/B of the numba kernels by CPU time of one thread: another tree's kernels (the
"base", e.g. the previous commit in a ``git worktree``) against the working tree's, with
Cython alongside (and, with ``--cython-base``, a base build of the Cython extension against
the working tree's).

The machine is shared and noisy, so wall-clock ratios from memory move by 10-25 %; CPU time
of one thread on cache-resident inputs, the versions called alternately in one process, is
what showed the instruction-level changes of benchmarks/NOTES.md ("numba speed after the
rewrite").  The base tree's package is loaded under another name (``fastdiv_base``), so both
run in this process:

    git worktree add /tmp/base HEAD~1
    NUMBA_NUM_THREADS=1 PYTHONPATH=. python benchmarks/numba_ab.py [--base /tmp/base] \\
      [--dtype float64] [8x50257 16384x51 ...] [lse ce entropy kl kl_probs entropy_probs js_probs]

Without ``--base`` it prints the working tree's numba kernels beside Cython.  A base Cython
build (``(cd /tmp/base && python setup.py build_ext --inplace)``) is compared with
``--cython-base /tmp/base/fastdiv/_cython/_kernels.cpython-*.so``.

Prints ns per element (per pair for two-input ops).
"""
import argparse
import importlib
import importlib.util
import os
import sys

import numpy as np

from _common import kernel_inputs, load_extension, ns_per_element, shapes_and_ops

ap = argparse.ArgumentParser()
ap.add_argument("--base", default=None, help="root of another tree (a git worktree) whose numba kernels to A/B")
ap.add_argument("--cython-base", default=None, help="a base build of fastdiv/_cython/_kernels (.so) to A/B")
ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
ap.add_argument("--reps", type=int, default=15, help="interleaved rounds (the median is printed)")
ap.add_argument("args", nargs="*", help="shapes ROWSxV and ops (lse ce entropy kl kl_probs entropy_probs js_probs)")
a = ap.parse_args()


def tree_ops(root, name="fastdiv_base"):
    """The numba entry module of the package under ``root``, imported as ``name``: its
    relative imports resolve inside it, beside the working tree's ``fastdiv``."""
    pkg = os.path.join(root, "fastdiv")
    spec = importlib.util.spec_from_file_location(name, os.path.join(pkg, "__init__.py"),
                                                  submodule_search_locations=[pkg])
    sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules[name])
    return importlib.import_module(name + "._numba.ops")


O = tree_ops(a.base) if a.base else None

from fastdiv._cython import _kernels as C  # noqa: E402
from fastdiv._numba import ops as N  # noqa: E402

CB = load_extension(a.cython_base) if a.cython_base else None

shapes, ops = shapes_and_ops(a.args, [(8, 50257), (16384, 51)], ["lse", "ce", "entropy", "kl"])
for n, v in shapes:
    d = kernel_inputs(n, v, a.dtype)

    def calls(K):
        return {"lse": lambda: K.lse(d.x, d.out, 1), "ce": lambda: K.ce_hard(d.x, d.t, -100, d.w, 0.0, d.out, 1),
                "entropy": lambda: K.entropy_logits(d.x, 1.0, d.out, 1),
                "kl": lambda: K.kl_logits(d.x, d.z, 1.0, d.out, 1), "kl_probs": lambda: K.kl_probs(d.p, d.q, d.out, 1),
                "entropy_probs": lambda: K.entropy_probs(d.p, d.out, 1),
                "js_probs": lambda: K.js_probs(d.p, d.q, 0.5, d.out, 1)}

    versions = dict(new=calls(N), cython=calls(C), **({"base": calls(O)} if O else {}),
                    **({"cython base": calls(CB)} if CB else {}))
    for op in ops:
        times = ns_per_element({name: vers[op] for name, vers in versions.items()}, a.reps, n * v, budget=2e6)
        med = {name: float(np.median(s)) for name, s in times.items()}
        line = f"{n}x{v} {a.dtype} {op:13s} "
        if O:
            line += f"base {med['base']:6.3f}  "
        line += f"new {med['new']:6.3f}  cython {med['cython']:6.3f} ns/el   "
        if O:
            line += f"new/base {med['new'] / med['base']:.3f}  "
        line += f"new/cython {med['new'] / med['cython']:.3f}"
        if CB is not None:
            line += (f"   cython base {med['cython base']:6.3f}  cython new/base "
                     f"{med['cython'] / med['cython base']:.3f}")
        print(line, flush=True)
