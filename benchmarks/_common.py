"""What the command-line benchmarks share: the size options and the probe line that every
figure is a ratio to (``fastdiv.bench.probe`` over the same bytes, in the same process)."""
from __future__ import annotations

import argparse

from fastdiv import bench


def parser(doc, between=()):
    """``--rows``, ``--vocab``, the integer options ``between`` ((flag, default) pairs), then
    ``--repeat``; the description is the first paragraph of ``doc``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=50257)
    for flag, default in between:
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--repeat", type=int, default=5)
    return ap


def probe_line(a, args, setting):
    """Time the read-bandwidth probe over ``a`` (median of ``args.repeat``), print the header
    line, and return ``(GB read, probe seconds)``."""
    gb = a.nbytes / 1e9
    probe = bench.median_time(lambda: bench.probe(a), args.repeat)
    print(f"{args.rows} x {args.vocab} float32 ({gb:.2f} GB), {setting}, "
          f"probe {gb / probe:.1f} GB/s (median of {args.repeat})")
    return gb, probe


def load_extension(path):
    """Another build of the Cython extension (its ``.so`` at ``path``), loaded beside the
    working tree's ``fastdiv._cython._kernels`` under the name ``basec._kernels``."""
    import importlib.machinery
    import importlib.util

    loader = importlib.machinery.ExtensionFileLoader("basec._kernels", path)
    spec = importlib.util.spec_from_file_location("basec._kernels", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def shapes_and_ops(words, shapes, ops):
    """Split positional ``words`` into ``ROWSxV`` shapes and op names, with defaults."""
    return ([tuple(map(int, w.split("x"))) for w in words if "x" in w] or shapes,
            [w for w in words if "x" not in w] or ops)


def kernel_inputs(n, v, dtype, seed=0):
    """Seeded inputs of the kernel contract for ``n x v`` rows of ``dtype``: logits ``x`` and
    ``z``, probabilities ``p`` and ``q``, targets ``t``, unit weights ``w`` and ``out``."""
    import types

    import numpy as np

    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    return types.SimpleNamespace(
        x=(rng.standard_normal((n, v)) * 3).astype(dt), z=(rng.standard_normal((n, v)) * 3).astype(dt),
        p=rng.dirichlet(np.full(v, 0.5), size=n).astype(dt), q=rng.dirichlet(np.full(v, 0.5), size=n).astype(dt),
        t=rng.integers(0, v, n).astype(np.int64), w=np.ones(v, dt), out=np.empty(n, dt))


def ns_per_element(calls, rounds, elements, budget=1e6, before=None):
    """In-cache ns per element of each of ``calls`` ({name: callable}), called in turn for
    ``rounds`` rounds: per round and name, ``before(name)`` (if given), one warm-up call, then
    enough calls for ``budget`` elements, timed by the CPU time of this thread (the shared
    machine's noise then hits every version alike).  Returns {name: [ns per element per round]}."""
    import time

    reps = max(1, int(budget // elements))
    times = {name: [] for name in calls}
    for _ in range(rounds):
        for name, f in calls.items():
            if before is not None:
                before(name)
            f()
            t0 = time.thread_time()
            for _ in range(reps):
                f()
            times[name].append((time.thread_time() - t0) / reps / elements * 1e9)
    return times
