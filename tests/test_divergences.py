"""The divergence family (issue 5): js_div, topk_kl_div, gaussian_kl, temperature, half inputs:
the properties the issue names, the high-precision checks, bad input and the half-precision
plumbing.  Every backend against the float64 reference on random inputs: tests/test_cases.py.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastdiv
from fastdiv import _registry
from fastdiv import reference as R

from cases import nearby_kl_pair, teacher as _teacher
from conftest import ALL_HOST, backend_params, make_logits, make_probs

try:
    import ml_dtypes
except ImportError:  # bfloat16 cases are skipped without it
    ml_dtypes = None

host = pytest.mark.parametrize("backend", ALL_HOST)
#: tests on float64 inputs: numba's float64 specializations are compiled in the slow tier only
host64 = pytest.mark.parametrize("backend", backend_params(ALL_HOST, dtype=np.float64))
dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float64])
HALF = [np.float16] + ([ml_dtypes.bfloat16] if ml_dtypes is not None else [])


def _inputs(rng, n, v, dtype, inputs):
    """Two same-shape arguments given as ``inputs``, with the edge rows for logits."""
    if inputs == "logits":
        return make_logits(rng, n, v, dtype), make_logits(rng, n, v, dtype)
    p, q = make_probs(rng, n, v, np.float64), make_probs(rng, n, v, np.float64)
    if inputs == "probs":
        return p.astype(dtype), q.astype(dtype)
    with np.errstate(divide="ignore"):
        return np.log(p).astype(dtype), np.log(q).astype(dtype)


# --------------------------------------------------------------------------- js_div


@host64
@pytest.mark.parametrize("inputs", ["logits", "probs"])
def test_js_symmetric_bounded_and_skew_swaps(backend, inputs, rng):
    x, z = _inputs(rng, 40, 257, np.float64, inputs)
    a = fastdiv.js_div(x, z, inputs=inputs, reduction="none", backend=backend)
    b = fastdiv.js_div(z, x, inputs=inputs, reduction="none", backend=backend)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    finite = np.isfinite(a)
    assert finite.sum() >= 30
    assert np.all(a[finite] >= -1e-15) and np.all(a[finite] <= np.log(2) + 1e-12)
    c = fastdiv.js_div(x, z, beta=0.3, inputs=inputs, reduction="none", backend=backend)
    d = fastdiv.js_div(z, x, beta=0.7, inputs=inputs, reduction="none", backend=backend)
    np.testing.assert_allclose(c, d, rtol=1e-12, atol=1e-14)


@host64
def test_js_of_disjoint_supports_is_log2(backend):
    p = np.array([[0.5, 0.5, 0.0, 0.0]])
    q = np.array([[0.0, 0.0, 0.25, 0.75]])
    assert np.isclose(fastdiv.js_div(p, q, inputs="probs", backend=backend), np.log(2), rtol=1e-6)


@host64
def test_js_beta_endpoints_are_the_two_kls(backend, rng):
    x, z = _inputs(rng, 40, 300, np.float64, "logits")
    fwd = fastdiv.kl_div(x, z, reduction="none", backend=backend)
    rev = fastdiv.kl_div(z, x, reduction="none", backend=backend)
    np.testing.assert_array_equal(fastdiv.js_div(x, z, beta=0.0, reduction="none", backend=backend), fwd)
    np.testing.assert_array_equal(fastdiv.js_div(x, z, beta=1.0, reduction="none", backend=backend), rev)


def test_js_endpoints_are_limits_of_the_normalised_divergence(rng):
    """JS_beta / (beta (1 - beta)) -> D(P||Q) as beta -> 0 and D(Q||P) as beta -> 1."""
    x, z = make_logits(rng, 8, 40, np.float64, scale=1.0, edges=False), make_logits(rng, 8, 40, np.float64, scale=1.0, edges=False)
    for beta, want in ((1e-6, R.kl_rows(x, z)), (1 - 1e-6, R.kl_rows(z, x))):
        got = R.js_rows(x, z, beta) / (beta * (1 - beta))
        np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("backend", ALL_HOST)
def test_js_of_float32_subnormal_probabilities(backend):
    """beta p underflows to 0 against q = 0: the Cython kernel gave NaN until 2026-12-05 (see
    test_js_of_probabilities_at_the_bottom_of_the_range)."""
    p = np.zeros((1, 300), np.float32)
    p[0, 0] = 1.0
    p[0, 1:] = 1e-45
    q = np.zeros_like(p)
    q[0, 0] = 1.0
    got = fastdiv.js_div(p, q, beta=0.3, inputs="probs", reduction="none", backend=backend)
    np.testing.assert_allclose(got, R.js_rows(p, q, 0.3, "probs"), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("backend", ALL_HOST)
def test_js_of_a_late_low_row_after_a_masked_chunk(backend):
    """A row whose first chunk is all masked and whose other logits lie below -87 (their exp
    underflows in float32): the Cython kernel gave NaN until 2026-12-05 (the chunk's factor
    e^(0 - max) overflowed); see test_js_of_a_row_whose_mass_starts_past_the_first_chunk."""
    x = np.full((1, 4096), -np.inf, np.float32)
    x[0, 3000] = -100.0
    z = (np.random.default_rng(0).standard_normal((1, 4096)) * 1e-3).astype(np.float32)
    got = fastdiv.js_div(x, z, beta=0.3, reduction="none", backend=backend)
    np.testing.assert_allclose(got, R.js_rows(x, z, 0.3), rtol=1e-5)


# --------------------------------------------------------------------------- temperature


@host
@dtypes
def test_temperature_one_changes_no_bit(backend, dtype, rng):
    x, z = _inputs(rng, 40, 1271, dtype, "logits")
    p = make_probs(rng, 40, 1271, dtype)
    for f in (lambda **k: fastdiv.entropy(x, **k, backend=backend),
              lambda **k: fastdiv.kl_div(x, z, reduction="none", **k, backend=backend),
              lambda **k: fastdiv.js_div(x, z, reduction="none", **k, backend=backend),
              lambda **k: fastdiv.cross_entropy(x, p, reduction="none", **k, backend=backend)):
        np.testing.assert_array_equal(f(temperature=1.0), f())


@pytest.mark.parametrize("bad", [0.0, -1.0, np.inf, np.nan, 5e-324])
def test_temperature_must_be_positive_and_finite(bad):
    x = np.zeros((2, 3))
    with pytest.raises(ValueError, match="temperature"):
        fastdiv.kl_div(x, x, temperature=bad)


def test_temperature_errors_name_the_argument():
    x = np.zeros((2, 3))
    with pytest.raises(TypeError, match="temperature"):
        fastdiv.entropy(x, temperature="2")
    with pytest.raises(TypeError, match="temperature"):
        fastdiv.entropy(x, temperature=True)
    with pytest.raises(ValueError, match="temperature"):
        fastdiv.entropy(np.full((2, 3), 1 / 3), inputs="probs", temperature=2.0)
    with pytest.raises(ValueError, match="temperature"):
        fastdiv.js_div(x, x, inputs="log_probs", temperature=2.0)
    with pytest.raises(ValueError, match="temperature"):
        fastdiv.cross_entropy(x, np.array([0, 1]), temperature=2.0)


# --------------------------------------------------------------------------- top-k teacher KL


def _dense_topk(t, top, student, tail):
    """The top-k KL written from dense float64 distributions (independent of topk_kl_rows)."""
    n, v = student.shape
    logq = R.log_softmax_rows(student)
    out = np.empty(n)
    for i in range(n):
        p = np.zeros(v)
        p[top[i]] = np.exp(t[i, top[i]])
        if tail == "renormalize":
            out[i] = R.kl_rows((p / p.sum())[None], np.exp(logq[i])[None], "probs")[0]
        else:
            rest = np.ones(v, bool)
            rest[top[i]] = False
            pk = np.append(p[top[i]], max(0.0, 1 - p.sum()) if rest.any() else 0.0)
            qk = np.append(np.exp(logq[i, top[i]]), np.exp(logq[i, rest]).sum())
            out[i] = R.kl_rows(pk[None], qk[None], "probs")[0]
    return out


@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
@pytest.mark.parametrize("k", [1, 5, 40])
def test_topk_reference_equals_the_dense_construction(tail, k, rng):
    t, top, tk = _teacher(rng, 12, 97, k)
    student = make_logits(rng, 12, 97, np.float64, edges=False)
    np.testing.assert_allclose(R.topk_kl_rows(top, tk, student, tail), _dense_topk(t, top, student, tail),
                               rtol=1e-10, atol=1e-13)


@host64
@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
def test_topk_with_k_equal_v_is_the_dense_kl(backend, tail, rng):
    v = 300
    t, top, tk = _teacher(rng, 20, v, v)
    student = make_logits(rng, 20, v, np.float64, edges=False)
    got = fastdiv.topk_kl_div(top, tk, student, tail=tail, reduction="none", backend=backend)
    np.testing.assert_allclose(got, R.kl_rows(t, student), rtol=1e-9, atol=1e-12)


@host64
def test_topk_bucket_keeps_a_tiny_student_tail_exact(backend):
    """The student's tail is summed from its own classes, not as 1 - sum(q_i) (which cancels)."""
    v = 1000
    student = np.full((1, v), -30.0)
    student[0, :2] = [10.0, 9.0]
    teacher = np.log(np.array([[0.6, 0.3]]))
    got = fastdiv.topk_kl_div(np.array([[0, 1]]), teacher, student, tail="bucket", reduction="none",
                              backend=backend)
    mpmath = pytest.importorskip("mpmath", reason="mpmath is the high-precision oracle")
    mpmath.mp.dps = 50
    zs = [mpmath.mpf(10), mpmath.mpf(9)] + [mpmath.mpf(-30)] * (v - 2)
    lse = mpmath.log(mpmath.fsum(mpmath.exp(z) for z in zs))
    want = sum(mpmath.mpf(p) * (mpmath.log(p) - (z - lse)) for p, z in ((0.6, zs[0]), (0.3, zs[1])))
    r = 1 - mpmath.mpf(0.6) - mpmath.mpf(0.3)
    s = (v - 2) * mpmath.exp(zs[2] - lse)
    want += r * (mpmath.log(r) - mpmath.log(s))
    np.testing.assert_allclose(got, [float(want)], rtol=1e-12)


