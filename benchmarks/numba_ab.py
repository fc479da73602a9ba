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
import sys

import numpy as np

from _common import kernel_inputs, load_extension, ns_per_element, shapes_and_ops

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

    versions = dict(base=calls(O), new=calls(N), cython=calls(C), **({"cython base": calls(CB)} if CB else {}))
    for op in ops:
        times = ns_per_element({name: vers[op] for name, vers in versions.items()}, a.reps, n * v, budget=2e6)
        med = {name: float(np.median(s)) for name, s in times.items()}
        line = (f"{n}x{v} {a.dtype} {op:13s} base {med['base']:6.3f}  new {med['new']:6.3f}  cython "
                f"{med['cython']:6.3f} ns/el   new/base {med['new'] / med['base']:.3f}  new/cython "
                f"{med['new'] / med['cython']:.3f}")
        if CB is not None:
            line += (f"   cython base {med['cython base']:6.3f}  cython new/base "
                     f"{med['cython'] / med['cython base']:.3f}")
        print(line, flush=True)
