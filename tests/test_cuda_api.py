"""The public API on the cuda backend: reductions, result types, device arrays in and out,
bad input, torch CUDA tensors (per-row values of every case: tests/test_cases.py).  Runs in
numba's CUDA simulator without a GPU (tiny shapes, small blocks so the multi-warp and
multi-block paths run); on a GPU it also covers torch CUDA tensors."""
from __future__ import annotations

import numpy as np
import pytest

import fastdiv
from fastdiv import _registry
from fastdiv import reference as R

from cases import SMALL_KNOBS
from conftest import assert_rows_close, make_logits

WHY = _registry.unavailable_reason("cuda")
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(WHY is not None, reason=str(WHY))]


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    from fastdiv._cuda import kernels as K
    for name, value in SMALL_KNOBS.items():
        monkeypatch.setattr(K, name, value)


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else np.asarray(a)


def test_reductions_and_result_types(rng):
    x = make_logits(rng, 10, 50, np.float32, edges=False)
    z = make_logits(rng, 10, 50, np.float32, edges=False)
    t = rng.integers(0, 50, 10)
    t[:3] = -100
    w = rng.uniform(0.5, 2, 50)
    for reduction in ("mean", "sum"):
        got = fastdiv.cross_entropy(x, t, weight=w, reduction=reduction, backend="cuda")
        want = fastdiv.cross_entropy(x, t, weight=w, reduction=reduction, backend="numpy")
        assert isinstance(got, np.floating) and np.isclose(got, want, rtol=1e-5)
        assert np.isclose(fastdiv.kl_div(x, z, reduction=reduction, backend="cuda"),
                          fastdiv.kl_div(x, z, reduction=reduction, backend="numpy"), rtol=1e-5)
    assert np.isnan(fastdiv.cross_entropy(x, np.full(10, -100), backend="cuda"))   # all ignored: NaN (torch)
    assert fastdiv.logsumexp(x.reshape(2, 5, 50), backend="cuda").shape == (2, 5)


def test_numba_device_arrays_stay_on_the_device(rng):
    from numba import cuda
    x = make_logits(rng, 8, 40, np.float32)
    t = rng.integers(0, 40, 8)
    dx, dt = cuda.to_device(x), cuda.to_device(t)
    r = fastdiv.cross_entropy(dx, dt, reduction="none")              # auto picks cuda for device input
    assert hasattr(r, "copy_to_host")
    assert_rows_close(_host(r), R.cross_entropy_hard_rows(x, t), np.float32, "device ce")
    mean = fastdiv.cross_entropy(dx, dt)                              # reduced on the device
    assert hasattr(mean, "copy_to_host")
    assert np.isclose(_host(mean)[0], fastdiv.cross_entropy(x, t, backend="numpy"), rtol=1e-5, equal_nan=True)
    with pytest.raises(TypeError, match="CUDA array"):
        fastdiv.logsumexp(dx, backend="numba")


def test_bad_input_on_device(rng):
    from numba import cuda
    dx = cuda.to_device(make_logits(rng, 4, 10, np.float32, edges=False))
    with pytest.raises(ValueError, match="same shape"):
        fastdiv.kl_div(dx, cuda.to_device(np.zeros((4, 9), np.float32)))
    with pytest.raises(ValueError, match="target of class indices must have shape"):
        fastdiv.cross_entropy(dx, cuda.to_device(np.zeros(3, np.int64)))
    with pytest.raises(ValueError, match="empty class axis"):
        fastdiv.logsumexp(cuda.to_device(np.zeros((3, 0), np.float32)))
    with pytest.raises(ValueError, match="target must be in"):
        fastdiv.cross_entropy(dx, np.array([0, 1, 2, 10]))             # host targets are validated


def test_torch_cuda_tensors(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device here")
    import torch.nn.functional as F
    x = torch.from_numpy(make_logits(rng, 64, 1000, np.float32, edges=False)).cuda()
    z = torch.from_numpy(make_logits(rng, 64, 1000, np.float32, edges=False)).cuda()
    t = torch.from_numpy(rng.integers(0, 1000, 64)).cuda()
    ce = fastdiv.cross_entropy(x, t)
    assert isinstance(ce, torch.Tensor) and ce.is_cuda and ce.ndim == 0
    assert torch.allclose(ce, F.cross_entropy(x, t), rtol=1e-5)
    kl = fastdiv.kl_div(x, z)
    want = F.kl_div(F.log_softmax(z, -1), F.log_softmax(x, -1), log_target=True, reduction="batchmean")
    assert torch.allclose(kl, want, rtol=1e-4, atol=1e-6)
    rows = fastdiv.logsumexp(x.to(torch.bfloat16))
    assert rows.dtype == torch.float32 and torch.allclose(rows, torch.logsumexp(x.to(torch.bfloat16).float(), -1), rtol=1e-5)
    xs = x.requires_grad_(True)
    assert torch.isfinite(fastdiv.entropy(xs, reduction="mean"))


def test_out_of_range_device_targets_give_nan_not_a_crash(rng):
    from numba import cuda
    x = make_logits(rng, 4, 10, np.float32, edges=False)
    t = np.array([0, 10, -5, 3])                        # unvalidated on the device
    got = _host(fastdiv.cross_entropy(cuda.to_device(x), cuda.to_device(t), reduction="none"))
    assert np.isnan(got[1]) and np.isnan(got[2]) and np.isfinite(got[[0, 3]]).all()
    w = cuda.to_device(np.ones(10, np.float32))
    assert np.isnan(_host(fastdiv.cross_entropy(cuda.to_device(x), cuda.to_device(t), weight=w))[0])


def test_host_inputs_in_another_byte_order_keep_their_type(rng):
    """Big-endian host arrays go to the device in their own type, so a '>f2' model beside a
    '<f2' reference is a float16 pair (it was widened alone to float32, and evaluate refused
    the pair's dtypes: the fuzz's test_fuzz_cuda_more, 2026-12-07)."""
    x = make_logits(rng, 6, 40, np.float16, edges=False)
    z = make_logits(rng, 6, 40, np.float16, edges=False)
    t = rng.integers(0, 40, 6)
    for xs, zs in ((x.astype(">f2"), z), (x, z.astype(">f2")), (x.astype(">f4"), z.astype(np.float32))):
        got = fastdiv.evaluate(xs, t, reference=zs, backend="cuda")
        want = fastdiv.evaluate(xs, t, reference=zs, backend="numpy")
        for key in ("nll", "kl_ref_model", "kl_model_ref"):
            np.testing.assert_allclose(getattr(got, key), getattr(want, key), rtol=2e-3, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(fastdiv.kl_div(xs, zs, reduction="none", backend="cuda"),
                                   fastdiv.kl_div(xs, zs, reduction="none", backend="numpy"), rtol=2e-3, atol=1e-6)
