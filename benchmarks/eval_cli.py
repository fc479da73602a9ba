"""Throughput of ``fastdiv eval`` over a memory-mapped .npy file, as a ratio to the read-bandwidth
probe over the same (page-cached) bytes, in one process; medians of --repeat runs.

    python benchmarks/eval_cli.py [--rows 2048] [--vocab 50257] [--repeat 5] [--threads N]

Rows: the full command's metric set (topk 1 5), without top-k, with a reference, and the
cross-entropy alone on the same mapped array (what a one-pass evaluate would approach).
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import fastdiv
from fastdiv import _eval_cli, bench


def _median_time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, help="threads for the compiled backends (default: all CPUs)")
    args = ap.parse_args()
    if args.threads:
        import numba

        fastdiv.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)          # the probe is a numba parallel sum
    d = tempfile.mkdtemp()
    x, z, t = bench.inputs(args.rows, args.vocab, "float32")
    np.save(os.path.join(d, "l.npy"), x)
    np.save(os.path.join(d, "r.npy"), z)
    np.save(os.path.join(d, "t.npy"), t)
    lp, rp, tp = (os.path.join(d, f) for f in ("l.npy", "r.npy", "t.npy"))
    mapped = np.load(lp, mmap_mode="r")
    gb = x.nbytes / 1e9
    probe = _median_time(lambda: bench.probe(mapped), args.repeat)
    print(f"{args.rows} x {args.vocab} float32 ({gb:.2f} GB), threads={fastdiv.get_num_threads()}, "
          f"probe {gb / probe:.1f} GB/s (median of {args.repeat})")
    cases = {
        "eval --topk 1 5": lambda: _eval_cli.evaluate_files(lp, tp, topk=(1, 5)),
        "eval --topk (none)": lambda: _eval_cli.evaluate_files(lp, tp, topk=()),
        "eval --topk 1 5 --reference": lambda: _eval_cli.evaluate_files(lp, tp, rp, topk=(1, 5)),
        "cross_entropy alone (mapped)": lambda: fastdiv.cross_entropy(mapped, t),
    }
    for name, fn in cases.items():
        sec = _median_time(fn, args.repeat)
        reads = 2 if "reference" in name else 1
        print(f"  {name:30s} {sec * 1e3:8.1f} ms  {reads * gb / sec:5.2f} GB/s of input  "
              f"{probe * reads / sec:6.1%} of probe")


if __name__ == "__main__":
    main()
