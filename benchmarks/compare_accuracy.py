"""fastdiv.compare's per-row values against the float64 reference (fastdiv.reference's
evaluate_rows and js_rows), per compiled backend: the largest relative error of each column on
512 x 32000 float32 logits, model = base + N(0, 0.1) ("noise") and model = base with one logit
moved by 1e-3 ("close": KLD ~1e-11, where float32 rounding dominates).

    PYTHONPATH=. python benchmarks/compare_accuracy.py
"""
import numpy as np

import fastdiv
from fastdiv import reference as R

rng = np.random.default_rng(1)
base = (2 * rng.standard_normal((512, 32000))).astype(np.float32)
noise = (base + 0.1 * rng.standard_normal(base.shape)).astype(np.float32)
close = base.copy()
close[:, 5] += 1e-3
t = rng.integers(0, 32000, 512)
for name, model in (("noise", noise), ("close", close)):
    rb = R.evaluate_rows(base, t)
    rm = R.evaluate_rows(model, t, reference=base)
    want = {"kld": rm["kl_ref_model"], "reverse_kld": rm["kl_model_ref"], "js": R.js_rows(base, model, 0.5),
            "nll_base": rb["nll"], "nll_model": rm["nll"]}
    for backend in [b for b in ("cython", "numba") if b in fastdiv.available_backends()]:
        res = fastdiv.compare(base, model, t, backend=backend)
        errs = "  ".join(f"{k} {np.max(np.abs(res.columns[k] - w) / np.abs(w)):.2e}" for k, w in want.items())
        print(f"{name:5s} {backend:6s} {errs}")
