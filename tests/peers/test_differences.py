"""fastdiv's behaviour at each deliberate difference from scipy, PyTorch and Liger-Kernel.

One test per row of docs/peers.rst ("Deliberate differences", D1-D15), on every backend;
the ported suites (test_scipy.py, test_torch.py, test_liger.py) go through these differences
where a peer case meets one.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import fastdiv

from _peer import backend, close, log_softmax  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

X = np.array([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]])
T = np.array([0, 2])


def test_d1_refusals_are_value_or_type_errors_naming_the_argument(backend):
    for call, name in ((lambda: fastdiv.cross_entropy(X, np.array([0, 1, 2]), backend=backend), "target"),
                       (lambda: fastdiv.cross_entropy(X, T, label_smoothing=1.5, backend=backend), "label_smoothing"),
                       (lambda: fastdiv.cross_entropy(X, np.array([0, 5]), backend=backend), "target"),
                       (lambda: fastdiv.kl_div(X, X[:1], backend=backend), "shape")):
        with pytest.raises((ValueError, TypeError), match=name):
            call()


def test_d2_the_class_axis_is_last(backend):
    """torch's (N, C, d) input is moved: np.moveaxis(x, 1, -1); scipy's axis= by transposing."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 5))                   # torch layout: C = 3
    t = rng.integers(0, 3, (2, 5))
    got = fastdiv.cross_entropy(np.moveaxis(x, 1, -1), t, reduction="none", backend=backend)
    lp = log_softmax(x, axis=1)
    close(got, -np.take_along_axis(lp, t[:, None], axis=1)[:, 0], 1e-12, 1e-12)
    with pytest.raises((ValueError, TypeError)):
        fastdiv.cross_entropy(x, t, backend=backend)     # (2, 3, 5) read as V = 5: targets (2, 3) expected


def test_d3_negative_class_weights_are_refused(backend):
    with pytest.raises(ValueError, match="weight"):
        fastdiv.cross_entropy(X, T, weight=np.array([1.0, -0.5, 1.0]), backend=backend)
    with pytest.raises(ValueError, match="weight"):
        fastdiv.cross_entropy(X, T, weight=np.array([1.0, np.nan, 1.0]), backend=backend)


def test_d4_mean_over_no_counted_target_is_nan_as_torch(backend):
    """Formerly a difference (fastdiv gave 0.0); since the options layer (#17) fastdiv gives
    torch's NaN for a mean over no counted target or zero total weight (fastdiv.reduce)."""
    for target, weight in ((np.array([-100, -100]), None), (T, np.zeros(3))):
        # the cuda reduction runs on the device and cannot warn without a synchronisation
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert np.isnan(fastdiv.cross_entropy(X, target, weight=weight, backend=backend))
        assert backend == "cuda" or any("empty" in str(w.message) for w in caught)


def test_d5_no_nll_loss_cross_entropy_of_log_probabilities(backend):
    """cross_entropy(log_softmax(x), t) is nll_loss(log_softmax(x), t); for values that are not
    normalised log-probabilities it is lse(x) - x_t, not nll_loss's -x_t."""
    lp = log_softmax(X)
    close(fastdiv.cross_entropy(lp, T, reduction="none", backend=backend), -lp[[0, 1], T], 1e-12, 1e-15)
    raw = np.array([[-1.0, -2.0, -3.0]])
    got = fastdiv.cross_entropy(raw, np.array([0]), reduction="none", backend=backend)
    close(got, np.log(np.sum(np.exp(raw))) + 1.0, 1e-12)
    assert not hasattr(fastdiv, "nll_loss")


def test_d6_kl_div_order_inputs_and_reductions(backend):
    """kl_div(p, q) = torch's kl_div(log q, p) summed per row; "mean" is torch's "batchmean" for
    2-D input; torch's "mean" is the sum over the number of elements; a 1-D input is one row."""
    p = np.exp(log_softmax(X))
    q = np.exp(log_softmax(X[::-1]))
    rows = np.sum(p * (np.log(p) - np.log(q)), axis=1)
    close(fastdiv.kl_div(np.log(p), np.log(q), inputs="log_probs", reduction="none", backend=backend), rows, 1e-12)
    close(fastdiv.kl_div(np.log(p), np.log(q), inputs="log_probs", backend=backend), rows.mean(), 1e-12)
    close(fastdiv.kl_div(p[0], q[0], inputs="probs", backend=backend), rows[0], 1e-12)   # 1-D: not / V
    with pytest.raises(ValueError, match="inputs"):
        fastdiv.kl_div(p, q, inputs="log_target", backend=backend)


def test_d7_z_loss_is_reported_apart_from_the_loss(backend):
    plain = fastdiv.cross_entropy(X, T, backend=backend)
    out = fastdiv.cross_entropy(X, T, z_loss=1e-4, backend=backend)
    close(out.loss, plain, 1e-12)
    lse = np.log(np.sum(np.exp(X), axis=1))
    close(out.z_loss, 1e-4 * np.mean(lse ** 2), 1e-12)
    close(out.loss + out.z_loss, plain + 1e-4 * np.mean(lse ** 2), 1e-12)     # Liger's "loss"


