"""fastdiv on dask arrays: lazy per-row metrics and reductions over chunked data.

``fastdiv.dask.cross_entropy``, ``kl_div``, ``entropy``, ``logsumexp`` and ``evaluate`` take
dask arrays (or anything ``dask.array.asarray`` takes) with the class axis last, chunked along
rows and, optionally, along the class axis (the vocabulary), and return lazy results: per row
for ``reduction="none"``, a 0-d array for ``"mean"`` / ``"sum"``; ``evaluate`` returns a
:class:`DaskEvaluation`.  Reductions add per-row values in float64 across chunks and divide
once, with exactly the in-memory denominators (cross-entropy's weighted mean over the rows
whose target is not ``ignore_index``; NaN when every target is ignored, ``fastdiv.reduce``'s
rule), so results equal the
in-memory functions' up to float64 summation order.

Class axis in one chunk: each chunk of rows is computed by the in-memory function on one
worker (one read of the chunk), so per-row values are bit-identical to the in-memory ones.
Class axis split into several chunks: each (row chunk, vocabulary chunk) block is read once
into a mergeable per-row state of ``fastdiv.states`` with the block's class offset, the states
of a row chunk are merged pairwise along the vocabulary (a tree: neighbours first) and the
last one is finished into per-row values, equal to the in-memory ones up to rounding.  That
path reads logits only: hard-label cross-entropy without ``weight`` or ``label_smoothing``,
``inputs="logits"`` for ``entropy`` and ``kl_div``; other options raise a ValueError naming
the argument (rechunk the class axis whole for them).

Each task uses fastdiv's
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
>>> split = da.from_array(x, chunks=(256, 20))           # the vocabulary in 3 chunks too
>>> bool(np.isclose(fastdiv.dask.cross_entropy(split, t).compute(), fastdiv.cross_entropy(x, t), rtol=1e-12))
True
"""
from __future__ import annotations

import functools
import warnings

import numpy as np

try:
    import dask.array as da
except ImportError as exc:
    raise ImportError(f"fastdiv.dask needs dask: pip install 'fastdiv[dask]' ({exc})") from None

from . import _checks, api, evaluation, execute, plan as _plan, reduce
from . import states as _states
from ._typing import ArrayLike, Backend, Inputs, Reduction

__all__ = ["logsumexp", "entropy", "kl_div", "cross_entropy", "evaluate", "DaskEvaluation", "compare"]


def _dask(name: str, a: object) -> da.Array:
    if isinstance(a, da.Array):
        return a
    try:
        return da.asarray(a)
    except Exception as exc:
        raise TypeError(f"{name} could not be made a dask array: {exc}") from None


def _split(*arrays: da.Array) -> bool:
    """Whether any array has its class axis in several chunks (the mergeable-states path)."""
    return any(len(a.chunks[-1]) > 1 for a in arrays)


def _float(name: str, a: object) -> da.Array:
    a = _checks.class_axis(name, _dask(name, a))
    _checks.compute_dtype(name, a.dtype)
    return a


def _unsupported_split(name: str, what: str) -> ValueError:
    return ValueError(f"{name}: {what} is not supported when the class (last) axis is split into chunks (the "
                      f"mergeable per-row states do not carry it); rechunk the class axis whole with "
                      f"x.rechunk({{-1: -1}})")


_out_dtype = execute.out_dtype


def _block(fn, kwargs, *blocks):
    """Per-row values of one chunk of rows (the task each worker runs).  The class axis is
    one chunk, which dask hands over as a one-block list (not concatenated: no copy)."""
    return np.asarray(fn(*[b[0] if isinstance(b, list) else b for b in blocks], **kwargs))


