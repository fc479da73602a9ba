"""Shared test table: backends, dtypes, tolerances and input generators.

Random inputs are drawn fresh for every test (the seed is printed, so a failure can be
replayed with FASTDIV_TEST_SEED=<seed>), never zeros, and include the awkward rows every
backend must get right: all masked, masked prefix, scattered masks, NaN, +inf, extreme.
"""
from __future__ import annotations

import glob
import os
import secrets
import sys

# Without an NVIDIA GPU, run the cuda backend's tests in numba's CUDA simulator (this must
# be decided before numba.cuda is first imported).  Set NUMBA_ENABLE_CUDASIM=0 to opt out.
if not glob.glob("/dev/nvidia[0-9]*"):
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
    if "numba" in sys.modules:                 # a plugin imported numba first: re-read the variable
        import numba.core.config

        numba.core.config.reload_config()

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import fastdiv
from fastdiv import _registry

# Hypothesis profiles: "default" keeps CI fast; "thorough" is the documented long fuzz run
# (HYPOTHESIS_PROFILE=thorough pytest tests/test_fuzz.py --hypothesis-show-statistics).
settings.register_profile("default", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=10_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

#: Backends under test for host arrays.  The numpy reference is tested against itself only
#: through the API tests; the kernel tests compare compiled backends with it.
COMPILED = [b for b in ("numba", "cython") if _registry.unavailable_reason(b) is None]
ALL_HOST = COMPILED + ["numpy"]

#: Per dtype: tolerance of per-row logsumexp / entropy / cross-entropy (relative, with a
#: small absolute floor for results near 0) and of KL (absolute, times 1 + |KL|).
TOL = {
    np.float32: dict(rtol=1e-5, atol=2e-6, kl=2e-5),
    np.float64: dict(rtol=1e-12, atol=1e-12, kl=1e-12),
}

V_SHAPES = (1, 51, 1271, 128256)


def backend_params(backends=None):
    """pytest params for backends, with unavailable ones skipped and the reason shown."""
    out = []
    for b in backends or ("numba", "cython"):
        why = _registry.unavailable_reason(b)
        out.append(pytest.param(b, marks=pytest.mark.skipif(why is not None, reason=str(why)), id=b))
    return out


@pytest.fixture
def rng(request):
    seed = int(os.environ.get("FASTDIV_TEST_SEED", secrets.randbits(32)))
    print(f"{request.node.nodeid}: FASTDIV_TEST_SEED={seed}")
    return np.random.default_rng(seed)


def rows_for(v):
    """Enough rows for the edge rows plus random ones, few at huge V (keeps tests fast)."""
    return 12 if v > 100_000 else 40


def make_logits(rng, n, v, dtype, scale=3.0, edges=True):
    """Random logits with the edge rows every backend must handle (when n >= 10)."""
    x = rng.standard_normal((n, v)) * scale + rng.uniform(-5, 5, (n, 1))
    if edges and n >= 10:
        x[0] = -np.inf                                    # every class masked
        x[1, : max(1, v // 2)] = -np.inf                  # masked prefix (the classic NaN bug)
        x[2, rng.random(v) < 0.3] = -np.inf               # scattered masks
        x[3, rng.integers(v)] = np.nan                    # NaN poisons only this row
        x[4, rng.integers(v)] = np.inf                    # +inf: lse = inf, softmax undefined
        x[5] = rng.standard_normal(v) * 1e4               # extreme logits
        x[6] = 7.25                                       # constant row
        if v > 1:
            x[7] = -np.inf
            x[7, rng.integers(v)] = rng.normal()          # a single unmasked class
        x[8] = rng.standard_normal(v) * 1e-3              # near uniform
        x[9, -1] = x[9].max() + 80                        # a jump in the last chunk
    return x.astype(dtype)


def make_probs(rng, n, v, dtype, zeros=True):
    p = rng.dirichlet(np.full(v, 0.5), size=n)
    if zeros and v > 2:
        p[:, rng.random(v) < 0.2] = 0.0
        p /= np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
        p[0] = 0.0
        p[0, rng.integers(v)] = 1.0                     # one-hot row
    return p.astype(dtype)


def assert_rows_close(got, want, dtype, what, kind="rel"):
    """Compare per-row results; NaN must match NaN and inf must match inf exactly."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    tol = TOL[np.dtype(dtype).type]
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    assert np.array_equal(nan_g, nan_w), f"{what}: NaN rows differ: got {np.flatnonzero(nan_g)}, want {np.flatnonzero(nan_w)}"
    inf_g, inf_w = np.isinf(got), np.isinf(want)
    assert np.array_equal(got[inf_g | inf_w], want[inf_g | inf_w]), f"{what}: inf rows differ"
    ok = ~(nan_g | inf_g | inf_w)
    if kind == "kl":
        err = np.abs(got[ok] - want[ok]) / (1.0 + np.abs(want[ok]))
        bound = tol["kl"]
    else:
        err = np.abs(got[ok] - want[ok]) / (tol["atol"] / tol["rtol"] + np.abs(want[ok]))
        bound = tol["rtol"]
    if err.size:
        k = int(np.argmax(err))
        row = np.flatnonzero(ok)[k]
        assert err[k] <= bound, f"{what}: row {row}: got {got[row]!r}, want {want[row]!r} (err {err[k]:.3g} > {bound})"


@pytest.fixture(autouse=True)
def _restore_threads():
    n = fastdiv.get_num_threads()
    yield
    fastdiv.set_num_threads(n)
