"""Property tests (hypothesis): identities that must hold for any logits, on every backend."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastdiv

from conftest import ALL_HOST, backend_params
from strategies import logit_pairs

#: the pairs are float64: numba's float64 specializations run in the slow tier (cases.fast)
HOST64 = backend_params(ALL_HOST, dtype=np.float64)
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _close(a, b, tol):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.all(np.abs(a - b) <= tol * (1 + np.abs(b))), (a, b)


@pytest.mark.parametrize("backend", HOST64)
@SETTINGS
@given(pair=logit_pairs())
def test_cross_entropy_is_entropy_plus_kl(backend, pair):
    x, z = pair
    p = np.exp(x - fastdiv.logsumexp(x, backend="numpy")[:, None])        # P = softmax(x)
    h_pq = fastdiv.cross_entropy(z, p, reduction="none", backend=backend)
    h_p = fastdiv.entropy(x, backend=backend)
    d = fastdiv.kl_div(x, z, reduction="none", backend=backend)
    _close(h_pq, h_p + d, 1e-9)


@pytest.mark.parametrize("backend", HOST64)
@SETTINGS
@given(pair=logit_pairs())
def test_kl_of_itself_is_zero_and_kl_is_nonnegative(backend, pair):
    x, z = pair
    assert np.all(np.abs(fastdiv.kl_div(x, x, reduction="none", backend=backend)) <= 1e-12 * (1 + np.abs(x).max()))
    assert np.all(fastdiv.kl_div(x, z, reduction="none", backend=backend) >= -1e-12 * (1 + np.abs(x).max()))


@pytest.mark.parametrize("backend", HOST64)
@SETTINGS
@given(pair=logit_pairs(), shift=st.floats(-1e3, 1e3))
def test_adding_a_constant_changes_nothing(backend, pair, shift):
    x, z = pair
    t = np.zeros(x.shape[0], np.int64)
    scale = 1e-12 * (1 + abs(shift) + np.abs(x).max())
    _close(fastdiv.logsumexp(x + shift, backend=backend), fastdiv.logsumexp(x, backend=backend) + shift, scale)
    _close(fastdiv.entropy(x + shift, backend=backend), fastdiv.entropy(x, backend=backend), scale)
    _close(fastdiv.kl_div(x + shift, z, reduction="none", backend=backend),
           fastdiv.kl_div(x, z, reduction="none", backend=backend), scale)
    _close(fastdiv.cross_entropy(x + shift, t, reduction="none", backend=backend),
           fastdiv.cross_entropy(x, t, reduction="none", backend=backend), scale)


@pytest.mark.parametrize("backend", HOST64)
@SETTINGS
@given(pair=logit_pairs(), data=st.data())
def test_one_hot_soft_targets_equal_hard_targets(backend, pair, data):
    x, _ = pair
    n, v = x.shape
    t = np.array(data.draw(st.lists(st.integers(0, v - 1), min_size=n, max_size=n)))
    onehot = np.eye(v)[t]
    hard = fastdiv.cross_entropy(x, t, reduction="none", backend=backend)
    soft = fastdiv.cross_entropy(x, onehot, reduction="none", backend=backend)
    _close(soft, hard, 1e-12)
    # and with a one-hot P, H(P) = 0 so CE equals KL
    with np.errstate(divide="ignore"):
        _close(fastdiv.kl_div(np.log(onehot), x, inputs="logits", reduction="none", backend=backend), hard, 1e-12)


@pytest.mark.parametrize("backend", ALL_HOST)
@SETTINGS
@given(pair=logit_pairs(np.float32))
def test_float32_agrees_with_float64(backend, pair):
    x, z = pair
    x64, z64 = x.astype(np.float64), z.astype(np.float64)
    lse = fastdiv.logsumexp(x64, backend="numpy")
    _close(fastdiv.logsumexp(x, backend=backend), lse, 1e-5)
    _close(fastdiv.entropy(x, backend=backend), fastdiv.entropy(x64, backend="numpy"), 1e-5)
    _close(fastdiv.kl_div(x, z, reduction="none", backend=backend),
           fastdiv.kl_div(x64, z64, reduction="none", backend="numpy"), 2e-5)
