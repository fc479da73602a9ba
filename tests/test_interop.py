"""Framework interop: torch / JAX / CuPy arrays in, results out in the caller's library.

The numbers must be exactly those of the numpy path on the same data (same kernels); what is
tested here is the conversion: type, device, dtype, no gradient, no copy of the input.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import fastdiv
from fastdiv import _checks

try:
    import torch
except ImportError:
    torch = None

CALLS = {
    "logsumexp": lambda x, t, r: fastdiv.logsumexp(x),
    "entropy": lambda x, t, r: fastdiv.entropy(x, reduction="none"),
    "entropy_mean": lambda x, t, r: fastdiv.entropy(x, reduction="mean"),
    "kl_div": lambda x, t, r: fastdiv.kl_div(x, r, reduction="none"),
    "kl_div_mean": lambda x, t, r: fastdiv.kl_div(x, r),
    "cross_entropy": lambda x, t, r: fastdiv.cross_entropy(x, t),
    "cross_entropy_none": lambda x, t, r: fastdiv.cross_entropy(x, t, reduction="none"),
}


def _data(rows=6, v=51, seed=None):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, v)).astype(np.float32) * 3
    r = rng.standard_normal((rows, v)).astype(np.float32) * 3
    t = rng.integers(0, v, rows)
    t[1] = -100
    return x, t, r


needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


@needs_torch
@pytest.mark.parametrize("op", sorted(CALLS))
def test_torch_cpu_in_torch_out(op):
    x, t, r = _data()
    want = np.asarray(CALLS[op](x, t, r))
    xt = torch.from_numpy(x).requires_grad_(True)        # a leaf that requires grad is read as-is
    got = CALLS[op](xt, torch.from_numpy(t), torch.from_numpy(r))
    assert isinstance(got, torch.Tensor) and got.device.type == "cpu"
    assert not got.requires_grad and got.grad_fn is None
    assert got.dtype == torch.float32 and tuple(got.shape) == want.shape
    np.testing.assert_array_equal(got.numpy(), want)


@needs_torch
def test_torch_keyword_first_argument_and_float64():
    x, t, _ = _data()
    got = fastdiv.logsumexp(x=torch.from_numpy(x.astype(np.float64)))
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    np.testing.assert_array_equal(got.numpy(), fastdiv.logsumexp(x.astype(np.float64)))


@needs_torch
def test_torch_bf16_and_float16_compute_in_float32():
    x, t, _ = _data()
    for dt in (torch.bfloat16, torch.float16):
        xt = torch.from_numpy(x).to(dt)
        got = fastdiv.cross_entropy(xt, torch.from_numpy(t), reduction="none")
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
        want = torch.nn.functional.cross_entropy(xt.float(), torch.from_numpy(t), reduction="none")
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)


@needs_torch
def test_torch_non_contiguous_read_in_place():
    x, t, _ = _data(rows=8, v=40)
    base = torch.from_numpy(np.ascontiguousarray(x.T))    # (V, rows): its transpose is strided
    xt = base.T
    assert not xt.is_contiguous()
    view = _checks.as_array("x", xt)
    assert np.shares_memory(view, base.numpy())            # no copy of the input
    got = fastdiv.logsumexp(xt[::2])
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(got.numpy(), fastdiv.logsumexp(x[::2]))
    np.testing.assert_allclose(got.numpy(), torch.logsumexp(xt[::2], dim=-1).numpy(), rtol=1e-6)


@needs_torch
def test_torch_result_shares_memory_with_the_kernel_output():
    x, _, _ = _data()
    got = fastdiv.logsumexp(torch.from_numpy(x))
    assert got.is_contiguous() and got.numpy().flags.writeable   # torch.from_numpy: no copy out


def test_numpy_and_lists_stay_numpy():
    x, t, r = _data()
    assert isinstance(fastdiv.logsumexp(x), np.ndarray)
    assert isinstance(fastdiv.cross_entropy(x.tolist(), t.tolist()), np.floating)


@needs_torch
def test_mixed_numpy_first_torch_second_gives_numpy():
    x, t, r = _data()
    got = fastdiv.kl_div(x, torch.from_numpy(r), reduction="none")
    assert isinstance(got, np.ndarray)


# --------------------------------------------------------------------------- JAX

jax_spec = importlib.util.find_spec("jax")
needs_jax = pytest.mark.skipif(jax_spec is None, reason="jax is not installed (optional extra fastdiv[jax])")


@needs_jax
@pytest.mark.parametrize("op", sorted(CALLS))
def test_jax_cpu_in_jax_out(op):
    import jax
    import jax.numpy as jnp

    x, t, r = _data()
    want = np.asarray(CALLS[op](x, t, r))
    got = CALLS[op](jnp.asarray(x), jnp.asarray(t), jnp.asarray(r))
    assert isinstance(got, jax.Array)
    assert next(iter(got.devices())).platform == "cpu"
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), want)


@needs_jax
def test_jax_cpu_read_in_place_and_bfloat16():
    import jax.numpy as jnp

    x, t, _ = _data()
    xj = jnp.asarray(x)
    assert np.asarray(xj).ctypes.data == np.from_dlpack(xj).ctypes.data   # a view of the buffer
    got = fastdiv.entropy(xj.astype(jnp.bfloat16))
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), fastdiv.entropy(np.asarray(xj.astype(jnp.bfloat16))))


@needs_jax
def test_jax_traced_values_are_refused_clearly():
    import jax

    x, _, _ = _data()
    with pytest.raises(TypeError, match="traced JAX value"):
        jax.jit(fastdiv.logsumexp)(x)


# --------------------------------------------------------------------------- GPU (real device only)


def _real_gpu():
    return torch is not None and torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(not _real_gpu(), reason="needs a CUDA GPU with torch")


@needs_gpu
def test_torch_cuda_requires_grad_stays_on_device():
    x, t, _ = _data()
    xt = torch.from_numpy(x).cuda().requires_grad_(True)
    got = fastdiv.cross_entropy(xt, torch.from_numpy(t).cuda(), reduction="none")
    assert isinstance(got, torch.Tensor) and got.is_cuda and not got.requires_grad
    np.testing.assert_allclose(got.cpu().numpy(), fastdiv.cross_entropy(x, t, reduction="none"), rtol=1e-5, atol=1e-6)


@needs_gpu
def test_cupy_in_cupy_out():
    cupy = pytest.importorskip("cupy")
    x, _, _ = _data()
    got = fastdiv.logsumexp(cupy.asarray(x))
    assert isinstance(got, cupy.ndarray)
    np.testing.assert_allclose(cupy.asnumpy(got), fastdiv.logsumexp(x), rtol=1e-6)


@needs_gpu
@needs_jax
def test_jax_gpu_in_jax_out():
    import jax

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    if not gpus:
        pytest.skip("jax has no GPU backend installed")
    x, t, _ = _data()
    xj = jax.device_put(x, gpus[0])
    got = fastdiv.cross_entropy(xj, jax.device_put(t, gpus[0]), reduction="none")
    assert isinstance(got, jax.Array) and next(iter(got.devices())).platform == "gpu"
    np.testing.assert_allclose(np.asarray(got), fastdiv.cross_entropy(x, t, reduction="none"), rtol=1e-5, atol=1e-6)


def test_every_public_array_function_answers_in_the_callers_library():
    """A public function whose first parameter is an array must be wrapped by native_arrays."""
    import inspect
    import typing

    checked = 0
    for name in fastdiv.__all__:
        obj = getattr(fastdiv, name)
        params = list(inspect.signature(obj).parameters) if inspect.isfunction(obj) else []
        if params and "_SupportsArray" in str(typing.get_type_hints(obj).get(params[0])):   # ArrayLike
            assert hasattr(obj, "__wrapped__"), f"fastdiv.{name} is not wrapped by _interop.native_arrays"
            checked += 1
    assert checked >= 4