def _per_row(fn, arrays, dtype, kwargs, extra=()):
    """Lazy per-row results of ``fn(*arrays, *extra, **kwargs)`` over aligned row chunks.

    ``arrays`` have the class axis last (contracted); ``extra`` are arrays of the leading shape.
    """
    ndim = arrays[0].ndim
    ind = tuple(range(ndim))
    args = [x for a in arrays for x in (a, ind)] + [x for e in extra for x in (e, ind[:-1])]
    return da.blockwise(functools.partial(_block, fn, kwargs), ind[:-1], *args, dtype=dtype, concatenate=False,
                        meta=np.empty((0,) * (ndim - 1), dtype))


def _reduce(per_row, reduction, dtype, denominator=None):
    return reduce.lazy_finish(per_row, reduction, dtype, da, denominator)


# --------------------------------------------------------------------------- vocabulary-split arrays
#
# Each (row chunk, vocabulary chunk) block becomes the fastdiv.states.RowState of its classes
# (one read of the block, with the block's class offset), neighbouring vocabulary chunks are
# merged pairwise (a tree of depth ceil(log2(#vocabulary chunks)), each merge O(rows) and
# exact up to rounding), and the one state left per row chunk is finalized into per-row
# results.  Between tasks a state travels as a float64 array of shape (lead..., width): the
# columns _COLS, the K top-k candidates, then with a reference _REF_COLS.  Integers (argmax,
# flags) are exact in float64 (< 2**53).  Class ranges are not stored: each block's range is
# known when the graph is built and given to its tasks.

_COLS = ("m", "s", "w", "xt", "has_target", "counted", "argmax")
_REF_COLS = _states._REF_FIELDS
_BOOL_FIELDS = ("counted",)
_INT_FIELDS = ("argmax", "rank")


def _width(k: int, reference: bool) -> int:
    return len(_COLS) + k + (len(_REF_COLS) if reference else 0)


def _pack(st: _states.RowState, width: int) -> np.ndarray:
    cols = [np.asarray(getattr(st, c), np.float64).reshape(-1, 1) for c in _COLS] + [st.top_values]
    if st.has_reference:
        cols += [np.asarray(getattr(st, c), np.float64).reshape(-1, 1) for c in _REF_COLS]
    return np.concatenate(cols, axis=1).reshape(st.lead + (width,))


def _unpack(block: np.ndarray, k: int, reference: bool, dtype: str, start: int, stop: int) -> _states.RowState:
    b = block.reshape(-1, block.shape[-1])
    f = {c: b[:, i] for i, c in enumerate(_COLS)}
    f.update(has_target=f["has_target"] != 0, counted=f["counted"] != 0, argmax=f["argmax"].astype(np.int64))
    n0 = len(_COLS)
    f["top_values"] = b[:, n0:n0 + k]
    if reference:
        f.update({c: b[:, n0 + k + i] for i, c in enumerate(_REF_COLS)})
        f["flags"] = f["flags"].astype(np.int64)
    return _states.RowState(**f, lead=block.shape[:-1], dtype=dtype, ranges=[(start, stop)])


def _state_task(xb, *rest, offset, has_target, k, ignore, backend):
    """Packed state of one block of classes [offset, offset + V_block) (runs on a worker)."""
    tb = rest[0] if has_target else None
    zb = rest[-1] if len(rest) > has_target else None
    st = _states.row_state(xb, offset=offset, target=tb, topk=(k,) if k else (), reference_shard=zb,
                           ignore_index=ignore, backend=backend)
    return _pack(st, _width(k, zb is not None))


def _merge_task(left, right, *, k, reference, dtype, ranges):
    """Packed state of two neighbouring class ranges ``ranges = (start, middle, stop)``."""
    a, mid, b = ranges
    merged = _states.merge(_unpack(left, k, reference, dtype, a, mid), _unpack(right, k, reference, dtype, mid, b))
    return _pack(merged, left.shape[-1])


#: the start of the empty-mean warning, silenced in tasks (a chunk of ignored rows is normal)
_EMPTY = reduce.EMPTY_MESSAGE.split(" (")[0]


