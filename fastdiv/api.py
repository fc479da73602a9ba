"""The public API: validate -> view as 2-D ``(rows, V)`` -> dispatch per-row kernels -> reduce.

Options (weights, label smoothing, ignore_index, reductions) are implemented here once;
backends only provide the per-row kernels listed in ``fastdiv._registry``.

Every public array function is wrapped by ``fastdiv._interop.native_arrays``: it takes numpy,
torch (CPU/CUDA), CuPy and JAX arrays and answers in the library of its first argument.
"""
from __future__ import annotations

import contextlib
import os
import threading
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
    "js_div",
    "topk_kl_div",
    "gaussian_kl",
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
#: per-thread override of the kernels' thread count: fastdiv.evaluation's softcap workers each
#: run their kernel calls single-threaded (``_thread_local.nthreads = 1``)
_thread_local = threading.local()


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
    return getattr(_thread_local, "nthreads", None) or _nthreads


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Context manager: ``with fastdiv.threads(1): ...`` runs the block with ``n`` threads.

    Parameters
    ----------
    n : int
        A positive number of threads; the previous count is restored on exit.

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


def _half_bits(backend, arrays):
    """The raw-bits dtype (uint16 / int16) in which to hand ``arrays`` to ``backend`` whole, or
    None: only when its kernels read half inputs (HALF_INPUTS) and every array has the same
    half dtype and is C-contiguous (contract v2 item 2).  Otherwise the rows are converted to
    float32 in blocks of BLOCK_BYTES."""
    bits = _checks.half_bits_dtype(arrays[0].dtype)
    if bits is None or not _registry.half_inputs(backend):
        return None
    if any(a.dtype != arrays[0].dtype or not a.flags.c_contiguous for a in arrays):
        return None
    return bits


def _per_row(op, backend, arrays, *, scalars=(), extra=None):
    """Per-row results (1-D, C order over the leading axes) of kernel ``op`` on ``arrays``.

    ``scalars`` follow the float arrays in the kernel's signature (``_registry``)."""
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
            kern(blocks[0], blocks[1], weight, *scalars, out[r0:r1], nthreads)
        elif op == "topk_kl":                    # arrays = [student logits, teacher log-probs]
            (idx,) = extra
            kern(idx[r0:r1], blocks[1], blocks[0], *scalars, out[r0:r1], nthreads)
        else:
            kern(*blocks, *scalars, out[r0:r1], nthreads)

    bits = _half_bits(backend, arrays)
    if bits is not None:
        arrays, dtype = [a.view(bits) for a in arrays], bits
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
        ``"auto"`` picks cython, then numba, then numpy for host arrays and cuda for device
        arrays; the environment variable ``FASTDIV_BACKEND`` overrides it.  A named backend
        that cannot run raises :class:`BackendUnavailable` saying why.

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
            temperature: float = 1.0, backend: Backend = "auto", validate: bool = False) -> Result:
    """Shannon entropy ``H(P) = -sum p log p`` (nats) over the last axis.

    Parameters
    ----------
    p : array_like, shape (..., V)
        The distribution, given as ``inputs``: ``"logits"`` (softmax taken), ``"log_probs"``
        or ``"probs"`` (taken literally, not renormalised; ``0 log 0 = 0``).
    inputs : {"logits", "log_probs", "probs"}
        How ``p`` is given (above).
    reduction : {"none", "mean", "sum"}
        ``"none"`` keeps one value per row (shape ``p.shape[:-1]``).
    temperature : float, positive and finite
        Logits are divided by it before the softmax: ``H(softmax(p / T))``.  Only for
        ``inputs="logits"``.
    validate : bool
        Check first that each row is a distribution: probabilities NaN-free, in [0, 1] and
        summing to 1 within 1e-4 (1e-2 for 16-bit inputs); log-probabilities free of NaN and
        +inf with a logsumexp within the same of 0 (``ValueError`` naming the argument and
        row).  Off by default: it reads the input once more.  Host arrays only.
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        As in :func:`logsumexp`.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> round(float(fastdiv.entropy(np.zeros(4))), 6)   # uniform over 4 classes: log 4
    1.386294
    """
    kind = _checks.input_kind(inputs)
    reduction = _checks.reduction(reduction)
    scale = _checks.temperature(temperature, kind)
    scalars = (scale,) if kind == "logits" else ()
    backend = _registry.resolve(backend, device=_gpu.any_on_device(p))
    _validate(validate, kind, p=p)
    if backend == "cuda":
        return _gpu.per_row_op(f"entropy_{kind}", [("p", p)], reduction, scalars=scalars)
    p = _checks.float_array("p", p)
    per_row = _per_row(f"entropy_{kind}", backend, [p], scalars=scalars)
    return _finish(per_row, p.shape[:-1], reduction, per_row.dtype)


