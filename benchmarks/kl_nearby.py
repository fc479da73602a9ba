"""KL of nearby rows: the relative accuracy of ``kl_div`` from float32 logits on rows
``z = x + N(0, sigma)`` (64 rows, V = 51, 1271, 50257) against the float64 reference, per
compiled backend: median / max of |got - want| / want per row.  Rows below ``1e-4 L`` are
summed again class by class (docs/semantics.rst); the one pass above it.

    PYTHONPATH=. python benchmarks/kl_nearby.py [--backends cython,numba]
"""
import argparse

import numpy as np

import fastdiv
from fastdiv import reference as R

ap = argparse.ArgumentParser()
ap.add_argument("--backends", default="cython,numba")
bes = [b for b in ap.parse_args().backends.split(",") if b in fastdiv.available_backends()]
rng = np.random.default_rng(1)
for v in (51, 1271, 50257):
    for sigma in (1e-1, 1e-2, 1e-3, 1e-4):
        x = (rng.standard_normal((64, v)) * 2).astype(np.float32)
        z = (x + rng.standard_normal(x.shape) * sigma).astype(np.float32)
        want = R.kl_rows(x.astype(np.float64), z.astype(np.float64))
        line = f"V {v:6d} sigma {sigma:g} (KL ~{np.median(want):.1e})"
        for be in bes:
            rel = np.abs(fastdiv.kl_div(x, z, reduction="none", backend=be) - want) / want
            line += f"  {be} {np.median(rel):.1e} / {rel.max():.1e}"
        print(line, flush=True)
