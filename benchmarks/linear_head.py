"""``fastdiv.linear``: metrics from hidden states against the matmul alone and against torch.

For each library (numpy, torch), in one process, round robin over ``--iters`` iterations:
``hidden @ W.T`` alone (the logits materialized, nothing else), then each metric on
``fastdiv.linear(hidden, W)`` (cross-entropy, cross-entropy with label smoothing, evaluate
with top-1/5), and for torch ``F.cross_entropy(hidden @ W.T, t)``.  Each figure is the median
over iterations of its ratio to the matmul timed in the same iteration (slow drifts of a shared
machine cancel), with the 25-75 % range.  Each metric starts ``--settle`` seconds after the
previous call ended: a threaded BLAS's workers spin for ~0.1 s after each matmul, and would
take a core from whichever call came next (``--settle 0`` shows it).  Peak memory: each call again in a fresh subprocess,
its peak resident set above the one after setup (``tests/rss.py``: VmHWM reset), and for
numpy also tracemalloc's peak of the allocations.

    PYTHONPATH=. python benchmarks/linear_head.py [--rows 2048 --dim 256 --vocab 50257] [--iters 7]
        [--block-rows R] [--vocab-tile T] [--libs numpy,torch] [--no-memory] [--settle S] [--one-block]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import fastdiv

HERE = os.path.dirname(os.path.abspath(__file__))


def setup(lib, n, d, v, seed=0):
    rng = np.random.default_rng(seed)
    h = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((v, d), dtype=np.float32) * np.float32(4 / np.sqrt(d))
    t = rng.integers(0, v, n)
    if lib == "torch":
        import torch

        return torch.from_numpy(h), torch.from_numpy(w), torch.from_numpy(t)
    return h, w, t


def calls(lib, h, w, t, block_rows, vocab_tile=None):
    lin = lambda: fastdiv.linear(h, w, block_rows=block_rows, vocab_tile=vocab_tile)     # noqa: E731
    out = {
        "matmul": lambda: h @ w.T,
        "cross_entropy(linear)": lambda: fastdiv.cross_entropy(lin(), t),
        "cross_entropy(linear, label_smoothing=0.1)": lambda: fastdiv.cross_entropy(lin(), t, label_smoothing=0.1),
        "evaluate(linear, topk=(1, 5))": lambda: fastdiv.evaluate(lin(), t, topk=(1, 5)),
        "cross_entropy(matmul)": lambda: fastdiv.cross_entropy(h @ w.T, t),
    }
    if lib == "torch":
        import torch

        out["torch F.cross_entropy(matmul)"] = lambda: torch.nn.functional.cross_entropy(h @ w.T, t)
    return out


def timing(lib, args):
    h, w, t = setup(lib, args.rows, args.dim, args.vocab)
    fns = calls(lib, h, w, t, args.block_rows, args.vocab_tile)
    for fn in fns.values():                                     # compile, warm the caches
        fn()
    ratios = {k: [] for k in fns if k != "matmul"}
    base = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        fns["matmul"]()
        mm = time.perf_counter() - t0
        base.append(mm)
        for k, fn in fns.items():
            if k == "matmul":
                continue
            time.sleep(args.settle)
            t0 = time.perf_counter()
            fn()
            ratios[k].append((time.perf_counter() - t0) / mm)
    print(f"{lib}: hidden @ W.T alone: median {statistics.median(base) * 1e3:.0f} ms")
    for k, r in ratios.items():
        q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
        print(f"  {k:<45} {statistics.median(r):.3f}x the matmul  (25-75 %: {q[0]:.3f}-{q[2]:.3f}, "
              f"~{statistics.median(r) * statistics.median(base) * 1e3:.0f} ms)")


def peak(lib, name, args):
    """Peak extra memory of one call, measured in a fresh process."""
    code = f"""
import sys, json, tracemalloc
sys.path[:0] = [{HERE!r}, {os.path.join(os.path.dirname(HERE), 'tests')!r}]
import linear_head as L, rss
h, w, t = L.setup({lib!r}, {args.rows}, {args.dim}, {args.vocab})
fn = L.calls({lib!r}, h, w, t, {args.block_rows!r}, {args.vocab_tile!r})[{name!r}]
fn()                                   # compiled, warm; then measured
import gc; gc.collect()
before = rss.rss_bytes(); rss.peak_rss_reset()
tracemalloc.start(); fn(); traced = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
print(json.dumps({{"rss": rss.peak_rss_bytes() - before, "traced": traced}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--iters", type=int, default=7)
    ap.add_argument("--block-rows", type=int, default=None)
    ap.add_argument("--vocab-tile", type=int, default=None, help="classes per vocabulary tile (linear's vocab_tile)")
    ap.add_argument("--libs", default="numpy,torch")
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--settle", type=float, default=0.25,
                    help="seconds to wait before each metric's timed call (default 0.25; 0: none), so that the "
                         "BLAS's workers, which spin for ~0.1 s after a threaded matmul, take no core "
                         "from the next call: each call is timed alone")
    ap.add_argument("--one-block", action="store_true",
                    help="numpy heads one row block at a time, their matmuls on the BLAS's threads, "
                         "as where threadpoolctl is not installed (fastdiv._blas)")
    args = ap.parse_args()
    if args.one_block:
        fastdiv._blas._controller[:] = [None]
    logits_mb = args.rows * args.vocab * 4 / 1e6
    print(f"rows {args.rows}, D {args.dim}, V {args.vocab}, float32: logits {logits_mb:.0f} MB; "
          f"{fastdiv.get_num_threads()} fastdiv threads; block_rows {args.block_rows or 'default'}, "
          f"vocab_tile {args.vocab_tile or 'default'}; settle {args.settle} s; numpy heads "
          f"{'one block at a time' if not fastdiv._blas.available() else 'by shares'}")
    for lib in args.libs.split(","):
        timing(lib, args)
        if args.no_memory:
            continue
        names = [k for k in calls(lib, *setup(lib, 1, 1, 1), None)]
        for name in names:
            m = peak(lib, name, args)
            traced = f", traced {m['traced'] / 1e6:.0f} MB" if lib == "numpy" else ""
            print(f"  peak memory {name:<39} RSS +{m['rss'] / 1e6:.0f} MB ({m['rss'] / 1e6 / logits_mb:.0%} "
                  f"of the logits){traced}")


if __name__ == "__main__":
    main()