@host64
def test_topk_masked_student_class_gives_inf(backend):
    student = np.array([[0.0, -np.inf, 1.0, 2.0]])
    for tail in ("renormalize", "bucket"):
        got = fastdiv.topk_kl_div(np.array([[3, 1]]), np.log([[0.5, 0.2]]), student, tail=tail,
                                  reduction="none", backend=backend)
        assert got[0] == np.inf, (backend, tail)


def test_topk_bad_input_names_the_argument():
    z = np.zeros((2, 5))
    ok_t = np.log(np.full((2, 2), 0.3))
    with pytest.raises(ValueError, match="distinct"):
        fastdiv.topk_kl_div(np.array([[1, 1], [0, 2]]), ok_t, z)
    with pytest.raises(ValueError, match="teacher_indices"):
        fastdiv.topk_kl_div(np.array([[1, 5], [0, 2]]), ok_t, z)
    with pytest.raises(ValueError, match="teacher_indices"):
        fastdiv.topk_kl_div(np.array([[1, -1], [0, 2]]), ok_t, z)
    with pytest.raises(ValueError, match="teacher_logprobs"):
        fastdiv.topk_kl_div(np.array([[1, 2], [0, 2]]), ok_t[:, :1], z)
    with pytest.raises(ValueError, match="teacher_indices"):
        fastdiv.topk_kl_div(np.array([[1, 2]]), ok_t[:1], z)
    with pytest.raises(ValueError, match="k = 6"):
        fastdiv.topk_kl_div(np.tile(np.arange(6), (2, 1)), np.zeros((2, 6)), z)
    with pytest.raises(TypeError, match="teacher_indices"):
        fastdiv.topk_kl_div(np.array([[1.0, 2.0], [0.0, 2.0]]), ok_t, z)
    with pytest.raises(TypeError, match="teacher_logprobs"):
        fastdiv.topk_kl_div(np.array([[1, 2], [0, 2]]), np.array([[1, 2], [0, 2]]), z)
    with pytest.raises(ValueError, match="tail"):
        fastdiv.topk_kl_div(np.array([[1, 2], [0, 2]]), ok_t, z, tail="drop")
    with pytest.raises(ValueError, match="teacher_logprobs"):
        fastdiv.topk_kl_div(np.array([[1, 2], [0, 2]]), np.log(np.full((2, 2), 0.8)), z, tail="bucket")
    # renormalize only needs log-scores: unnormalized rows are fine
    fastdiv.topk_kl_div(np.array([[1, 2], [0, 2]]), np.log(np.full((2, 2), 0.8)), z)


