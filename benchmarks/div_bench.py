"""Divergence-family figures (issue 5), each a ratio measured in one process.

    python benchmarks/div_bench.py [--rows 2048] [--vocab 50257] [--repeat 9] [--backends cython numba]

Prints, per compiled backend:

* ``js_div`` from two float32 logit arrays as a fraction of the read-bandwidth probe over
  the same bytes (the issue's target: >= 60 %), and ``kl_div`` for comparison;
* reverse KL ``kl_div(q, p)`` against forward ``kl_div(p, q)`` (same kernel: ratio ~1);
* float16 and bfloat16 input against float32 of the same shape, for logsumexp, cross-entropy,
  KL and JS (the target: >= 1.6x faster, half the bytes).

Every ratio is the median of ``--repeat`` interleaved timings (``fastdiv.bench.interleaved_ratio``).

``--cpu-time``: instead, one thread, the CPU time of each call of the backend's kernel itself
(``time.thread_time``, which a busy shared machine disturbs far less than wall time),
float32 / float16 / bfloat16 calls interleaved, medians; prints ns per element (per element
pair for KL and JS) and the half speed-ups.  ``--rows 4`` keeps the inputs in cache (the arithmetic alone); the default shape
reads them from memory.
"""
from __future__ import annotations

import argparse

import numpy as np

import fastdiv
from fastdiv import bench


def _calls(backend, x, z, t):
    return {
        "logsumexp": lambda: fastdiv.logsumexp(x, backend=backend),
        "cross_entropy": lambda: fastdiv.cross_entropy(x, t, backend=backend),
        "kl_div": lambda: fastdiv.kl_div(x, z, backend=backend),
        "js_div": lambda: fastdiv.js_div(x, z, backend=backend),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--backends", nargs="*", default=bench.available_backends())
    ap.add_argument("--ops", nargs="*", default=["logsumexp", "cross_entropy", "kl_div", "js_div"],
                    help="ops to measure (kl_div also selects the reverse-KL line)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="1 thread, CPU time per call (ns per element) instead of wall-time ratios")
    args = ap.parse_args(argv)
    if args.cpu_time:
        return cpu_time(args)
    import ml_dtypes

    x, z, t = bench.inputs(args.rows, args.vocab, "float32")
    halves = {"float16": (x.astype(np.float16), z.astype(np.float16)),
              "bfloat16": (x.astype(ml_dtypes.bfloat16), z.astype(ml_dtypes.bfloat16))}
    shape = f"{args.rows}x{args.vocab}"
    print(f"shape {shape}, {fastdiv.get_num_threads()} threads, median of {args.repeat} interleaved runs")
    for backend in args.backends:
        f32 = _calls(backend, x, z, t)
        for op in [o for o in ("js_div", "kl_div") if o in args.ops]:
            ratio, tk, tp = bench.interleaved_ratio(f32[op], lambda: bench.probe(x, z), args.repeat)
            print(f"{backend:7s} {op:14s} float32   {tk * 1e3:8.2f} ms   {1 / ratio:6.1%} of the probe ({tp * 1e3:.2f} ms)")
        if "kl_div" in args.ops:
            rev = lambda: fastdiv.kl_div(z, x, backend=backend)  # noqa: E731
            ratio, tk, tf = bench.interleaved_ratio(rev, f32["kl_div"], args.repeat)
            print(f"{backend:7s} {'kl_div(q, p)':14s} float32   {tk * 1e3:8.2f} ms   {ratio:6.2f}x the time of "
                  "kl_div(p, q)")
        for name, (xh, zh) in halves.items():
            half = _calls(backend, xh, zh, t)
            for op in args.ops:
                ratio, th, t32 = bench.interleaved_ratio(half[op], f32[op], args.repeat)
                print(f"{backend:7s} {op:14s} {name:9s} {th * 1e3:8.2f} ms   {1 / ratio:5.2f}x faster than float32 "
                      f"({t32 * 1e3:.2f} ms)")


def _kernel_calls(backend, x, z, t):
    """The backend's per-row kernels themselves (fastdiv._registry contract), no API layer:
    at in-cache sizes the API's argument checks would be a large part of the time."""
    from fastdiv import _registry

    k = lambda op: _registry.kernel(backend, op)  # noqa: E731
    out = np.empty(x.shape[0], np.float32)
    w = np.ones(x.shape[1], np.float32)
    return {
        "logsumexp": lambda: k("lse")(x, out, 1),
        "cross_entropy": lambda: k("ce_hard")(x, t, -100, w, 0.0, out, 1),
        "kl_div": lambda: k("kl_logits")(x, z, 1.0, out, 1),
        "js_div": lambda: k("js_logits")(x, z, 0.5, 1.0, out, 1),
    }


def cpu_time(args):
    import time

    import ml_dtypes

    x, z, t = bench.inputs(args.rows, args.vocab, "float32")
    # half inputs as the kernels take them: raw bits (uint16: float16, int16: bfloat16)
    arrays = {"float32": (x, z),
              "float16": (x.astype(np.float16).view(np.uint16), z.astype(np.float16).view(np.uint16)),
              "bfloat16": (x.astype(ml_dtypes.bfloat16).view(np.int16), z.astype(ml_dtypes.bfloat16).view(np.int16))}
    n = args.rows * args.vocab
    calls = max(1, int(2e7 // n))  # enough calls per timing that one takes >= ~5 ms in cache
    print(f"shape {args.rows}x{args.vocab}, 1 thread, CPU time, median of {args.repeat}; ns per element")
    for backend in args.backends:
        fns = {name: _kernel_calls(backend, a, b, t) for name, (a, b) in arrays.items()}
        for op in args.ops:
            ts = {name: [] for name in arrays}
            for name in arrays:
                fns[name][op]()  # compile / warm up
            for _ in range(args.repeat):
                for name in arrays:
                    t0 = time.thread_time()
                    for _ in range(calls):
                        fns[name][op]()
                    ts[name].append((time.thread_time() - t0) / calls)
            med = {name: float(np.median(v)) for name, v in ts.items()}
            print(f"{backend:7s} {op:14s} " + "  ".join(f"{name} {med[name] / n * 1e9:.3f}" for name in arrays)
                  + f"   half speed-up {med['float32'] / med['float16']:.2f}x / {med['float32'] / med['bfloat16']:.2f}x")

if __name__ == "__main__":
    main()
