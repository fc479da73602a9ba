"""fastdiv.evaluate(topk=(1, 5)) at (2048, 50257) float32 as a fraction of the same-run
read-bandwidth probe, next to cross_entropy alone, per compiled backend.

Round robin: each iteration times the probe, then every (backend, op) once; the figure is the
median over iterations of probe_time / op_time within the iteration (adjacent measurements,
so slow drifts of a shared machine cancel), with the 25-75 % range.

    PYTHONPATH=. python benchmarks/eval_ratio.py [--iters 31]
"""
import argparse
import statistics
import time

import numpy as np

import fastdiv
from fastdiv import bench as B

ap = argparse.ArgumentParser()
ap.add_argument("--iters", type=int, default=31)
args = ap.parse_args()
x, z, t = B.inputs(2048, 50257, "float32")
fns = {}
for b in B.available_backends():
    fns[f"{b} evaluate"] = lambda b=b: fastdiv.evaluate(x, t, topk=(1, 5), backend=b)
    fns[f"{b} cross_entropy"] = lambda b=b: fastdiv.cross_entropy(x, t, backend=b)
for f in fns.values():
    f()
ratios = {k: [] for k in fns}
times = {k: [] for k in fns}
for _ in range(args.iters):
    t0 = time.perf_counter()
    B.probe(x)
    tp = time.perf_counter() - t0
    for k, f in fns.items():
        t0 = time.perf_counter()
        f()
        dt = time.perf_counter() - t0
        times[k].append(dt)
        ratios[k].append(tp / dt)
for k in fns:
    q = np.percentile(ratios[k], [25, 50, 75])
    print(f"{k:22s} {statistics.median(times[k]) * 1e3:6.1f} ms   {q[1]:.0%} of probe (IQR {q[0]:.0%}-{q[2]:.0%})")