# --------------------------------------------------------------------------- gaussian_kl


def _gauss_mp(mu, lv, mu0, lv0):
    mpmath = pytest.importorskip("mpmath", reason="mpmath is the high-precision oracle")
    mpmath.mp.dps = 60
    out = []
    for row in zip(mu, lv, mu0, lv0):
        acc = mpmath.mpf(0)
        for m, l, m0, l0 in zip(*(map(mpmath.mpf, map(float, r)) for r in row)):
            d = l - l0
            acc += (mpmath.exp(d) - 1 - d + (m - m0) ** 2 * mpmath.exp(-l0)) / 2
        out.append(float(acc))
    return np.array(out)


def test_gaussian_kl_matches_high_precision_including_extreme_logvar(rng):
    n, d = 6, 7
    mu = rng.standard_normal((n, d)) * 3
    lv = rng.standard_normal((n, d)) * 2
    lv[0] = [300.0, -300.0, 600.0, -700.0, 1e-9, -1e-9, 0.25]        # huge |logvar|, tiny d
    mu0 = rng.standard_normal((n, d))
    lv0 = lv + rng.choice([1e-12, -3e-8, 0.4, -2.0, 5.0], size=(n, d))  # d near 0 and not
    lv0[1] = [300.0, -300.0, 600.0, -700.0, 1e-9, -1e-9, 0.25]
    got = fastdiv.gaussian_kl(mu, lv, mu0, lv0, reduction="none")
    np.testing.assert_allclose(got, _gauss_mp(mu, lv, mu0, lv0), rtol=1e-13)
    # the default prior: a standard normal
    got = fastdiv.gaussian_kl(mu[2:], lv[2:], reduction="none")
    np.testing.assert_allclose(got, _gauss_mp(mu[2:], lv[2:], np.zeros((n - 2, d)), np.zeros((n - 2, d))), rtol=1e-13)


