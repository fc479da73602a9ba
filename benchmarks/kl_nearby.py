"""KL of nearby rows: the relative accuracy of ``kl_div`` from float32 logits on rows
``z = x + N(0, sigma)`` (64 rows, V = 51, 1271, 50257) against the float64 reference, per
compiled backend: median / max of |got - want| / want per row.  Rows below ``1e-4 L`` are
summed again class by class (docs/semantics.rst); the one pass above it.  ``ev`` is
``evaluate``'s ``kl_model_ref`` column on the same rows (since 2026-12-07 its flagged rows are
summed again by the same kernel; before, one pass over its merged state).

    PYTHONPATH=. python benchmarks/kl_nearby.py [--backends cython,numba] [--cost | --linear]

``--cost``: what the rows summed again cost ``evaluate`` (with a reference): its time on
rows N(0, 1e-3) apart (every row's KL summed again) over its time on independent rows (none),
interleaved in one process: in cache (16 x 16000 float32, one thread, CPU time per element,
30 rounds) and from memory (1024 x 50257 float32, the default threads, wall time, median of
7).  Run it with another tree's package first on ``PYTHONPATH`` for an A/B (before
2026-12-07's evaluate KL columns, those rows were read again after the pass and summed twice
by ``kl_div``'s kernel, ``fastdiv.execute.mend_near_kl``; since, the kernel sums them again
while they are in cache).

``--linear``: the same for ``fastdiv.linear`` heads (2048 x 256 hidden states, 50257 classes,
float32, by vocabulary tiles): ``evaluate`` of a head against the head with its weights moved
by ``N(0, sigma)`` (sigma 1e-4, 1e-3, 1e-2) and against an independent head, wall time (median
of 5, interleaved) and the KLs' max relative error against the float64 reference of the
materialized logits (on 256 of the rows).  Before 2026-12-07 (441398f) the tiles' flagged rows
were computed again and summed by ``kl_div``'s kernel; since, each tile's KLs are the
kernel's and merge by the chain rule.
"""
import argparse
import time

import numpy as np

import fastdiv
from fastdiv import reference as R

ap = argparse.ArgumentParser()
ap.add_argument("--backends", default="cython,numba")
ap.add_argument("--cost", action="store_true")
ap.add_argument("--linear", action="store_true")
args = ap.parse_args()
bes = [b for b in args.backends.split(",") if b in fastdiv.available_backends()]


def cost():

    import _common

    rng = np.random.default_rng(2)
    for n, v, threads in ((16, 16000, 1), (1024, 50257, None)):
        x = (rng.standard_normal((n, v)) * 2).astype(np.float32)
        t = rng.integers(0, v, n)
        refs = {"independent": (rng.standard_normal((n, v)) * 2).astype(np.float32),
                "near": (x + rng.standard_normal((n, v)) * 1e-3).astype(np.float32)}
        for be in bes:
            calls = {k: (lambda z=z: fastdiv.evaluate(x, t, reference=z, backend=be)) for k, z in refs.items()}
            if threads == 1:
                with fastdiv.threads(1):
                    ns = _common.ns_per_element(calls, 30, x.size)
                med = {k: float(np.median(vals)) for k, vals in ns.items()}
                unit = "ns/element"
            else:
                walls = {k: [] for k in calls}
                for _ in range(7):
                    for k, f in calls.items():
                        t0 = time.perf_counter()
                        f()
                        walls[k].append(time.perf_counter() - t0)
                med = {k: float(np.median(vals)) * 1e9 / x.size for k, vals in walls.items()}
                unit = "ns/element wall"
            print(f"{n} x {v} {be:6s} independent {med['independent']:.3f}  near {med['near']:.3f} "
                  f"{unit}  ratio {med['near'] / med['independent']:.2f}", flush=True)


def linear_heads():
    rng = np.random.default_rng(0)
    n, d, v = 2048, 256, 50257
    h = rng.standard_normal((n, d), dtype=np.float32)
    w = (rng.standard_normal((v, d)) * (3 / 16)).astype(np.float32)
    t = rng.integers(0, v, n)
    heads = {"independent": (rng.standard_normal((v, d)) * (3 / 16)).astype(np.float32)}
    for sigma in (1e-4, 1e-3, 1e-2):
        heads[f"sigma {sigma:g}"] = (w + rng.normal(0, sigma, w.shape)).astype(np.float32)
    x = np.asarray(fastdiv.linear(h[:256], w).materialize(), dtype=np.float64)
    for be in bes:
        def run(w2, rows=n):
            return fastdiv.evaluate(fastdiv.linear(h[:rows], w), t[:rows], reference=fastdiv.linear(h[:rows], w2),
                                    backend=be)
        walls = {k: [] for k in heads}
        for w2 in heads.values():
            run(w2)
        for _ in range(5):
            for k, w2 in heads.items():
                t0 = time.perf_counter()
                run(w2)
                walls[k].append(time.perf_counter() - t0)
        base = float(np.median(walls["independent"]))
        print(f"{be}: independent head {base:.3f} s", flush=True)
        for k, w2 in heads.items():
            if k == "independent":
                continue
            z = np.asarray(fastdiv.linear(h[:256], w2).materialize(), dtype=np.float64)
            res = run(w2, 256)
            errs = [np.max(np.abs(np.asarray(res[col]) - want) / want)
                    for col, want in (("kl_model_ref", R.kl_rows(x, z)), ("kl_ref_model", R.kl_rows(z, x)))]
            print(f"{be}: {k} (KL ~{np.median(R.kl_rows(x, z)):.1e}) {np.median(walls[k]):.3f} s, "
                  f"ratio {np.median(walls[k]) / base:.2f}, max rel error {max(errs):.1e}", flush=True)


if args.cost:
    cost()
    raise SystemExit
if args.linear:
    linear_heads()
    raise SystemExit
rng = np.random.default_rng(1)
for v in (51, 1271, 50257):
    for sigma in (1e-1, 1e-2, 1e-3, 1e-4):
        x = (rng.standard_normal((64, v)) * 2).astype(np.float32)
        z = (x + rng.standard_normal(x.shape) * sigma).astype(np.float32)
        want = R.kl_rows(x.astype(np.float64), z.astype(np.float64))
        line = f"V {v:6d} sigma {sigma:g} (KL ~{np.median(want):.1e})"
        for be in bes:
            rel = np.abs(fastdiv.kl_div(x, z, reduction="none", backend=be) - want) / want
            ev = np.asarray(fastdiv.evaluate(x, np.zeros(64, np.int64), reference=z, backend=be).kl_model_ref)
            rev = np.abs(ev - want) / want
            line += f"  {be} {np.median(rel):.1e} / {rel.max():.1e} (ev {np.median(rev):.1e} / {rev.max():.1e})"
        print(line, flush=True)