def _table(res, fields):
    """The per-row ``fields`` of an Evaluation as one float64 array (lead..., len(fields))."""
    first = np.asarray(res[fields[0]])
    out = np.empty(first.shape + (len(fields),), np.float64)
    for j, name in enumerate(fields):
        out[..., j] = res[name]
    return out


def _evaluate_task(xb, tb, *rest, fields, kwargs):
    """Per-row results of one row chunk with the class axis whole: in-memory evaluate."""
    with warnings.catch_warnings():            # a chunk of ignored rows is normal here
        warnings.filterwarnings("ignore", message=_EMPTY, category=RuntimeWarning)
        return _table(evaluation.evaluate(xb, tb, reference=rest[0] if rest else None, **kwargs), fields)


def _finish_task(block, *, k, reference, dtype, v, fields, topk, kl_direction, z_loss):
    """Per-row results (lead..., len(fields)) in float64 from a state covering [0, v)."""
    st = _unpack(block, k, reference, dtype, 0, v)
    with warnings.catch_warnings():            # a chunk of ignored rows is normal here
        warnings.filterwarnings("ignore", message=_EMPTY, category=RuntimeWarning)
        res = _states.finalize(st, topk=topk, kl_direction=kl_direction, z_loss=z_loss, n_classes=v)
    return _table(res, fields)


def _via_states(x, fields, *, target=None, reference=None, topk=(), k=0, ignore=-100, backend="auto",
                kl_direction="ref||model", z_loss=0.0):
    """Lazy per-row ``{field: dask array}`` of ``fastdiv.states.finalize`` over the blocks of
    ``x`` (any chunking of the class axis); float fields in ``x``'s compute dtype.  ``k``
    top-k candidates are kept per row (0: none, and no extra pass over each block)."""
    nd = x.ndim
    ind = tuple(range(nd))
    has_ref = reference is not None
    if has_ref:
        reference = reference.rechunk(x.chunks)
    dtype = _out_dtype(x, *([reference] if has_ref else []))
    width = _width(k, has_ref)
    meta = np.empty((0,) * nd, np.float64)
    bounds = np.cumsum((0,) + tuple(x.chunks[-1])).tolist()
    level = []                                  # (lazy packed state, (start, stop)) per vocabulary chunk
    for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        args = [x.blocks[..., j], ind]
        if target is not None:
            args += [target, ind[:-1]]
        if has_ref:
            args += [reference.blocks[..., j], ind]
        task = functools.partial(_state_task, offset=a, has_target=target is not None, k=k, ignore=ignore,
                                 backend=backend)
        level.append((da.blockwise(task, ind, *args, dtype=np.float64, adjust_chunks={ind[-1]: width},
                                   meta=meta), (a, b)))
    common = dict(k=k, reference=has_ref, dtype=dtype.name)
    while len(level) > 1:                       # pairwise: neighbours only, so ranges stay contiguous
        nxt = []
        for i in range(0, len(level) - 1, 2):
            (sa, (a, mid)), (sb, (_, b)) = level[i], level[i + 1]
            task = functools.partial(_merge_task, ranges=(a, mid, b), **common)
            nxt.append((da.map_blocks(task, sa, sb, dtype=np.float64, meta=meta), (a, b)))
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    state = level[0][0]
    task = functools.partial(_finish_task, v=x.shape[-1], fields=tuple(fields), topk=tuple(topk),
                             kl_direction=kl_direction, z_loss=z_loss, **common)
    table = da.map_blocks(task, state, dtype=np.float64, chunks=state.chunks[:-1] + ((len(fields),),), meta=meta)
    return _columns(table, fields, dtype)


def _columns(table, fields, dtype):
    """``{field: lazy per-row array}`` from a float64 table (lead..., len(fields))."""
    out = {}
    for j, name in enumerate(fields):
        col = table[..., j]
        if name in _BOOL_FIELDS or name.startswith("correct@"):
            out[name] = col.astype(bool)
        elif name in _INT_FIELDS:
            out[name] = col.astype(np.int64)
        else:
            out[name] = col.astype(dtype)
    return out


