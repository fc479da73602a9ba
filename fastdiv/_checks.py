"""Checks of array arguments and of the data in them.  Every error names the argument.

Nothing reaches a compiled kernel (which skips bounds checks) without passing here.  Scalar
options (reduction, ignore_index, temperature, ...) are ``fastdiv.plan``'s, and so is whether
an array lives on a device (decided before anything here runs); the data of array options
(class weights, targets) is checked here, where it is read.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from . import _lazy

#: dtypes the compiled kernels read directly; everything else float is converted in blocks.
NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


def _bfloat16():
    try:
        import ml_dtypes
    except ImportError:
        return None
    return np.dtype(ml_dtypes.bfloat16)


def compute_dtype(name, dtype):
    """The float dtype a kernel computes in for an input of ``dtype`` (TypeError if not float)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        if dtype.itemsize <= 4:
            return np.dtype(np.float32)       # float16 (and float32) compute in float32
        if dtype.itemsize == 8:
            return np.dtype(np.float64)
        raise TypeError(f"{name} has dtype {dtype}; fastdiv supports float16, bfloat16, float32 and float64")
    if dtype == _bfloat16():
        return np.dtype(np.float32)
    kind = {"i": "integer", "u": "unsigned integer", "b": "boolean", "c": "complex",
            "O": "object", "U": "string", "S": "bytes", "V": "structured/void"}.get(dtype.kind, str(dtype))
    raise TypeError(f"{name} must be a floating-point array, got {kind} dtype {dtype}")


def as_array(name: str, a: Any) -> np.ndarray:
    """``a`` as a numpy array without copying when it already is one (lists are converted)."""
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach") and hasattr(a, "numpy"):          # a torch CPU tensor
        if getattr(getattr(a, "device", None), "type", "cpu") != "cpu":
            raise TypeError(f"{name} is a tensor on {a.device}; use backend='cuda' (or 'auto')")
        a = a.detach()
        if str(a.dtype) == "torch.bfloat16":
            bf16 = _bfloat16()
            if bf16 is None:
                raise TypeError(f"{name} is a bfloat16 tensor; install ml_dtypes to read it")
            import torch
            return a.view(torch.int16).numpy().view(bf16)
        return a.numpy()
    try:
        return np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} could not be converted to an array: {exc}") from None


def float_array(name: str, a: Any) -> np.ndarray:
    """A floating-point array with at least one axis and a non-empty last (class) axis.

    Lazy logits (``fastdiv.linear``) pass as they are: they were checked when made, and the
    execution layer computes their rows block by block."""
    if isinstance(a, _lazy.LazyLogits):
        return a
    a = as_array(name, a)
    compute_dtype(name, a.dtype)
    return class_axis(name, a)


def class_axis(name: str, a: Any) -> Any:
    """``a`` (any array with ``ndim`` and ``shape``: numpy, dask) checked to have a non-empty
    class (last) axis."""
    if a.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension (the class axis), got a 0-d array")
    if a.shape[-1] == 0:
        raise ValueError(f"{name} has an empty class axis (shape {a.shape}); the last axis must have V >= 1")
    return a


def probability_target(target, logits_shape, *, check_dtype=True):
    """A target of probabilities (soft labels), as an array: a float dtype fastdiv reads
    (float16, bfloat16, float32, float64; not checked again for a device view, whose reader
    checked it) and the logits' shape."""
    if check_dtype:
        compute_dtype("target", target.dtype)
    if tuple(target.shape) != tuple(logits_shape):
        raise ValueError(
            f"float target (probabilities) must have the same shape as logits {tuple(logits_shape)}, got "
            f"{tuple(target.shape)}; class indices must be an integer array")


def class_weight(weight, v, dtype):
    """Host class weights as a contiguous array of the compute ``dtype``: any real dtype
    (bfloat16 included, as torch and Liger take it), ``V`` finite, non-negative numbers."""
    w = as_array("weight", weight)
    if w.dtype.kind not in "fiu" and w.dtype != _bfloat16():
        raise TypeError(f"weight must be a real numeric array, got dtype {w.dtype}")
    weight_shape(w.shape, v)
    w = np.ascontiguousarray(w, dtype=dtype)
    if not np.isfinite(w).all():
        raise ValueError("weight must be finite; it contains NaN or inf")
    if (w < 0).any():
        raise ValueError(f"weight must be non-negative; weight[{int(np.flatnonzero(w < 0)[0])}] < 0")
    return w