@_interop.native_arrays
def kl_div(p: ArrayLike, q: ArrayLike, *, inputs: Inputs = "logits", reduction: Reduction = "mean",
           temperature: float = 1.0, backend: Backend = "auto", validate: bool = False) -> Result:
    """Kullback-Leibler divergence ``D(P || Q) = sum p (log p - log q)`` over the last axis.

    The argument order is the mathematical one (like ``scipy.special.rel_entr(p, q)``),
    not torch's reversed ``kl_div(input=log q, target=p)``.  Reverse KL is ``kl_div(q, p)``:
    the same kernel with its arguments swapped, so it runs at the same speed.

    Parameters
    ----------
    p, q : array_like, same shape (..., V)
        Both given as ``inputs``: ``"logits"``, ``"log_probs"`` or ``"probs"``.
    inputs : {"logits", "log_probs", "probs"}
        How ``p`` and ``q`` are given (log-probabilities and probabilities literally).
    reduction : {"none", "mean", "sum"}
        ``"mean"`` averages over rows (torch's ``"batchmean"`` for 2-D input).
    temperature : float, positive and finite
        Both logit arrays are divided by ``T`` before the softmax (the distillation
        convention).  The result is the plain divergence of the tempered distributions: no
        ``T**2`` factor is applied (that factor only rescales gradients, and fastdiv computes
        values, not gradients).  Only for ``inputs="logits"``.
    validate : bool
        Check first that each row of ``p`` and ``q`` is a distribution, as in :func:`entropy`.
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        As in :func:`logsumexp`.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> p = np.array([0.5, 0.5]); q = np.array([0.9, 0.1])
    >>> round(float(fastdiv.kl_div(p, q, inputs="probs")), 6)
    0.510826
    """
    kind = _checks.input_kind(inputs)
    reduction = _checks.reduction(reduction)
    scale = _checks.temperature(temperature, kind)
    scalars = (scale,) if kind == "logits" else ()
    backend = _registry.resolve(backend, device=_gpu.any_on_device(p, q))
    _validate(validate, kind, p=p, q=q)
    if backend == "cuda":
        return _gpu.per_row_op(f"kl_{kind}", [("p", p), ("q", q)], reduction, scalars=scalars)
    p = _checks.float_array("p", p)
    q = _checks.float_array("q", q)
    _checks.same_shape("p", p, "q", q)
    per_row = _per_row(f"kl_{kind}", backend, [p, q], scalars=scalars)
    return _finish(per_row, p.shape[:-1], reduction, per_row.dtype)


