"""scipy's log-sum-exp, softmax, ``entr`` / ``rel_entr`` and ``stats.entropy`` cases, on every backend.

Inputs and expected values are scipy's (literal values, or the formula scipy's test evaluates
for its expected value); tolerances are scipy's: ``xp_assert_close``'s default rtol is
``4 sqrt(eps)`` (5.96e-8 in float64, 1.38e-3 in float32), ``assert_func_equal`` and the softmax
tests use 1e-13.  Where fastdiv's API differs (no ``b=`` weights, no ``axis=``, floats only,
probabilities taken literally) the case goes through the documented mapping; the differences
themselves are tested in test_differences.py (docs/peers.rst).
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import fastdiv

from _peer import backend, close, rows_for  # noqa: F401  (backend is a fixture)

LOGSUMEXP = "scipy 1.17.1: scipy/special/tests/test_logsumexp.py (git tag v1.17.1)"
BASIC = "scipy 1.17.1: scipy/special/tests/test_basic.py, test_entr / test_rel_entr* (git tag v1.17.1)"
STATS = "scipy 1.17.1: scipy/stats/tests/test_entropy.py, class TestEntropy (git tag v1.17.1)"

XP_RTOL64 = 4 * np.finfo(np.float64).eps ** 0.5       # xp_assert_close's default rtol
XP_RTOL32 = 4 * np.finfo(np.float32).eps ** 0.5

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def lse(backend, a, dtype=np.float64):
    return fastdiv.logsumexp(np.asarray(a, dtype=dtype), backend=backend)


def log_softmax(backend, x):
    """scipy.special.log_softmax over the last axis, as fastdiv computes it: the cross-entropy of
    the row against each class j is ``-log softmax(x)_j`` (fastdiv has no softmax function)."""
    x = np.asarray(x, dtype=np.float64)
    v = x.shape[-1]
    rows = np.repeat(x[..., None, :], v, axis=-2)                 # (..., V, V): row i, target j
    target = np.broadcast_to(np.arange(v), rows.shape[:-1])
    return -np.asarray(fastdiv.cross_entropy(rows, target, reduction="none", backend=backend))


def softmax(backend, x):
    return np.exp(log_softmax(backend, x))


# --------------------------------------------------------------------------- TestLogSumExp ({LOGSUMEXP})


def test_logsumexp_large_inputs(backend):
    """test_logsumexp: arange(200), [1000, 1000], 1000 entries of 10000 (floats here)."""
    a = np.arange(200.0)
    close(lse(backend, a), np.log(np.sum(np.exp(a))), XP_RTOL64, what=LOGSUMEXP)
    close(lse(backend, [1000.0, 1000.0]), 1000.0 + math.log(2.0), XP_RTOL64)
    close(lse(backend, np.full(1000, 10000.0)), 10000.0 + math.log(1000), XP_RTOL64)


def test_logsumexp_many_tiny_terms(backend):
    """test_logsumexp: 1e6 entries of log(1e-40) in two rows, reduced along each axis and both."""
    n = 1000 if backend == "cuda" else 1_000_000        # the simulator runs ~1e4 elements/s
    x = np.full(n, 1e-40)
    big_x, log_x = np.stack([x, x]), np.stack([np.log(x), np.log(x)])
    close(np.exp(lse(backend, log_x)), np.sum(big_x, axis=1), XP_RTOL64)       # axis=1 (the class axis)
    close(np.exp(lse(backend, log_x.ravel())), np.sum(big_x), XP_RTOL64)       # axis=None: one row
    if backend != "cuda":
        close(np.exp(lse(backend, np.ascontiguousarray(log_x.T))), np.sum(big_x, axis=0), XP_RTOL64)  # axis=0


def test_logsumexp_special_values(backend):
    """test_logsumexp: inf, -inf, nan, [-inf, -inf] exactly; rows of different magnitudes."""
    assert lse(backend, [np.inf]) == np.inf
    assert lse(backend, [-np.inf]) == -np.inf
    assert np.isnan(lse(backend, [np.nan]))
    assert lse(backend, [-np.inf, -np.inf]) == -np.inf
    a = np.array([[1e10, 1e-10], [-1e10, -np.inf]])
    close(lse(backend, a), [1e10, -1e10], XP_RTOL64)
    close(lse(backend, a.ravel()), 1e10, XP_RTOL64)                            # axis=(-1, -2)


def test_logsumexp_b_as_log_offsets(backend):
    """test_logsumexp_b and test_logsumexp_b_zero: positive scale factors b enter as a + log(b)."""
    a = np.arange(200.0)
    b = np.arange(200.0, 0.0, -1.0)
    close(lse(backend, a + np.log(b)), np.log(np.sum(b * np.exp(a))), XP_RTOL64)
    close(lse(backend, np.array([1000.0, 1000.0]) + np.log([1.2, 1.2])), 1000 + math.log(2 * 1.2), XP_RTOL64)
    n = 1000 if backend == "cuda" else 100_000
    x, b = np.full(n, 1e-40), np.linspace(1, 1000, n)
    close(np.exp(lse(backend, np.log(x) + np.log(b))), np.sum(b * x), XP_RTOL64)
    with np.errstate(divide="ignore"):
        close(lse(backend, np.array([1.0, 10000.0]) + np.log([1.0, 0.0])), 1.0, XP_RTOL64)


@pytest.mark.parametrize("dtype, rtol", [(np.float32, XP_RTOL32), (np.float64, XP_RTOL64)])
def test_logsumexp_dtypes(backend, dtype, rtol):
    """test_dtypes_a (float dtypes), test_array_like and test_xp_invalid_input (as float arrays)."""
    got = lse(backend, [1000.0, 1000.0], dtype)
    assert got.dtype == dtype
    close(got, 1000.0 + math.log(2.0), rtol)
    close(lse(backend, [1.0, 2.0, 3.0]), np.log(np.sum(np.exp([1.0, 2.0, 3.0]))), XP_RTOL64)
    close(lse(backend, [1.0]), 1.0, XP_RTOL64)


def test_logsumexp_gh18295_dominant_entry(backend):
    """test_gh18295: one entry far above the other: log1p of the small part, not 0."""
    got = lse(backend, [0.0, -40.0])
    close(got, np.logaddexp(0.0, -40.0), XP_RTOL64)
    assert got > 0


@pytest.mark.parametrize("x, y", list(itertools.product([-np.inf, np.inf], repeat=2)))
def test_logsumexp_gh22601_infinite_elements(backend, x, y):
    """test_gh22601_infinite_elements, real pairs: log(sum(exp([x, y]))) exactly."""
    with np.errstate(divide="ignore", over="ignore"):
        want = np.log(np.sum(np.exp([x, y])))
    assert lse(backend, [x, y]) == want


def test_logsumexp_no_writeback(backend):
    a = np.array([5.0, 4.0])
    lse(backend, a)
    np.testing.assert_array_equal(a, [5.0, 4.0])


# --------------------------------------------------------------------------- TestSoftmax / TestLogSoftmax ({LOGSUMEXP})

SOFTMAX_ARANGE4 = [0.03205860328008499, 0.08714431874203256, 0.23688281808991013, 0.6439142598879722]
LOG_SOFTMAX_ARANGE4 = [-3.4401896985611953, -2.4401896985611953, -1.4401896985611953, -0.44018969856119533]


def test_softmax_fixtures(backend):
    close(softmax(backend, [1000.0, 0.0, 0.0, 0.0]), [1.0, 0.0, 0.0, 0.0], 1e-13, what=LOGSUMEXP)
    close(softmax(backend, [1.0, 1.0]), [0.5, 0.5], 1e-13)
    close(softmax(backend, [0.0, 1.0]), np.array([1.0, np.e]) / (1 + np.e), 1e-13)
    x = np.arange(4.0)
    close(softmax(backend, x), SOFTMAX_ARANGE4, 1e-13)
    close(softmax(backend, x + 100), SOFTMAX_ARANGE4, 1e-13)                  # translation
    close(softmax(backend, x.reshape(2, 2).ravel()).reshape(2, 2),            # axis=None
          np.reshape(SOFTMAX_ARANGE4, (2, 2)), 1e-13)
    close(softmax(backend, [1000.0]), [1.0], 1e-13)                           # test_softmax_scalar


def test_softmax_multi_axes(backend):
    a = np.array([[1000.0, 0.0], [1000.0, 0.0]])
    close(softmax(backend, a.T).T, [[0.5, 0.5], [0.5, 0.5]], 1e-13)            # axis=0
    close(softmax(backend, a), [[1.0, 0.0], [1.0, 0.0]], 1e-13)                # axis=1
    x = np.array([[-25.0, 0.0, 25.0, 50.0], [1.0, 325.0, 749.0, 750.0]])
    expected = np.array([[2.678636961770877e-33, 1.9287498479371314e-22, 1.3887943864771144e-11, 0.999999999986112],
                         [0.0, 1.9444526359919372e-185, 0.2689414213699951, 0.7310585786300048]])
    close(softmax(backend, x), expected, 1e-13)
    close(softmax(backend, np.ascontiguousarray(x.T).T), expected, 1e-13)
    close(softmax(backend, x.reshape(2, 2, 2).reshape(2, 4)).reshape(2, 2, 2), expected.reshape(2, 2, 2), 1e-13)
    close(softmax(backend, [1000.0, 0.0, 0.0, 0.0]), [1.0, 0.0, 0.0, 0.0], 1e-13)   # test_softmax_int_array


def test_log_softmax(backend):
    close(log_softmax(backend, [1000.0, 1.0]), [0.0, -999.0], 1e-13)
    close(log_softmax(backend, [1.0]), [0.0], 1e-13)
    for offset in (0, 100):                                                   # translation
        close(log_softmax(backend, np.arange(4.0) + offset), LOG_SOFTMAX_ARANGE4, 1e-13)
    x2 = np.arange(8.0).reshape(2, 4)
    close(log_softmax(backend, x2), [LOG_SOFTMAX_ARANGE4] * 2, 1e-13)         # axis=1, and axis=0 of x.T
    close(log_softmax(backend, np.array([[1000.0, 1.0], [1000.0, 1.0]]).T).T, np.log(0.5) * np.ones((2, 2)), 1e-13)
    close(log_softmax(backend, np.array([[1000.0, 1.0], [1000.0, 1.0]])), [[0.0, -999.0]] * 2, 1e-13)


# --------------------------------------------------------------------------- entr, rel_entr ({BASIC})


def entr(backend, x):
    """scipy.special.entr(x) = -x log x elementwise: the entropy of one-class rows of probabilities."""
    x = np.asarray(x, dtype=np.float64)
    return fastdiv.entropy(x[:, None], inputs="probs", reduction="none", backend=backend)


def rel_entr(backend, x, y):
    """scipy.special.rel_entr(x, y) = x log(x / y) elementwise: the KL of one-class rows."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return fastdiv.kl_div(x[:, None], y[:, None], inputs="probs", reduction="none", backend=backend)