def test_d8_cuda_refuses_softcap_with_label_smoothing(backend):
    call = lambda: fastdiv.cross_entropy(X, T, softcap=30.0, label_smoothing=0.1, backend=backend)  # noqa: E731
    if backend == "cuda":
        with pytest.raises(fastdiv.BackendUnavailable):
            call()
    else:
        capped = 30.0 * np.tanh(X / 30.0)
        close(call(), fastdiv.cross_entropy(capped, T, label_smoothing=0.1, backend="numpy"), 1e-12)


def test_d9_evaluate_argmax_ignores_the_target(backend):
    res = fastdiv.evaluate(X, np.array([-100, 2]), backend=backend)
    np.testing.assert_array_equal(np.asarray(res.argmax), [1, 2])       # Liger: -1 on the ignored row


def test_d10_js_div_has_no_labels_and_no_rows_have_no_mean(backend):
    lp = log_softmax(X)
    lq = log_softmax(X[::-1])
    with pytest.raises(TypeError):
        fastdiv.js_div(lp, lq, inputs="log_probs", ignore_index=1, backend=backend)
    keep = np.array([True, False])
    close(fastdiv.js_div(lp[keep], lq[keep], inputs="log_probs", backend=backend),
          fastdiv.js_div(lp[:1], lq[:1], inputs="log_probs", reduction="sum", backend=backend), 1e-12)
    none = np.zeros(2, bool)
    assert fastdiv.js_div(lp[none], lq[none], inputs="log_probs", reduction="sum", backend=backend) == 0.0
    assert np.isnan(fastdiv.js_div(lp[none], lq[none], inputs="log_probs", backend=backend))   # Liger: 0


def test_d11_logsumexp_api_limits(backend):
    """No b= / return_sign / complex / axis; integer, 0-d and empty inputs are refused."""
    with pytest.raises(TypeError):
        fastdiv.logsumexp(np.zeros(3), b=np.ones(3), backend=backend)
    with pytest.raises(TypeError):
        fastdiv.logsumexp(np.array([1, 2, 3]), backend=backend)
    with pytest.raises(TypeError):
        fastdiv.logsumexp(np.array([1 + 1j, 2.0]), backend=backend)
    with pytest.raises(ValueError):
        fastdiv.logsumexp(np.array(1.0), backend=backend)
    with pytest.raises(ValueError):
        fastdiv.logsumexp(np.array([]), backend=backend)
    b = np.array([2.0, 0.5, 1.0])
    a = np.array([1.0, 2.0, 3.0])
    close(fastdiv.logsumexp(a + np.log(b), backend=backend), np.log(np.sum(b * np.exp(a))), 1e-15)


def test_d12_stats_entropy_normalises_fastdiv_takes_probabilities_literally(backend):
    pk = np.array([1.0, 2.0, 1.0])                       # scipy normalises: entropy of [1/4, 1/2, 1/4]
    want = -np.sum((pk / 4) * np.log(pk / 4))
    close(fastdiv.entropy(np.log(pk), backend=backend), want, 1e-14)          # its normalisation: logits
    close(fastdiv.entropy(pk, inputs="probs", backend=backend), -2 * np.log(2.0), 1e-14)   # literal
    with pytest.raises(ValueError):
        fastdiv.kl_div(np.ones((2, 3)), np.ones(3), inputs="probs", backend=backend)       # no broadcasting


def test_d13_probabilities_outside_the_domain_take_scipys_values(backend):
    """entr(p < 0) = -inf, rel_entr(p or q < 0) = +inf (and JS +inf): values, not errors.
    Soft cross-entropy targets stay torch's literal sum (negative targets give a finite loss)."""
    p = np.array([[0.5, 0.7, -0.2], [0.3, 0.3, 0.4]])
    q = np.array([[0.3, 0.3, 0.4], [0.5, -0.1, 0.6]])
    np.testing.assert_array_equal(fastdiv.entropy(p, inputs="probs", reduction="none", backend=backend)[0], -np.inf)
    np.testing.assert_array_equal(fastdiv.kl_div(p, q, inputs="probs", reduction="none", backend=backend),
                                  [np.inf, np.inf])
    np.testing.assert_array_equal(fastdiv.js_div(p, q, inputs="probs", reduction="none", backend=backend),
                                  [np.inf, np.inf])
    nan = np.array([[0.5, np.nan, 0.5]])
    assert np.isnan(fastdiv.kl_div(nan, q[1:], inputs="probs", backend=backend))
    soft = fastdiv.cross_entropy(X[:1], p[:1], reduction="none", backend=backend)
    close(soft, -np.sum(p[0] * log_softmax(X[:1])[0]), 1e-12)


def test_d14_half_precision_results_are_float32(backend):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for dt in (np.float16, ml_dtypes.bfloat16):
        out = fastdiv.cross_entropy(X.astype(dt), T, reduction="none", backend=backend)
        assert np.asarray(out).dtype == np.float32          # torch returns the input's dtype


def test_d15_softcap_keeps_masked_classes_masked(backend):
    """torch / Liger cap -inf to -c (tanh(-inf) = -1); fastdiv keeps a masked class masked."""
    x = np.array([[1.0, -np.inf, 0.5]])
    got = fastdiv.cross_entropy(x, np.array([0]), softcap=5.0, backend=backend)
    capped = 5.0 * np.tanh(np.array([1.0, 0.5]) / 5.0)
    close(got, np.log(np.sum(np.exp(capped))) - capped[0], 1e-12)