@_interop.native_arrays
def cross_entropy(logits: ArrayLike, target: ArrayLike, *, reduction: Reduction = "mean",
                  ignore_index: int = -100, weight: ArrayLike | None = None,
                  label_smoothing: float = 0.0, temperature: float = 1.0, backend: Backend = "auto",
                  validate: bool = False, z_loss: float = 0.0, softcap: float | None = None,
                  return_lse: bool = False) -> Result:
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
    temperature : float, positive and finite
        Soft targets only: the logits are divided by ``T`` before the softmax (the target
        probabilities are used as given).  No ``T**2`` factor is applied: fastdiv computes
        values, not gradients.  With class-index targets it must be 1.0.
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
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        As in :func:`logsumexp`.

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
    scale = _checks.temperature(temperature)
    z_coef = _checks.z_loss(z_loss)
    cap = _checks.softcap(softcap)
    options = bool(z_coef) or cap is not None or bool(return_lse)
    if options and scale != 1.0:
        raise ValueError("temperature cannot be combined with z_loss, softcap or return_lse")
    backend = _registry.resolve(backend, device=_gpu.any_on_device(logits, target, weight))
    if _checks.validate_flag(validate):
        t_arr = target if _gpu.any_on_device(target) else _checks.as_array("target", target)
        if _gpu.any_on_device(target) or t_arr.dtype.kind == "f" or t_arr.dtype == _checks._bfloat16():
            _validate(True, "probs", target=t_arr)          # (a device target: ValueError, host only)
    if backend == "cuda":
        if options:
            from .evaluation import cross_entropy_cuda_options

            return cross_entropy_cuda_options(logits, target, reduction, ignore, weight, eps, z_coef, cap,
                                              bool(return_lse))
        return _gpu.cross_entropy(logits, target, reduction, ignore, weight, eps, scale)
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
        per_row = _per_row("ce_soft", backend, [logits, target], scalars=(1.0 - eps, eps / v, scale), extra=(w,))
        if reduction == "mean" and per_row.size == 0:
            return per_row.dtype.type(0.0)        # like hard labels: a mean over no rows is 0.0
        return _finish(per_row, lead, reduction, per_row.dtype)

    if scale != 1.0:
        raise ValueError(f"temperature applies to soft (probability) targets; with class indices it must be 1.0, "
                         f"got {temperature!r}")
    t, n_ignored = _checks.class_targets(target, lead, v, ignore, count_ignored=True)
    dtype = _out_dtype(logits)
    w = np.ones(v, dtype) if weight is None else _checks.class_weight(weight, v, dtype)
    per_row = _per_row("ce_hard", backend, [logits], scalars=(ignore, eps), extra=(t, w))
    if reduction != "mean":
        return _finish(per_row, lead, reduction, per_row.dtype)
    if weight is None:
        denom = float(t.size - n_ignored)
    else:
        denom = float(np.sum(w[t[t != ignore]] if n_ignored else w[t], dtype=np.float64))
    if denom == 0:
        return dtype.type(0.0)
    return dtype.type(np.sum(per_row, dtype=np.float64) / denom)


# --------------------------------------------------------------------------- divergence family (issue 5)


@_interop.native_arrays
def js_div(p: ArrayLike, q: ArrayLike, *, beta: float = 0.5, inputs: Inputs = "logits",
           temperature: float = 1.0, reduction: Reduction = "mean", backend: Backend = "auto",
           validate: bool = False) -> Result:
    """Generalized Jensen-Shannon divergence over the last axis (nats).

    For ``0 < beta < 1``::

        JS_beta(P, Q) = beta * D(P || M) + (1 - beta) * D(Q || M),   M = beta * P + (1 - beta) * Q

    It is symmetric for ``beta = 0.5`` and bounded by ``log 2`` there (in general by
    ``-beta log beta - (1 - beta) log(1 - beta)``); ``JS_beta(P, Q) = JS_{1-beta}(Q, P)``.
    Both terms vanish as ``beta`` tends to 0 or 1, like ``beta (1 - beta)``; the endpoints are
    defined as the limits of ``JS_beta / (beta (1 - beta))``, which are the two KLs (the
    convention of Liger-Kernel's JSD):

    * ``beta = 0``: ``D(P || Q)`` -- forward KL, ``kl_div(p, q)``;
    * ``beta = 1``: ``D(Q || P)`` -- reverse KL, ``kl_div(q, p)``.

    Parameters
    ----------
    p, q : array_like, same shape (..., V)
        Both given as ``inputs``: ``"logits"``, ``"log_probs"`` or ``"probs"`` (the latter two
        taken literally).
    beta : float in [0, 1]
    inputs : {"logits", "log_probs", "probs"}
        How ``p`` and ``q`` are given (above).
    temperature : float, positive and finite
        Both logit arrays are divided by ``T`` before the softmax; no ``T**2`` factor (fastdiv
        computes values, not gradients).  Only for ``inputs="logits"``.
    reduction : {"mean", "sum", "none"}
    validate : bool
        Check first that each row of ``p`` and ``q`` is a distribution, as in :func:`entropy`.
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        As in :func:`logsumexp`.

    Notes
    -----
    From logits, each row pair is read once from memory: a first pass forms both
    log-normalisers, a second computes the terms from cache.  A row of P whose classes are
    all masked (``-inf``) is an empty measure; the formula then gives
    ``-(1 - beta) log(1 - beta)`` (and symmetrically for Q).  NaN in a row gives NaN for it;
    a ``+inf`` logit makes its row's softmax undefined: NaN.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> p = np.array([1.0, 0.0]); q = np.array([0.0, 1.0])
    >>> round(float(fastdiv.js_div(p, q, inputs="probs")), 6)   # disjoint supports: log 2
    0.693147
    >>> x = np.array([2.0, 0.0, -1.0]); z = np.array([0.0, 1.0, 0.5])
    >>> bool(np.isclose(fastdiv.js_div(x, z, beta=0.0), fastdiv.kl_div(x, z)))
    True
    """
    kind = _checks.input_kind(inputs)
    reduction = _checks.reduction(reduction)
    b = _checks.beta(beta)
    scale = _checks.temperature(temperature, kind)
    if b == 0.0 or b == 1.0:                       # the limits: forward / reverse KL
        named = [("p", p), ("q", q)] if b == 0.0 else [("q", q), ("p", p)]
        op, scalars = f"kl_{kind}", ((scale,) if kind == "logits" else ())
    else:
        named = [("p", p), ("q", q)]
        op, scalars = f"js_{kind}", ((b, scale) if kind == "logits" else (b,))
    backend = _registry.resolve(backend, device=_gpu.any_on_device(p, q))
    _validate(validate, kind, p=p, q=q)
    if backend == "cuda":
        return _gpu.per_row_op(op, named, reduction, scalars=scalars)
    arrays = [_checks.float_array(name, a) for name, a in named]
    _checks.same_shape(named[0][0], arrays[0], named[1][0], arrays[1])
    per_row = _per_row(op, backend, arrays, scalars=scalars)
    return _finish(per_row, arrays[0].shape[:-1], reduction, per_row.dtype)