def test_gaussian_kl_small_difference_keeps_relative_precision():
    """d = logvar - logvar_prior tiny: exp(d) - 1 - d ~ d^2/2 must not cancel to 0 or noise."""
    d = np.array([[1e-3, 1e-6, 1e-9, -1e-9]])
    got = fastdiv.gaussian_kl(np.zeros_like(d), 500.0 + d, 0.0, 500.0, reduction="none")
    np.testing.assert_allclose(got, _gauss_mp(np.zeros_like(d), 500.0 + d, np.zeros_like(d), np.full_like(d, 500.0)),
                               rtol=1e-9)
    assert got[0] > 0


def test_gaussian_kl_shapes_dtypes_reductions_and_priors(rng):
    mu = rng.standard_normal((3, 4, 5)).astype(np.float32)
    lv = rng.standard_normal((3, 4, 5)).astype(np.float32)
    per = fastdiv.gaussian_kl(mu, lv, reduction="none")
    assert per.shape == (3, 4) and per.dtype == np.float32
    assert np.isclose(fastdiv.gaussian_kl(mu, lv), per.mean(), rtol=1e-6)
    assert np.isclose(fastdiv.gaussian_kl(mu, lv, reduction="sum"), per.sum(), rtol=1e-6)
    mu0 = rng.standard_normal(5)                    # broadcast over rows
    np.testing.assert_allclose(fastdiv.gaussian_kl(mu, lv, mu0, 0.5, reduction="none"),
                               R.gaussian_kl_elements(mu, lv, np.broadcast_to(mu0, mu.shape), 0.5).sum(-1),
                               rtol=1e-6)
    assert fastdiv.gaussian_kl(mu[0, 0].astype(np.float64), lv[0, 0].astype(np.float64)).dtype == np.float64
    assert fastdiv.gaussian_kl(mu, lv, np.zeros(5)).dtype == np.float64       # a float64 prior array widens
    assert fastdiv.gaussian_kl(mu, lv, 0.5, 1.0).dtype == np.float32          # a Python float does not
    t = mu.transpose(1, 0, 2)                       # non-contiguous input
    np.testing.assert_allclose(fastdiv.gaussian_kl(t, lv.transpose(1, 0, 2), reduction="none"), per.T, rtol=1e-6)
    assert fastdiv.gaussian_kl(np.zeros((2, 3)), np.full((2, 3), -np.inf), reduction="none")[0] == np.inf
    assert np.isnan(fastdiv.gaussian_kl(np.array([[np.nan, 0.0]]), np.zeros((1, 2)), reduction="none")[0])


def test_gaussian_kl_bad_input_names_the_argument():
    z = np.zeros((2, 3))
    with pytest.raises(ValueError, match="mu and logvar"):
        fastdiv.gaussian_kl(z, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="logvar_prior"):
        fastdiv.gaussian_kl(z, z, 0.0, np.zeros(4))
    with pytest.raises(TypeError, match="mu_prior"):
        fastdiv.gaussian_kl(z, z, "a")
    with pytest.raises(TypeError, match="logvar"):
        fastdiv.gaussian_kl(z, z.astype(int))
    with pytest.raises(ValueError, match="reduction"):
        fastdiv.gaussian_kl(z, z, reduction="batchmean")


# --------------------------------------------------------------------------- validation


def test_js_bad_input_names_the_argument():
    x = np.zeros((2, 3))
    for bad in (-0.1, 1.5, np.nan, "0.5", True):
        with pytest.raises(ValueError, match="beta"):
            fastdiv.js_div(x, x, beta=bad)
    with pytest.raises(ValueError, match="p and q"):
        fastdiv.js_div(x, np.zeros((2, 4)))
    with pytest.raises(ValueError, match="inputs"):
        fastdiv.js_div(x, x, inputs="logprobs")
    with pytest.raises(TypeError, match="q"):
        fastdiv.js_div(x, x.astype(int))
    with pytest.raises(ValueError, match="q"):
        fastdiv.js_div(np.full((2, 3), 1 / 3), np.full((2, 3), 0.5), inputs="probs", validate=True)
    assert abs(fastdiv.js_div(np.full((2, 3), 1 / 3), np.full((2, 3), 1 / 3), inputs="probs", validate=True)) < 1e-12


# --------------------------------------------------------------------------- half-precision inputs

HALF_BACKENDS = [b for b in ALL_HOST if b != "numpy"]


