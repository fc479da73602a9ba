"""The public API: validate -> view as 2-D ``(rows, V)`` -> dispatch per-row kernels -> reduce.

Options (weights, label smoothing, ignore_index, reductions) are implemented here once;
backends only provide the per-row kernels listed in ``fastdiv._registry``.

Every public array function is wrapped by ``fastdiv._interop.native_arrays``: it takes numpy,
torch (CPU/CUDA), CuPy and JAX arrays and answers in the library of its first argument.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from typing import Iterator

import numpy as np

from . import _checks, _chunks, _gpu, _interop, _registry
from ._typing import ArrayLike, Backend, Inputs, Reduction, Result

__all__ = [
    "logsumexp",
    "entropy",
    "cross_entropy",
    "kl_div",
    "set_num_threads",
    "get_num_threads",
    "threads",
]

#: Rows are handed to a kernel in blocks of about this many bytes when an input must be
#: converted (dtype, byte order, non-contiguous rows); contiguous native input goes whole.
BLOCK_BYTES = 8 << 20


# --------------------------------------------------------------------------- threads


def _default_threads():
    for var in ("FASTDIV_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(var, "").strip()
        if value:
            try:
                return max(1, int(value.split(",")[0]))
            except ValueError:
                warnings.warn(f"ignoring {var}={value!r}: not an integer", RuntimeWarning, stacklevel=3)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_nthreads = _default_threads()


def set_num_threads(n: int) -> None:
    """Set the number of threads both compiled CPU backends use (results do not depend on it).

    Parameters
    ----------
    n : int
        A positive number of threads.

    Examples
    --------
    >>> import fastdiv
    >>> old = fastdiv.get_num_threads()
    >>> fastdiv.set_num_threads(1); fastdiv.get_num_threads()
    1
    >>> fastdiv.set_num_threads(old)
    """
    global _nthreads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    _nthreads = int(n)


def get_num_threads() -> int:
    """The number of threads the compiled CPU backends use.

    Examples
    --------
    >>> import fastdiv
    >>> fastdiv.get_num_threads() >= 1
    True
    """
    return _nthreads


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Context manager: ``with fastdiv.threads(1): ...`` runs the block with ``n`` threads.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> with fastdiv.threads(1):
    ...     float(fastdiv.logsumexp(np.zeros(4)))   # log 4
    1.3862943611198906
    """
    old = get_num_threads()
    set_num_threads(n)
    try:
        yield
    finally:
        set_num_threads(old)


# --------------------------------------------------------------------------- row plumbing


def _row_blocks(a):
    """Yield ``(start_row, 2-D (rows, V) view)`` covering ``a`` in C row order, never copying.

    A view whose rows are not C-contiguous is yielded as-is; ``_prepare`` copies it block
    by block.  Arrays whose leading axes cannot be merged without a copy are split along
    their first axis.
    """
    v = a.shape[-1]
    flat = a.view()
    try:
        flat.shape = (-1, v)
    except AttributeError:        # leading axes not mergeable: recurse on the first one
        inner = int(np.prod(a.shape[1:-1], dtype=np.int64))
        for k in range(a.shape[0]):
            for start, block in _row_blocks(a[k]):
                yield k * inner + start, block
        return
    yield 0, flat


def _prepare(block, dtype):
    """A C-contiguous array of ``dtype`` with the values of ``block`` (a copy only if needed)."""
    if block.dtype == dtype and block.flags.c_contiguous:
        return block
    return np.ascontiguousarray(block, dtype=dtype)


