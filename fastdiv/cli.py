"""The ``fastdiv`` command.

``fastdiv`` (or ``fastdiv demo``) runs every metric on a built-in, seeded, LLM-sized
example and prints the values and each backend's throughput next to the numpy reference.
``fastdiv config`` prints ``fastdiv.show_config()``.
``fastdiv eval`` computes evaluation metrics over array files (``fastdiv._eval_cli``).
``fastdiv compare`` compares a model's logits with a base's, with CI gates, and ``fastdiv reference``
stores a base compactly for it (``fastdiv._compare_cli``).
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from . import _compare_cli, _eval_cli, _registry, api
from ._config import show_config


def make_example(rows, vocab, dtype=np.float32, seed=0):
    """Seeded, realistic LM-like data: Zipf-shaped logits with per-token noise, targets
    drawn from the model's own distribution (so the loss looks like a real model's), a
    masked padding tail of the vocabulary, and a 'reference model' that is a perturbed
    copy (for KL)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, vocab + 1, dtype=np.float64)
    base = (-1.1 * np.log(ranks))[rng.permutation(vocab)]  # Zipf prior over the vocabulary
    pad = vocab // 500                                   # padded vocabulary slots are masked
    logits = np.empty((rows, vocab), dtype=dtype)
    reference = np.empty((rows, vocab), dtype=dtype)
    targets = np.empty(rows, dtype=np.int64)
    for r0 in range(0, rows, 256):                       # in blocks: no rows x V float64 temporaries
        r1 = min(r0 + 256, rows)
        block = rng.standard_normal((r1 - r0, vocab), dtype=np.float32)
        block *= 2.5
        block += base
        block[np.arange(r1 - r0), rng.integers(0, vocab, r1 - r0)] += 6.0   # a confident token
        if pad:
            block[:, -pad:] = -np.inf
        logits[r0:r1] = block
        reference[r0:r1] = block + rng.standard_normal((r1 - r0, vocab), dtype=np.float32) * 0.5
        # targets sampled from the model's own distribution (inverse CDF), so the loss
        # looks like a real model's
        probs = np.exp(block - block.max(axis=1, keepdims=True))
        cdf = np.cumsum(probs, axis=1)
        u = rng.random(r1 - r0) * cdf[:, -1]
        targets[r0:r1] = np.minimum((cdf < u[:, None]).sum(axis=1), vocab - max(pad, 1))
    targets[rng.random(rows) < 0.05] = -100              # some ignored positions
    return logits, reference, targets