@pytest.mark.parametrize("backend", backend_params(HALF_BACKENDS, dtype=np.float16))
def test_half_inputs_go_to_the_kernel_as_raw_bits(backend, rng, monkeypatch):
    """No full-size upcast: half input reaches a HALF_INPUTS kernel as uint16/int16, a
    non-contiguous one as C-contiguous half blocks (the same kernel, the same bits)."""
    if not _registry.half_inputs(backend):
        pytest.skip(f"{backend} does not read half inputs directly (HALF_INPUTS)")
    seen = []
    real = _registry.kernel

    def spy(b, op):
        k = real(b, op)
        return lambda *a: (seen.append([x.dtype for x in a if isinstance(x, np.ndarray)]), k(*a))[1]

    monkeypatch.setattr(_registry, "kernel", spy)
    for half in HALF:
        x = make_logits(rng, 8, 300, np.float32).astype(half)
        fastdiv.kl_div(x, x[::-1].copy(), backend=backend)
        bits = np.uint16 if half == np.float16 else np.int16
        assert seen[-1][:2] == [np.dtype(bits)] * 2
        fastdiv.kl_div(x[:, ::2], x[:, 1::2], backend=backend)   # strided: half blocks
        assert seen[-1][:2] == [np.dtype(bits)] * 2


# --------------------------------------------------------------------------- layouts and threads


@pytest.mark.parametrize("backend", HALF_BACKENDS)
def test_results_do_not_depend_on_the_thread_count(backend, rng):
    x, z = _inputs(rng, 37, 3000, np.float32, "logits")
    _, top, tk = _teacher(rng, 37, 3000, 9)
    runs = []
    for n in (1, 2):
        with fastdiv.threads(n):
            runs.append([fastdiv.js_div(x, z, reduction="none", backend=backend),
                         fastdiv.js_div(x, z, temperature=3.0, reduction="none", backend=backend),
                         fastdiv.topk_kl_div(top, tk.astype(np.float32), x, tail="bucket", reduction="none", backend=backend)])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", backend_params(HALF_BACKENDS, dtype=np.float16))
def test_half_results_do_not_depend_on_the_thread_count(backend, rng):
    xh = make_logits(rng, 37, 3000, np.float32).astype(np.float16)
    runs = []
    for n in (1, 2):
        with fastdiv.threads(n):
            runs.append(fastdiv.entropy(xh, temperature=0.5, backend=backend))
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.slow                   # numba's half specializations: the slow tier (cases.fast)
@pytest.mark.skipif("numba" not in ALL_HOST, reason="numba backend unavailable")
@pytest.mark.parametrize("half", HALF, ids=lambda d: np.dtype(d).name)
def test_numba_divergence_kernels_read_half_bits(half, rng):
    """Contract v2 item 2 for the numba js / top-k kernels, called directly (the API hands half
    bits to numba once its kernels module sets HALF_INPUTS): float32 results on the upcast."""
    bits = np.uint16 if half == np.float16 else np.int16
    x = make_logits(rng, 40, 700, np.float32).astype(half)
    z = make_logits(rng, 40, 700, np.float32).astype(half)
    p, q = (make_probs(rng, 40, 700, np.float32).astype(half) for _ in range(2))
    _, top, tk = _teacher(rng, 40, 700, 9)
    idx = np.sort(top, axis=1).astype(np.int64)
    tk = tk.astype(half)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    calls = {
        "js_logits": lambda a, b: (a, b, 0.3, 0.5),
        "js_log_probs": lambda a, b: (np.log(np.maximum(a.astype(np.float32), 1e-30)).astype(a.dtype), b, 0.3),
        "js_probs": lambda a, b: (a, b, 0.7),
        "topk_kl": lambda a, b: (idx, tk, a, 1),
    }
    for op, make in calls.items():
        args = make(x, z) if op in ("js_logits", "topk_kl") else make(p, q)
        kern = _registry.kernel("numba", op)
        got, want = np.empty(40, np.float32), np.empty(40, np.float32)
        kern(*[a.view(bits) if isinstance(a, np.ndarray) and a.dtype == half else a for a in args], got, 2)
        kern(*[f32(a) if isinstance(a, np.ndarray) and a.dtype == half else a for a in args], want, 2)
        # equal up to float32 rounding: LLVM may split a sum over vector lanes differently
        # for 16-bit loads than for 32-bit ones
        np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-6, err_msg=op)


@pytest.mark.skipif("numba" not in ALL_HOST, reason="numba backend unavailable")
def test_numba_half_loads_convert_exactly():
    """simd.load, which the numba kernels read half inputs with: every float16 / bfloat16 bit
    pattern widens to the float32 numpy / ml_dtypes give."""
    from numba import njit

    from fastdiv._numba.simd import load

    @njit
    def conv(a, out):
        for i in range(a.shape[0]):
            out[i] = load(a[i])

    for bits, half in ((np.uint16, np.float16),) + (((np.int16, ml_dtypes.bfloat16),) if ml_dtypes else ()):
        every = np.arange(1 << 16, dtype=np.uint16).view(bits)
        out = np.empty(every.size, np.float32)
        conv(every, out)
        want = every.view(half).astype(np.float32)
        nan = np.isnan(want)
        np.testing.assert_array_equal(out.view(np.uint32)[~nan], want.view(np.uint32)[~nan])
        assert np.isnan(out[nan]).all()