@_interop.native_arrays
def topk_kl_div(teacher_indices: ArrayLike, teacher_logprobs: ArrayLike, student_logits: ArrayLike, *,
                tail: str = "renormalize", reduction: Reduction = "mean", backend: Backend = "auto") -> Result:
    """KL divergence ``D(P_teacher || Q_student)`` from a teacher stored as its top-k classes.

    Offline distillation datasets keep, per token, the teacher's k most likely classes and
    their log-probabilities; the student gives full logits.  ``Q = softmax(student_logits)``
    over all V classes; the teacher's missing mass ``r = 1 - sum_i p_i`` is handled by ``tail``:

    * ``"renormalize"``: the teacher is renormalized over its k classes,
      ``p~_i = p_i / sum_j p_j``, and is 0 elsewhere:
      ``sum_i p~_i (log p~_i - log q_i)``.  (``teacher_logprobs`` may then be any log-scores
      of the k classes.)  A row whose log-probabilities are all ``-inf`` gives 0.
    * ``"bucket"``: the other ``V - k`` classes are merged into one "tail" class on both
      sides: ``sum_i p_i (log p_i - log q_i) + r log(r / s)``, ``r = max(0, 1 - sum_i p_i)``,
      ``s`` = the student's total probability of the tail classes (computed directly from
      them, not as ``1 - sum q_i``, so a confident student does not cancel it away).  With
      ``k = V`` there is no tail class and no tail term.  The teacher's listed probabilities
      of a row must not add up to more than ``1 + 1e-3``.

    Either way, ``k = V`` equals the dense ``kl_div`` of the teacher against the student.

    Parameters
    ----------
    teacher_indices : array_like of int, shape (..., k)
        Distinct classes in ``[0, V)`` per row (any order).
    teacher_logprobs : array_like of float, shape (..., k)
        Their log-probabilities (``-inf`` for probability 0).
    student_logits : array_like, shape (..., V)
    tail : {"renormalize", "bucket"}
    reduction : {"mean", "sum", "none"}
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        As in :func:`logsumexp`.

    Notes
    -----
    Each student row is read once: the kernels walk the segments between the (sorted)
    teacher classes to form the tail's log-sum-exp, then gather the k classes.  A teacher
    probability > 0 on a class the student masks (``-inf``) gives ``+inf``, as does a tail
    mass ``r > 0`` against a student tail of probability 0.  NaN in a row gives NaN.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> student = np.array([2.0, 1.0, 0.0, -1.0])
    >>> teacher = np.log(np.array([0.7, 0.2, 0.06, 0.04]))
    >>> idx = np.array([0, 1]); top = teacher[idx]
    >>> round(float(fastdiv.topk_kl_div(idx, top, student)), 6)
    0.132706
    >>> round(float(fastdiv.topk_kl_div(idx, top, student, tail="bucket")), 6)
    0.007045
    """
    tail = _checks.tail(tail)
    reduction = _checks.reduction(reduction)
    backend = _registry.resolve(backend, device=_gpu.any_on_device(teacher_indices, teacher_logprobs,
                                                                     student_logits))
    if backend == "cuda":
        return _gpu.topk_kl(teacher_indices, teacher_logprobs, student_logits, tail, reduction)
    z = _checks.float_array("student_logits", student_logits)
    idx = _checks.as_array("teacher_indices", teacher_indices)
    t = _checks.as_array("teacher_logprobs", teacher_logprobs)
    _checks.compute_dtype("teacher_logprobs", t.dtype)
    lead, v = z.shape[:-1], z.shape[-1]
    idx, t = _checks.topk_teacher(idx, t, lead, v, tail)
    per_row = _per_row("topk_kl", backend, [z, t], scalars=(int(tail == "bucket"),), extra=(idx,))
    return _finish(per_row, lead, reduction, per_row.dtype)


