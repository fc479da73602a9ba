"""fastdiv.evaluate and the cross_entropy options on the cuda backend: device arrays in and
out, the meters, z_loss / softcap / return_lse against the numpy backend (numba's CUDA
simulator without a GPU: tiny shapes, 4-thread blocks so the shared-memory merge of thread
states runs).  Per-row fields against the reference: the evaluate rows of tests/test_cases.py."""
from __future__ import annotations

import numpy as np
import pytest

import fastdiv
from fastdiv import _registry
from fastdiv._cuda.interop import is_device_array

from conftest import make_logits

WHY = _registry.unavailable_reason("cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(WHY is not None, reason=str(WHY))]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    from fastdiv._cuda import evaluate as E

    monkeypatch.setattr(E, "BLOCK", 4)


def test_evaluate_cuda_device_arrays_and_options(rng):
    from numba import cuda

    x = rng.standard_normal((3, 4, 9)).astype(np.float32)
    t = rng.integers(0, 9, (3, 4))
    t[0, 0] = -100
    res = fastdiv.evaluate(cuda.to_device(x), cuda.to_device(t), z_loss=1e-2)   # auto -> cuda
    want = fastdiv.evaluate(x, t, z_loss=1e-2, backend="numpy")
    for key in ("mean_nll", "perplexity", "accuracy@1", "accuracy@5", "mean_entropy", "mean_z_loss"):
        np.testing.assert_allclose(res[key], want[key], rtol=1e-5, err_msg=key)
    assert res.nll.shape == (3, 4)
    # device logits: per-row results stay on the device (numba in, numba out), aggregates are
    # Python numbers
    for key in ("nll", "lse", "entropy", "target_prob", "argmax", "rank", "counted", "correct@1", "z_loss"):
        assert is_device_array(res[key]), key
        np.testing.assert_allclose(res[key].copy_to_host(), want[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert isinstance(res.mean_nll, float) and isinstance(res.count, int)
    assert is_device_array(res.correct[5])
    assert "rows=12" in repr(res)
    host = fastdiv.evaluate(x, t, backend="cuda")                        # numpy in, numpy out
    assert isinstance(host.nll, np.ndarray)
    one = fastdiv.evaluate(cuda.to_device(x[0, 0]), np.int64(t[0, 1]), backend="cuda")   # 1-D logits
    assert is_device_array(one.nll)


def test_meters_on_device_results(rng):
    """The streaming meters read device results' host copies (Evaluation.host)."""
    from numba import cuda

    from fastdiv.meters import Evaluator, Perplexity

    x = rng.standard_normal((6, 11)).astype(np.float32)
    t = rng.integers(0, 11, 6)
    t[1] = -100
    dev, host = Evaluator(topk=(1, 3), z_loss=1e-2), Evaluator(topk=(1, 3), z_loss=1e-2, backend="numpy")
    dev.update(cuda.to_device(x), t, reference=cuda.to_device(x[::-1].copy()))
    host.update(x, t, reference=x[::-1].copy())
    for key, value in host.compute().items():
        assert dev.compute()[key] == pytest.approx(value, rel=1e-5), key
    p = Perplexity().update(cuda.to_device(x), t)
    assert p.compute() == pytest.approx(Perplexity(backend="numpy").update(x, t).compute(), rel=1e-5)
    res = fastdiv.evaluate(cuda.to_device(x), t)
    assert isinstance(res.host("nll"), np.ndarray) and is_device_array(res.nll)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_options_on_cuda(reduction, weighted, rng):
    """z_loss / softcap / return_lse on cuda (class-index targets): the numpy reference's
    numbers; device logits give device results."""
    from numba import cuda

    x = make_logits(rng, 12, 9, np.float32) * 4
    t = rng.integers(0, 9, 12)
    t[3] = -100
    w = rng.uniform(0.5, 2.0, 9).astype(np.float32) if weighted else None
    kw = dict(reduction=reduction, weight=w, z_loss=1e-3, softcap=5.0, return_lse=True)
    got = fastdiv.cross_entropy(x, t, backend="cuda", **kw)
    want = fastdiv.cross_entropy(x, t, backend="numpy", **kw)
    for a, b, name in zip(got, want, ("loss", "z_loss", "lse")):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=1e-6, err_msg=name)
    dev = fastdiv.cross_entropy(cuda.to_device(x), cuda.to_device(t), **kw)      # auto -> cuda
    for a, b, name in zip(dev, want, ("loss", "z_loss", "lse")):
        assert is_device_array(a), name
        np.testing.assert_allclose(a.copy_to_host().reshape(np.shape(b)), np.asarray(b), rtol=2e-5, atol=1e-6,
                                   err_msg=name)
    plain = fastdiv.cross_entropy(x, t, backend="cuda", reduction=reduction, weight=w, softcap=5.0)
    np.testing.assert_allclose(np.asarray(plain), np.asarray(want.loss), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_options_on_cuda_with_smoothing_or_soft_targets(reduction, rng):
    """z_loss / return_lse with label smoothing or probability targets on cuda (two reads)."""
    from numba import cuda

    x = make_logits(rng, 10, 7, np.float32) * 3
    t = rng.integers(0, 7, 10)
    t[2] = -100
    p = rng.dirichlet(np.ones(7), 10).astype(np.float32)
    for target, kw in ((t, dict(label_smoothing=0.1)), (p, {})):
        kw = dict(kw, reduction=reduction, z_loss=1e-3, return_lse=True)
        want = fastdiv.cross_entropy(x, target, backend="numpy", **kw)
        for logits, tt in ((x, target), (cuda.to_device(x), cuda.to_device(target))):
            got = fastdiv.cross_entropy(logits, tt, backend="cuda", **kw)
            for a, b, name in zip(got, want, ("loss", "z_loss", "lse")):
                a = a.copy_to_host() if is_device_array(a) else a
                np.testing.assert_allclose(np.asarray(a).reshape(np.shape(b)), np.asarray(b), rtol=2e-5, atol=1e-6,
                                           err_msg=name)


def test_cross_entropy_softcap_on_cuda_needs_class_indices(rng):
    x = make_logits(rng, 4, 5, np.float32)
    with pytest.raises(_registry.BackendUnavailable, match="label_smoothing"):
        fastdiv.cross_entropy(x, np.zeros(4, np.int64), label_smoothing=0.1, softcap=3.0, backend="cuda")
    p = np.full((4, 5), 0.2, np.float32)
    with pytest.raises(_registry.BackendUnavailable, match="probability targets"):
        fastdiv.cross_entropy(x, p, softcap=3.0, backend="cuda")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("v,sigma", [(51, 1e-3), (67, 1e-4)])
def test_kl_columns_of_nearby_rows_on_cuda_keep_their_relative_accuracy(dtype, v, sigma, monkeypatch):
    """evaluate's KL columns on the device, device arrays in, with and without softcap:
    float64 rows whose one pass cancelled (fastdiv._state.near_kl_rows) are summed again by
    the device kl_logits kernel (fastdiv._gpu._mend_near_kl), by spans of rows (here split: a gap
    of 1 row makes a new span); before 2026-12-07 they kept the one pass, 1.3e-9 and 1.6e-7
    off at 51 and 67 classes.  float32 rows keep their one pass, whose terms the kernel sums
    in float64 (~5e-8 here, before and after)."""
    from numba import cuda

    from cases import nearby_kl_pair
    from fastdiv import _gpu
    from fastdiv import reference as R
    from fastdiv._cuda.softcap import softcap_rows

    monkeypatch.setattr(_gpu, "NEAR_SPAN_GAP", 1)
    t = np.arange(8) % v
    tol = 1e-4 if dtype == np.float32 else 1e-9
    for cap in (None, 30.0):
        x, z = nearby_kl_pair(v, sigma, dtype, seed=v)
        xc = x
        if cap is not None:       # the reference near the device's capped logits, the bits its kernels read
            capped = cuda.device_array(x.shape, dtype=dtype)
            softcap_rows(cuda.to_device(x), capped, cap, stream=cuda.default_stream())
            xc = capped.copy_to_host()
            with np.errstate(invalid="ignore"):
                z = np.where(np.isfinite(z - x), xc + (z - x), z).astype(dtype)
        res = fastdiv.evaluate(cuda.to_device(x), cuda.to_device(t), reference=cuda.to_device(z), softcap=cap,
                               backend="cuda")
        np.testing.assert_allclose(res.kl_ref_model.copy_to_host(), R.kl_rows(z.astype(np.float64),
                                   xc.astype(np.float64)), rtol=tol, atol=1e-30)
        np.testing.assert_allclose(res.kl_model_ref.copy_to_host(), R.kl_rows(xc.astype(np.float64),
                                   z.astype(np.float64)), rtol=tol, atol=1e-30)
