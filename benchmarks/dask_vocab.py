"""Cost of the vocabulary split in ``fastdiv.dask``: the same (rows, V) float32 array in memory,
chunked along rows only, and along rows and the vocabulary (mergeable states, tree merge);
dask's synchronous scheduler on one thread, so the figures are the per-task work plus dask's
overhead, as ratios to the read-bandwidth probe over the same bytes in the same process.

    python benchmarks/dask_vocab.py [--rows 2048] [--vocab 50257] [--row-chunk 512] [--repeat 5]
"""
from __future__ import annotations

import argparse
import statistics
import time

import dask
import dask.array as da
import numba

import fastdiv
import fastdiv.dask
from fastdiv import bench


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
    ap.add_argument("--row-chunk", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    fastdiv.set_num_threads(1)
    numba.set_num_threads(1)
    x, _, t = bench.inputs(args.rows, args.vocab, "float32")
    gb = x.nbytes / 1e9
    probe = _median_time(lambda: bench.probe(x), args.repeat)
    print(f"{args.rows} x {args.vocab} float32 ({gb:.2f} GB), 1 thread, synchronous scheduler, "
          f"probe {gb / probe:.1f} GB/s (median of {args.repeat})")
    dt = da.from_array(t, chunks=args.row_chunk)
    cases = {"in memory": (lambda: fastdiv.cross_entropy(x, t), lambda: fastdiv.evaluate(x, t).mean_nll)}
    for n in (1, 4, 16):
        dx = da.from_array(x, chunks=(args.row_chunk, -(-args.vocab // n)))
        cases[f"dask, {n} vocab chunk(s)"] = (lambda dx=dx: fastdiv.dask.cross_entropy(dx, dt).compute(),
                                             lambda dx=dx: fastdiv.dask.evaluate(dx, dt).aggregates())
    with dask.config.set(scheduler="synchronous"):
        for name, (ce, ev) in cases.items():
            a, b = _median_time(ce, args.repeat), _median_time(ev, args.repeat)
            print(f"  {name:24s} cross_entropy {a * 1e3:7.1f} ms ({probe / a:6.1%} of probe)   "
                  f"evaluate {b * 1e3:7.1f} ms ({probe / b:6.1%} of probe)")


if __name__ == "__main__":
    main()
