"""fastdiv.compare at (2048, 50257) float32 (a base and a model, with targets) as a fraction of
the same-run read-bandwidth probe of the two arrays, per compiled backend, with the passes it
is made of (#19's target: >= 75 %, one read of each input).

Round robin: each iteration times the probe of both arrays, then every entry once; the figure
is the median over iterations of probe_time / entry_time within the iteration, with the
25-75 % range.

    PYTHONPATH=. python benchmarks/compare_speed.py [--iters 11] [--parts]
"""
import argparse
import statistics
import time

import numpy as np

import fastdiv
from fastdiv import bench as B

ap = argparse.ArgumentParser()
ap.add_argument("--iters", type=int, default=11)
ap.add_argument("--parts", action="store_true", help="also time each pass compare makes")
args = ap.parse_args()
base, model, t = B.inputs(2048, 50257, "float32")
arg_b = np.argmax(base, axis=1)
fns = {}
for b in B.available_backends():
    fns[f"{b} compare"] = lambda b=b: fastdiv.compare(base, model, t, backend=b).to_dict()
    if args.parts:
        fns[f"{b}  evaluate(base)"] = lambda b=b: fastdiv.evaluate(base, t, topk=(), backend=b)
        fns[f"{b}  evaluate(model, ref)"] = lambda b=b: fastdiv.evaluate(model, t, topk=(), reference=base, backend=b)
        fns[f"{b}  evaluate(model, top5)"] = lambda b=b: fastdiv.evaluate(model, arg_b, topk=(5,), backend=b)
        fns[f"{b}  js_div"] = lambda b=b: fastdiv.js_div(base, model, reduction="none", backend=b)
for f in fns.values():
    f()
ratios = {k: [] for k in fns}
times = {k: [] for k in fns}
probes = []
for _ in range(args.iters):
    t0 = time.perf_counter()
    B.probe(base, model)
    tp = time.perf_counter() - t0
    probes.append(tp)
    for k, f in fns.items():
        t0 = time.perf_counter()
        f()
        dt = time.perf_counter() - t0
        times[k].append(dt)
        ratios[k].append(tp / dt)
print(f"{'probe (both arrays)':28s} {statistics.median(probes) * 1e3:7.1f} ms   "
      f"{2 * base.nbytes / statistics.median(probes) / 1e9:.1f} GB/s")
for k in fns:
    q = np.percentile(ratios[k], [25, 50, 75])
    print(f"{k:28s} {statistics.median(times[k]) * 1e3:7.1f} ms   {q[1]:5.0%} of the two-array probe "
          f"(IQR {q[0]:.0%}-{q[2]:.0%})")
