"""The cost of one call of the public functions, against torch on the same inputs.

On small inputs (a batch of C51 rows, a meter's update, a unit test) a call's time is the
Python layers around the kernel -- options, backend choice, layout checks, the reduction --
not the kernel.  This times each function through the public API, one thread, best of
``--repeat`` rounds of ``--number`` calls, beside the same quantity from torch in the same
process and the kernel alone (the Cython contract entry on the same rows), and prints the
ratio to torch::

    FASTDIV_NUM_THREADS=1 PYTHONPATH=. python benchmarks/call_cost.py [--backend cython] [--dtype float64] [1x51 16x16000 ...]

``kernel`` is the backend's contract call with its output preallocated: the API's own cost is
``api - kernel``.
"""
from __future__ import annotations

import argparse
import timeit

import numpy as np

import fastdiv
from fastdiv import _registry

SHAPES = ((1, 51), (64, 51), (16, 16000))


def _timer(number, repeat):
    def best(f):
        f()
        return min(timeit.repeat(f, number=number, repeat=repeat)) / number
    return best


def cases(n, v, backend, dtype="float32"):
    """(name, fastdiv call, kernel call, torch call) on seeded rows ``n x v`` of ``dtype``."""
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, v)).astype(dtype)
    z = rng.standard_normal((n, v)).astype(dtype)
    t = rng.integers(0, v, n)
    out = np.empty(n, dtype)
    w = np.ones(v, dtype)
    tx, tz, tt = torch.from_numpy(x), torch.from_numpy(z), torch.from_numpy(t)
    k = {op: _registry.kernel(backend, op) for op in ("lse", "ce_hard", "kl_logits", "entropy_logits")}
    return [
        ("logsumexp", lambda: fastdiv.logsumexp(x, backend=backend), lambda: k["lse"](x, out, 1),
         lambda: torch.logsumexp(tx, -1)),
        ("cross_entropy", lambda: fastdiv.cross_entropy(x, t, reduction="none", backend=backend),
         lambda: k["ce_hard"](x, t, -100, w, 0.0, out, 1),
         lambda: F.cross_entropy(tx, tt, reduction="none")),
        ("ce, mean", lambda: fastdiv.cross_entropy(x, t, backend=backend),
         lambda: k["ce_hard"](x, t, -100, w, 0.0, out, 1), lambda: F.cross_entropy(tx, tt)),
        ("kl_div", lambda: fastdiv.kl_div(x, z, reduction="none", backend=backend),
         lambda: k["kl_logits"](x, z, 1.0, out, 1),
         lambda: F.kl_div(F.log_softmax(tz, -1), F.log_softmax(tx, -1), log_target=True, reduction="none").sum(-1)),
        ("entropy", lambda: fastdiv.entropy(x, backend=backend), lambda: k["entropy_logits"](x, 1.0, out, 1),
         lambda: torch.distributions.Categorical(logits=tx, validate_args=False).entropy()),
    ]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("shapes", nargs="*", help="ROWSxV (default: 1x51 64x51 16x16000)")
    ap.add_argument("--backend", default="cython")
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--number", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    fastdiv.set_num_threads(1)
    shapes = [tuple(map(int, s.split("x"))) for s in args.shapes] or SHAPES
    best = _timer(args.number, args.repeat)
    print(f"{args.backend}, {args.dtype}, 1 thread, best of {args.repeat} x {args.number} calls; us per call")
    print(f"{'shape':>10} {'function':>14} {'api':>8} {'kernel':>8} {'torch':>8} {'api/torch':>10} {'ns/elem':>8}")
    for n, v in shapes:
        for name, api, kern, ref in cases(n, v, args.backend, args.dtype):
            ta, tk, tr = best(api), best(kern), best(ref)
            print(f"{n}x{v:>6} {name:>14} {ta * 1e6:8.1f} {tk * 1e6:8.1f} {tr * 1e6:8.1f} {ta / tr:10.2f} "
                  f"{ta * 1e9 / (n * v):8.3f}")


if __name__ == "__main__":
    main()
