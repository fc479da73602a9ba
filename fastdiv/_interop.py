"""Framework interop for the public functions: arrays in from any library, results out in the caller's.

One decorator, :func:`native_arrays`, wraps every public array function of ``fastdiv.api``:

* Inputs: numpy arrays (and anything ``np.asarray`` reads: lists, memmaps, ``__array__`` /
  buffer-protocol objects), torch tensors (CPU and CUDA), CuPy arrays, JAX arrays (CPU and GPU),
  numba device arrays.  Host data is read in place whenever numpy can view it
  (``fastdiv._checks.as_array``: a torch CPU tensor through ``Tensor.numpy()`` after
  ``detach()``, bfloat16 through an int16 view, a JAX CPU array through its read-only buffer).
  Device data is read in place by the device path (``fastdiv._gpu``); a JAX GPU array is first
  handed to torch (or CuPy) through DLPack, which shares the buffer.
* Results: in the library of the first argument.  numpy in, numpy out (unchanged behaviour);
  a torch CPU tensor in gives torch CPU tensors out (``torch.from_numpy``: no copy; a 0-d
  tensor for a reduction or a 1-D input); a JAX array in gives JAX arrays out, on the input's
  device; device inputs keep the device path's rule (results stay on the device, in the
  library of the first device input).
* Tensors that require grad are read (detached); results never carry a gradient: fastdiv is
  not an autograd library.

A function returning several arrays (a tuple, a dict) has each converted.
"""
from __future__ import annotations

import functools
import inspect
import sys
from typing import Any, Callable, TypeVar, cast

import numpy as np

from . import _lazy

F = TypeVar("F", bound=Callable[..., Any])

_KDL_CPU = 1


def _is_torch(obj):
    return type(obj).__module__.startswith("torch") and hasattr(obj, "is_cuda")


def _is_jax(obj):
    if "jax" not in sys.modules:        # not imported: nothing can be a JAX array (the common case)
        return False
    mod = type(obj).__module__
    return mod.startswith("jax") or mod.startswith("jaxlib")


def _jax_on_cpu(a):
    dev = getattr(a, "__dlpack_device__", None)
    return dev is None or int(dev()[0]) == _KDL_CPU


def _jax_input(name, a):
    """A JAX array as something the host or device path reads in place."""
    import jax

    if isinstance(a, jax.core.Tracer):
        raise TypeError(f"{name} is a traced JAX value (inside jax.jit, grad or vmap); fastdiv computes "
                        "outside JAX's tracing: call it on concrete arrays, or through jax.pure_callback")
    if _jax_on_cpu(a):
        return np.asarray(a)                  # a read-only view of the buffer, bfloat16 included
    try:                                      # a GPU buffer: share it through DLPack
        import torch

        return torch.from_dlpack(a)
    except ImportError:
        pass
    try:
        import cupy

        return cupy.from_dlpack(a)
    except ImportError:
        raise TypeError(f"{name} is a JAX GPU array; reading it in place needs torch or cupy "
                        "(DLPack exchange)") from None


def _converter(lead):
    """The function mapping a host/device result back to ``lead``'s library (None: leave as is).
    Lazy logits (``fastdiv.linear``) answer in their hidden states' library."""
    if isinstance(lead, np.ndarray):
        return None
    lead = getattr(lead, "hidden", lead) if isinstance(lead, _lazy.LazyLogits) else lead
    if _is_torch(lead):
        if lead.is_cuda:
            return None                       # the device path already answers in torch
        import torch

        return lambda r: torch.from_numpy(np.asarray(r)) if isinstance(r, (np.ndarray, np.generic)) else r
    if _is_jax(lead):
        import jax

        device = next(iter(lead.devices()))
        if _jax_on_cpu(lead):
            return lambda r: jax.device_put(np.asarray(r), device) if isinstance(r, (np.ndarray, np.generic)) else r
        return lambda r: jax.dlpack.from_dlpack(r) if hasattr(r, "__dlpack__") else r
    return None


def _convert(result, conv):
    if isinstance(result, tuple):
        items = [_convert(r, conv) for r in result]
        return type(result)(*items) if hasattr(result, "_fields") else tuple(items)
    if isinstance(result, dict):
        return {k: _convert(v, conv) for k, v in result.items()}
    return conv(result)


def native_arrays(fn: F) -> F:
    """Let ``fn`` take arrays of any supported library and answer in the first argument's library."""
    names = list(inspect.signature(fn).parameters)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        lead = args[0] if args else kwargs.get(names[0])
        if "jax" in sys.modules and (any(_is_jax(a) for a in args) or any(_is_jax(v) for v in kwargs.values())):
            args = tuple(_jax_input(names[i], a) if _is_jax(a) else a for i, a in enumerate(args))
            kwargs = {k: _jax_input(k, v) if _is_jax(v) else v for k, v in kwargs.items()}
        result = fn(*args, **kwargs)
        conv = _converter(lead)
        return result if conv is None else _convert(result, conv)

    return cast(F, wrapper)
