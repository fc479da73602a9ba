"""Cost of ``softcap=30`` on ``fastdiv.evaluate(topk=(1, 5))`` and ``fastdiv.cross_entropy`` at
(2048, 50257) float32, per compiled CPU backend, as a ratio to the same call without softcap
and as a fraction of the same-run read-bandwidth probe.

Round robin: each iteration times the probe, the soft-capping transform alone (one thread,
over all rows in SOFTCAP_BLOCK_BYTES blocks into one buffer), then every (backend, op,
softcap) once; the figures are medians over iterations of ratios formed within the iteration
(adjacent measurements, so slow drifts of a shared machine cancel), with the 25-75 % range.
With ``--threads 1`` the transform's time compares directly with the kernels'.

    PYTHONPATH=. python benchmarks/softcap_ratio.py [--iters 21] [--threads N] [--block-kib K]
"""
import argparse
import statistics
import time

import numpy as np

import fastdiv
from fastdiv import bench as B
from fastdiv import execute

ap = argparse.ArgumentParser()
ap.add_argument("--iters", type=int, default=21)
ap.add_argument("--threads", type=int, default=None)
ap.add_argument("--block-kib", type=int, default=None, help="fastdiv.execute.SOFTCAP_BLOCK_BYTES / 1024")
args = ap.parse_args()
if args.threads:
    fastdiv.set_num_threads(args.threads)
if args.block_kib:
    execute.SOFTCAP_BLOCK_BYTES = args.block_kib << 10
x, z, t = B.inputs(2048, 50257, "float32")
fns = {}
for b in B.available_backends():
    for cap in (None, 30.0):
        fns[(b, "evaluate", cap)] = lambda b=b, cap=cap: fastdiv.evaluate(x, t, topk=(1, 5), softcap=cap, backend=b)
        fns[(b, "cross_entropy", cap)] = lambda b=b, cap=cap: fastdiv.cross_entropy(x, t, softcap=cap, backend=b)
buf = np.empty((max(1, execute.SOFTCAP_BLOCK_BYTES // (x.shape[1] * 4)), x.shape[1]), np.float32)


def transform():
    step = buf.shape[0]
    for a in range(0, x.shape[0], step):
        execute.apply_softcap(x[a:a + step], 30.0, np.dtype(np.float32), out=buf[:min(step, x.shape[0] - a)])


fns[("-", "transform", None)] = transform
for f in fns.values():
    f()
times = {k: [] for k in fns}
probe = []
for _ in range(args.iters):
    t0 = time.perf_counter()
    B.probe(x)
    probe.append(time.perf_counter() - t0)
    for k, f in fns.items():
        t0 = time.perf_counter()
        f()
        times[k].append(time.perf_counter() - t0)
print(f"threads={fastdiv.get_num_threads()} SOFTCAP_BLOCK_BYTES={execute.SOFTCAP_BLOCK_BYTES} "
      f"probe {statistics.median(probe) * 1e3:.1f} ms, transform alone (1 thread) "
      f"{statistics.median(times[('-', 'transform', None)]) * 1e3:.1f} ms")
for (b, op, cap) in fns:
    if cap is None:
        continue
    plain, capped = np.array(times[(b, op, None)]), np.array(times[(b, op, cap)])
    r = np.percentile(capped / plain, [25, 50, 75])
    fp = np.median(np.array(probe) / capped)
    print(f"{b:7s} {op:14s} softcap {np.median(capped) * 1e3:6.1f} ms vs {np.median(plain) * 1e3:6.1f} ms: "
          f"x{r[1]:.2f} (IQR {r[0]:.2f}-{r[2]:.2f}); softcap at {fp:.0%} of probe")
