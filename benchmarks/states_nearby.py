"""KLs of vocabulary shards merged by ``fastdiv.states`` (as ``fastdiv.dask`` split by
vocabulary does), against the float64 reference and against ``kl_div`` of the whole rows.

Random cases (seeded): V in [1, 3000), 1-4 rows, logits of scale 0.1, 3 or 30, the reference
``z = x + N(0, sigma) + offset`` with sigma from 1e-5 to 1 and offset 0, 5 or 1000, masks in
x, in z or in both, up to 4 random cuts, the shards merged in random order; float32 and
float64 alternately, the backends in turn.  Per (dtype, backend): the relative error of both
KL directions on rows with 1e-25 < KL < inf, its median and max over the cases, and how many
cases are > 10x ``kl_div``'s own error and > 1e-5.

    PYTHONPATH=. python benchmarks/states_nearby.py [--cases 400] [--cost]

``--cost``: ``states.row_state`` with a reference, 1024 x 12564 float32 (a shard from
memory), the default threads, median of 7: independent rows (nothing summed again) and rows
N(0, 1e-3) apart (every row summed again by ``kl_div``'s kernel, both directions).
"""
import argparse
import functools
import time

import numpy as np

import fastdiv
from fastdiv import reference as R
from fastdiv import states

ap = argparse.ArgumentParser()
ap.add_argument("--cases", type=int, default=400)
ap.add_argument("--cost", action="store_true")
args = ap.parse_args()
bes = [b for b in ("numba", "cython", "numpy") if b in fastdiv.available_backends()]


def cost():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1024, 12564)) * 2).astype(np.float32)
    for kind in ("independent", "near"):
        if kind == "near":
            z = (x + rng.standard_normal(x.shape) * 1e-3).astype(np.float32)
        else:
            z = (rng.standard_normal(x.shape) * 2).astype(np.float32)
        for backend in ("numba", "cython"):
            def f():
                states.row_state(x, reference_shard=z, topk=(), backend=backend)
            f()
            ts = []
            for _ in range(7):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
            print(f"{kind:12s} {backend:7s} row_state {sorted(ts)[3] * 1e3:7.2f} ms")


def accuracy():
    rng = np.random.default_rng(123)
    stats = {}
    for it in range(args.cases):
        v, n = int(rng.integers(1, 3000)), int(rng.integers(1, 5))
        dt = (np.float32, np.float64)[it % 2]
        backend = bes[it % len(bes)]
        sigma = 10 ** rng.uniform(-5, 0)
        x = (rng.standard_normal((n, v)) * rng.choice([0.1, 3, 30])).astype(dt)
        z = (x + rng.standard_normal((n, v)) * sigma + rng.choice([0, 0, 5, 1000])).astype(dt)
        if rng.random() < 0.3:
            x[rng.random((n, v)) < 0.3] = -np.inf
        if rng.random() < 0.3:
            z[rng.random((n, v)) < 0.2] = -np.inf
        if rng.random() < 0.3:
            both = rng.random((n, v)) < 0.3
            x[both] = z[both] = -np.inf
        cuts = sorted(set(rng.integers(1, max(2, v), rng.integers(0, 5)).tolist())) if v > 1 else []
        edges = [0, *[c for c in cuts if 0 < c < v], v]
        parts = [states.row_state(x[:, a:b], offset=a, reference_shard=z[:, a:b], topk=(), backend=backend)
                 for a, b in zip(edges[:-1], edges[1:])]
        order = rng.permutation(len(parts))
        res = states.finalize(functools.reduce(states.merge, [parts[i] for i in order]), topk=(), n_classes=v)
        for key, (p, q) in (("kl_model_ref", (x, z)), ("kl_ref_model", (z, x))):
            want = R.kl_rows(p.astype(np.float64), q.astype(np.float64))
            got = np.asarray(res[key], np.float64)
            assert np.array_equal(np.isnan(got), np.isnan(want)) and np.array_equal(np.isinf(got), np.isinf(want))
            ok = np.isfinite(want) & (want > 1e-25)
            if ok.any():
                whole = fastdiv.kl_div(p, q, reduction="none", backend=backend)
                e = np.max(np.abs(got[ok] - want[ok]) / want[ok])
                ek = np.max(np.abs(whole[ok] - want[ok]) / want[ok])
                stats.setdefault((np.dtype(dt).name, backend), []).append((e, ek))
    print("dtype    backend  cases  states median / max       kl_div median / max      > 10x kl_div and 1e-5")
    for (dt, backend), v in sorted(stats.items()):
        v = np.array(v)
        bad = int(np.sum((v[:, 0] > 10 * v[:, 1]) & (v[:, 0] > 1e-5)))
        print(f"{dt:8s} {backend:7s} {len(v):5d}  {np.median(v[:, 0]):9.2e} / {v[:, 0].max():9.2e}"
              f"    {np.median(v[:, 1]):9.2e} / {v[:, 1].max():9.2e}    {bad}")


if args.cost:
    cost()
else:
    accuracy()