def logsumexp(x: ArrayLike, *, backend: Backend = "auto") -> da.Array:
    """Lazy :func:`fastdiv.logsumexp` of a dask array (any row and class chunks): one value per row.

    Parameters
    ----------
    x : dask array, shape (..., V)
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        The backend each task runs, as in :func:`fastdiv.logsumexp`.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastdiv.dask
    >>> x = da.from_array(np.log(np.array([[1.0, 2.0, 5.0], [1.0, 1.0, 2.0]])), chunks=(1, 3))
    >>> np.round(fastdiv.dask.logsumexp(x).compute(), 6)    # log 8, log 4
    array([2.079442, 1.386294])
    """
    x = _float("x", x)
    if _split(x):
        return _via_states(x, ["lse"], backend=backend)["lse"]
    return _per_row(api.logsumexp, [x], _out_dtype(x), {"backend": backend})


def entropy(p: ArrayLike, *, inputs: Inputs = "logits", reduction: Reduction = "none",
            backend: Backend = "auto") -> da.Array:
    """Lazy :func:`fastdiv.entropy` of a dask array (any row and class chunks; split class axis: logits only).

    Parameters
    ----------
    p : dask array, shape (..., V)
    inputs, reduction
        As in :func:`fastdiv.entropy`.
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        The backend each task runs, as in :func:`fastdiv.logsumexp`.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastdiv.dask
    >>> p = da.zeros((6, 4), chunks=(4, 4))                  # uniform rows: log 4 each
    >>> round(float(fastdiv.dask.entropy(p, reduction="mean").compute()), 6)
    1.386294
    """
    plan = _plan.entropy(inputs=inputs, reduction=reduction, temperature=1.0, backend=backend, validate=False, p=p,
                         resolve=False)
    kind, reduction = plan.inputs, plan.reduction
    p = _float("p", p)
    dtype = _out_dtype(p)
    if _split(p):
        if kind != "logits":
            raise _unsupported_split("inputs", f"inputs={kind!r}")
        return _reduce(_via_states(p, ["entropy"], backend=backend)["entropy"], reduction, dtype)
    per_row = _per_row(api.entropy, [p], dtype, {"inputs": kind, "reduction": "none", "backend": backend})
    return _reduce(per_row, reduction, dtype)


def kl_div(p: ArrayLike, q: ArrayLike, *, inputs: Inputs = "logits", reduction: Reduction = "mean",
           backend: Backend = "auto") -> da.Array:
    """Lazy :func:`fastdiv.kl_div` ``D(P || Q)`` of two dask arrays of the same shape.

    Their row chunks may differ (they are aligned); ``"mean"`` averages over rows.  With a
    class axis split into chunks (``inputs="logits"`` only), ``q`` is rechunked like ``p``.

    Parameters
    ----------
    p, q : dask arrays, same shape (..., V)
    inputs, reduction
        As in :func:`fastdiv.kl_div`.
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        The backend each task runs, as in :func:`fastdiv.logsumexp`.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastdiv.dask
    >>> p = da.from_array(np.array([[0.5, 0.5]] * 3), chunks=(2, 2))
    >>> q = da.from_array(np.array([[0.9, 0.1]] * 3), chunks=(1, 2))
    >>> round(float(fastdiv.dask.kl_div(p, q, inputs="probs").compute()), 6)
    0.510826
    """
    plan = _plan.kl_div(inputs=inputs, reduction=reduction, temperature=1.0, backend=backend, validate=False, p=p,
                        q=q, resolve=False)
    kind, reduction = plan.inputs, plan.reduction
    p, q = _float("p", p), _float("q", q)
    _checks.same_shape("p", p, "q", q)
    dtype = _out_dtype(p, q)
    if _split(p, q):
        if kind != "logits":
            raise _unsupported_split("inputs", f"inputs={kind!r}")
        # D(P || Q) is the state's D(model || reference) with P as the model
        per_row = _via_states(p, ["kl_model_ref"], reference=q, backend=backend)["kl_model_ref"]
        return _reduce(per_row, reduction, dtype)
    per_row = _per_row(api.kl_div, [p, q], dtype, {"inputs": kind, "reduction": "none", "backend": backend})
    return _reduce(per_row, reduction, dtype)


