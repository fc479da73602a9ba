"""The API's device path: the options and reductions of ``fastdiv.api`` on CUDA arrays.

Inputs with ``__cuda_array_interface__`` or a CUDA DLPack device (torch CUDA tensors, CuPy
arrays, numba device arrays) are read in place; outputs are allocated by the caller's
library on its current stream and come back in that library (a torch tensor for torch
input), reductions included, with no host synchronisation.  numpy input with
``backend="cuda"`` is copied to the device and the result copied back.

What the host path validates from the data itself (targets in range, weights finite and
non-negative) would need a device-to-host synchronisation here, so on device arrays it is
not checked: a target outside ``[0, V)`` (other than ``ignore_index``) gives NaN for its row
and is never read out of bounds.  Host-side targets and weights are validated as usual.
"""
from __future__ import annotations

import numpy as np

from . import _checks
from ._cuda import interop


def any_on_device(*objs):
    return any(o is not None and interop.is_device_array(o) for o in objs)


def _torch_contiguous(a):
    """A torch tensor as a plain, C-contiguous tensor for a zero-copy view: tensors that
    require grad are detached (results carry no gradient: fastdiv is not an autograd
    library), non-contiguous ones are copied (documented)."""
    if interop._is_torch(a):
        a = a.detach()
        if not a.is_contiguous():
            a = a.contiguous()
    return a


class _Call:
    """One device call: the caller's library tag, stream and the kernels module."""

    def __init__(self):
        from ._cuda import kernels

        self.k = kernels
        self.tag = None           # the first device input's library; None: host (numpy) input
        self.stream = None
        self.bf16 = False

    def view(self, name, a, *, floating=True):
        """A numba device view of ``a`` (copying host arrays over), plus validation."""
        if interop.is_device_array(a):
            a = _torch_contiguous(a)
            v, tag = interop.to_device_view(a)
            if self.tag is None:
                self.tag = tag
            if floating:
                if tag.bf16:
                    self.bf16 = True
                elif np.dtype(v.dtype) not in (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)):
                    raise TypeError(f"{name} must be a float16, bfloat16, float32 or float64 device array, got {v.dtype}")
            return v
        from numba import cuda

        arr = _checks.as_array(name, a)
        if floating:
            arr = _checks.float_array(name, arr)
            if arr.dtype not in (np.float16, np.float32, np.float64):
                arr = arr.astype(_checks.compute_dtype(name, arr.dtype))
        return cuda.to_device(np.ascontiguousarray(arr))

    def ensure_stream(self):
        if self.stream is None:
            self.stream = interop.stream_for(self.tag)
        return self.stream

    def empty(self, n, dtype):
        native, view = interop.empty_like_lib((n,), dtype, self.tag, self.ensure_stream())
        return native, view

    def result(self, native, view, shape):
        """The caller's library's array (host numpy for host input), shaped ``shape``."""
        if self.tag is None:                   # numpy in, numpy out
            out = view.copy_to_host(stream=self.ensure_stream())
            self.ensure_stream().synchronize()
            out = out.reshape(shape)
            return out[()] if out.ndim == 0 else out
        if self.tag.lib in ("numba", "cai"):
            return view.reshape(shape) if shape else view   # a reduction: a 1-element device array
        wrapped = native if self.tag.lib in ("torch", "dlpack", "cupy") else interop.wrap_like(view, self.tag)
        return wrapped.reshape(shape)


def _rows_view(v, name):
    shape = tuple(int(d) for d in v.shape)     # (the simulator's shape object has no negative indexing)
    if not shape:
        raise ValueError(f"{name} must have at least 1 dimension (the class axis), got a 0-d array")
    if shape[-1] == 0:
        raise ValueError(f"{name} has an empty class axis (shape {shape}); the last axis must have V >= 1")
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    return v.reshape(rows, shape[-1]), shape[:-1]


def _acc_dtype(views, bf16):
    if bf16:
        return np.dtype(np.float32)
    return np.dtype(np.float64) if any(np.dtype(v.dtype) == np.float64 for v in views) else np.dtype(np.float32)


