"""Divergences of nearby rows with classes masked in one row only: the relative accuracy of
``kl_div``, ``js_div`` and ``compare``'s ``kld`` and ``js`` from float32 logits on rows
``z = x + N(0, sigma)`` where a fraction of x's classes, scattered, is masked (``-inf``) and
z keeps a small mass there (``z = -30``), against the float64 reference, per compiled
backend: median / max of |got - want| / want over 64 rows.  ``compare(x, z)`` takes x as the
base, so its ``kld`` = D(x || z) is the finite direction.

Such a class has ``d = +inf`` and one of p, q exactly 0; it adds its ``q - p`` to the KL
(``m log 2`` to JS) and leaves its vector (Cython) or chunk (numba) on the near terms
(docs/semantics.rst, "Jensen-Shannon of nearby rows", "KL of nearby rows").

    PYTHONPATH=. python benchmarks/masked_nearby.py [--backends cython,numba]
"""
import argparse

import numpy as np

import fastdiv
from fastdiv import reference as R

ap = argparse.ArgumentParser()
ap.add_argument("--backends", default="cython,numba")
bes = [b for b in ap.parse_args().backends.split(",") if b in fastdiv.available_backends()]


def rel(got, want):
    r = np.abs(got - want) / want
    return f"{np.median(r):.1e} / {r.max():.1e}"


rng = np.random.default_rng(7)
for v in (51, 5000, 50257):
    for frac in (0.02, 0.2):
        for sigma in (1e-3, 1e-2):
            x = (rng.standard_normal((64, v)) * 2).astype(np.float32)
            z = (x + rng.standard_normal(x.shape) * sigma).astype(np.float32)
            masked = rng.random(x.shape) < frac
            masked[:, 0] = False
            x[masked] = -np.inf
            z[masked] = -30.0
            x64, z64 = x.astype(np.float64), z.astype(np.float64)
            kl, js = R.kl_rows(x64, z64), R.js_rows(x64, z64)
            print(f"V {v:6d}  masked {frac:g}  sigma {sigma:g}  (KL ~{np.median(kl):.1e}, "
                  f"JS ~{np.median(js):.1e})", flush=True)
            for be in bes:
                c = fastdiv.compare(x, z, backend=be)
                print(f"    {be:6s} kl_div {rel(fastdiv.kl_div(x, z, reduction='none', backend=be), kl)}"
                      f"  js_div {rel(fastdiv.js_div(x, z, reduction='none', backend=be), js)}"
                      f"  compare kld {rel(c.kld, kl)}  js {rel(c.js, js)}", flush=True)
