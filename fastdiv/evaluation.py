"""``fastdiv.evaluate``: every per-token evaluation metric in one read of the logits.

One kernel (registry op ``evaluate``, contract in ``fastdiv/_numba/evaluate.py``) writes a
small mergeable state per row -- max, scaled sums, the target's logit, the argmax, the number
of classes above the target and, with a reference, the KL sums -- and :func:`finish_rows`
turns states into results here, once for every backend and for merged vocabulary shards
(``fastdiv.states``).  Options (``softcap``, ``z_loss``, ``ignore_index``, reductions) are
implemented here once.

Top-k and ties: ``rank`` is the number of classes whose logit is *strictly* greater than the
target's, and the target is within the top k iff ``rank < k``: a class tied with the target
never pushes it out (optimistic ties, like ``torchmetrics``' ``top_k`` on distinct logits and
``>=``-based ``in_top_k`` of TensorFlow).  A masked target (``-inf``) is never within the top k,
and a row whose softmax is undefined (NaN or ``+inf`` logits) counts as a miss.

Softcap: ``softcap=c`` replaces the logits by ``c * tanh(x / c)`` before anything else
(Gemma), a masked class (``-inf``) staying masked.  The API applies it once for every CPU
backend (:func:`run_blocks`): one worker per thread writes blocks of its rows through a
compiled pass (``fastdiv._numba.softcap``) into a reused cache-sized buffer, which the
backend's kernel then reads from cache (O(block) extra memory per thread).  On cuda a device
pass does the same into a device buffer (``fastdiv._cuda.softcap``).
"""
from __future__ import annotations

import collections
import concurrent.futures
import os
import warnings
from collections.abc import Sequence

import numpy as np

from . import _checks, _gpu, _interop, _registry
from . import api as _api
from ._typing import ArrayLike, Backend

__all__ = ["evaluate", "Evaluation", "CrossEntropyOutput"]

#: columns of the float64 state the evaluate kernel writes (see fastdiv/_numba/evaluate.py)
M, S, W, XT, MZ, SZ, WXZ, WZX = range(8)
#: columns of its int64 companion
ARGMAX, COUNT, FLAGS = range(3)


# --------------------------------------------------------------------------- kernel driver


#: bytes of soft-capped logits per kernel call: each worker transforms a block of its rows,
#: then its kernel call reads it back from L2 (2 MiB per core on the CI Xeon; half of it, as
#: the transform's reads from memory share it)
SOFTCAP_BLOCK_BYTES = 1 << 20

_pools: dict = {}


def apply_softcap(block, cap, dtype, out=None):
    """``cap * tanh(block / cap)`` in ``dtype`` (semantics of ``fastdiv.reference.softcap_rows``:
    ``-inf`` stays ``-inf``, NaN stays NaN, ``+inf`` becomes ``cap``), one compiled pass
    (``fastdiv._numba.softcap``, single-threaded).  ``block``: 2-D, any strides; ``out``: a
    C-contiguous ``dtype`` array of its shape to write into (a new one when None), returned."""
    from ._numba.softcap import softcap_rows

    block = np.asarray(block)
    if block.dtype != dtype:
        block = block.astype(dtype)
    if out is None:
        out = np.empty(block.shape, dtype=dtype)
    if block.size:
        softcap_rows(block, dtype.type(1.0 / cap), dtype.type(cap), out)
    return out


def _pool(n):
    """The softcap workers' thread pool (per process: a forked child gets its own)."""
    key = (os.getpid(), n)
    if key not in _pools:
        _pools[key] = concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix="fastdiv-softcap")
    return _pools[key]