def _target_weight(t, w, ignore):
    """Per row: the denominator share of cross-entropy's mean (``w[t]``, or 1; 0 if ignored),
    so that the sum over chunks is ``fastdiv.reduce.ce_denominator``."""
    counted = t != ignore
    if w is None:
        return counted.astype(np.float64)
    out = np.zeros(t.shape, np.float64)
    out[counted] = w[t[counted]]
    return out


def cross_entropy(logits: ArrayLike, target: ArrayLike, *, reduction: Reduction = "mean",
                  ignore_index: int = -100, weight: ArrayLike | None = None, label_smoothing: float = 0.0,
                  backend: Backend = "auto") -> da.Array:
    """Lazy :func:`fastdiv.cross_entropy` of dask arrays.

    ``target`` is a dask array of class indices (shape ``logits.shape[:-1]``) or of
    probabilities (shape ``logits.shape``), chunked along rows like ``logits`` or not (the
    chunks are aligned).  ``weight`` is a small in-memory array, sent to every task.
    ``"mean"`` for class indices is ``sum(loss) / sum(weight[target])`` over the rows whose
    target is not ``ignore_index``, across all chunks, and NaN when that is 0.  With the
    class axis of ``logits`` split into chunks: class indices only, no ``weight`` or
    ``label_smoothing`` (a ValueError names the argument).

    Parameters
    ----------
    logits : dask array, shape (..., V)
    target : dask array
        Class indices of shape ``logits.shape[:-1]`` or probabilities of the shape of ``logits``.
    reduction, ignore_index, weight, label_smoothing
        As in :func:`fastdiv.cross_entropy`.
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        The backend each task runs, as in :func:`fastdiv.logsumexp`.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastdiv.dask
    >>> logits = da.from_array(np.array([[2.0, 0.0, 0.0]] * 4), chunks=(3, 3))
    >>> target = da.from_array(np.array([0, 0, -100, 0]), chunks=3)
    >>> round(float(fastdiv.dask.cross_entropy(logits, target).compute()), 6)
    0.239545
    """
    plan = _plan.cross_entropy(reduction=reduction, ignore_index=ignore_index, weight=weight,
                               label_smoothing=label_smoothing, temperature=1.0, backend=backend, validate=False,
                               z_loss=0.0, softcap=None, return_lse=False, logits=logits, target=target, resolve=False)
    reduction, ignore, eps = plan.reduction, plan.ignore_index, plan.smoothing
    logits = _float("logits", logits)
    target = _dask("target", target)
    lead, v = logits.shape[:-1], logits.shape[-1]
    kw = {"ignore_index": ignore, "label_smoothing": eps, "backend": backend, "reduction": "none"}
    if plan.target == "probs":
        _checks.probability_target(target, logits.shape)
        if _split(logits, target):
            raise _unsupported_split("target", "a target of probabilities")
        dtype = _out_dtype(logits, target)
        w = None if weight is None else _checks.class_weight(_computed(weight), v, dtype)
        per_row = _per_row(api.cross_entropy, [logits, target], dtype, dict(kw, weight=w))
        return _reduce(per_row, reduction, dtype)

    if target.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices or float probabilities, got dtype {target.dtype}")
    if target.shape != lead:
        raise ValueError(f"target of class indices must have shape logits.shape[:-1] = {lead}, got {target.shape}")
    dtype = _out_dtype(logits)
    if _split(logits):
        if weight is not None:
            raise _unsupported_split("weight", "a class weight")
        if eps:
            raise _unsupported_split("label_smoothing", "label smoothing")
        w = None
        per_row = _via_states(logits, ["nll"], target=target, ignore=ignore, backend=backend)["nll"]
    else:
        w = None if weight is None else _checks.class_weight(_computed(weight), v, dtype)
        per_row = _per_row(api.cross_entropy, [logits], dtype, dict(kw, weight=w), extra=[target])
    if reduction != "mean":
        return _reduce(per_row, reduction, dtype)
    return _reduce(per_row, reduction, dtype, da.map_blocks(_target_weight, target, w, ignore, dtype=np.float64).sum())