def _best_time(fn, repeat, warm_up=True):
    if warm_up:
        fn()                                             # compiles numba on first use
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def demo(rows=2048, vocab=50257, dtype="float32", backends=None, repeat=3, out=None):
    out = out or sys.stdout
    dtype = np.dtype(dtype)
    print(f"fastdiv demo: {rows} x {vocab} {dtype} logits ({rows * vocab * dtype.itemsize / 2**20:.0f} MiB), "
          f"threads={api.get_num_threads()}, seeded example", file=out)
    t0 = time.perf_counter()
    logits, reference, targets = make_example(rows, vocab, dtype)
    print(f"  example built in {time.perf_counter() - t0:.1f} s", file=out)

    auto = _registry.resolve("auto")
    ce = api.cross_entropy(logits, targets, backend=auto)
    metrics = {
        "cross-entropy (mean NLL, nats)": ce,
        "perplexity": np.exp(np.float64(ce)),
        "mean entropy of the model (nats)": api.entropy(logits, reduction="mean", backend=auto),
        "KL(model || reference), mean": api.kl_div(logits, reference, backend=auto),
        "KL(reference || model), mean": api.kl_div(reference, logits, backend=auto),
        "mean log-sum-exp": np.mean(api.logsumexp(logits, backend=auto), dtype=np.float64),
    }
    print(f"\n  metrics (backend={auto}):", file=out)
    for name, value in metrics.items():
        print(f"    {name:34s} {float(value):.6f}", file=out)

    names = backends or [b for b in ("numba", "cython", "numpy") if _registry.unavailable_reason(b) is None]
    gib = logits.nbytes / 1e9
    # The float64 reference materialises several rows x V float64 temporaries (seconds per
    # call at this size): it is timed on a slice of rows and scaled to the whole array.
    ref_rows = min(rows, 256)
    scale = {b: (rows / ref_rows if b == "numpy" else 1.0) for b in names}

    def rows_of(b, *arrays):
        return [a[:ref_rows] for a in arrays] if b == "numpy" else list(arrays)

    ops = {
        "cross_entropy": (lambda b: api.cross_entropy(*rows_of(b, logits, targets), backend=b), gib),
        "logsumexp": (lambda b: api.logsumexp(*rows_of(b, logits), backend=b), gib),
        "entropy": (lambda b: api.entropy(*rows_of(b, logits), backend=b), gib),
        "kl_div": (lambda b: api.kl_div(*rows_of(b, logits, reference), backend=b), 2 * gib),
    }
    print("\n  throughput (best of %d; GB/s of logits read; speed-up over the numpy reference, "
          "which is timed on %d rows and scaled):" % (repeat, ref_rows), file=out)
    header = "    %-14s" % "op" + "".join("%30s" % b for b in names)
    print(header, file=out)
    for op, (fn, gb) in ops.items():
        times = {b: scale[b] * _best_time(lambda b=b: fn(b), 1 if b == "numpy" else repeat, warm_up=b != "numpy")
                 for b in names}
        cells = []
        for b in names:
            speedup = f" {times['numpy'] / times[b]:6.1f}x" if "numpy" in times and b != "numpy" else ""
            rate = gb / times[b]
            rate_s = f"{rate:5.1f}" if rate >= 1 else f"{rate:5.3f}"
            cells.append("%30s" % f"{times[b] * 1e3:8.1f} ms {rate_s} GB/s{speedup}")
        print("    %-14s" % op + "".join(cells), file=out)
    return metrics


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="fastdiv",
        description="Cross-entropy, KL divergence, entropy and log-sum-exp over large vocabularies. "
                    "With no command, runs the built-in demo.")
    sub = parser.add_subparsers(dest="command")
    p_demo = sub.add_parser("demo", help="metrics and backend throughput on a seeded LLM-sized example (the default)")
    p_demo.add_argument("--rows", type=int, default=2048, help="number of token positions (default 2048)")
    p_demo.add_argument("--vocab", type=int, default=50257, help="vocabulary size (default 50257, GPT-2)")
    p_demo.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    p_demo.add_argument("--backends", nargs="+", choices=["numba", "cython", "numpy"],
                        help="backends to time (default: every available one)")
    p_demo.add_argument("--repeat", type=int, default=3, help="timed repeats per backend (best is shown)")
    p_demo.add_argument("--threads", type=int, help="threads for the compiled backends")
    sub.add_parser("config", help="print versions, backends, OpenMP, SIMD width and threads")
    p_bench = sub.add_parser(
        "bench", help="benchmark a slice of ops x backends x vocabulary sizes against the bandwidth probe and peers",
        description="Times fastdiv's kernels, the read-bandwidth probe (a parallel sum over the same bytes) and "
                    "peer libraries on seeded inputs of about --mbytes MB per array, in this process. Prints a table "
                    "(time, GB/s, %% of the probe, speed-up over each peer); optionally writes JSON and a plot.")
    p_bench.add_argument("--ops", nargs="+", default=["logsumexp", "entropy", "cross_entropy", "kl_div"],
                         choices=["logsumexp", "entropy", "cross_entropy", "kl_div"])
    p_bench.add_argument("--backends", nargs="+", choices=["numba", "cython"], help="default: every available one")
    p_bench.add_argument("--peers", nargs="*", default=["numpy", "scipy", "torch"], choices=["numpy", "scipy", "torch"],
                         help="peer libraries timed on the same inputs when installed (numpy = fastdiv's float64 reference)")
    p_bench.add_argument("--vocab", nargs="+", type=int, default=[51, 1024, 32000, 50257, 128256],
                         help="vocabulary sizes V")
    p_bench.add_argument("--mbytes", type=float, default=256, help="size of each logits array in MB (rows = MB / (V * itemsize))")
    p_bench.add_argument("--shapes", nargs="+", metavar="ROWSxV", help="exact shapes, e.g. 2048x50257 (overrides --vocab/--mbytes)")
    p_bench.add_argument("--dtype", choices=["float32", "float64", "float16"], default="float32")
    p_bench.add_argument("--threads", type=int, help="threads for the compiled backends")
    p_bench.add_argument("--repeat", type=int, default=5, help="timed repeats (median)")
    p_bench.add_argument("--json", metavar="FILE", help="write the measurements as JSON")
    p_bench.add_argument("--plot", metavar="FILE.png", help="plot GB/s against V (needs matplotlib)")
    _eval_cli.add_parser(sub)
    _compare_cli.add_parser(sub)
    _compare_cli.add_reference_parser(sub)
    args = parser.parse_args(argv)

    if args.command == "eval":
        return _eval_cli.run(args)
    if args.command == "compare":
        return _compare_cli.run(args)
    if args.command == "reference":
        return _compare_cli.run_reference(args)

    if args.command == "bench":
        from . import bench

        if args.threads is not None:
            api.set_num_threads(args.threads)
        if any(v < 1 for v in args.vocab) or args.mbytes <= 0 or args.repeat < 1:
            parser.error("--vocab, --mbytes and --repeat must be positive")
        shapes = None
        if args.shapes:
            try:
                shapes = [tuple(int(n) for n in sh.lower().split("x")) for sh in args.shapes]
            except ValueError:
                parser.error(f"--shapes takes ROWSxV, e.g. 2048x50257; got {args.shapes}")
            if any(len(sh) != 2 or min(sh) < 1 for sh in shapes):
                parser.error(f"--shapes takes ROWSxV with positive numbers; got {args.shapes}")
        records = bench.run_bench(args.ops, args.backends, args.peers, args.vocab, args.dtype, args.mbytes,
                                  args.repeat, shapes=shapes)
        print(bench.format_table(records))
        if args.json:
            bench.write_json(records, args.json)
        if args.plot:
            bench.plot(records, args.plot)
            print(f"plot written to {args.plot}")
        return 0

    if args.command == "config":
        show_config()
        return 0
    if args.command is None:
        args = p_demo.parse_args([])
    if args.rows < 1 or args.vocab < 1 or args.repeat < 1:
        parser.error("--rows, --vocab and --repeat must be positive")
    if args.threads is not None:
        api.set_num_threads(args.threads)
    demo(args.rows, args.vocab, args.dtype, args.backends, args.repeat)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
