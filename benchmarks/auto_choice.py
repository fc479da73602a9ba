"""Which compiled CPU backend is faster, per op and shape, on this CPU (the data behind ``auto``).

For each shape and op, round robin over ``--iters`` iterations: the read probe over the op's
input bytes, the numba call, the Cython call (the order of the two alternating between
iterations); the figure is the median over iterations of numba's time over Cython's within the
iteration (below 1: numba faster), with the 25-75 % range, and each backend's median fraction
of the probe.  Float32, the current thread count.

    PYTHONPATH=. python benchmarks/auto_choice.py [--iters 15] [--shapes 512x128256 2048x50257 8192x32000 4194304x51]
        [--ops logsumexp entropy cross_entropy kl_div]
"""
from __future__ import annotations

import argparse
import statistics
import time

import fastdiv
from fastdiv import bench as B


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iters", type=int, default=15)
    ap.add_argument("--shapes", nargs="*", default=["512x128256", "2048x50257", "8192x32000", "4194304x51"])
    ap.add_argument("--ops", nargs="*", default=list(B.OPS))
    args = ap.parse_args()
    cpu = B.cpu_identity()
    print(f"{cpu['key']}; {fastdiv.get_num_threads()} threads; float32; median over {args.iters} iterations")
    print(f"{'shape':>12s} {'op':>14s} {'numba/cython':>13s} {'(25-75 %)':>13s} {'numba % probe':>14s} "
          f"{'cython % probe':>15s}")
    for shape in args.shapes:
        rows, v = (int(s) for s in shape.split("x"))
        x, z, t = B.inputs(rows, v, "float32")
        for op in args.ops:
            arrays = (x, z) if op == "kl_div" else (x,)
            calls = {b: B.fastdiv_call(op, b, x, z, t) for b in ("numba", "cython")}
            for f in calls.values():
                f()
            ratio, frac = [], {b: [] for b in calls}
            for i in range(args.iters):
                t0 = time.perf_counter()
                B.probe(*arrays)
                tp = time.perf_counter() - t0
                took = {}
                for b in (("numba", "cython") if i % 2 == 0 else ("cython", "numba")):
                    t0 = time.perf_counter()
                    calls[b]()
                    took[b] = time.perf_counter() - t0
                ratio.append(took["numba"] / took["cython"])
                for b in calls:
                    frac[b].append(tp / took[b])
            q = statistics.quantiles(ratio, n=4)
            print(f"{shape:>12s} {op:>14s} {statistics.median(ratio):13.3f} {q[0]:6.3f}-{q[2]:6.3f} "
                  f"{100 * statistics.median(frac['numba']):13.0f}% {100 * statistics.median(frac['cython']):14.0f}%")
        B.inputs.cache_clear()


if __name__ == "__main__":
    main()