def weight_shape(shape, v):
    if len(shape) != 1 or shape[0] != v:
        raise ValueError(f"weight must be a 1-D array of length V = {v} (one weight per class), got shape "
                         f"{tuple(shape)}")


def same_shape(name_a, a, name_b, b):
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and {b.shape}")


def class_targets(target, lead_shape, v, ignore, *, count_ignored=False):
    """Integer class indices of shape ``lead_shape``, each in ``[0, V)`` or equal to ``ignore``.

    With ``count_ignored``, returns ``(t, number of entries equal to ignore)``: a mean over the
    counted rows needs it, and the range found here usually shows it is 0 without a pass.
    """
    t, lo, hi = _class_targets(target, lead_shape, v, ignore)
    if not count_ignored:
        return t
    if not lo <= ignore <= hi:           # (lo, hi) = (0, -1) when t is empty
        return t, 0
    return t, int(np.count_nonzero(t == ignore))


def _class_targets(target, lead_shape, v, ignore):
    """(t as contiguous int64, lo, hi) with lo <= min t and hi >= max t (lo, hi = 0, -1 for
    no targets), after the checks of class_targets."""
    if target.dtype.kind == "b":
        raise TypeError("target must hold integer class indices (or float probabilities), got a boolean array")
    if target.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices or float probabilities, got dtype {target.dtype}")
    if target.shape != tuple(lead_shape):
        raise ValueError(
            f"target of class indices must have shape logits.shape[:-1] = {tuple(lead_shape)}, got {target.shape}")
    t = np.ascontiguousarray(target.reshape(-1), dtype=np.int64)
    if target.dtype.kind == "u" and target.dtype.itemsize == 8 and t.size and (t < 0).any():
        raise ValueError("target has values too large for int64")
    if not t.size:
        return t, 0, -1
    # The common case in one pass: read as uint64 a negative index is >= 2^63, so a maximum
    # below v puts every target in [0, v) (lo = 0 is then a bound, not the minimum).
    hi = int(t.view(np.uint64).max())
    if hi < v:
        return t, 0, hi
    lo, hi = int(t.min()), int(t.max())          # some target is negative or >= v
    if hi < v and lo == ignore and not np.any(t[t < 0] != ignore):
        return t, lo, hi
    bad = ((t < 0) | (t >= v)) & (t != ignore)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        where = ", ".join(str(int(i)) for i in np.unravel_index(k, lead_shape)) if lead_shape else ""
        raise ValueError(
            f"target must be in [0, {v}) or equal to ignore_index={ignore}; "
            f"target[{where}] = {int(t[k])} ({int(bad.sum())} invalid value(s))")
    return t, lo, hi


#: ``validate=True``: how far a row of probabilities may sum from 1 (16-bit inputs carry ~3
#: significant digits; float32/float64 allow for probabilities normalised in float32).
PROB_SUM_TOL = {2: 1e-2, 4: 1e-4, 8: 1e-4}