def _finish(call, out_native, out_view, lead, reduction, *, target=None, ignore_index=-100, weight=None,
            ce_mean=False):
    if reduction == "none":
        return call.result(out_native, out_view, lead)
    k = call.k
    stream = call.ensure_stream()
    dtype = np.dtype(out_view.dtype)
    red_native, red_view = call.empty(1, dtype)
    if reduction == "sum":
        k.device_sum(out_view, red_view, stream=stream)
    elif ce_mean:
        k.device_mean(out_view, target, ignore_index, weight, red_view, stream=stream, empty=0.0)
    else:
        k.device_mean(out_view, None, ignore_index, None, red_view, stream=stream, empty=float("nan"))
    return call.result(red_native, red_view, ())


def per_row_op(op, named_arrays, reduction, scalars=()):
    """logsumexp / entropy / kl_div / js_div on the device (``named_arrays``: [(name, array), ...]).

    ``scalars``: the contract's scalars after the arrays (``scale`` for logits ops, ``beta``)."""
    call = _Call()
    views = [call.view(name, a) for name, a in named_arrays]
    shapes = {tuple(v.shape) for v in views}
    if len(shapes) > 1:
        raise ValueError(f"{named_arrays[0][0]} and {named_arrays[1][0]} must have the same shape, "
                         f"got {tuple(views[0].shape)} and {tuple(views[1].shape)}")
    if len({np.dtype(v.dtype) for v in views}) > 1:
        raise TypeError(f"on the device, {named_arrays[0][0]} and {named_arrays[1][0]} must have the same dtype")
    flat = []
    for (name, _), v in zip(named_arrays, views):
        f, lead = _rows_view(v, name)
        flat.append(f)
    out_native, out_view = call.empty(flat[0].shape[0], _acc_dtype(views, call.bf16))
    if flat[0].shape[0]:
        getattr(call.k, op)(*flat, *scalars, out_view, None, stream=call.ensure_stream(), bf16=call.bf16 or None)
    return _finish(call, out_native, out_view, lead, reduction)


def cross_entropy(logits, target, reduction, ignore_index, weight, eps, scale=1.0):
    call = _Call()
    x = call.view("logits", logits)
    x2, lead = _rows_view(x, "logits")
    rows, v = (int(d) for d in x2.shape)
    acc = _acc_dtype([x], call.bf16)
    w_view = None
    if weight is not None:
        if interop.is_device_array(weight):
            w_view = call.view("weight", weight)
            if w_view.ndim != 1 or w_view.shape[0] != v:
                raise ValueError(f"weight must be a 1-D array of length V = {v} (one weight per class), "
                                 f"got shape {tuple(w_view.shape)}")
            if np.dtype(w_view.dtype) != acc:
                raise TypeError(f"a device weight must have the compute dtype {acc}, got {w_view.dtype}")
        else:
            from numba import cuda

            w_view = cuda.to_device(_checks.class_weight(weight, v, acc))

    t_is_float = False
    if interop.is_device_array(target):
        tv, _ = interop.to_device_view(_torch_contiguous(target))
        t_is_float = np.dtype(tv.dtype).kind == "f" or (interop._is_torch(target) and target.is_floating_point())
    else:
        t_host = _checks.as_array("target", target)
        t_is_float = t_host.dtype.kind == "f" or t_host.dtype == _checks._bfloat16()   # as on the host

    out_native, out_view = call.empty(rows, acc)
    stream = call.ensure_stream()
    if t_is_float:                                       # probabilities: soft targets
        p = call.view("target", target)
        if tuple(p.shape) != tuple(x.shape):
            raise ValueError(f"float target (probabilities) must have the same shape as logits {tuple(x.shape)}, "
                             f"got {tuple(p.shape)}; class indices must be an integer array")
        if np.dtype(p.dtype) != np.dtype(x.dtype):
            raise TypeError("on the device, target probabilities must have the dtype of logits")
        p2, _ = _rows_view(p, "target")
        if rows:
            call.k.ce_soft(x2, p2, w_view, 1.0 - eps, eps / v, scale, out_view, None, stream=stream,
                           bf16=call.bf16 or None)
        # ce_mean without a target: the mean over rows, 0.0 for no rows (as on the host)
        return _finish(call, out_native, out_view, lead, reduction, ce_mean=True)

    if interop.is_device_array(target):
        t = target
        if interop._is_torch(t):
            import torch

            if t.dtype in (torch.bool,) or t.is_floating_point() or t.is_complex():
                raise TypeError(f"target must hold integer class indices or float probabilities, got {t.dtype}")
            t = t.to(torch.int64).contiguous()
        tv, _ = interop.to_device_view(t)
        if np.dtype(tv.dtype).kind not in "iu":
            raise TypeError(f"target must hold integer class indices or float probabilities, got dtype {tv.dtype}")
        if tuple(tv.shape) != lead:
            raise ValueError(f"target of class indices must have shape logits.shape[:-1] = {lead}, got {tuple(tv.shape)}")
        tv = tv.reshape(rows) if rows else tv
        if np.dtype(tv.dtype) != np.int64:
            raise TypeError(f"device class indices must be int64 (or a torch integer tensor), got {tv.dtype}")
    else:
        from numba import cuda

        tv = cuda.to_device(_checks.class_targets(t_host, lead, v, ignore_index))
    if rows:
        call.k.ce_hard(x2, tv, ignore_index, w_view, eps, out_view, None, stream=stream, bf16=call.bf16 or None)
    return _finish(call, out_native, out_view, lead, reduction, target=tv, ignore_index=ignore_index,
                   weight=w_view, ce_mean=True)