def test_entr(backend):
    """test_entr: x < 0 -> -inf (outside the domain), else -xlogy(x, x)."""
    z = np.array([s * v for s, v in itertools.product([-1, 1], (0, 0.5, 1.0, np.inf))])
    with np.errstate(all="ignore"):
        want = np.where(z < 0, -np.inf, -np.where(z == 0, 0.0, z * np.log(np.abs(z))))
    close(entr(backend, z), want, 1e-13, 1e-13, what=BASIC)


def test_rel_entr(backend):
    """test_rel_entr: x log(x / y) for x, y > 0; 0 for x = 0 <= y; +inf otherwise (outside the domain)."""
    values, signs = (0, 0.5, 1.0), (-1, 1)
    z = np.array([(sa * va, sb * vb) for sa, va, sb, vb in itertools.product(signs, values, signs, values)])
    x, y = z[:, 0], z[:, 1]
    with np.errstate(all="ignore"):
        want = np.where((x > 0) & (y > 0), x * np.log(x / y), np.where((x == 0) & (y >= 0), 0.0, np.inf))
    close(rel_entr(backend, x, y), want, 1e-13, 1e-13, what=BASIC)


def test_rel_entr_gh_20710_near_zero(backend):
    """Nearly equal x and y: x log(x / y) is ~1e-14 and keeps 1e-13 relative accuracy."""
    x = np.array([0.9456657713430001, 0.48066098564791515, 0.786048657854401])
    y = np.array([0.9456657713430094, 0.48066098564794774, 0.7860486578542367])
    expected = [-9.325873406851269e-15, -3.258504577274724e-14, 1.6431300764454033e-13]
    close(rel_entr(backend, x, y), expected, 1e-13, 0.0)


