"""Throughput of ``fastdiv eval`` over a memory-mapped .npy file, as a ratio to the read-bandwidth
probe over the same (page-cached) bytes, in one process; medians of --repeat runs.

    python benchmarks/eval_cli.py [--rows 2048] [--vocab 50257] [--repeat 5] [--threads N]

Rows: the full command's metric set (topk 1 5), without top-k, with a reference, and the
cross-entropy alone on the same mapped array (what a one-pass evaluate would approach).
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

import fastdiv
from _common import parser, probe_line
from fastdiv import _eval_cli, bench


def main():
    ap = parser(__doc__)
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
    gb, probe = probe_line(mapped, args, f"threads={fastdiv.get_num_threads()}")
    cases = {
        "eval --topk 1 5": lambda: _eval_cli.evaluate_files(lp, tp, topk=(1, 5)),
        "eval --topk (none)": lambda: _eval_cli.evaluate_files(lp, tp, topk=()),
        "eval --topk 1 5 --reference": lambda: _eval_cli.evaluate_files(lp, tp, rp, topk=(1, 5)),
        "cross_entropy alone (mapped)": lambda: fastdiv.cross_entropy(mapped, t),
    }
    for name, fn in cases.items():
        sec = bench.median_time(fn, args.repeat)
        reads = 2 if "reference" in name else 1
        print(f"  {name:30s} {sec * 1e3:8.1f} ms  {reads * gb / sec:5.2f} GB/s of input  "
              f"{probe * reads / sec:6.1%} of probe")


if __name__ == "__main__":
    main()