@pytest.mark.parametrize("backend", backend_params(["numba", "cython", "numpy"]))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_js_of_a_row_whose_mass_starts_past_the_first_chunk(backend, dtype):
    """P masked everywhere but one class late in the row (its first chunks all -inf), Q
    spread: the Cython JS pass once scaled those chunks' (zero) exponentials by e^(0 - max)
    = inf at logits ~ -1e4 and returned NaN (found by the fuzz test, 2026-12-05)."""
    from fastdiv import reference as R

    v = 1271
    x = np.full((4, v), -np.inf)
    for i, j in enumerate((0, 600, 1033, v - 1)):
        x[i, j] = -1e4
    z = np.random.default_rng(3).standard_normal((4, v)) * 1e-3
    x, z = x.astype(dtype), z.astype(dtype)
    for a, b in ((x, z), (z, x)):
        got = fastdiv.js_div(a, b, beta=0.3, reduction="none", backend=backend)
        np.testing.assert_allclose(got, R.js_rows(a, b, 0.3), rtol=1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("backend", backend_params(["numba", "cython", "numpy", "cuda"]))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_js_of_probabilities_at_the_bottom_of_the_range(backend, dtype):
    """Subnormal p beside q = 0: the mixture 0.3 p underflows to 0, and the Cython and CUDA JS
    once took its log as -inf and returned inf or NaN for the row (fuzz test, 2026-12-05)."""
    from fastdiv import reference as R

    tiny = np.finfo(dtype).smallest_subnormal
    p = np.zeros((2, 300), dtype)
    p[:, :5] = tiny
    p[:, 7] = 1.0 - 5 * tiny
    q = np.zeros_like(p)
    q[1] = 1.0 / 300
    got = fastdiv.js_div(p, q, beta=0.3, inputs="probs", reduction="none", backend=backend)
    np.testing.assert_allclose(got, R.js_rows(p, q, 0.3, "probs"), rtol=1e-5 if dtype == np.float32 else 1e-12)


def confident_rows(v, dtype=np.float32, seed=0):
    """16 row pairs with one class far above the rest in both (logit 15, 20, 30, 40 against
    N(0, 3): p ~ q ~ 1 - 1e-3 .. 1 - 1e-14) and independent tails: JS and KL from ~1e-3 down to
    ~1e-15, the difference of two small tail masses."""
    rng = np.random.default_rng(seed + v)
    x = (rng.standard_normal((16, v)) * 3).astype(dtype)
    z = (rng.standard_normal((16, v)) * 3).astype(dtype)
    x[:, 0] = z[:, 0] = np.repeat([15.0, 20.0, 30.0, 40.0], 4)
    return x, z


@pytest.mark.parametrize("backend", backend_params(["numba", "cython", "numpy", "cuda"]))
@pytest.mark.parametrize("v", [37, 1000, 20000])
def test_divergences_of_confident_float32_rows_keep_their_relative_accuracy(backend, v):
    """confident_rows: a vector (chunk) of far classes that holds the top class took it by the
    log-based terms, which cancel to ~eps (p + q) beside a JS of ~1e-11: Cython 1.5x off (at
    top logits 30 and 40), 1.7e-2 at 20, before 2026-12-07; now such rows (JS below
    JS_LANES_BELOW after a pass with log-based terms) are summed again class by class.  The
    float32 KL redo summed such a vector by q - p - p d, which cancels alike: 1-3 % off at
    20000 classes on both backends before 2026-12-07 (benchmarks/confident_rows.py).  Rows
    with a top logit of 15 or 20 (KL 1e-5 to 1e-3, some above the redo's threshold) keep the
    one pass there: ~4e-4 at worst from its float32 lane sums, where the top class's 1 sits
    in a lane with a share of the tail (docs/semantics.rst, "Confident rows").  Cython's
    block path (V <= 2048 in float32) counts each row's maximum apart since 2026-12-07:
    5.5e-4 -> 6e-7 at 37 classes, 4.4e-4 -> 3e-7 at 1000."""
    x, z = confident_rows(v)
    x64, z64 = x.astype(np.float64), z.astype(np.float64)
    want = R.js_rows(x64, z64, 0.5)
    for a, b in ((x, z), (z, x)):
        got = fastdiv.js_div(a, b, reduction="none", backend=backend)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=0)
    for a, b, a64, b64 in ((x, z, x64, z64), (z, x, z64, x64)):
        got = fastdiv.kl_div(a, b, reduction="none", backend=backend)
        want = R.kl_rows(a64, b64)
        np.testing.assert_allclose(got[8:], want[8:], rtol=1e-4, atol=0)
        one_pass = 1e-5 if backend in ("cython", "numpy") and v <= 2048 else 2e-3
        np.testing.assert_allclose(got[:8], want[:8], rtol=one_pass, atol=0)