def distribution(name, a, kind):
    """``validate=True``: the rows of ``a`` are distributions given as ``kind``.

    ``"probs"``: no NaN, every entry in [0, 1], each row sums to 1 within ``PROB_SUM_TOL``;
    ``"log_probs"``: no NaN or +inf, each row's logsumexp within the same tolerance of 0;
    ``"logits"``: nothing to check (any row of reals and -inf is a distribution).
    Reads ``a`` in row chunks of about 8 MB (as float64), so the extra memory is O(chunk).
    """
    if kind == "logits":
        return
    from . import _chunks

    tol = PROB_SUM_TOL[min(8, max(2, a.dtype.itemsize))]
    mapped = _chunks.mapping(a)
    for first, block in _chunks.row_chunks(a, (8 << 20) * a.dtype.itemsize // 8):   # 8 MB as float64
        b = np.asarray(block, dtype=np.float64)
        bad = np.isnan(b).any(axis=1)
        what = "NaN"
        if kind == "probs":
            if not bad.any():
                bad, what = ((b < 0) | (b > 1)).any(axis=1), "an entry outside [0, 1]"
            if not bad.any():
                sums = b.sum(axis=1)
                bad, what = np.abs(sums - 1.0) > tol, "a sum different from 1"
        else:
            if not bad.any():
                bad, what = (b == np.inf).any(axis=1), "+inf"
            if not bad.any():
                with np.errstate(divide="ignore", invalid="ignore"):
                    m = b.max(axis=1)
                    lse = np.where(m == -np.inf, -np.inf,
                                   m + np.log(np.exp(b - np.where(np.isfinite(m), m, 0)[:, None]).sum(axis=1)))
                bad, what = ~(np.abs(lse) <= tol), "exp() summing to something other than 1"
        _chunks.release(block, mapped)
        if bad.any():
            k = first + int(np.flatnonzero(bad)[0])
            row = np.unravel_index(k, a.shape[:-1]) if a.ndim > 1 else ()
            where = ", ".join(str(int(i)) for i in row)
            raise ValueError(
                f"{name} (validate=True, inputs={kind!r}) must hold one distribution per row; "
                f"row [{where}] has {what} (tolerance {tol:g} on row sums)")

def half_bits_dtype(dtype):
    """The integer view dtype of a half-precision float ``dtype``, or None if it is not half."""
    dtype = np.dtype(dtype)
    if dtype == np.float16:
        return np.dtype(np.uint16)
    if dtype == _bfloat16():
        return np.dtype(np.int16)
    return None


def topk_teacher(indices, logprobs, lead_shape, v, tail_mode):
    """Teacher top-k classes and log-probabilities as (sorted int64 indices, matching log-probs).

    Each row's indices must be distinct and in ``[0, V)``; they are returned sorted ascending
    (with the log-probabilities permuted alike), which lets the kernels walk the student row's
    remaining classes (the tail) in order.  With ``tail="bucket"`` the listed probabilities of a
    row may not add up to more than 1 (+1e-3 for rounding), since ``1 - sum`` is the tail mass.
    """
    if indices.dtype.kind not in "iu" or indices.dtype.kind == "b":
        raise TypeError(f"teacher_indices must be an integer array, got dtype {indices.dtype}")
    if logprobs.shape != indices.shape:
        raise ValueError(f"teacher_logprobs and teacher_indices must have the same shape, "
                         f"got {logprobs.shape} and {indices.shape}")
    if indices.ndim == 0 or indices.shape[:-1] != tuple(lead_shape):
        raise ValueError(f"teacher_indices must have shape student_logits.shape[:-1] + (k,) = "
                         f"{tuple(lead_shape)} + (k,), got {indices.shape}")
    k = indices.shape[-1]
    if k == 0:
        raise ValueError("teacher_indices has k = 0 classes per row; give at least one")
    if k > v:
        raise ValueError(f"teacher_indices has k = {k} classes per row, more than V = {v}")
    idx = np.asarray(indices).reshape(-1, k)
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= v):
        bad = np.flatnonzero(((idx < 0) | (idx >= v)).any(axis=1))[0]
        raise ValueError(f"teacher_indices must be in [0, {v}); row {int(bad)} has {idx[bad].tolist()[:8]}")
    order = np.argsort(idx, axis=1, kind="stable")
    idx = np.ascontiguousarray(np.take_along_axis(idx, order, axis=1), dtype=np.int64)
    if k > 1 and idx.size:
        dup = (np.diff(idx, axis=1) == 0).any(axis=1)
        if dup.any():
            raise ValueError(f"teacher_indices must be distinct within a row; row {int(np.flatnonzero(dup)[0])} "
                             "repeats a class")
    lp = np.take_along_axis(np.asarray(logprobs).reshape(-1, k), order, axis=1)
    if tail_mode == "bucket" and lp.size:
        with np.errstate(over="ignore", invalid="ignore"):
            sums = np.exp(lp.astype(np.float64)).sum(axis=1)
        over = sums > 1.0 + 1e-3                        # NaN rows are not an error: they poison their row
        if over.any():
            r = int(np.flatnonzero(over)[0])
            raise ValueError(f"teacher_logprobs of row {r} add up to probability {sums[r]!r} > 1; with "
                             "tail='bucket' they must be log-probabilities of the full vocabulary")
    return idx, lp
