"""What a C51-shaped call pays besides its kernel: the mean's float64 sum and the target check.

    PYTHONPATH=. python benchmarks/c51_reductions.py [--backend cython] [--rows 4194304] [--rounds 15]

One process, float32 logits (rows x 51), every call timed once per round in turn; prints the
median of each and, for the fastdiv calls, the read probe's time over it (of x, or of x and z
for kl_div and evaluate).  "numpy sum" is the same call with ``fastdiv.reduce.COMPILED_SUM_FROM`` raised past
the row count, i.e. the mean summed by ``np.sum`` instead of the Cython extension's ``sum64``.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import fastdiv
import fastdiv.bench as B
from fastdiv import reduce


def _numpy_sum(call):
    def run():
        keep = reduce.COMPILED_SUM_FROM
        reduce.COMPILED_SUM_FROM = 1 << 62
        try:
            return call()
        finally:
            reduce.COMPILED_SUM_FROM = keep
    return run


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="cython", choices=["cython", "numba"])
    ap.add_argument("--rows", type=int, default=1 << 22)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    n, v, be = args.rows, 51, args.backend
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, v), dtype=np.float32)
    z = rng.standard_normal((n, v), dtype=np.float32)
    t = rng.integers(0, v, n)
    calls = {
        "probe x": lambda: B.probe(x),
        "probe x,z": lambda: B.probe(x, z),
        "logsumexp": lambda: fastdiv.logsumexp(x, backend=be),
        "cross_entropy mean": lambda: fastdiv.cross_entropy(x, t, backend=be),
        "cross_entropy mean, numpy sum": _numpy_sum(lambda: fastdiv.cross_entropy(x, t, backend=be)),
        "cross_entropy none": lambda: fastdiv.cross_entropy(x, t, reduction="none", backend=be),
        "kl_div mean": lambda: fastdiv.kl_div(x, z, backend=be),
        "kl_div mean, numpy sum": _numpy_sum(lambda: fastdiv.kl_div(x, z, backend=be)),
        "evaluate, reference": lambda: fastdiv.evaluate(x, t, reference=z, backend=be),
        "targets min + max": lambda: (t.min(), t.max()),
        "targets max as uint64": lambda: t.view(np.uint64).max(),
    }
    for call in calls.values():
        call()
    times = {name: [] for name in calls}
    for _ in range(args.rounds):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(ts)) * 1e3 for name, ts in times.items()}
    print(f"{n} x {v} float32, {be}, {fastdiv.get_num_threads()} threads, medians of {args.rounds}")
    for name, ms in med.items():
        if name.startswith(("probe", "targets")):
            print(f"{name:32s} {ms:8.2f} ms")
        else:
            probe = med["probe x,z"] if name.startswith(("kl_div", "evaluate")) else med["probe x"]
            print(f"{name:32s} {ms:8.2f} ms   {probe / ms:5.1%} of the probe")


if __name__ == "__main__":
    main()