def test_rel_entr_gh_20710_overflow(backend):
    """x / y overflows, underflows or is subnormal: log x - log y keeps the value."""
    x = np.array([4.0, 1e-200, 2.22e-308])
    y = np.array([2.22e-308, 1e200, 1e15])
    expected = [2839.139983229607, -9.210340371976183e-198, -1.6493212008074475e-305]
    close(rel_entr(backend, x, y), expected, 1e-13, 0.0)


# --------------------------------------------------------------------------- stats.entropy ({STATS})
#
# scipy.stats.entropy(pk, qk) normalises pk and qk (any non-negative weights) and reduces over
# axis 0 by default; fastdiv takes "probs" literally and reduces over the last axis.  scipy's
# normalisation is the softmax of log(pk): its cases go through inputs="logits" with log weights.


def stats_entropy(backend, pk, qk=None, axis=0):
    with np.errstate(divide="ignore"):
        lp = np.log(np.moveaxis(np.asarray(pk, dtype=np.float64), axis, -1))
        if qk is None:
            return fastdiv.entropy(np.ascontiguousarray(lp), reduction="none", backend=backend)
        lq = np.log(np.moveaxis(np.asarray(qk, dtype=np.float64), axis, -1))
    return fastdiv.kl_div(np.ascontiguousarray(lp), np.ascontiguousarray(lq), reduction="none", backend=backend)


