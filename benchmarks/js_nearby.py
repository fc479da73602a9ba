"""Divergences of nearby rows: the accuracy of ``js_div`` / ``compare``'s ``js``, ``kld`` and
``reverse_kld`` on float32 rows ``z = x + N(0, sigma)`` against the float64 reference, and the
Cython kernels' in-cache speed on rows whose log-probabilities differ little ("narrow",
sigma = 0.05; "noisy": the same with one noisy class per 190, benchmarks/noisy_nearby.py),
by ~1 ("medium") or everywhere by more than 2 ("broad", independent rows: the benchmarks'
usual inputs), where the terms m J(d / 2) (and compare's KL terms) take a vector
only when each of its |d| < 2 (docs/semantics.rst, "Jensen-Shannon of nearby rows" and "KL of
nearby rows").

    PYTHONPATH=. python benchmarks/js_nearby.py [--base OTHER_BUILD.so] [--rounds 30]

``--base``: another build of ``fastdiv/_cython/_kernels`` (e.g. the previous commit's, built in
a ``git worktree``) timed in the same process, interleaved (CPU time of the thread, one thread,
16 x 16000 float32, the contract's ``js_logits`` and ``compare``: ns per element pair, best of
the rounds).
"""
import argparse

import numpy as np

from _common import load_extension, ns_per_element
import fastdiv
from fastdiv._cython import _kernels as K

ap = argparse.ArgumentParser()
ap.add_argument("--base", default=None, help="another build of the extension (.so) to time beside this one")
ap.add_argument("--rounds", type=int, default=30)
a = ap.parse_args()

print("accuracy, 64 x 50257 float32, |got - want| / want per row against the float64 reference")
rng = np.random.default_rng(1)
for sigma in (1e-1, 1e-2, 1e-3):
    x = (rng.standard_normal((64, 50257)) * 2).astype(np.float32)
    z = (x + rng.standard_normal(x.shape) * sigma).astype(np.float32)
    x64, z64 = x.astype(np.float64), z.astype(np.float64)
    want = fastdiv.js_div(x64, z64, reduction="none", backend="numpy")
    # compare(base=x, model=z): kld = D(x || z), reverse_kld = D(z || x)
    wk = {"kld": fastdiv.kl_div(x64, z64, reduction="none", backend="numpy"),
          "reverse_kld": fastdiv.kl_div(z64, x64, reduction="none", backend="numpy")}
    print(f"  sigma {sigma:g}: JS ~{np.median(want):.2g}, KL ~{np.median(wk['kld']):.2g}")
    for b in [b for b in ("cython", "numba") if b in fastdiv.available_backends()]:
        c = fastdiv.compare(x, z, backend=b)
        for what, got, w in (("js_div", fastdiv.js_div(x, z, reduction="none", backend=b), want),
                             ("compare js", c.js, want), ("compare kld", c.kld, wk["kld"]),
                             ("compare reverse_kld", c.reverse_kld, wk["reverse_kld"])):
            rel = np.abs(got - w) / w
            print(f"    {b:6s} {what:20s} median {np.median(rel):.1e}  max {rel.max():.1e}")

print("speed, in cache, one thread, 16 x 16000 float32 (ns per element pair, best of the rounds)")
B = load_extension(a.base) if a.base else None
n, v = 16, 16000
x = (rng.standard_normal((n, v)) * 3).astype(np.float32)
rows = {"broad": (rng.standard_normal((n, v)) * 3).astype(np.float32),
        "medium": (x + rng.standard_normal((n, v))).astype(np.float32),
        "narrow": (x + rng.standard_normal((n, v)) * 0.05).astype(np.float32)}
# narrow, with one noisy class per 190 at logits ~ -20 moved by N(0, 3): the vectors and
# chunks that hold one are summed class by class (benchmarks/noisy_nearby.py)
noisy = rows["narrow"].copy()
xn = x.copy()
xn[:, 3::190] = -20 + rng.standard_normal(xn[:, 3::190].shape)
noisy[:, 3::190] = xn[:, 3::190] + rng.standard_normal(xn[:, 3::190].shape) * 3
pairs = {**{name: (x, z) for name, z in rows.items()}, "noisy": (xn, noisy)}
out = np.empty(n, np.float32)
t = rng.integers(0, v, n)
ix = np.empty((n, 4), np.int64)


def state(M):
    """compare's state rows for build M: 12 columns since 2026-12-06 (its KLs), 10 before."""
    for cols in (12, 10):
        st = np.full((n, cols), np.nan)
        try:
            M.compare(x[:1], x[:1], t[:1], st[:1], ix[:1], 1)
            return st
        except ValueError:
            pass
    raise RuntimeError("compare: no state width fits")


st = {id(M): state(M) for M in (K, B) if M is not None}
for name, (xr, z) in pairs.items():
    for op, f in {"js_logits": lambda M: M.js_logits(xr, z, 0.5, 1.0, out, 1),
                  "compare": lambda M: M.compare(xr, z, t, st[id(M)], ix, 1)}.items():
        calls = {"this": lambda: f(K)}
        if B is not None:
            calls["base"] = lambda: f(B)
        times = ns_per_element(calls, a.rounds, n * v)
        cells = "  ".join(f"{k} {min(s):.3f}" for k, s in times.items())
        ratio = f"  (x{min(times['this']) / min(times['base']):.3f} of base)" if B is not None else ""
        print(f"  {name:6s} {op:9s} {cells}{ratio}", flush=True)