def run_blocks(arrays, dtype, softcap, fn):
    """Call ``fn(r0, r1, *blocks)`` over all rows of ``arrays`` (same leading shape), the
    first array soft-capped when ``softcap`` is set: C-contiguous native input goes whole
    (no softcap) or in blocks of ``BLOCK_BYTES`` (converted input), so memory stays O(block).

    With ``softcap`` the rows are split into one contiguous share per thread, each run by a
    worker thread that transforms ``SOFTCAP_BLOCK_BYTES`` of its rows at a time into its own
    reused buffer and calls ``fn`` on it at once, single-threaded (``fastdiv.api``'s per-thread
    thread count): the kernel reads the block back from that core's L2, so the logits are
    still read once from memory, and the workers never wait for each other (one parallel
    region per block and kernel would: on a busy machine each costs a scheduler time slice).
    ``fn`` calls from different workers touch disjoint rows."""
    nrows = int(np.prod(arrays[0].shape[:-1], dtype=np.int64))
    if nrows == 0:
        return
    if softcap is None:
        _api._run_rows(arrays, dtype, fn, nrows)
        return
    v = arrays[0].shape[-1]
    step = max(1, SOFTCAP_BLOCK_BYTES // (v * dtype.itemsize))
    nthreads = _api.get_num_threads()

    def share(r0, a0, a1, blocks):
        buf = np.empty((min(step, a1 - a0), v), dtype=dtype)
        for a in range(a0, a1, step):
            b = min(a + step, a1)
            capped = apply_softcap(blocks[0][a:b], softcap, dtype, out=buf[:b - a])
            fn(r0 + a, r0 + b, capped, *[blk[a:b] for blk in blocks[1:]])

    def worker(*args):
        _api._thread_local.nthreads = 1
        try:
            share(*args)
        finally:
            _api._thread_local.nthreads = None

    def call(r0, r1, *blocks):
        n = r1 - r0
        workers = min(nthreads, -(-n // step))
        if workers <= 1:
            share(r0, 0, n, blocks)
            return
        edges = [n * k // workers for k in range(workers + 1)]
        jobs = [_pool(nthreads).submit(worker, r0, a0, a1, blocks) for a0, a1 in zip(edges[:-1], edges[1:])]
        concurrent.futures.wait(jobs)            # all done before an error is raised
        for job in jobs:
            job.result()

    _api._run_rows(arrays, dtype, call, nrows)


def run_state(backend, x, target, reference=None, softcap=None, per_block=None):
    """The evaluate state of every row: ``(st float64[rows, 8], ix int64[rows, 3], dtype)``.

    ``target``: int64[rows]; values outside ``[0, V)`` mean "no target in this row".
    ``per_block(r0, r1, xblock)`` is also called on each (soft-capped) block, for callers that
    need something more from the same block while it is in cache (top-k candidates)."""
    arrays = [x] if reference is None else [x, reference]
    dtype = _api._out_dtype(*arrays)
    nrows = int(np.prod(x.shape[:-1], dtype=np.int64))
    st = np.full((nrows, 8), np.nan)
    ix = np.zeros((nrows, 3), dtype=np.int64)
    if nrows == 0:
        return st, ix, dtype
    kern = _registry.kernel(backend, "evaluate")
    nthreads = _api.get_num_threads()
    no_ref = np.empty((0, x.shape[-1]), dtype=dtype)

    def fn(r0, r1, xb, *rest):
        xb = _api._prepare(xb, dtype)
        zb = _api._prepare(rest[0], dtype) if rest else no_ref
        kern(xb, zb, target[r0:r1], st[r0:r1], ix[r0:r1], nthreads)
        if per_block is not None:
            per_block(r0, r1, xb)

    run_blocks(arrays, dtype, softcap, fn)
    return st, ix, dtype


# --------------------------------------------------------------------------- finish


def finish_rows(m, s, w, xt, counted, rank, argmax, topk, kl=None):
    """Per-row float64 results from state columns, with the row endings of fastdiv.reference.

    ``kl``: ``(mz, sz, wxz, wzx, flags)`` when there is a reference."""
    out = {}
    with np.errstate(all="ignore"):
        bad = np.isnan(m) | (m == np.inf)         # softmax undefined
        masked = m == -np.inf                     # every class masked
        fin = ~bad & ~masked
        logs = np.log(np.where(fin, s, 1.0))
        out["lse"] = np.where(fin, m + logs, m)
        out["entropy"] = np.where(bad, np.nan, np.where(masked, 0.0, logs - w / np.where(fin, s, 1.0)))
        nll = np.where(bad, np.nan, np.where(masked, np.inf, (m - xt) + logs))
        out["nll"] = np.where(counted, nll, 0.0)
        out["target_prob"] = np.where(counted, np.exp(-out["nll"]), 0.0)
        out["argmax"] = np.where(fin | (m == np.inf), argmax, -1)
        out["rank"] = np.where(counted, np.where(bad, -1, rank), 0)
        valid = counted & fin & (xt > -np.inf)
        for k in topk:
            out[f"correct@{k}"] = valid & (rank < k)
        if kl is not None:
            mz, sz, wxz, wzx, flags = kl
            bad_any = bad | np.isnan(mz) | (mz == np.inf)
            masked_z = mz == -np.inf
            fin_z = ~bad_any & ~masked_z
            logsz = np.log(np.where(fin_z, sz, 1.0))
            d_mr = wxz / np.where(fin, s, 1.0) - logs + logsz          # D(model || ref)
            d_mr = np.where(masked, 0.0, np.where(masked_z | (flags & 1 > 0), np.inf, d_mr))
            d_rm = wzx / np.where(fin_z, sz, 1.0) - logsz + logs       # D(ref || model)
            d_rm = np.where(masked_z, 0.0, np.where(masked | (flags & 2 > 0), np.inf, d_rm))
            out["kl_model_ref"] = np.where(bad_any, np.nan, d_mr)
            out["kl_ref_model"] = np.where(bad_any, np.nan, d_rm)
    return out


# --------------------------------------------------------------------------- the result


class Evaluation:
    """Per-row metrics and dataset-level aggregates of :func:`evaluate`.

    Aggregates (Python floats, computed in float64 over the rows whose target is not
    ``ignore_index``) are reachable as ``res["mean_nll"]``, ``res["perplexity"]``,
    ``res["accuracy@1"]`` (one key per k), ``res["mean_entropy"]``, ``res["mean_kl"]`` (with
    a reference), ``res["mean_z_loss"]`` (with ``z_loss``) and ``res["count"]``, and as
    attributes where the name allows (``res.mean_nll``, ``res.accuracy[1]``).  Per-row arrays
    (shape ``logits.shape[:-1]``, the input's float dtype) are attributes and keys too:
    ``nll``, ``lse``, ``entropy``, ``target_prob``, ``argmax``, ``rank``, ``counted``,
    ``correct[k]`` (``res["correct@k"]``), ``kl``, ``kl_model_ref``, ``kl_ref_model``,
    ``z_loss``.  Target-dependent values of ignored rows are 0 (``correct`` False).  On the
    cuda backend with device logits the per-row arrays are device arrays of the logits'
    library (torch tensor, CuPy array, numba device array).
    """

    def __init__(self, rows, aggregates, topk, host_rows=None):
        self._rows = rows
        self._host_rows = rows if host_rows is None else host_rows
        self._agg = aggregates
        self.topk = tuple(topk)
        self.accuracy = {k: aggregates[f"accuracy@{k}"] for k in self.topk}
        self.correct = {k: rows[f"correct@{k}"] for k in self.topk}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        for table in (self._agg, self._rows):
            if name in table:
                return table[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __getitem__(self, key):
        if key in self._agg:
            return self._agg[key]
        if key in self._rows:
            return self._rows[key]
        raise KeyError(f"{key!r}; aggregates: {list(self._agg)}, per-row: {list(self._rows)}")

    def __contains__(self, key):
        return key in self._agg or key in self._rows

    def keys(self):
        return list(self._agg) + list(self._rows)

    def aggregates(self):
        """The dataset-level numbers as a plain dict."""
        return dict(self._agg)

    def host(self, key):
        """The per-row array ``key`` as numpy: the array itself for host input, the host copy
        it was made from for device results.

        Parameters
        ----------
        key : str
            A per-row key: ``"nll"``, ``"correct@1"``, ...
        """
        return self._host_rows[key]

    def __repr__(self):
        parts = [f"rows={int(np.prod(self._rows['nll'].shape))}"]
        for key, value in self._agg.items():
            parts.append(f"{key}={value}" if key == "count" else f"{key}={value:.6g}")
        return f"Evaluation({', '.join(parts)})"


def row_results(rows, lead, dtype, topk, counted, kl_direction, z_coef):
    """Shape the per-row float64 results like the input and compute the aggregates."""
    n = int(np.count_nonzero(counted))
    if z_coef:
        with np.errstate(over="ignore", invalid="ignore"):
            rows["z_loss"] = np.where(counted, z_coef * rows["lse"] ** 2, 0.0)
    if "kl_model_ref" in rows:
        rows["kl"] = rows["kl_model_ref"] if kl_direction == "model||ref" else rows["kl_ref_model"]

    def mean(a):
        return float(np.sum(a[counted], dtype=np.float64) / n) if n else float("nan")

    agg = {"count": n, "mean_nll": mean(rows["nll"])}
    with np.errstate(over="ignore"):
        agg["perplexity"] = float(np.exp(agg["mean_nll"]))
    for k in topk:
        agg[f"accuracy@{k}"] = mean(rows[f"correct@{k}"].astype(np.float64))
    agg["mean_entropy"] = mean(rows["entropy"])
    if "kl" in rows:
        agg["mean_kl"] = mean(rows["kl"])
    if z_coef:
        agg["mean_z_loss"] = mean(rows["z_loss"])
    if n == 0:
        warnings.warn("evaluate: every target is ignore_index; the aggregates are NaN", RuntimeWarning,
                      stacklevel=3)
    shaped = {}
    for key, a in list(rows.items()) + [("counted", counted)]:
        a = a.reshape(lead)
        if a.dtype.kind == "f":
            a = a.astype(dtype)
        shaped[key] = a[()] if a.ndim == 0 else a     # 1-D logits: numpy scalars, as the API
    return Evaluation(shaped, agg, topk)


# --------------------------------------------------------------------------- evaluate


def _local_targets(target, lead, v, ignore):
    """Validated int64 targets with ``ignore_index`` rows mapped to -1 ("no target")."""
    t = _checks.class_targets(_checks.as_array("target", target), lead, v, ignore)
    counted = t != ignore
    return np.where(counted, t, -1), counted


@_interop.native_arrays
def evaluate(logits: ArrayLike, target: ArrayLike, *, topk: int | Sequence[int] = (1, 5),
             reference: ArrayLike | None = None, kl_direction: str = "ref||model",
             ignore_index: int = -100, z_loss: float = 0.0, softcap: float | None = None,
             backend: Backend = "auto") -> Evaluation:
    """Per-token evaluation of a model in one read of ``logits`` (and of ``reference``).

    Computes per row the negative log-likelihood of the target (the hard-label
    cross-entropy), the log-sum-exp, whether the target ranks within each ``k`` of ``topk``,
    the predictive entropy, the argmax, the target's probability and, with ``reference``,
    the KL divergence between the reference's and the model's distributions; and the
    dataset-level aggregates over the rows whose target is not ``ignore_index``.

    Parameters
    ----------
    logits : array_like, shape (..., V)
        The model's logits (float16, bfloat16, float32 or float64; ``-inf`` = masked class).
    target : array_like of int, shape ``logits.shape[:-1]``
        Class indices in ``[0, V)`` or ``ignore_index``.
    topk : int or sequence of int
        One accuracy per k.  ``rank`` = the number of classes with a logit strictly greater
        than the target's; the target is within the top k iff ``rank < k`` (ties never push
        it out).  A masked target, and a row with NaN or ``+inf`` logits, is a miss.
    reference : array_like, shape of ``logits``, optional
        Reference logits (teacher / frozen model); never soft-capped.
    kl_direction : {"ref||model", "model||ref"}
        Which KL is ``kl`` / ``mean_kl``: ``D(P_ref || P_model)`` (distillation's forward KL,
        the default) or ``D(P_model || P_ref)`` (RLHF's penalty).  Both are always available
        per row as ``kl_ref_model`` and ``kl_model_ref``.
    ignore_index : int
        Rows with this target are left out of every aggregate.
    z_loss : float >= 0
        Adds the per-row ``z_loss = coef * lse**2`` (PaLM's auxiliary loss) and its mean.
    softcap : float > 0, optional
        Logits become ``softcap * tanh(logits / softcap)`` first (masked classes stay masked).
    backend : {"auto", "numba", "cython", "numpy", "cuda"}

    Returns
    -------
    Evaluation
        ``res["mean_nll"]``, ``res["perplexity"]``, ``res["accuracy@k"]``,
        ``res["mean_entropy"]``, ``res["mean_kl"]``; per-row arrays ``res.nll`` etc.  With
        no counted row, the aggregates are NaN (with a RuntimeWarning).  The per-row arrays
        are numpy arrays for host input of any library (torch and JAX CPU tensors included);
        for device logits (cuda backend) they are device arrays of the logits' library,
        allocated by it on its current stream; the aggregates are Python numbers.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]]); target = np.array([0, 2])
    >>> res = fastdiv.evaluate(logits, target, topk=(1, 2))
    >>> res["accuracy@1"], res["accuracy@2"]
    (0.5, 1.0)
    >>> round(res.mean_nll, 6) == round(float(fastdiv.cross_entropy(logits, target)), 6)
    True
    """
    topk = _checks.topk(topk)
    ignore = _checks.ignore_index(ignore_index)
    kl_direction = _checks.kl_direction(kl_direction)
    z_coef = _checks.z_loss(z_loss)
    cap = _checks.softcap(softcap)
    backend = _registry.resolve(backend, device=_gpu.any_on_device(logits, target, reference))
    if backend == "cuda":
        return _evaluate_cuda(logits, target, topk, reference, kl_direction, ignore, z_coef, cap)
    x = _checks.float_array("logits", logits)
    z = None
    if reference is not None:
        z = _checks.float_array("reference", reference)
        _checks.same_shape("logits", x, "reference", z)
    lead, v = x.shape[:-1], x.shape[-1]
    t, counted = _local_targets(target, lead, v, ignore)
    st, ix, dtype = run_state(backend, x, t, z, cap)
    kl = None if z is None else (st[:, MZ], st[:, SZ], st[:, WXZ], st[:, WZX], ix[:, FLAGS])
    rows = finish_rows(st[:, M], st[:, S], st[:, W], st[:, XT], counted, ix[:, COUNT], ix[:, ARGMAX], topk, kl)
    return row_results(rows, lead, dtype, topk, counted, kl_direction, z_coef)


#: bytes of the device buffer the soft-capped logits of a block of rows are written to
SOFTCAP_DEVICE_BYTES = 64 << 20


def _evaluate_cuda(logits, target, topk, reference, kl_direction, ignore, z_coef, cap):
    """evaluate on the device: the per-row state is computed there (inputs read in place,
    numpy input copied over) and brought to the host (O(rows), one synchronisation), where it
    is finished like the CPU backends' states.  For device logits the per-row arrays go back
    to the device in the caller's library (allocated by it, on its stream); aggregates are
    Python numbers.  With ``softcap``, blocks of rows are soft-capped on the device into one
    reused buffer of about ``SOFTCAP_DEVICE_BYTES`` (``fastdiv._cuda.softcap``), which the
    evaluate kernel then reads."""
    call, res, lead = _evaluate_cuda_host(logits, target, topk, reference, kl_direction, ignore, z_coef, cap)
    if call.tag is None:                   # numpy in, numpy out
        return res
    on_device = {key: _to_caller(call, a, lead) for key, a in res._rows.items()}
    return Evaluation(on_device, res.aggregates(), topk, host_rows=res._rows)


def _to_caller(call, a, shape):
    """A host array (O(rows)) copied to the device as an array of the caller's library."""
    from ._cuda import interop

    host = np.ascontiguousarray(np.asarray(a).reshape(-1))
    native, view = interop.empty_like_lib(host.shape, host.dtype, call.tag, call.ensure_stream())
    view.copy_to_device(host, stream=call.ensure_stream())
    return call.result(native, view, shape)


def _evaluate_cuda_host(logits, target, topk, reference, kl_direction, ignore, z_coef, cap):
    """_evaluate_cuda's device pass: (the call, the Evaluation with host arrays, lead shape)."""
    from numba import cuda

    from ._cuda import interop
    from ._cuda.softcap import softcap_rows

    call = _gpu._Call()
    xv = call.view("logits", logits)
    if call.bf16:
        raise TypeError("evaluate on cuda reads float16, float32 or float64 logits; convert bfloat16 first")
    x2, lead = _gpu._rows_view(xv, "logits")
    rows, v = (int(d) for d in x2.shape)
    z2 = x2[:0]
    if reference is not None:
        zv = call.view("reference", reference)
        if tuple(zv.shape) != tuple(xv.shape) or np.dtype(zv.dtype) != np.dtype(xv.dtype) or call.bf16:
            raise ValueError(f"reference must have the shape and dtype of logits {tuple(xv.shape)} {xv.dtype}, "
                             f"got {tuple(zv.shape)} {zv.dtype}")
        z2, _ = _gpu._rows_view(zv, "reference")
    if interop.is_device_array(target):
        t_host = interop.to_device_view(_gpu._torch_contiguous(target))[0].copy_to_host()
    else:
        t_host = target
    t, counted = _local_targets(t_host, lead, v, ignore)
    dtype = np.dtype(np.float64) if np.dtype(xv.dtype) == np.float64 else np.dtype(np.float32)
    st = np.full((rows, 8), np.nan)
    ix = np.zeros((rows, 3), dtype=np.int64)
    if rows:
        stream = call.ensure_stream()
        st_d = cuda.to_device(st, stream=stream)
        ix_d = cuda.to_device(ix, stream=stream)
        t_d = cuda.to_device(t, stream=stream)
        kern = _registry.kernel("cuda", "evaluate")
        if cap is None:
            kern(x2, z2, t_d, st_d, ix_d, None, stream=stream)
        else:
            step = max(1, min(rows, SOFTCAP_DEVICE_BYTES // (v * dtype.itemsize)))
            _keep, buf = interop.empty_like_lib((step, v), dtype, call.tag, stream)
            for r0 in range(0, rows, step):
                r1 = min(r0 + step, rows)
                xb = buf[:r1 - r0]
                softcap_rows(x2[r0:r1], xb, cap, stream=stream)
                zb = z2[r0:r1] if reference is not None else z2
                kern(xb, zb, t_d[r0:r1], st_d[r0:r1], ix_d[r0:r1], None, stream=stream)
        st_d.copy_to_host(st, stream=stream)
        ix_d.copy_to_host(ix, stream=stream)
        stream.synchronize()
    kl = None if reference is None else (st[:, MZ], st[:, SZ], st[:, WXZ], st[:, WZX], ix[:, FLAGS])
    rows_ = finish_rows(st[:, M], st[:, S], st[:, W], st[:, XT], counted, ix[:, COUNT], ix[:, ARGMAX], topk, kl)
    with warnings.catch_warnings():        # cross_entropy's callers get no evaluate warning
        if not topk:
            warnings.simplefilter("ignore", RuntimeWarning)
        res = row_results(rows_, lead, dtype, topk, counted, kl_direction, z_coef)
    return call, res, lead


# --------------------------------------------------------------------------- cross_entropy options

#: ``cross_entropy(..., z_loss=c)`` / ``return_lse=True`` returns this named tuple: ``loss`` is
#: what ``cross_entropy`` returns without the options, ``z_loss`` the auxiliary term reduced
#: like the loss (``"mean"``: over the non-ignored rows, unweighted), ``lse`` the per-row
#: log-sum-exp (shape ``logits.shape[:-1]``) or None unless ``return_lse``.
CrossEntropyOutput = collections.namedtuple("CrossEntropyOutput", ["loss", "z_loss", "lse"])


def cross_entropy_with_options(logits, target, reduction, ignore, weight, eps, backend, z_coef, cap,
                               return_lse):
    """``cross_entropy`` with ``z_loss`` / ``softcap`` / ``return_lse`` (validated by the caller).

    Hard labels without label smoothing: one read through the evaluate kernel (the loss is
    ``w_t * nll``).  Otherwise the loss kernel and, when needed, the lse kernel run block by
    block (the second read of each block comes from cache when soft-capping, else from memory)."""
    x = _checks.float_array("logits", logits)
    tgt = _checks.as_array("target", target)
    lead, v = x.shape[:-1], x.shape[-1]
    nrows = int(np.prod(lead, dtype=np.int64))
    need_lse = bool(z_coef) or return_lse
    soft = tgt.dtype.kind == "f" or tgt.dtype == _checks._bfloat16()
    if soft:
        if tgt.shape != x.shape:
            raise ValueError(
                f"float target (probabilities) must have the same shape as logits {x.shape}, got {tgt.shape}; "
                "class indices must be an integer array")
        dtype = _api._out_dtype(x, tgt)
        w = np.ones(v, dtype) if weight is None else _checks.class_weight(weight, v, dtype)
        counted = np.ones(nrows, dtype=bool)
        arrays = [x, tgt]
    else:
        t = _checks.class_targets(tgt, lead, v, ignore)
        dtype = _api._out_dtype(x)
        w = np.ones(v, dtype) if weight is None else _checks.class_weight(weight, v, dtype)
        counted = t != ignore
        arrays = [x]
    loss = np.zeros(nrows, dtype=np.float64)
    lse = np.zeros(nrows, dtype=np.float64)
    if not soft and eps == 0:
        st, ix, _ = run_state(backend, x, np.where(counted, t, -1), None, cap)
        rows = finish_rows(st[:, M], st[:, S], st[:, W], st[:, XT], counted, ix[:, COUNT], ix[:, ARGMAX], ())
        loss = _hard_loss(rows["nll"], counted, t, w)
        lse = rows["lse"]
    else:
        def fn(r0, r1, xb, *rest):
            if soft:
                loss[r0:r1] = _api._per_row("ce_soft", backend, [xb, rest[0]], scalars=(1.0 - eps, eps / v, 1.0),
                                            extra=(w,))
            else:
                loss[r0:r1] = _api._per_row("ce_hard", backend, [xb], scalars=(ignore, eps), extra=(t[r0:r1], w))
            if need_lse:
                lse[r0:r1] = _api._per_row("lse", backend, [xb])

        run_blocks(arrays, dtype, cap, fn)
    return _ce_outputs(loss, lse, counted, lead, reduction, dtype, soft, weight, w, None if soft else t, z_coef,
                       return_lse)


def _hard_loss(nll, counted, t, w):
    """w_t * nll per row as ce_hard forms it: a zero-weight term is exactly 0, but NaN wins
    over a zero weight; ignored rows 0."""
    wt = w[np.where(counted, t, 0)].astype(np.float64)
    loss = np.where(np.isnan(nll), np.nan, np.where(wt == 0, 0.0, wt * nll))
    loss[~counted] = 0.0
    return loss


def _ce_outputs(loss, lse, counted, lead, reduction, dtype, soft, weight, w, t, z_coef, return_lse, to=None):
    """cross_entropy's result with the options from per-row float64 loss and lse; ``to``
    converts each returned array (the cuda path: to the caller's library)."""
    to = to or (lambda a, shape: a)
    out = _reduce_loss(loss, lead, reduction, dtype, soft, weight, w, counted, t)
    if not (z_coef or return_lse):
        return to(out, lead if reduction == "none" else ())
    z_out = _z_loss(z_coef, lse, counted, lead, reduction, dtype)
    lse_out = None
    if return_lse:
        lse_out = lse.reshape(lead).astype(dtype)
        lse_out = to(lse_out[()] if lse_out.ndim == 0 else lse_out, lead)
    return CrossEntropyOutput(to(out, lead if reduction == "none" else ()), to(z_out, lead if reduction == "none" else ()),
                              lse_out)


def _host_copy(a):
    """A device array's host copy (O(rows) or O(V) arrays only); anything else unchanged."""
    from . import _gpu
    from ._cuda import interop

    return interop.to_device_view(_gpu._torch_contiguous(a))[0].copy_to_host() if interop.is_device_array(a) else a


def cross_entropy_cuda_options(logits, target, reduction, ignore, weight, eps, z_coef, cap, return_lse):
    """``cross_entropy`` with ``z_loss`` / ``softcap`` / ``return_lse`` on cuda.  Class-index
    targets without label smoothing: the device evaluate pass (soft-capped on the device) gives
    each row's nll and lse; the O(rows) finish runs on the host as on the CPU backends, and
    for device logits every returned array goes back to the device in the caller's library.
    Probability targets or label smoothing (without softcap): _cross_entropy_cuda_two_reads."""
    from ._cuda import interop

    soft = interop.is_device_array(target) and str(getattr(target, "dtype", "")).split(".")[-1] in (
        "float16", "bfloat16", "float32", "float64")
    tgt = target if soft else _checks.as_array("target", _host_copy(target))
    soft = soft or tgt.dtype.kind == "f" or tgt.dtype == _checks._bfloat16()
    if soft or eps != 0:
        if cap is not None:
            raise _registry.BackendUnavailable(
                "on cuda, softcap takes class-index targets without label_smoothing; use a CPU backend for "
                "probability targets or label smoothing with softcap")
        return _cross_entropy_cuda_two_reads(logits, target, reduction, ignore, weight, eps, z_coef, return_lse)
    call, res, lead = _evaluate_cuda_host(logits, tgt, (), None, "model||ref", ignore, 0.0, cap)
    counted = np.asarray(res.host("counted")).reshape(-1)
    v = int(tuple(logits.shape)[-1])
    dtype = np.dtype(res.host("nll").dtype)
    w = np.ones(v, dtype) if weight is None else _checks.class_weight(_host_copy(weight), v, dtype)
    t = _checks.class_targets(tgt, lead, v, ignore)
    nll = np.asarray(res.host("nll"), dtype=np.float64).reshape(-1)
    lse = np.asarray(res.host("lse"), dtype=np.float64).reshape(-1)
    loss = _hard_loss(nll, counted, t, w)
    to = None if call.tag is None else (lambda a, shape: _to_caller(call, a, shape))
    return _ce_outputs(loss, lse, counted, lead, reduction, dtype, False, weight, w, t, z_coef, return_lse, to)


def _cross_entropy_cuda_two_reads(logits, target, reduction, ignore, weight, eps, z_coef, return_lse):
    """z_loss / return_lse on cuda for probability targets or label smoothing: the loss from the
    cuda cross-entropy kernel (every core option, reduced on the device) and the per-row lse
    from the cuda logsumexp kernel -- two reads of the logits; the z-loss is finished from the
    lse's O(rows) host copy and goes back to the device like the other results."""
    from . import _gpu

    loss = _gpu.cross_entropy(logits, target, reduction, ignore, weight, eps)
    lse = _gpu.per_row_op("lse", [("x", logits)], "none")
    call = _gpu._Call()
    call.view("logits", logits)
    lse_host = np.asarray(_host_copy(lse))
    lead = lse_host.shape
    t_host = np.asarray(_host_copy(target))
    counted = t_host.reshape(lead) != ignore if t_host.dtype.kind in "iu" else np.ones(lead, dtype=bool)
    z_out = _z_loss(z_coef, lse_host.astype(np.float64).reshape(-1), counted.reshape(-1), lead, reduction,
                    np.dtype(lse_host.dtype))
    if call.tag is not None:
        z_out = _to_caller(call, z_out, lead if reduction == "none" else ())
    return CrossEntropyOutput(loss, z_out, lse if return_lse else None)


def _z_loss(z_coef, lse, counted, lead, reduction, dtype):
    """The z-loss ``z_coef * lse**2`` of the counted rows (0 elsewhere), reduced like the loss
    (``"mean"``: over the counted rows, unweighted)."""
    with np.errstate(over="ignore", invalid="ignore"):
        z_rows = np.where(counted, z_coef * lse ** 2, 0.0) if z_coef else np.zeros(lse.shape[0])
    if reduction == "none":
        z_out = z_rows.reshape(lead).astype(dtype)
        return z_out[()] if z_out.ndim == 0 else z_out
    if reduction == "sum":
        return dtype.type(np.sum(z_rows))
    n = int(np.count_nonzero(counted))
    return dtype.type(np.sum(z_rows) / n) if n else dtype.type(0.0)


def _reduce_loss(loss, lead, reduction, dtype, soft, weight, w, counted, t):
    """cross_entropy's reductions (torch's weighted mean for hard labels; 0 when all ignored)."""
    if reduction == "none" or (soft and reduction == "mean"):
        return _api._finish(loss.astype(dtype), lead, reduction, dtype)
    if reduction == "sum":
        return dtype.type(np.sum(loss))
    denom = float(np.count_nonzero(counted)) if weight is None else float(np.sum(w[t[counted]], dtype=np.float64))
    return dtype.type(np.sum(loss) / denom) if denom else dtype.type(0.0)
