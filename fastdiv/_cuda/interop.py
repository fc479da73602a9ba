"""Device-array interop: torch / CuPy / numba / any ``__cuda_array_interface__`` exporter.

* :func:`is_device_array` -- does ``obj`` live in CUDA device memory?
* :func:`to_device_view` -- ``(numba device array view, tag)``, never copying.  torch
  bfloat16 tensors (which cannot export ``__cuda_array_interface__``) come back as an
  int16 view of their bits with ``tag.bf16 = True``; pass ``bf16=True`` to the kernels.
* :func:`wrap_like` -- turn a numba device array result back into the caller's library
  (torch tensor / CuPy array / numba array), zero-copy.
* :func:`empty_like_lib` -- allocate an output with the caller's library (so it comes from
  torch's / CuPy's caching allocator, stream-ordered), returned with its numba view.
* :func:`stream_for` -- a numba stream for the caller's current stream (torch / CuPy),
  so kernels are ordered with the caller's work without host synchronisation.

Only :func:`is_device_array` is safe to call without numba-cuda installed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DeviceTag", "is_device_array", "to_device_view", "wrap_like", "empty_like_lib", "stream_for"]

_KDL_CUDA = 2
_KDL_CUDA_MANAGED = 13


@dataclass(frozen=True)
class DeviceTag:
    """Where an array came from: ``lib`` in {"torch", "cupy", "numba", "cai", "dlpack"}."""

    lib: str
    device: int = 0
    bf16: bool = False
    dtype: object = None  # the library's own dtype object (torch.bfloat16, ...)


def _is_torch(obj):
    return type(obj).__module__.startswith("torch") and hasattr(obj, "is_cuda")


def _is_cupy(obj):
    return type(obj).__module__.startswith("cupy")


def _is_numba(obj):
    return hasattr(obj, "copy_to_host") and hasattr(obj, "is_c_contiguous") and hasattr(obj, "reshape")


def is_device_array(obj):
    """True for CUDA device arrays: ``__cuda_array_interface__`` or a CUDA DLPack device."""
    if isinstance(obj, np.ndarray):               # the common case, first: a host array
        return False
    if _is_torch(obj):
        return bool(obj.is_cuda)
    if _is_numba(obj) and type(obj).__module__.startswith("numba"):
        return True
    try:
        if getattr(obj, "__cuda_array_interface__", None) is not None:
            return True
    except Exception:  # some exporters raise for unsupported dtypes
        return True
    dl = getattr(obj, "__dlpack_device__", None)
    if dl is not None:
        try:
            dev_type, _ = dl()
            return int(dev_type) in (_KDL_CUDA, _KDL_CUDA_MANAGED)
        except Exception:
            return False
    return False


def _as_cuda_array(obj):
    from numba import cuda

    try:
        return cuda.as_cuda_array(obj, sync=False)  # no host sync on the exporter's stream
    except TypeError:  # pragma: no cover - older signature
        return cuda.as_cuda_array(obj)


def to_device_view(obj):
    """``(numba device array, DeviceTag)`` viewing ``obj``'s memory without a copy."""
    if _is_numba(obj):
        return obj, DeviceTag("numba", 0)
    if _is_torch(obj):
        import torch

        if not obj.is_cuda:
            raise TypeError("a torch tensor on the CPU is not a device array")
        dev = obj.device.index or 0
        if obj.dtype == torch.bfloat16:
            return _as_cuda_array(obj.view(torch.int16)), DeviceTag("torch", dev, True, obj.dtype)
        return _as_cuda_array(obj), DeviceTag("torch", dev, False, obj.dtype)
    if _is_cupy(obj):
        return _as_cuda_array(obj), DeviceTag("cupy", int(obj.device.id), False, obj.dtype)
    try:
        has_cai = getattr(obj, "__cuda_array_interface__", None) is not None
    except Exception:
        has_cai = False
    if has_cai:
        return _as_cuda_array(obj), DeviceTag("cai", 0)
    dl = getattr(obj, "__dlpack_device__", None)
    if dl is not None and int(dl()[0]) in (_KDL_CUDA, _KDL_CUDA_MANAGED):
        import torch  # DLPack import goes through torch (zero-copy)

        t = torch.from_dlpack(obj)
        view, tag = to_device_view(t)
        return view, DeviceTag("dlpack", tag.device, tag.bf16, tag.dtype)
    raise TypeError(f"{type(obj).__name__} is not a CUDA device array")


def wrap_like(result, tag):
    """Return ``result`` (a numba device array) as the library ``tag`` names, zero-copy."""
    if tag is None or tag.lib in ("numba", "cai", "dlpack"):
        return result
    if tag.lib == "torch":
        import torch

        t = torch.as_tensor(result, device=f"cuda:{tag.device}")
        if tag.bf16 and t.dtype == torch.int16:
            t = t.view(torch.bfloat16)
        return t
    if tag.lib == "cupy":
        import cupy

        return cupy.asarray(result)
    return result


def empty_like_lib(shape, dtype, tag, stream=None):
    """Allocate ``shape``/``dtype`` with the caller's library, on the tag's device; returns
    ``(native, numba view)`` (a torch bfloat16 array -- ``dtype`` ml_dtypes' bfloat16 -- as
    its int16 view, see :func:`to_device_view`)."""
    dtype = np.dtype(dtype)
    if tag is not None and tag.lib in ("torch", "dlpack"):
        import torch

        tdt = torch.bfloat16 if dtype.name == "bfloat16" else \
            {np.dtype(np.float16): torch.float16, np.dtype(np.float32): torch.float32,
             np.dtype(np.float64): torch.float64, np.dtype(np.int64): torch.int64,
             np.dtype(np.int32): torch.int32, np.dtype(np.bool_): torch.bool}[dtype]
        t = torch.empty(shape, dtype=tdt, device=f"cuda:{tag.device}")
        return t, to_device_view(t)[0]
    if tag is not None and tag.lib == "cupy":
        import cupy

        with cupy.cuda.Device(tag.device):
            a = cupy.empty(shape, dtype=dtype)
        return a, _as_cuda_array(a)
    from numba import cuda

    a = cuda.device_array(shape, dtype=dtype, stream=stream or 0)
    return a, a


def stream_for(tag):
    """A numba stream for the caller's current stream (torch / CuPy), else the default stream."""
    from numba import cuda

    ptr = 0
    if tag is not None and tag.lib in ("torch", "dlpack"):
        import torch

        ptr = int(torch.cuda.current_stream(tag.device).cuda_stream)
    elif tag is not None and tag.lib == "cupy":
        import cupy

        ptr = int(cupy.cuda.get_current_stream().ptr)
    if ptr == 0:
        return cuda.default_stream()
    return cuda.external_stream(ptr)