def topk_kl(teacher_indices, teacher_logprobs, student_logits, tail, reduction):
    """topk_kl_div on the device.  Host (numpy) teacher arrays are validated and sorted as on
    the host path, then copied over; torch CUDA teacher tensors are sorted on the device (no
    synchronisation, so not validated: a row with a repeated or out-of-range class gives NaN)."""
    from numba import cuda

    call = _Call()
    z = call.view("student_logits", student_logits)
    z2, lead = _rows_view(z, "student_logits")
    rows, v = (int(d) for d in z2.shape)
    if interop.is_device_array(teacher_indices) or interop.is_device_array(teacher_logprobs):
        if not (interop._is_torch(teacher_indices) and interop._is_torch(teacher_logprobs)):
            raise TypeError("on the device, teacher_indices and teacher_logprobs must be torch CUDA tensors "
                            "(or host arrays)")
        import torch

        if teacher_indices.shape != teacher_logprobs.shape or tuple(teacher_indices.shape[:-1]) != lead:
            raise ValueError(f"teacher_indices and teacher_logprobs must have shape {lead} + (k,), got "
                             f"{tuple(teacher_indices.shape)} and {tuple(teacher_logprobs.shape)}")
        k = int(teacher_indices.shape[-1])
        si, order = torch.sort(teacher_indices.detach().reshape(rows, k).to(torch.int64), dim=1)
        st = torch.gather(teacher_logprobs.detach().reshape(rows, k), 1, order)
        iv = call.view("teacher_indices", si.contiguous(), floating=False)
        tv = call.view("teacher_logprobs", st.contiguous())
    else:
        idx = _checks.as_array("teacher_indices", teacher_indices)
        t = _checks.as_array("teacher_logprobs", teacher_logprobs)
        _checks.compute_dtype("teacher_logprobs", t.dtype)
        idx, t = _checks.topk_teacher(idx, t, lead, v, tail)
        if call.bf16:
            t = t.astype(_checks._bfloat16()).view(np.int16)
        else:
            t = t.astype(np.dtype(z.dtype))
        iv = cuda.to_device(idx)
        tv = cuda.to_device(np.ascontiguousarray(t))
    out_native, out_view = call.empty(rows, _acc_dtype([z], call.bf16))
    if rows:
        call.k.topk_kl(iv, tv, z2, int(tail == "bucket"), out_view, None, stream=call.ensure_stream(),
                       bf16=call.bf16 or None)
    return _finish(call, out_native, out_view, lead, reduction)