def _rows_per_block(v, itemsize):
    return max(1, BLOCK_BYTES // max(1, v * itemsize))


def _run_rows(arrays, dtype, call, nrows):
    """Run ``call(start, stop, *prepared_blocks)`` over all rows of the same-shape ``arrays``.

    Native C-contiguous inputs go to the kernel in one call; otherwise blocks of
    ``BLOCK_BYTES`` are converted (dtype, byte order, strides) and processed in turn, so
    the extra memory is O(block), never O(rows x V).  File-backed inputs (np.memmap) go
    in chunks of ``_chunks.CHUNK_BYTES`` whose pages are released after each chunk.
    """
    v = arrays[0].shape[-1]
    per_array = [list(_row_blocks(a)) for a in arrays]
    # The arrays may split into different row ranges (one contiguous, one transposed):
    # walk the common refinement of all their block boundaries.
    edges = sorted({nrows, *(start for blocks in per_array for start, _ in blocks)})
    for a, b in zip(edges[:-1], edges[1:]):
        blocks = []
        for parts in per_array:
            start, block = next((s, blk) for s, blk in reversed(parts) if s <= a)
            blocks.append(block[a - start:b - start])
        native = all(blk.dtype == dtype and blk.flags.c_contiguous for blk in blocks)
        mapped = [_chunks.mapping(blk) for blk in blocks]
        if native and all(m is None for m in mapped):
            call(a, b, *blocks)
            continue
        # Converted inputs go in BLOCK_BYTES blocks; file-backed ones (see fastdiv._chunks)
        # in CHUNK_BYTES chunks (fewer, larger kernel calls over a slow source) whose pages
        # are released after use, so RSS stays bounded.
        itemsize = max(dtype.itemsize, max(blk.dtype.itemsize for blk in blocks))
        if any(m is not None for m in mapped):
            step = _chunks.rows_per_chunk(v, itemsize, _chunks.CHUNK_BYTES)
        else:
            step = _rows_per_block(v, itemsize)
        for r0 in range(a, b, step):
            r1 = min(r0 + step, b)
            parts = [blk[r0 - a:r1 - a] for blk in blocks]
            call(r0, r1, *[_prepare(part, dtype) for part in parts])
            for part, m in zip(parts, mapped):
                _chunks.release(part, m)


def _out_dtype(*arrays):
    dts = [_checks.compute_dtype(f"arg{i}", a.dtype) for i, a in enumerate(arrays)]
    return np.dtype(np.float64) if any(d == np.float64 for d in dts) else np.dtype(np.float32)


#: Kernels whose logits are multiplied by ``scale`` (1 / temperature) before the softmax.
_SCALED_OPS = ("entropy_logits", "kl_logits", "ce_soft")


def _per_row(op, backend, arrays, *, scalars=(), extra=None, scale=1.0):
    """Per-row results (1-D, C order over the leading axes) of kernel ``op`` on ``arrays``."""
    lead = arrays[0].shape[:-1]
    nrows = int(np.prod(lead, dtype=np.int64))
    dtype = _out_dtype(*arrays)
    out = np.empty(nrows, dtype=dtype)
    if nrows == 0:
        return out
    kern = _registry.kernel(backend, op)
    nthreads = get_num_threads()

    def call(r0, r1, *blocks):
        if op == "ce_hard":
            target, weight = extra
            kern(blocks[0], target[r0:r1], scalars[0], weight, scalars[1], out[r0:r1], nthreads)
        elif op == "ce_soft":
            (weight,) = extra
            kern(blocks[0], blocks[1], weight, scalars[0], scalars[1], scale, out[r0:r1], nthreads)
        elif op in _SCALED_OPS:
            kern(*blocks, scale, out[r0:r1], nthreads)
        else:
            kern(*blocks, out[r0:r1], nthreads)

    _run_rows(arrays, dtype, call, nrows)
    return out


def _finish(per_row, lead, reduction, dtype):
    """Shape per-row results like the input's leading axes, or reduce them in float64."""
    if reduction == "none":
        res = per_row.reshape(lead)
        return res[()] if res.ndim == 0 else res
    if reduction == "sum":
        return dtype.type(np.sum(per_row, dtype=np.float64))
    if per_row.size == 0:
        warnings.warn("mean of an empty batch is NaN", RuntimeWarning, stacklevel=3)
        return dtype.type(np.nan)
    return dtype.type(np.sum(per_row, dtype=np.float64) / per_row.size)


def _validate(flag, kind, **named):
    """``validate=True``: each row of the named arrays is a distribution given as ``kind``.

    Probabilities: no NaN, entries in [0, 1], rows summing to 1 within
    ``_checks.PROB_SUM_TOL`` (1e-4 for float32/float64, 1e-2 for 16-bit inputs);
    log-probabilities: no NaN or +inf, row logsumexp within the same tolerance of 0; logits:
    nothing to check.  Host arrays only: checking device arrays would need a copy to the host.
    """
    if not _checks.validate_flag(flag) or kind == "logits":
        return
    for name, a in named.items():
        if _gpu.any_on_device(a):
            raise ValueError(f"validate=True checks host arrays; {name} is a device array (validate it on the device)")
        _checks.distribution(name, _checks.float_array(name, a), kind)


# --------------------------------------------------------------------------- public functions


@_interop.native_arrays
def logsumexp(x: ArrayLike, *, backend: Backend = "auto") -> Result:
    """``log(sum(exp(x)))`` over the last axis, in one read of ``x``.

    Parameters
    ----------
    x : array_like, shape (..., V)
        float16, bfloat16, float32 or float64 values.  ``-inf`` entries are masked classes.
    backend : {"auto", "numba", "cython", "numpy", "cuda"}

    Returns
    -------
    ndarray of shape ``x.shape[:-1]`` (a numpy scalar for 1-D ``x``), float32 or float64.
    A row of all ``-inf`` gives ``-inf``; a row with ``+inf`` gives ``+inf``; NaN gives NaN.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> float(fastdiv.logsumexp(np.log(np.array([1.0, 2.0, 5.0]))))  # log(8)
    2.0794415416798357
    """
    backend = _registry.resolve(backend, device=_gpu.any_on_device(x))
    if backend == "cuda":
        return _gpu.per_row_op("lse", [("x", x)], "none")
    x = _checks.float_array("x", x)
    per_row = _per_row("lse", backend, [x])
    return _finish(per_row, x.shape[:-1], "none", per_row.dtype)


@_interop.native_arrays
def entropy(p: ArrayLike, *, inputs: Inputs = "logits", reduction: Reduction = "none",
            backend: Backend = "auto", validate: bool = False) -> Result:
    """Shannon entropy ``H(P) = -sum p log p`` (nats) over the last axis.

    Parameters
    ----------
    p : array_like, shape (..., V)
        The distribution, given as ``inputs``: ``"logits"`` (softmax taken), ``"log_probs"``
        or ``"probs"`` (taken literally, not renormalised; ``0 log 0 = 0``).
    reduction : {"none", "mean", "sum"}
        ``"none"`` keeps one value per row (shape ``p.shape[:-1]``).
    validate : bool
        Check first that each row is a distribution: probabilities NaN-free, in [0, 1] and
        summing to 1 within 1e-4 (1e-2 for 16-bit inputs); log-probabilities free of NaN and
        +inf with a logsumexp within the same of 0 (``ValueError`` naming the argument and
        row).  Off by default: it reads the input once more.  Host arrays only.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> round(float(fastdiv.entropy(np.zeros(4))), 6)   # uniform over 4 classes: log 4
    1.386294
    """
    kind = _checks.input_kind(inputs)
    reduction = _checks.reduction(reduction)
    backend = _registry.resolve(backend, device=_gpu.any_on_device(p))
    _validate(validate, kind, p=p)
    if backend == "cuda":
        return _gpu.per_row_op(f"entropy_{kind}", [("p", p)], reduction)
    p = _checks.float_array("p", p)
    per_row = _per_row(f"entropy_{kind}", backend, [p])
    return _finish(per_row, p.shape[:-1], reduction, per_row.dtype)


@_interop.native_arrays
def kl_div(p: ArrayLike, q: ArrayLike, *, inputs: Inputs = "logits", reduction: Reduction = "mean",
           backend: Backend = "auto", validate: bool = False) -> Result:
    """Kullback-Leibler divergence ``D(P || Q) = sum p (log p - log q)`` over the last axis.

    The argument order is the mathematical one (like ``scipy.special.rel_entr(p, q)``),
    not torch's reversed ``kl_div(input=log q, target=p)``.  Reverse KL is ``kl_div(q, p)``.

    Parameters
    ----------
    p, q : array_like, same shape (..., V)
        Both given as ``inputs``: ``"logits"``, ``"log_probs"`` or ``"probs"``.
    reduction : {"none", "mean", "sum"}
        ``"mean"`` averages over rows (torch's ``"batchmean"`` for 2-D input).
    validate : bool
        Check first that each row of ``p`` and ``q`` is a distribution, as in :func:`entropy`.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> p = np.array([0.5, 0.5]); q = np.array([0.9, 0.1])
    >>> round(float(fastdiv.kl_div(p, q, inputs="probs")), 6)
    0.510826
    """
    kind = _checks.input_kind(inputs)
    reduction = _checks.reduction(reduction)
    backend = _registry.resolve(backend, device=_gpu.any_on_device(p, q))
    _validate(validate, kind, p=p, q=q)
    if backend == "cuda":
        return _gpu.per_row_op(f"kl_{kind}", [("p", p), ("q", q)], reduction)
    p = _checks.float_array("p", p)
    q = _checks.float_array("q", q)
    _checks.same_shape("p", p, "q", q)
    per_row = _per_row(f"kl_{kind}", backend, [p, q])
    return _finish(per_row, p.shape[:-1], reduction, per_row.dtype)


@_interop.native_arrays
def cross_entropy(logits: ArrayLike, target: ArrayLike, *, reduction: Reduction = "mean",
                  ignore_index: int = -100, weight: ArrayLike | None = None,
                  label_smoothing: float = 0.0, backend: Backend = "auto", validate: bool = False,
                  z_loss: float = 0.0, softcap: float | None = None, return_lse: bool = False) -> Result:
    """Cross-entropy of ``softmax(logits)`` against class indices or target probabilities.

    Gives the numbers of ``torch.nn.functional.cross_entropy`` with the class axis last.

    Parameters
    ----------
    logits : array_like, shape (..., V)
    target : array_like
        Integer class indices of shape ``logits.shape[:-1]`` (hard labels), or floating
        probabilities of shape ``logits.shape`` (soft targets: ``H(P, Q)`` with ``P = target``).
    reduction : {"mean", "sum", "none"}
        Hard labels: ``"mean"`` is ``sum(loss) / sum(weight[target])`` over non-ignored rows
        (torch's weighted mean); it is ``0.0`` when that denominator is 0 (every target
        ignored).  Soft targets: ``"mean"`` divides by the number of rows.
    ignore_index : int
        Hard labels equal to it contribute 0 and are left out of the mean.
    weight : array_like of shape (V,), optional
        Non-negative class weights.
    label_smoothing : float in [0, 1]
        Mixes the target with the uniform distribution: ``(1 - eps) * target + eps / V``.
    validate : bool
        With probabilities as ``target``, check first that each row is a distribution, as
        in :func:`entropy`; class indices are always checked.
    z_loss : float >= 0
        Coefficient of the auxiliary ``z_loss * lse**2`` per row (PaLM), returned separately:
        when it is not 0 (or with ``return_lse=True``) the result is a named tuple
        ``CrossEntropyOutput(loss, z_loss, lse)``, ``z_loss`` reduced like the loss (``"mean"``:
        over the non-ignored rows, unweighted; ignored rows contribute 0).  0 (the default)
        disables it and keeps the plain return value.
    softcap : float > 0, optional
        Logits become ``softcap * tanh(logits / softcap)`` first (Gemma); masked classes stay
        masked.  Applied block by block (O(block) extra memory).
    return_lse : bool
        Also return the per-row log-sum-exp (of the soft-capped logits) as ``.lse``.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> logits = np.array([[2.0, 0.0, 0.0]]); target = np.array([0])
    >>> round(float(fastdiv.cross_entropy(logits, target)), 6)
    0.239545
    """
    reduction = _checks.reduction(reduction)
    ignore = _checks.ignore_index(ignore_index)
    eps = _checks.label_smoothing(label_smoothing)
    z_coef = _checks.z_loss(z_loss)
    cap = _checks.softcap(softcap)
    options = bool(z_coef) or cap is not None or bool(return_lse)
    backend = _registry.resolve(backend, device=_gpu.any_on_device(logits, target, weight))
    if _checks.validate_flag(validate):
        t_arr = target if _gpu.any_on_device(target) else _checks.as_array("target", target)
        if _gpu.any_on_device(target) or t_arr.dtype.kind == "f" or t_arr.dtype == _checks._bfloat16():
            _validate(True, "probs", target=t_arr)          # (a device target: ValueError, host only)
    if backend == "cuda":
        if options:
            raise _registry.BackendUnavailable("z_loss, softcap and return_lse are not implemented for cuda yet")
        return _gpu.cross_entropy(logits, target, reduction, ignore, weight, eps)
    if options:
        from .evaluation import cross_entropy_with_options

        return cross_entropy_with_options(logits, target, reduction, ignore, weight, eps, backend, z_coef, cap,
                                          bool(return_lse))
    logits = _checks.float_array("logits", logits)
    target = _checks.as_array("target", target)
    lead, v = logits.shape[:-1], logits.shape[-1]

    if target.dtype.kind == "f" or target.dtype == _checks._bfloat16():
        _checks.compute_dtype("target", target.dtype)        # float128 is "f" too: name it
        if target.shape != logits.shape:
            raise ValueError(
                f"float target (probabilities) must have the same shape as logits {logits.shape}, got {target.shape}; "
                "class indices must be an integer array")
        dtype = _out_dtype(logits, target)
        w = np.ones(v, dtype) if weight is None else _checks.class_weight(weight, v, dtype)
        per_row = _per_row("ce_soft", backend, [logits, target], scalars=(1.0 - eps, eps / v), extra=(w,))
        if reduction == "mean" and per_row.size == 0:
            return per_row.dtype.type(0.0)        # like hard labels: a mean over no rows is 0.0
        return _finish(per_row, lead, reduction, per_row.dtype)

    t = _checks.class_targets(target, lead, v, ignore)
    dtype = _out_dtype(logits)
    w = np.ones(v, dtype) if weight is None else _checks.class_weight(weight, v, dtype)
    per_row = _per_row("ce_hard", backend, [logits], scalars=(ignore, eps), extra=(t, w))
    if reduction != "mean":
        return _finish(per_row, lead, reduction, per_row.dtype)
    counted = t != ignore
    if weight is None:
        denom = float(np.count_nonzero(counted))
    else:
        denom = float(np.sum(w[t[counted]], dtype=np.float64))
    if denom == 0:
        return dtype.type(0.0)
    return dtype.type(np.sum(per_row, dtype=np.float64) / denom)
