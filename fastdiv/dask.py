"""fastdiv on dask arrays: lazy per-row metrics and reductions over row-chunked data.

``fastdiv.dask.cross_entropy``, ``kl_div``, ``entropy`` and ``logsumexp`` take dask arrays (or
anything ``dask.array.asarray`` takes) with the class axis last, and return lazy dask arrays:
per row for ``reduction="none"``, a 0-d array for ``"mean"`` / ``"sum"``.  Each chunk of rows is
computed by the in-memory function on one worker (one read of the chunk, on that worker's
fastdiv backend and threads); reductions add per-row values in float64 across chunks and
divide once, with exactly the in-memory denominators (cross-entropy's weighted mean over the
rows whose target is not ``ignore_index``; 0.0 when every target is ignored), so results
equal the in-memory functions' up to float64 summation order.

The class (last) axis must be one chunk: each row is computed whole.  Each task uses fastdiv's
thread count in its worker process; ``dask.distributed`` workers start with
``OMP_NUM_THREADS=1``, which fastdiv reads, so a task runs on one thread (right when there is
one worker thread per core); set ``FASTDIV_NUM_THREADS`` in the workers' environment to give
each task more (e.g. one single-threaded worker per machine).  Data-dependent errors
(a target out of range) are raised by ``compute()``, by the in-memory checks on the worker;
argument, shape and dtype errors are raised when the graph is built.

Optional extra: ``pip install "fastdiv[dask]"`` (tested with dask / distributed 2026.8.0).

Examples
--------
>>> import numpy as np, dask.array as da, fastdiv, fastdiv.dask
>>> x = np.random.default_rng(0).standard_normal((1000, 51))
>>> t = np.random.default_rng(1).integers(0, 51, 1000)
>>> lazy = fastdiv.dask.cross_entropy(da.from_array(x, chunks=(256, -1)), da.from_array(t, chunks=256))
>>> bool(np.isclose(lazy.compute(), fastdiv.cross_entropy(x, t), rtol=1e-12))
True
"""
from __future__ import annotations

import functools
import math
import warnings

import numpy as np

try:
    import dask.array as da
except ImportError as exc:
    raise ImportError(f"fastdiv.dask needs dask: pip install 'fastdiv[dask]' ({exc})") from None

from . import _checks, api
from ._typing import ArrayLike, Backend, Inputs, Reduction

__all__ = ["logsumexp", "entropy", "kl_div", "cross_entropy"]


def _dask(name: str, a: object) -> da.Array:
    if isinstance(a, da.Array):
        return a
    try:
        return da.asarray(a)
    except Exception as exc:
        raise TypeError(f"{name} could not be made a dask array: {exc}") from None


def _class_axis_whole(name: str, a: da.Array) -> da.Array:
    """``a`` with its class (last) axis in one chunk, as the per-row computation needs.

    This is where vocabulary-split arrays would be combined through fastdiv's mergeable
    per-row states (a partial state per vocabulary chunk, merged exactly across chunks);
    until then a split class axis is refused here, with the fix in the message.
    """
    if a.ndim == 0:
        raise ValueError(f"{name} must have at least 1 dimension (the class axis), got a 0-d array")
    if a.shape[-1] == 0:
        raise ValueError(f"{name} has an empty class axis (shape {a.shape}); the last axis must have V >= 1")
    if len(a.chunks[-1]) > 1:
        raise ValueError(
            f"{name} has its class (last) axis split into {len(a.chunks[-1])} chunks {a.chunks[-1]}; fastdiv.dask "
            f"computes each row whole: rechunk with {name}.rechunk({{-1: -1}}) (chunk along rows only)")
    return a


def _float(name: str, a: object) -> da.Array:
    a = _class_axis_whole(name, _dask(name, a))
    _checks.compute_dtype(name, a.dtype)
    return a


def _out_dtype(*arrays):
    return np.dtype(np.float64) if any(_checks.compute_dtype("x", a.dtype) == np.float64 for a in arrays) \
        else np.dtype(np.float32)


def _block(fn, kwargs, *blocks):
    """Per-row values of one chunk of rows (the task each worker runs)."""
    return np.asarray(fn(*blocks, **kwargs))


def _per_row(fn, arrays, dtype, kwargs, extra=()):
    """Lazy per-row results of ``fn(*arrays, *extra, **kwargs)`` over aligned row chunks.

    ``arrays`` have the class axis last (contracted); ``extra`` are arrays of the leading shape.
    """
    ndim = arrays[0].ndim
    ind = tuple(range(ndim))
    args = [x for a in arrays for x in (a, ind)] + [x for e in extra for x in (e, ind[:-1])]
    return da.blockwise(functools.partial(_block, fn, kwargs), ind[:-1], *args, dtype=dtype, concatenate=True,
                        meta=np.empty((0,) * (ndim - 1), dtype))


def _count(per_row):
    n = per_row.size
    if isinstance(n, float) and math.isnan(n):      # unknown chunk sizes: count at compute time
        return da.ones_like(per_row, dtype=np.int64).sum()
    return n


def _reduce(per_row, reduction, dtype):
    if reduction == "none":
        return per_row
    total = per_row.sum(dtype=np.float64)
    if reduction == "sum":
        return total.astype(dtype)
    n = _count(per_row)
    if isinstance(n, int) and n == 0:
        warnings.warn("mean of an empty batch is NaN", RuntimeWarning, stacklevel=3)
        return da.from_array(np.array(np.nan, dtype))
    return (total / n).astype(dtype)