def _computed(a):
    """A small array argument (class weights) in memory, computing it if it is lazy."""
    return a.compute() if isinstance(a, da.Array) else a


# --------------------------------------------------------------------------- evaluate


class DaskEvaluation:
    """Lazy result of :func:`evaluate`: per-row dask arrays and 0-d dask aggregates by key.

    ``res["nll"]``, ``res["lse"]``, ``res["entropy"]``, ``res["target_prob"]``,
    ``res["argmax"]``, ``res["rank"]``, ``res["counted"]``, ``res["correct@k"]``, with a
    reference ``res["kl"]``, ``res["kl_model_ref"]``, ``res["kl_ref_model"]``, with ``z_loss``
    ``res["z_loss"]``: per-row arrays (shape ``logits.shape[:-1]``), as in
    :class:`fastdiv.Evaluation`.  ``res["count"]``, ``res["mean_nll"]``, ``res["perplexity"]``,
    ``res["accuracy@k"]``, ``res["mean_entropy"]``, ``res["mean_kl"]``, ``res["mean_z_loss"]``:
    0-d dask arrays (float64 sums over the counted rows, divided once; NaN with no counted
    row).  ``aggregates()`` computes only those (per-row values stay on the workers);
    ``compute()`` brings everything to memory as a :class:`fastdiv.Evaluation`.

    Parameters
    ----------
    rows : dict
        The per-row dask arrays by key (built by :func:`evaluate`).
    topk : tuple of int
        The ``k`` of the ``correct@k`` / ``accuracy@k`` keys.
    """

    def __init__(self, rows, topk):
        self._rows = rows
        self.topk = tuple(topk)
        self._agg = reduce.lazy_means(rows, self.topk, da)

    def __getitem__(self, key):
        for table in (self._agg, self._rows):
            if key in table:
                return table[key]
        raise KeyError(f"{key!r}; aggregates: {list(self._agg)}, per-row: {list(self._rows)}")

    def keys(self):
        return list(self._agg) + list(self._rows)

    def aggregates(self, **compute_kwargs):
        """The dataset-level numbers as a dict of Python numbers (one ``dask.compute``).

        Parameters
        ----------
        **compute_kwargs
            Passed to ``dask.compute`` (``scheduler=...``).
        """
        import dask

        values = dask.compute(self._agg, **compute_kwargs)[0]
        return {key: int(v) if key == "count" else float(v) for key, v in values.items()}

    def compute(self, **compute_kwargs):
        """Everything in memory: a :class:`fastdiv.Evaluation` (one ``dask.compute``).

        Parameters
        ----------
        **compute_kwargs
            Passed to ``dask.compute`` (``scheduler=...``).
        """
        import dask

        from .evaluation import Evaluation

        rows, agg = dask.compute(self._rows, self._agg, **compute_kwargs)
        agg = {key: int(v) if key == "count" else float(v) for key, v in agg.items()}
        return Evaluation(rows, agg, self.topk)

    def __repr__(self):
        return f"DaskEvaluation(rows={self._rows['nll'].shape}, keys={self.keys()})"


