"""Accuracy relative to the result, on cases built to be near zero, against mpmath (issue 18).

The guarantees tested here (stated in docs/peers.rst, "Accuracy near zero"):

* logsumexp: within 4 ulp of the correctly rounded value whenever the row's maximum m is >= 0
  (no cancellation between m and log sum exp(x - m)); rows dominated by their maximum near 0
  ([0, -40] is 4.2e-18) included, every backend, float32 and float64, both row paths.
* KL from logits, float64: within 1e-12 relative of the exact KL of the float64 inputs for nearly
  equal rows down to KL ~ 1e-30 (below, an absolute error under 1e-42).
* KL from probabilities (terms p log(p / q), taken literally): each term to a few ulp; the sum
  within 1e-12 relative plus the float64 floor of its signed terms, 4 eps sum_j |p_j log(p_j/q_j)|.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastdiv

from _peer import SIM, backend, sample  # noqa: F401

mpmath = pytest.importorskip("mpmath", reason="mpmath is the high-precision oracle")
mpmath.mp.dps = 60

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def mp_lse(row):
    return mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row))


def mp_kl_logits(x, z):
    x = [mpmath.mpf(float(v)) for v in x]
    z = [mpmath.mpf(float(v)) for v in z]
    lx = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in x))
    lz = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in z))
    return mpmath.fsum(mpmath.exp(a - lx) * ((a - lx) - (b - lz)) for a, b in zip(x, z))


def mp_rel_entr(p, q):
    p, q = mpmath.mpf(float(p)), mpmath.mpf(float(q))
    return p * mpmath.log(p / q) if p > 0 else mpmath.mpf(0)


def ulps(got, exact, dtype):
    """|got - exact| in units of the spacing of dtype at the exact value."""
    want = np.array(float(exact), dtype=dtype)
    return abs(mpmath.mpf(float(got)) - exact) / mpmath.mpf(float(np.spacing(np.abs(want))))


def dominated_rows(rng, v):
    """Rows whose logsumexp is near 0 (max 0 or just above, the rest tiny) and ordinary ones."""
    rows = []
    for gap in (40.0, 30.0, 20.0, 12.0, 5.0):
        r = -gap - rng.exponential(3.0, v)
        r[rng.integers(v)] = 0.0
        rows.append(r)
    r = -40.0 - rng.exponential(3.0, v)
    r[0] = 1e-20                                         # max slightly above 0: lse = 1e-20 + ~4e-18
    rows.append(r)
    r = rng.standard_normal(v) * 3                      # an ordinary row, shifted to max 0 and max 2
    rows.append(r - r.max())
    rows.append(r - r.max() + 2.0)
    if v > 1:
        r = np.full(v, -50.0)
        r[:2] = 0.0                                      # two maxima: log 2 + tiny
        rows.append(r)
    return np.array(rows)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("v", [2, 51, 300, 3000])
def test_logsumexp_near_zero_within_4_ulp(backend, v, dtype):
    if backend == "cuda" and v > 300:
        pytest.skip("simulated GPU: tiny shapes")
    rng = np.random.default_rng(v)
    x = dominated_rows(rng, v).astype(dtype)
    got = fastdiv.logsumexp(x, backend=backend)
    for i, row in enumerate(x):
        exact = mp_lse(row)
        assert ulps(got[i], exact, dtype) <= 4, (i, got[i], float(exact))


# V = 129 (cuda's group path) costs the simulator 22 s: slow tier there
@pytest.mark.parametrize("v", [2, 51, pytest.param(129, marks=[pytest.mark.slow] if SIM else []), 1000])
def test_kl_of_nearly_equal_logits_float64(backend, v):
    if backend == "cuda" and v > 129:
        pytest.skip("simulated GPU: tiny shapes")
    rng = np.random.default_rng(100 + v)
    xs, zs = [], []
    for delta in (1e-1, 1e-3, 1e-5, 1e-7, 1e-9):
        for scale, offset in ((0.3, 0.0), (3.0, 4.0), (10.0, -20.0)):
            x = rng.standard_normal(v) * scale
            xs.append(x)
            zs.append(x + delta * rng.standard_normal(v) + offset)
    x, z = np.array(xs), np.array(zs)
    got = fastdiv.kl_div(x, z, reduction="none", backend=backend)
    for i in range(len(x)):
        exact = mp_kl_logits(x[i], z[i])
        err = abs(mpmath.mpf(float(got[i])) - exact)
        assert err <= 1e-12 * abs(exact) + 1e-42, (i, got[i], float(exact), float(err / exact))


def test_kl_of_one_hot_like_logits_float64(backend):
    """Far apart in log space but near in probability: a KL of ~1e-39 from two peaked rows."""
    x = np.array([[-63.13128937966157, 26.693798306480623], [-26.38, 58.45]])
    z = np.array([[-64.34748255560658, 24.09143011030296], [-21.79, 62.95]])
    got = fastdiv.kl_div(x, z, reduction="none", backend=backend)
    for i in range(2):
        exact = mp_kl_logits(x[i], z[i])
        assert abs(mpmath.mpf(float(got[i])) - exact) <= 1e-12 * exact, (got[i], float(exact))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_rel_entr_terms_within_a_few_ulp(backend, dtype):
    """One-class rows: each KL term p log(p / q), nearly equal p and q included (scipy gh-20710)."""
    rng = np.random.default_rng(7)
    p = rng.uniform(1e-3, 1, 40)
    q = np.concatenate([p[:10] * (1 + 1e-14 * rng.standard_normal(10)), p[10:20] * (1 + 1e-6 * rng.standard_normal(10)),
                        p[20:30] * rng.uniform(0.5, 2, 10), rng.uniform(1e-30, 1e30, 10)])
    p, q = p.astype(dtype), q.astype(dtype)
    keep = p != q
    p, q = p[keep], q[keep]
    got = fastdiv.kl_div(p[:, None], q[:, None], inputs="probs", reduction="none", backend=backend)
    for i in range(p.size):
        exact = mp_rel_entr(p[i], q[i])
        assert ulps(got[i], exact, dtype) <= 4, (p[i], q[i], got[i], float(exact))


@pytest.mark.parametrize("inputs", ["probs", "log_probs"])
def test_kl_of_nearly_equal_probabilities_float64(backend, inputs):
    """Literal sums: 1e-12 relative plus the floor of the signed terms, 4 eps sum |p log(p/q)|."""
    rng = np.random.default_rng(8)
    rows = []
    for delta in (1e-1, 1e-3, 1e-5, 1e-7):
        p = rng.dirichlet(np.ones(37))
        q = p * (1 + delta * rng.standard_normal(37))
        rows.append((p, q / q.sum()))
    p = np.array([r[0] for r in rows])
    q = np.array([r[1] for r in rows])
    a, b = (p, q) if inputs == "probs" else (np.log(p), np.log(q))
    got = fastdiv.kl_div(a, b, inputs=inputs, reduction="none", backend=backend)
    eps = np.finfo(np.float64).eps
    for i in range(len(p)):
        if inputs == "probs":
            terms = [mp_rel_entr(pi, qi) for pi, qi in zip(p[i], q[i])]
        else:                                          # the literal terms exp(a) (a - b)
            terms = [mpmath.exp(mpmath.mpf(float(ai))) * (mpmath.mpf(float(ai)) - mpmath.mpf(float(bi)))
                     for ai, bi in zip(a[i], b[i])]
        exact = mpmath.fsum(terms)
        floor = 4 * eps * float(mpmath.fsum(abs(t) for t in terms))
        assert abs(float(got[i]) - float(exact)) <= 1e-12 * abs(float(exact)) + floor, (i, got[i], float(exact))