def logsumexp(x: ArrayLike, *, backend: Backend = "auto") -> da.Array:
    """Lazy :func:`fastdiv.logsumexp` of a row-chunked dask array: one value per row.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastdiv.dask
    >>> x = da.from_array(np.log(np.array([[1.0, 2.0, 5.0], [1.0, 1.0, 2.0]])), chunks=(1, 3))
    >>> np.round(fastdiv.dask.logsumexp(x).compute(), 6)    # log 8, log 4
    array([2.079442, 1.386294])
    """
    x = _float("x", x)
    return _per_row(api.logsumexp, [x], _out_dtype(x), {"backend": backend})


def entropy(p: ArrayLike, *, inputs: Inputs = "logits", reduction: Reduction = "none",
            backend: Backend = "auto") -> da.Array:
    """Lazy :func:`fastdiv.entropy` of a row-chunked dask array.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastdiv.dask
    >>> p = da.zeros((6, 4), chunks=(4, 4))                  # uniform rows: log 4 each
    >>> round(float(fastdiv.dask.entropy(p, reduction="mean").compute()), 6)
    1.386294
    """
    kind = _checks.input_kind(inputs)
    reduction = _checks.reduction(reduction)
    p = _float("p", p)
    dtype = _out_dtype(p)
    per_row = _per_row(api.entropy, [p], dtype, {"inputs": kind, "reduction": "none", "backend": backend})
    return _reduce(per_row, reduction, dtype)


def kl_div(p: ArrayLike, q: ArrayLike, *, inputs: Inputs = "logits", reduction: Reduction = "mean",
           backend: Backend = "auto") -> da.Array:
    """Lazy :func:`fastdiv.kl_div` ``D(P || Q)`` of two row-chunked dask arrays of the same shape.

    Their row chunks may differ (they are aligned); ``"mean"`` averages over rows.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastdiv.dask
    >>> p = da.from_array(np.array([[0.5, 0.5]] * 3), chunks=(2, 2))
    >>> q = da.from_array(np.array([[0.9, 0.1]] * 3), chunks=(1, 2))
    >>> round(float(fastdiv.dask.kl_div(p, q, inputs="probs").compute()), 6)
    0.510826
    """
    kind = _checks.input_kind(inputs)
    reduction = _checks.reduction(reduction)
    p, q = _float("p", p), _float("q", q)
    _checks.same_shape("p", p, "q", q)
    dtype = _out_dtype(p, q)
    per_row = _per_row(api.kl_div, [p, q], dtype, {"inputs": kind, "reduction": "none", "backend": backend})
    return _reduce(per_row, reduction, dtype)


def _target_weight(t, w, ignore):
    """Per row: the denominator share of cross-entropy's mean (``w[t]``, or 1; 0 if ignored)."""
    counted = t != ignore
    if w is None:
        return counted.astype(np.float64)
    out = np.zeros(t.shape, np.float64)
    out[counted] = w[t[counted]]
    return out


def cross_entropy(logits: ArrayLike, target: ArrayLike, *, reduction: Reduction = "mean",
                  ignore_index: int = -100, weight: ArrayLike | None = None, label_smoothing: float = 0.0,
                  backend: Backend = "auto") -> da.Array:
    """Lazy :func:`fastdiv.cross_entropy` of row-chunked dask arrays.

    ``target`` is a dask array of class indices (shape ``logits.shape[:-1]``) or of
    probabilities (shape ``logits.shape``), chunked along rows like ``logits`` or not (the
    chunks are aligned).  ``weight`` is a small in-memory array, sent to every task.
    ``"mean"`` for class indices is ``sum(loss) / sum(weight[target])`` over the rows whose
    target is not ``ignore_index``, across all chunks, and 0.0 when that is 0.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastdiv.dask
    >>> logits = da.from_array(np.array([[2.0, 0.0, 0.0]] * 4), chunks=(3, 3))
    >>> target = da.from_array(np.array([0, 0, -100, 0]), chunks=3)
    >>> round(float(fastdiv.dask.cross_entropy(logits, target).compute()), 6)
    0.239545
    """
    reduction = _checks.reduction(reduction)
    ignore = _checks.ignore_index(ignore_index)
    eps = _checks.label_smoothing(label_smoothing)
    logits = _float("logits", logits)
    target = _dask("target", target)
    lead, v = logits.shape[:-1], logits.shape[-1]
    kw = {"ignore_index": ignore, "label_smoothing": eps, "backend": backend, "reduction": "none"}
    if target.dtype.kind == "f" or target.dtype == _checks._bfloat16():
        if target.shape != logits.shape:
            raise ValueError(
                f"float target (probabilities) must have the same shape as logits {logits.shape}, got {target.shape}; "
                "class indices must be an integer array")
        target = _class_axis_whole("target", target)
        dtype = _out_dtype(logits, target)
        w = None if weight is None else _checks.class_weight(_computed(weight), v, dtype)
        per_row = _per_row(api.cross_entropy, [logits, target], dtype, dict(kw, weight=w))
        return _reduce(per_row, reduction, dtype)

    if target.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices or float probabilities, got dtype {target.dtype}")
    if target.shape != lead:
        raise ValueError(f"target of class indices must have shape logits.shape[:-1] = {lead}, got {target.shape}")
    dtype = _out_dtype(logits)
    w = None if weight is None else _checks.class_weight(_computed(weight), v, dtype)
    per_row = _per_row(api.cross_entropy, [logits], dtype, dict(kw, weight=w), extra=[target])
    if reduction != "mean":
        return _reduce(per_row, reduction, dtype)
    total = per_row.sum(dtype=np.float64)
    denom = da.map_blocks(_target_weight, target, w, ignore, dtype=np.float64).sum()
    safe = da.where(denom == 0, 1.0, denom)
    return da.where(denom == 0, 0.0, total / safe).astype(dtype)


def _computed(a):
    """A small array argument (class weights) in memory, computing it if it is lazy."""
    return a.compute() if isinstance(a, da.Array) else a