def evaluate(logits: ArrayLike, target: ArrayLike, *, topk: int | tuple[int, ...] = (1, 5),
             reference: ArrayLike | None = None, kl_direction: str = "ref||model", ignore_index: int = -100,
             z_loss: float = 0.0, backend: Backend = "auto") -> DaskEvaluation:
    """Lazy :func:`fastdiv.evaluate` of dask arrays chunked along rows and/or the vocabulary.

    Each (row chunk, vocabulary chunk) block is read once into a mergeable per-row state
    (:mod:`fastdiv.states`), the states are merged pairwise along the vocabulary and finished
    per row chunk; per-row values agree with ``fastdiv.evaluate`` to rounding, except
    ``rank``, which is capped at ``max(topk)`` (the candidates a state keeps; 1 when
    ``topk`` is empty); top-k accuracies are exact.  With the class axis in one chunk (of
    ``logits`` and ``reference``) each row chunk is one task of the in-memory
    ``fastdiv.evaluate`` instead (bit-identical per-row values, exact ``rank``).  ``softcap``
    is not offered here.

    Parameters
    ----------
    logits : dask array, shape (..., V)
    target : dask array of int, shape ``logits.shape[:-1]``
    topk, kl_direction, ignore_index, z_loss, backend
        As in :func:`fastdiv.evaluate`.
    reference : dask array, shape of ``logits``, optional
        Rechunked like ``logits`` if its chunks differ.

    Returns
    -------
    DaskEvaluation

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastdiv, fastdiv.dask
    >>> x = np.random.default_rng(0).standard_normal((100, 30)); t = np.arange(100) % 30
    >>> lazy = fastdiv.dask.evaluate(da.from_array(x, chunks=(40, 12)), da.from_array(t, chunks=40))
    >>> agg = lazy.aggregates()
    >>> bool(np.isclose(agg["mean_nll"], fastdiv.evaluate(x, t).mean_nll, rtol=1e-12))
    True
    """
    plan = _plan.evaluate(topk=topk, kl_direction=kl_direction, ignore_index=ignore_index, z_loss=z_loss,
                          softcap=None, backend=backend, logits=logits, target=target, reference=reference,
                          resolve=False)
    ks, ignore, kl_direction, z_coef = plan.topk, plan.ignore_index, plan.kl_direction, plan.z_loss
    logits = _float("logits", logits)
    target = _dask("target", target)
    if target.dtype.kind not in "iu":
        raise TypeError(f"target must hold integer class indices, got dtype {target.dtype}")
    if target.shape != logits.shape[:-1]:
        raise ValueError(f"target must have shape logits.shape[:-1] = {logits.shape[:-1]}, got {target.shape}")
    fields = ["nll", "lse", "entropy", "target_prob", "argmax", "rank", "counted"] + [f"correct@{k}" for k in ks]
    if reference is not None:
        reference = _float("reference", reference)
        _checks.same_shape("logits", logits, "reference", reference)
        fields += ["kl", "kl_model_ref", "kl_ref_model"]
    if z_coef:
        fields.append("z_loss")
    if _split(logits, *([reference] if reference is not None else [])):
        rows = _via_states(logits, fields, target=target, reference=reference, topk=ks, k=max(ks, default=1),
                           ignore=ignore, backend=backend, kl_direction=kl_direction, z_loss=z_coef)
    else:                                       # rows whole: in-memory evaluate per row chunk, exact rank
        ind = tuple(range(logits.ndim))
        args = [logits, ind, target, ind[:-1]] + ([reference, ind] if reference is not None else [])
        kwargs = dict(topk=ks, kl_direction=kl_direction, ignore_index=ignore, z_loss=z_coef, backend=backend)
        table = da.blockwise(functools.partial(_evaluate_task, fields=tuple(fields), kwargs=kwargs), ind, *args,
                             dtype=np.float64, adjust_chunks={ind[-1]: len(fields)},
                             meta=np.empty((0,) * logits.ndim, np.float64))
        rows = _columns(table, fields, _out_dtype(logits, *([reference] if reference is not None else [])))
    return DaskEvaluation(rows, ks)


# --------------------------------------------------------------------------- compare


