"""The soft-capping transform (``softcap=c``: logits -> ``c * tanh(x / c)``) against
``fastdiv.reference.softcap_rows``, and ``evaluate`` / ``cross_entropy`` with softcap on every
backend, cuda in numba's simulator."""
from __future__ import annotations

import numpy as np
import pytest

import fastdiv
from fastdiv import _registry
from fastdiv._cuda.interop import is_device_array
from fastdiv import reference as R
from fastdiv.execute import apply_softcap

from conftest import assert_rows_close, backend_params, make_logits
from test_evaluate import _check_rows, _targets

BACKENDS = backend_params(("numba", "cython", "numpy"))

SPECIALS = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e4, -1e4, 1e30, -1e30, 1e-30, 5e-39, 0.625, -0.625])


@pytest.fixture(params=["cython", "numba"])
def transform(request, monkeypatch):
    """Each implementation of the transform (execute.softcap_impl) in turn, as apply_softcap's."""
    if _registry.unavailable_reason(request.param) is not None:
        pytest.skip(_registry.unavailable_reason(request.param))
    monkeypatch.setattr(fastdiv.execute, "_SOFTCAP", fastdiv.execute.softcap_impl(request.param))
    return request.param


def _ulp_error(got, want):
    """|got - want| in units of the float32 spacing at want (want in float64)."""
    return np.abs(got.astype(np.float64) - want) / np.spacing(np.abs(want).astype(np.float32)).astype(np.float64)


@pytest.mark.parametrize("cap, ulps", [(1.0, 2.0), (15.0, 3.0), (30.0, 3.0), (0.01, 4.0)])
def test_transform_float32_within_few_ulp(cap, ulps, rng, transform):
    """Measured: 1.9 ulp for cap = 1 (tanh alone), 2.4 with the rounding of x / cap, 3.2 when
    cap itself is not a float32 (0.01: the cap is rounded to float32)."""
    x = np.concatenate([rng.standard_normal(200_000) * s for s in (1e-5, 0.1, 1.0, 5.0, 30.0)]) * cap
    x = np.concatenate([x, np.linspace(-12 * cap, 12 * cap, 100_001), SPECIALS]).astype(np.float32)
    got = apply_softcap(x.reshape(1, -1), cap, np.dtype(np.float32)).ravel()
    want = R.softcap_rows(x.reshape(1, -1), cap).ravel()
    assert np.array_equal(np.isnan(got), np.isnan(want))
    special = ~np.isfinite(want)
    assert np.array_equal(got[special & ~np.isnan(got)], want[special & ~np.isnan(want)])
    ok = np.isfinite(want) & (want != 0)
    assert _ulp_error(got[ok], want[ok]).max() <= ulps
    assert np.all(got[want == 0] == 0)
    assert np.all(np.abs(got[np.isfinite(got)]) <= np.float32(cap))        # never beyond the cap


@pytest.mark.parametrize("cap", [1.0, 30.0])
def test_transform_float64_within_1e15(cap, rng, transform):
    x = np.concatenate([rng.standard_normal(200_000) * s for s in (1e-5, 0.1, 1.0, 5.0, 30.0)]) * cap
    x = np.concatenate([x, np.linspace(-25 * cap, 25 * cap, 100_001), SPECIALS])
    got = apply_softcap(x.reshape(1, -1), cap, np.dtype(np.float64)).ravel()
    want = R.softcap_rows(x.reshape(1, -1), cap).ravel()
    assert np.array_equal(np.isnan(got), np.isnan(want))
    fin = np.isfinite(want)
    assert np.array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)])
    rel = np.abs(got[fin] - want[fin]) / np.maximum(np.abs(want[fin]), np.finfo(float).tiny)
    assert rel.max() <= 1e-15


def test_transform_semantics(transform):
    x = np.array([[-np.inf, np.inf, np.nan, 0.0, 1e4, -1e4]], np.float32)
    got = apply_softcap(x, 5.0, np.dtype(np.float32))
    np.testing.assert_array_equal(got, [[-np.inf, 5.0, np.nan, 0.0, 5.0, -5.0]])    # -inf stays masked


