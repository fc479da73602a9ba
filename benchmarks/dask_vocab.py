"""Cost of the vocabulary split in ``fastdiv.dask``: the same (rows, V) float32 array in memory,
chunked along rows only, and along rows and the vocabulary (mergeable states, tree merge);
dask's synchronous scheduler on one thread, so the figures are the per-task work plus dask's
overhead, as ratios to the read-bandwidth probe over the same bytes in the same process.

    python benchmarks/dask_vocab.py [--rows 2048] [--vocab 50257] [--row-chunk 512] [--repeat 5]
"""
from __future__ import annotations

import dask
import dask.array as da
import numba

import fastdiv
import fastdiv.dask
from _common import parser, probe_line
from fastdiv import bench


def main():
    args = parser(__doc__, [("--row-chunk", 512)]).parse_args()
    fastdiv.set_num_threads(1)
    numba.set_num_threads(1)
    x, _, t = bench.inputs(args.rows, args.vocab, "float32")
    _, probe = probe_line(x, args, "1 thread, synchronous scheduler")
    dt = da.from_array(t, chunks=args.row_chunk)
    cases = {"in memory": (lambda: fastdiv.cross_entropy(x, t), lambda: fastdiv.evaluate(x, t).mean_nll)}
    for n in (1, 4, 16):
        dx = da.from_array(x, chunks=(args.row_chunk, -(-args.vocab // n)))
        cases[f"dask, {n} vocab chunk(s)"] = (lambda dx=dx: fastdiv.dask.cross_entropy(dx, dt).compute(),
                                             lambda dx=dx: fastdiv.dask.evaluate(dx, dt).aggregates())
    with dask.config.set(scheduler="synchronous"):
        for name, (ce, ev) in cases.items():
            a, b = bench.median_time(ce, args.repeat), bench.median_time(ev, args.repeat)
            print(f"  {name:24s} cross_entropy {a * 1e3:7.1f} ms ({probe / a:6.1%} of probe)   "
                  f"evaluate {b * 1e3:7.1f} ms ({probe / b:6.1%} of probe)")


if __name__ == "__main__":
    main()
