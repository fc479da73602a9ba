"""fastdiv.evaluate(topk=(1, 5)) at (2048, 50257) float32 as a fraction of the same-run
read-bandwidth probe (and cross_entropy alone), interleaved, medians of 9, per backend.

    PYTHONPATH=. python benchmarks/eval_ratio.py [--rounds 3]
"""
import argparse

import fastdiv
from fastdiv import bench as B

ap = argparse.ArgumentParser()
ap.add_argument("--rounds", type=int, default=3)
args = ap.parse_args()
x, z, t = B.inputs(2048, 50257, "float32")
for b in B.available_backends():
    ev = lambda: fastdiv.evaluate(x, t, topk=(1, 5), backend=b)  # noqa: E731
    ce = lambda: fastdiv.cross_entropy(x, t, backend=b)  # noqa: E731
    for r in range(args.rounds):
        re, te, tp = B.interleaved_ratio(ev, lambda: B.probe(x), repeat=9)
        rc, tc, tp2 = B.interleaved_ratio(ce, lambda: B.probe(x), repeat=9)
        print(f"{b} round {r}: evaluate {te * 1e3:.1f} ms = {1 / re:.0%} of probe ({tp * 1e3:.1f} ms); "
              f"cross_entropy {tc * 1e3:.1f} ms = {1 / rc:.0%} of probe ({tp2 * 1e3:.1f} ms)")