@pytest.mark.parametrize("backend", backend_params(["numba", "cython", "numpy", "cuda"]))
@pytest.mark.parametrize("v", [51, 1271, 20000])
@pytest.mark.parametrize("sigma", [1e-2, 1e-3])
def test_js_of_nearby_float32_rows_keeps_its_relative_accuracy(backend, v, sigma):
    """z = x + N(0, sigma): JS ~ sigma^2 / 8.  The log-based terms p (lp - lm) cancel to it from
    lp - lm rounded at the size of |lm| (1e-6): at sigma = 1e-3 the rows were off by 50 %
    (median) before 2026-12-06; the terms m J(d / 2) of the compiled kernels keep ~1e-7
    (benchmarks/js_nearby.py).  Row 4 is offset by 1000, where z - x rounds at the size of the
    offset (d from the logits less their maxima there).  Row 5 has a fifth of its classes,
    scattered, masked in x only, where z keeps a small mass: those add m ln 2 and leave their
    vectors' (chunks') other classes on the near terms (2x off before 2026-12-06)."""
    rng = np.random.default_rng(int(sigma * 1e4) + v)
    x = (rng.standard_normal((8, v)) * 2).astype(np.float32)
    z = (x + rng.standard_normal((8, v)) * sigma).astype(np.float32)
    z[1] = x[1]  # equal rows: exactly 0
    masked = rng.random(v) < 0.2
    x[2, masked] = z[2, masked] = -np.inf  # classes masked in both rows: their terms are 0
    x[3, : max(1, v // 10)] = -np.inf  # masked in one row only: that class adds m ln 2
    z[4] = (x[4] + np.float32(1000) + rng.standard_normal(v).astype(np.float32) * sigma).astype(np.float32)  # an offset
    one = masked & (np.arange(v) > 0)
    x[5, one] = -np.inf
    z[5, one] = -30.0
    want = R.js_rows(x.astype(np.float64), z.astype(np.float64), 0.5)
    for a, b in ((x, z), (z, x)):
        got = fastdiv.js_div(a, b, reduction="none", backend=backend)
        assert got[1] == 0.0
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=0)


@pytest.mark.parametrize("backend", backend_params(["numba", "cython", "numpy", "cuda"]))
@pytest.mark.parametrize("v", [51, 1271, 20000])
@pytest.mark.parametrize("sigma", [1e-2, 1e-3])
def test_kl_of_nearby_float32_rows_keeps_its_relative_accuracy(backend, v, sigma):
    """z = x + N(0, sigma): KL ~ sigma^2 / 2.  The float32 one pass cancels to it (2 % off at
    sigma = 1e-3, 50257 classes, before 2026-12-06); rows below FD_KL32_NEAR_BELOW L are summed
    again class by class (fd_kl_near32 / _kl_near32): ~1e-7.  Beside them: equal rows (0),
    classes masked in both rows, a row offset by 1000, and a fifth of the classes, scattered,
    masked in P only where Q keeps a small mass (each adds its q; 2 % off before 2026-12-06,
    when their vectors took the far terms).  CUDA recomputes such rows in float64 (since
    2026-12-06, as it did float64 rows)."""
    x, z = nearby_kl_pair(v, sigma, np.float32, int(sigma * 1e4) + v + 7)
    want = R.kl_rows(x.astype(np.float64), z.astype(np.float64))
    got = fastdiv.kl_div(x, z, reduction="none", backend=backend)
    assert abs(got[1]) <= 1e-30
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-30)


