"""The cuda backend's divergence family (issue 5) against the float64 reference.

Runs on a GPU or in numba's CUDA simulator (tests/conftest.py switches it on without a GPU),
with the block size patched small in the simulator.  Inputs are host arrays with
``backend="cuda"`` (copied over and back), plus bfloat16 / float16 inputs.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

import fastdiv
from fastdiv import _registry
from fastdiv import reference as R

from conftest import assert_rows_close, make_logits, make_probs

REASON = _registry.unavailable_reason("cuda")
SIM = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(REASON is not None, reason=f"cuda backend unavailable: {REASON}"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]


@pytest.fixture(autouse=True)
def _small_blocks(monkeypatch):
    if SIM:
        from fastdiv._cuda import divergences

        monkeypatch.setattr(divergences, "DIV_BLOCK", 8)


CUDA = dict(backend="cuda")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("v", [1, 37])
def test_temperature_on_the_three_logit_kernels(dtype, v, rng):
    x, z = make_logits(rng, 12, v, dtype), make_logits(rng, 12, v, dtype)
    p = make_probs(rng, 12, v, dtype)
    T = 1.7
    inv = x.dtype.type(1.0 / T)                 # scaled in the input's precision, as the kernels
    xs, zs = (x * inv).astype(np.float64), (z * inv).astype(np.float64)
    assert_rows_close(fastdiv.entropy(x, temperature=T, **CUDA), R.entropy_rows(xs), dtype, "entropy T")
    assert_rows_close(fastdiv.kl_div(x, z, temperature=T, reduction="none", **CUDA), R.kl_rows(xs, zs), dtype,
                      "kl T", kind="kl")
    w = rng.uniform(0, 2, v).astype(dtype)
    assert_rows_close(fastdiv.cross_entropy(x, p, temperature=T, weight=w, label_smoothing=0.2, reduction="none",
                                            **CUDA),
                      R.cross_entropy_soft_rows(xs, p, w, 0.2), dtype, "soft ce T")
    # temperature 1: the existing kernels, unchanged
    np.testing.assert_array_equal(fastdiv.entropy(x, temperature=1.0, **CUDA), fastdiv.entropy(x, **CUDA))


@pytest.mark.parametrize("inputs", ["logits", "log_probs", "probs"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_js(inputs, dtype, rng):
    v = 29
    if inputs == "logits":
        x, z = make_logits(rng, 12, v, dtype), make_logits(rng, 12, v, dtype)
    else:
        p, q = make_probs(rng, 12, v, np.float64), make_probs(rng, 12, v, np.float64)
        with np.errstate(divide="ignore"):
            x, z = ((np.log(p), np.log(q)) if inputs == "log_probs" else (p, q))
        x, z = x.astype(dtype), z.astype(dtype)
    for beta in (0.5, 0.2, 0.0, 1.0):
        got = fastdiv.js_div(x, z, beta=beta, inputs=inputs, reduction="none", **CUDA)
        assert_rows_close(got, R.js_rows(x, z, beta, inputs), dtype, f"js {inputs} {beta}", kind="kl")
    if inputs == "logits":
        got = fastdiv.js_div(x, z, beta=0.3, temperature=0.5, reduction="none", **CUDA)
        assert_rows_close(got, R.js_rows(x.astype(np.float64) * 2, z.astype(np.float64) * 2, 0.3), dtype, "js T",
                          kind="kl")


@pytest.mark.parametrize("tail", ["renormalize", "bucket"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_topk(tail, dtype, rng):
    n, v, k = 12, 41, 6
    t = R.log_softmax_rows(make_logits(rng, n, v, np.float64, edges=False))
    top = np.argsort(-t, axis=1)[:, :k][:, ::-1]              # unsorted on purpose
    tk = np.take_along_axis(t, top, axis=1).astype(dtype)
    student = make_logits(rng, n, v, dtype)
    tk[2] = -np.inf
    got = fastdiv.topk_kl_div(top, tk, student, tail=tail, reduction="none", **CUDA)
    assert_rows_close(got, R.topk_kl_rows(top, tk, student, tail), dtype, f"topk {tail}", kind="kl")
    full = fastdiv.topk_kl_div(np.tile(np.arange(v), (n, 1)), t.astype(dtype), student[8:9].repeat(n, 0),
                               tail=tail, reduction="none", **CUDA)
    assert_rows_close(full, R.kl_rows(t.astype(dtype), student[8:9].repeat(n, 0)), dtype, "topk k=V", kind="kl")


def test_half_inputs_and_reductions(rng):
    ml_dtypes = pytest.importorskip("ml_dtypes")

    v = 33
    x32, z32 = make_logits(rng, 10, v, np.float32), make_logits(rng, 10, v, np.float32)
    for half in (np.float16, ml_dtypes.bfloat16):
        x, z = x32.astype(half), z32.astype(half)
        xf, zf = x.astype(np.float32), z.astype(np.float32)
        got = fastdiv.js_div(x, z, temperature=2.0, reduction="none", **CUDA)
        assert got.dtype == np.float32
        assert_rows_close(got, R.js_rows(xf.astype(np.float64) / 2, zf.astype(np.float64) / 2, 0.5), np.float32,
                          "js half", kind="kl")
        mean = fastdiv.js_div(x[10 - 3:], z[10 - 3:], **CUDA)
        assert np.isclose(mean, np.mean(R.js_rows(xf[7:], zf[7:], 0.5)), rtol=1e-5)