def _compare_task(bb, xb, tb, *, ignore, topk, backend):
    """One chunk of rows as a ``meters.Comparator`` (its per-row values, picklable)."""
    from .meters import Comparator

    return Comparator(ignore_index=ignore, topk=topk, backend=backend).update(bb, xb, tb)


def _compare_gather(parts, *, ignore, topk, backend):
    """The chunks' comparators merged in row order, computed."""
    from .meters import Comparator

    total = Comparator(ignore_index=ignore, topk=topk, backend=backend)
    for part in parts:                      # at least one: an empty array is one empty chunk
        total.merge(part)
    return total.compute()


def compare(base: ArrayLike, logits: ArrayLike, target: ArrayLike | None = None, *, ignore_index: int = -100,
            topk: int | tuple[int, ...] = (1, 5), backend: Backend = "auto"):
    """Lazy :func:`fastdiv.compare` of dask arrays chunked along rows.

    Each chunk of rows is one task of the in-memory comparison (``meters.Comparator``: one
    task reads its base and logits chunks); the chunks' per-row values are gathered in row
    order into one :class:`fastdiv.Comparison` (74 bytes per counted row, see
    ``meters.Comparator``), so the result equals ``fastdiv.compare`` on the whole arrays.
    The class axis must be one chunk (``x.rechunk({-1: -1})``): KLD, JS and the top-k
    agreement need each row whole.

    Parameters
    ----------
    base, logits : dask array, same shape (..., V)
        ``logits`` is rechunked like ``base`` if its chunks differ.
    target : dask array of int, shape ``base.shape[:-1]``, optional
    ignore_index, topk, backend
        As in :func:`fastdiv.compare`.

    Returns
    -------
    dask.delayed.Delayed
        ``.compute()`` gives the :class:`fastdiv.Comparison`.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastdiv, fastdiv.dask
    >>> rng = np.random.default_rng(0)
    >>> b = rng.standard_normal((100, 30)); m = b + 0.1 * rng.standard_normal((100, 30))
    >>> lazy = fastdiv.dask.compare(da.from_array(b, chunks=(40, -1)), da.from_array(m, chunks=(40, -1)))
    >>> lazy.compute().to_dict()["kld"] == fastdiv.compare(b, m).to_dict()["kld"]
    True
    """
    import dask

    plan = _plan.compare(ignore_index=ignore_index, topk=topk, backend=backend, resolve=False)
    ks, ignore = plan.topk, plan.ignore_index
    b = _float("base", base)
    x = _float("logits", logits)
    if b.shape != x.shape:
        raise ValueError(f"base and logits must have the same shape, got base {b.shape} and logits {x.shape}")
    if _split(b, x):
        raise ValueError("base and logits: dask.compare reads each row whole; rechunk the class (last) axis into "
                         "one chunk with x.rechunk({-1: -1})")
    v = b.shape[-1]
    b2 = b.reshape(-1, v)
    x2 = x.reshape(-1, v).rechunk(b2.chunks)
    blocks_b, blocks_x = b2.to_delayed().ravel(), x2.to_delayed().ravel()
    if target is None:
        blocks_t = [None] * len(blocks_b)
    else:
        t = _dask("target", target)
        if t.dtype.kind not in "iu":
            raise TypeError(f"target must hold integer class indices, got dtype {t.dtype}")
        if t.shape != b.shape[:-1]:
            raise ValueError(f"target must have shape base.shape[:-1] = {b.shape[:-1]}, got {t.shape}")
        blocks_t = t.reshape(-1).rechunk((b2.chunks[0],)).to_delayed().ravel()
    task = dask.delayed(functools.partial(_compare_task, ignore=ignore, topk=ks, backend=backend), pure=True)
    parts = [task(bb, xb, tb) for bb, xb, tb in zip(blocks_b, blocks_x, blocks_t)]
    gather = functools.partial(_compare_gather, ignore=ignore, topk=ks, backend=backend)
    return dask.delayed(gather, pure=True)(parts)