@pytest.mark.parametrize("v", [1, 51, 1271])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transform_shapes_strides_read_only(v, dtype, rng, transform):
    base = make_logits(rng, 24, 2 * v, dtype, scale=20.0)
    x = base[::2, ::2]                                  # strided rows and columns
    x.flags.writeable = False
    got = apply_softcap(x, 7.0, np.dtype(dtype))
    assert got.flags.c_contiguous and got.dtype == dtype
    want = R.softcap_rows(np.ascontiguousarray(x), 7.0)
    assert_rows_close(got.ravel(), want.ravel(), dtype, "softcap")
    out = np.full(x.shape, 123.0, dtype)
    assert apply_softcap(x, 7.0, np.dtype(dtype), out=out) is out
    np.testing.assert_array_equal(out, got)
    for layout in (np.asfortranarray(x), np.asfortranarray(x.astype(np.float16))):   # converted too
        np.testing.assert_array_equal(apply_softcap(layout, 7.0, np.dtype(dtype)),
                                      apply_softcap(np.ascontiguousarray(layout), 7.0, np.dtype(dtype)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v", [1, 51, 1271])
def test_evaluate_softcap_blocks_and_options(backend, v, rng, monkeypatch):
    """Several transform blocks (a small SOFTCAP_BLOCK_BYTES), extreme logits, masked and NaN
    rows, a non-contiguous read-only input, a reference, z_loss: against the reference on the
    soft-capped logits."""
    monkeypatch.setattr(fastdiv.execute, "SOFTCAP_BLOCK_BYTES", 2048)
    n = 30
    x = make_logits(rng, n, v, np.float32, scale=40.0)
    x[4, 0] = 1e4
    x[5, -1] = -1e4
    xs = np.asfortranarray(x)
    xs.flags.writeable = False
    z = make_logits(rng, n, v, np.float32)[::-1].copy()
    t = _targets(rng, x)
    res = fastdiv.evaluate(xs, t, topk=(1, 3), reference=z, z_loss=1e-3, softcap=12.0, backend=backend)
    capped = apply_softcap(x, 12.0, np.dtype(np.float32))
    _check_rows(res, R.evaluate_rows(capped, t, z, topk=(1, 3)), np.float32, (1, 3), z)
    float64_want = R.evaluate_rows(R.softcap_rows(x, 12.0), t, topk=(1, 3))
    assert_rows_close(res.nll, float64_want["nll"], np.float32, "nll vs float64 capping")
    out = fastdiv.cross_entropy(xs, t, reduction="none", z_loss=1e-3, softcap=12.0, return_lse=True,
                                backend=backend)
    assert_rows_close(out.loss, R.cross_entropy_hard_rows(capped, t), np.float32, "ce")
    assert_rows_close(out.lse, R.logsumexp_rows(capped), np.float32, "lse")


WHY = _registry.unavailable_reason("cuda")


@pytest.mark.cuda
@pytest.mark.skipif(WHY is not None, reason=str(WHY))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_evaluate_softcap_cuda(dtype, rng, monkeypatch):
    from numba import cuda

    from fastdiv._cuda import evaluate as E
    from fastdiv._cuda import softcap as S

    monkeypatch.setattr(E, "BLOCK", 4)
    monkeypatch.setattr(S, "BLOCK", 32)
    n, v = 14, 13
    monkeypatch.setattr(fastdiv._gpu, "SOFTCAP_DEVICE_BYTES", 5 * v * np.dtype(dtype).itemsize)  # 3 blocks
    x = make_logits(rng, n, v, dtype, scale=20.0)
    x[4, 0] = 1e4
    z = make_logits(rng, n, v, dtype)[::-1].copy()
    t = _targets(rng, x)
    res = fastdiv.evaluate(x, t, topk=(1, 3), reference=z, softcap=6.0, backend="cuda")
    capped = R.softcap_rows(x, 6.0)
    want = R.evaluate_rows(capped.astype(dtype), t, z, topk=(1, 3))
    _check_rows(res, want, dtype, (1, 3), z)
    dev = fastdiv.evaluate(cuda.to_device(x), cuda.to_device(t), topk=(1, 3), softcap=6.0)   # auto -> cuda
    assert is_device_array(dev.nll)
    np.testing.assert_allclose(dev.nll.copy_to_host(), res.nll, rtol=1e-6)
    assert dev.mean_nll == pytest.approx(res.mean_nll, rel=1e-6, nan_ok=True)


@pytest.mark.cuda
@pytest.mark.skipif(WHY is not None, reason=str(WHY))
def test_cuda_softcap_transform(rng):
    from numba import cuda

    from fastdiv._cuda.softcap import softcap_rows

    x = np.concatenate([rng.standard_normal(40) * 30, SPECIALS[:9]]).reshape(7, 7).astype(np.float32)
    with np.errstate(over="ignore"):
        half = x.astype(np.float16)                       # 1e30 -> inf
    for src, dtype in ((x, np.float32), (half, np.float32), (x.astype(np.float64), np.float64)):
        out = cuda.device_array(src.shape, dtype)
        softcap_rows(cuda.to_device(src), out, 8.0, stream=cuda.default_stream())
        got = out.copy_to_host()
        want = R.softcap_rows(src.astype(np.float64), 8.0)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got, want.astype(dtype), rtol=2e-7 if dtype == np.float32 else 1e-15)


@pytest.mark.parametrize("backend", BACKENDS)
def test_softcap_workers_thread_count_invariant(backend, rng, monkeypatch):
    """One worker per thread, each on its own rows: the same bits for any thread count, and
    the caller's thread setting is left as it was."""
    monkeypatch.setattr(fastdiv.execute, "SOFTCAP_BLOCK_BYTES", 4096)
    x = make_logits(rng, 37, 300, np.float32, scale=20.0)
    t = _targets(rng, x)
    before = fastdiv.get_num_threads()
    runs = []
    for n in (1, 2, 3):
        with fastdiv.threads(n):
            res = fastdiv.evaluate(x, t, softcap=9.0, backend=backend)
            assert fastdiv.get_num_threads() == n
        runs.append(res)
    assert fastdiv.get_num_threads() == before
    for key in ("nll", "lse", "entropy", "rank", "argmax"):
        for other in runs[1:]:
            np.testing.assert_array_equal(other[key], runs[0][key], err_msg=key)


def test_softcap_worker_error_propagates(monkeypatch):
    def boom(*args):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(fastdiv.execute, "SOFTCAP_BLOCK_BYTES", 64)
    with fastdiv.threads(2), pytest.raises(RuntimeError, match="kernel failed"):
        fastdiv.execute.run_blocks([np.zeros((8, 4), np.float32)], np.dtype(np.float32), 2.0, boom)
