"""Divergences of confident rows: rows sure of one class in both distributions (a top logit of
15, 20, 30 or 40 above tails drawn independently from N(0, 3): p ~ q ~ 1 - 1e-3 down to
1 - 1e-14), so that KL and JS are the difference of two small tail masses (1e-3 down to 1e-15).
The top class sits in a vector (Cython) or chunk (numba) of far classes; summed there by the
far or log-based terms it cancels to ~eps of a mass near 1 (js_div 1.5x off on Cython, compare's
js 1.6x, before 2026-12-07; docs/semantics.rst, "Confident rows").

    PYTHONPATH=. python benchmarks/confident_rows.py [--backends cython,numba] [--rows 16]

Prints, per top logit and class count, the median and largest relative error per row against
the float64 reference of ``kl_div``, ``evaluate``'s ``kl_model_ref``, ``js_div`` and
``compare``'s ``kld`` and ``js`` (float32 inputs).
"""
import argparse

import numpy as np

import fastdiv
from fastdiv import reference as R

ap = argparse.ArgumentParser()
ap.add_argument("--backends", default="cython,numba")
ap.add_argument("--rows", type=int, default=16)
args = ap.parse_args()
bes = [b for b in args.backends.split(",") if b in fastdiv.available_backends()]
rng = np.random.default_rng(0)


def rel(got, want):
    r = np.abs(np.asarray(got, dtype=np.float64) - want) / want
    return f"{np.median(r):.1e}/{r.max():.1e}"


for top in (15.0, 20.0, 30.0, 40.0):
    for v in (37, 1000, 32000):
        x = (rng.standard_normal((args.rows, v)) * 3).astype(np.float32)
        z = (rng.standard_normal((args.rows, v)) * 3).astype(np.float32)
        x[:, 0] = z[:, 0] = top
        x64, z64 = x.astype(np.float64), z.astype(np.float64)
        kl, js = R.kl_rows(x64, z64), R.js_rows(x64, z64, 0.5)
        line = f"top {top:4.0f} V {v:5d} KL ~{np.median(kl):.0e}"
        for be in bes:
            ev = fastdiv.evaluate(x, np.zeros(args.rows, np.int64), reference=z, backend=be)
            cmp = fastdiv.compare(z, x, backend=be)      # kld = D(base || model) = D(z || x)
            line += (f" | {be}: kl_div {rel(fastdiv.kl_div(x, z, reduction='none', backend=be), kl)}"
                     f" ev {rel(ev.kl_model_ref, kl)} js_div {rel(fastdiv.js_div(x, z, reduction='none', backend=be), js)}"
                     f" compare kld {rel(cmp.kld, R.kl_rows(z64, x64))} js {rel(cmp.js, js)}")
        print(line, flush=True)