PK = np.array([[0.1, 0.2], [0.6, 0.3], [0.3, 0.5]])
QK = np.array([[0.2, 0.1], [0.3, 0.6], [0.5, 0.3]])


def test_stats_entropy_positive(backend):
    pk, qk = np.array([0.5, 0.2, 0.3]), np.array([0.1, 0.25, 0.65])
    assert stats_entropy(backend, pk, pk) == 0.0
    assert stats_entropy(backend, pk, qk) > 0.0
    assert fastdiv.kl_div(pk, pk, inputs="probs", backend=backend) == 0.0   # the same on probabilities


def test_stats_entropy_base(backend):
    s = stats_entropy(backend, np.ones(16)) / math.log(2.0)                   # base=2
    assert abs(s - 4.0) < 1e-5
    qk = np.where(np.arange(16) < 8, 2.0, 1.0)
    s, s2 = stats_entropy(backend, np.ones(16), qk), stats_entropy(backend, np.ones(16), qk) / math.log(2.0)
    assert abs(s / s2 - math.log(2.0)) < 1e-5


def test_stats_entropy_zero(backend):
    close(stats_entropy(backend, [0.0, 1.0, 2.0]), 0.63651416829481278, XP_RTOL64)


def test_stats_entropy_2d(backend):
    close(stats_entropy(backend, PK, QK), [0.1933259, 0.18609809], XP_RTOL64)
    qk = np.array([[0.0, 0.1], [0.3, 0.6], [0.5, 0.3]])
    close(stats_entropy(backend, PK, qk), [np.inf, 0.18609809], XP_RTOL64)
    pk = np.array([[0.0, 0.2], [0.6, 0.3], [0.3, 0.5]])
    close(stats_entropy(backend, pk, qk), [0.17403988, 0.18609809], XP_RTOL64)


def test_stats_entropy_axes(backend):
    close(stats_entropy(backend, PK, axis=1), [0.63651417, 0.63651417, 0.66156324], XP_RTOL64)
    close(stats_entropy(backend, PK, QK, axis=1), [0.23104906, 0.23104906, 0.12770641], XP_RTOL64)
    close(stats_entropy(backend, PK.T, axis=1), stats_entropy(backend, PK), XP_RTOL64)        # transposed
    close(stats_entropy(backend, PK.T, QK.T, axis=1), stats_entropy(backend, PK, QK), XP_RTOL64)


def test_stats_entropy_broadcasting(backend):
    """test_entropy_broadcasting: fastdiv does not broadcast; np.broadcast_to gives scipy's rows."""
    rng = np.random.default_rng(74187315492831452)
    x, y = rng.random(3), rng.random((2, 1))
    res = stats_entropy(backend, np.broadcast_to(x, (2, 3)), np.broadcast_to(y, (2, 3)), axis=-1)
    for i in range(2):
        assert res[i] == stats_entropy(backend, x, np.broadcast_to(y[i], (3,)))


def test_stats_entropy_shape_errors(backend):
    with pytest.raises(ValueError, match="shape"):
        fastdiv.kl_div(PK, PK[:2], inputs="probs", backend=backend)
    with pytest.raises(ValueError, match="shape"):
        fastdiv.kl_div(np.ones((10, 1, 12)), np.ones((11, 2)), inputs="probs", backend=backend)