def _real_array(name, a):
    a = _checks.as_array(name, a)
    if a.dtype.kind not in "fiu" and a.dtype != _checks._bfloat16():
        raise TypeError(f"{name} must be a real number or array, got dtype {a.dtype}")
    return a


@_interop.native_arrays
def gaussian_kl(mu: ArrayLike, logvar: ArrayLike, mu_prior: ArrayLike = 0.0, logvar_prior: ArrayLike = 0.0, *,
                reduction: Reduction = "mean") -> Result:
    """KL divergence between diagonal Gaussians, summed over the last axis: the VAE latent term.

    ``KL(N(mu, diag(exp(logvar))) || N(mu_prior, diag(exp(logvar_prior))))``, per element::

        (exp(d) - 1 - d + (mu - mu_prior)**2 * exp(-logvar_prior)) / 2,   d = logvar - logvar_prior

    evaluated in float64 from differences of log-variances: ``exp(d) - 1 - d`` by its Taylor
    series for ``|d| < 0.5`` (no cancellation near ``d = 0``) and ``expm1(d) - d`` beyond, and
    the mean term as ``((mu - mu_prior) * exp(-logvar_prior / 2))**2``.  So ``|logvar|`` in the
    hundreds neither overflows (``exp(logvar)`` is never formed) nor cancels; a result is
    ``+inf`` only if the true value overflows float64 (or a variance is 0).

    It is elementwise, so it runs in numpy (no compiled kernel): blocks of rows are
    converted to float64 in turn, O(block) extra memory.

    Parameters
    ----------
    mu, logvar : array_like, same shape (..., D)
        Mean and log-variance of the posterior.
    mu_prior, logvar_prior : float or array_like broadcastable to ``mu.shape``
        The prior (default: standard normal).
    reduction : {"mean", "sum", "none"}
        Over rows (the sum over the last axis is always taken).

    Returns
    -------
    float32 for float16 / bfloat16 / float32 input, float64 for float64 input.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> round(float(fastdiv.gaussian_kl(np.array([1.0, 0.0]), np.array([0.0, np.log(2.0)]))), 6)
    0.653426
    """
    reduction = _checks.reduction(reduction)
    mu = _checks.float_array("mu", mu)
    logvar = _checks.float_array("logvar", logvar)
    _checks.same_shape("mu", mu, "logvar", logvar)
    priors = []
    wide = False           # a float64 prior array widens the result, a Python float does not (NEP 50)
    for name, a in (("mu_prior", mu_prior), ("logvar_prior", logvar_prior)):
        weak = type(a) in (int, float)
        a = _real_array(name, a)
        wide = wide or (not weak and a.dtype == np.float64)
        try:
            priors.append(np.broadcast_to(a, mu.shape))
        except ValueError:
            raise ValueError(f"{name} of shape {a.shape} does not broadcast to mu's shape {mu.shape}") from None
    dtype = np.dtype(np.float64) if wide else _out_dtype(mu, logvar)
    lead, v = mu.shape[:-1], mu.shape[-1]
    nrows = int(np.prod(lead, dtype=np.int64))
    arrays = [a.reshape(1, v) if not lead else a for a in (mu, logvar, *priors)]
    per_row = np.empty(nrows, dtype=np.float64)
    step = _rows_per_block(v, 8 * 4)
    from .reference import gaussian_kl_elements
    for r0 in range(0, nrows, step):
        r1 = min(r0 + step, nrows)
        where = np.unravel_index(np.arange(r0, r1), lead) if lead else (np.zeros(1, np.intp),)
        per_row[r0:r1] = np.sum(gaussian_kl_elements(*(a[where] for a in arrays)), axis=1)
    return _finish(per_row.astype(dtype), lead, reduction, dtype)