def noisy_nearby_rows(v, seed):
    """Rows 1e-3 apart but for a few noisy classes at logits ~ -20 that move by N(0, 3) (|d| >= 2:
    the rare and special tokens a quantization moves most).  Row 0: one per 190 classes (2 of
    51); row 1: a block of 256 (5 of 51) at the end, as a tokenizer's reserved tokens; row 2:
    one per 190 in both rows' tails, the rest of the row equal."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, v)) * 2).astype(np.float32)
    z = x + rng.standard_normal(x.shape) * 1e-3
    z[2] = x[2]
    spread = 190 if v > 1000 else 20
    for i, cols in ((0, np.arange(3, v, spread)), (1, np.arange(v - min(256, v // 10), v)),
                    (2, np.arange(3, v, spread))):
        x[i, cols] = -20 + rng.standard_normal(cols.size)
        z[i, cols] = x[i, cols] + rng.standard_normal(cols.size) * 3
    return x, z.astype(np.float32)


@pytest.mark.parametrize("backend", backend_params(["numba", "cython", "numpy", "cuda"]))
@pytest.mark.parametrize("v", [51, 20000])
def test_divergences_of_nearby_rows_with_a_few_noisy_classes(backend, v):
    """noisy_nearby_rows: the vector (Cython) or chunk (numba) holding a noisy class fails the
    nearby terms' test, and its near classes cancel in the log-based terms (50257 classes,
    one noisy per 190: JS 1.3 % off on Cython, 66 % on numba, KL 0.5 % / 32 % before
    2026-12-07).  Such a vector or chunk is now summed class by class (_registry
    NEAR_MIXED_SHARE): ~1e-7 (benchmarks/noisy_nearby.py)."""
    x, z = noisy_nearby_rows(v, v)
    x64, z64 = x.astype(np.float64), z.astype(np.float64)
    for a, b, a64, b64 in ((x, z, x64, z64), (z, x, z64, x64)):
        np.testing.assert_allclose(fastdiv.js_div(a, b, reduction="none", backend=backend),
                                   R.js_rows(a64, b64, 0.5), rtol=1e-5, atol=0)
        np.testing.assert_allclose(fastdiv.kl_div(a, b, reduction="none", backend=backend),
                                   R.kl_rows(a64, b64), rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", backend_params(["numba", "cython", "numpy"]))
@pytest.mark.parametrize("v", [6, 51])
def test_kl_of_a_confident_row_pair_in_the_block_path(backend, v):
    """Both rows of pair 3 put nearly all their mass on class 0 (logit 40): KL ~1e-16 at
    V = 6, 2e-14 at V = 51, every other class far (|d| ~ 4).  The short-row block paths redo
    such a row; taken from the block pass's own sums (against the block's references, the
    row's largest term not an exact 1) it came out 5e-8 off (tests/equivalence.py,
    2026-12-06), from the row's own sums within 1e-6 relative."""
    rng = np.random.default_rng(2 + v)
    x = (rng.standard_normal((32, v)) * 3).astype(np.float32)
    z = (rng.standard_normal((32, v)) * 3).astype(np.float32)
    x[3, 0] = z[3, 0] = 40.0
    want = R.kl_rows(x.astype(np.float64), z.astype(np.float64))
    got = fastdiv.kl_div(x, z, reduction="none", backend=backend)
    np.testing.assert_allclose(got[3], want[3], rtol=1e-5, atol=0)
    np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-6)


def test_the_kl_redo_thresholds_have_one_value():
    """The rows KL from logits recomputes (fastdiv._registry.KL_EXACT_BELOW, KL32_NEAR_BELOW,
    which numba and CUDA read), and the share of wide classes up to which the nearby terms
    take a vector or chunk class by class (NEAR_MIXED_SHARE, NEAR_MIXED_WIDE, which numba
    reads): the Cython kernels' macros are the same literals."""
    import pathlib
    import re

    src = (pathlib.Path(fastdiv.__file__).parent / "_cython" / "_simd.h").read_text()
    for macro, value in (("FD_KL_EXACT_BELOW", _registry.KL_EXACT_BELOW),
                         ("FD_KL32_NEAR_BELOW", _registry.KL32_NEAR_BELOW),
                         ("FD_NEAR_MIXED_SHARE", _registry.NEAR_MIXED_SHARE),
                         ("FD_NEAR_MIXED_WIDE", _registry.NEAR_MIXED_WIDE),
                         ("FD_JS_LANES_BELOW", _registry.JS_LANES_BELOW)):
        assert float(re.search(rf"#define {macro} (\S+)", src).group(1)) == value


def test_the_js_polynomial_is_one_fit_within_its_bound():
    """The coefficients of J(d / 2) = s Q(s) (fastdiv._registry.JSD_HALF_POLY, which numba and
    CUDA read) are the Cython kernels' fd_jsd_f32 literals, and Q in float32 Horner is within
    3e-7 of J relative over s = d^2 in [0, 4)."""
    import pathlib
    import re

    src = (pathlib.Path(fastdiv.__file__).parent / "_cython" / "_simd.h").read_text()
    body = src[src.index("FD_INLINE fd_vf fd_jsd_f32(fd_vf s)"):]
    body = body[:body.index("}")]
    lits = re.findall(r"(?:([-+])\s*)?(\d[\d.e+-]*)f\b", body)   # "q * s - 0.00018f": sign, digits
    assert tuple(float(sign + digits) for sign, digits in lits) == _registry.JSD_HALF_POLY
    s = np.linspace(0, 4, 200_001, endpoint=False)[1:]
    x = np.sqrt(s) / 2
    want = x * np.tanh(x) - np.log1p(2 * np.sinh(x / 2) ** 2)   # log cosh x without cancelling
    s32 = s.astype(np.float32)
    q = np.float32(_registry.JSD_HALF_POLY[0])
    for c in _registry.JSD_HALF_POLY[1:]:
        q = (q * s32 + np.float32(c)).astype(np.float32)
    got = (s32 * q).astype(np.float64)
    assert np.max(np.abs(got - want) / want) < 3e-7
