"""Running a plan's kernels over the rows of host arrays (the CPU backends).

Inputs of any shape ``(..., V)`` are viewed as 2-D ``(rows, V)`` without copying and handed to
the backend's per-row kernels (``fastdiv._registry``): whole when C-contiguous and of the
kernel's dtype, else converted block by block (``BLOCK_BYTES``; file-backed inputs in
``fastdiv._chunks.CHUNK_BYTES`` chunks whose pages are released), so extra memory stays
O(block).  The softcap pre-pass, the evaluate state and the thread count live here too.
Options come from a ``fastdiv.plan.Plan``; the per-row results go to ``fastdiv.reduce``.
"""
from __future__ import annotations

import collections
import contextlib
import functools
import math
import os
import threading
import warnings
from typing import Iterator

import numpy as np

from . import _checks, _chunks, _lazy, _pool, _registry, _state

#: Rows are handed to a kernel in blocks of about this many bytes when an input must be
#: converted (dtype, byte order, non-contiguous rows); contiguous native input goes whole.
BLOCK_BYTES = 8 << 20

#: bytes of soft-capped logits per kernel call: each worker transforms a block of its rows,
#: then its kernel call reads it back from L2 (2 MiB per core on the CI Xeon; half of it, as
#: the transform's reads from memory share it)
SOFTCAP_BLOCK_BYTES = 1 << 20


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
#: per-thread override of the kernels' thread count: the softcap workers (run_blocks) and the
#: shares of a head's tiles (merge_tiles) each run their kernel calls single-threaded
#: (``_one_thread``)
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

    A view whose rows are not C-contiguous is yielded as-is; ``prepare`` copies it block
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


def prepare(block, dtype, buffers=None):
    """A C-contiguous array of ``dtype`` with the values of ``block`` (a copy only if needed;
    rows of lazy logits are computed, into a buffer of ``buffers`` reused between blocks)."""
    if isinstance(block, _lazy.Rows):
        return block.compute(dtype, {} if buffers is None else buffers)
    if block.dtype == dtype and block.flags.c_contiguous:
        return block
    return np.ascontiguousarray(block, dtype=dtype)


def rows_per_block(v, itemsize):
    return max(1, BLOCK_BYTES // max(1, v * itemsize))


def nrows(a):
    return math.prod(a.shape[:-1])


def run_rows(arrays, dtype, call, n):
    """Run ``call(start, stop, *prepared_blocks)`` over all ``n`` rows of the same-shape ``arrays``.

    Native C-contiguous inputs go to the kernel in one call; otherwise blocks of
    ``BLOCK_BYTES`` are converted (dtype, byte order, strides) and processed in turn, so
    the extra memory is O(block), never O(rows x V).  File-backed inputs (np.memmap) go
    in chunks of ``_chunks.CHUNK_BYTES`` whose pages are released after each chunk.  Lazy
    logits (``fastdiv._lazy``, ``fastdiv.linear``) are computed in blocks of their own
    ``block_rows``, each into one buffer reused for the whole call.
    """
    if n == 0:
        return
    v = arrays[0].shape[-1]
    for a in arrays:               # the common case first, without the block machinery's cost per call
        if type(a) is not np.ndarray or a.dtype != dtype or not a.flags.c_contiguous or _chunks.mapping(a):
            break
    else:
        call(0, n, *[a.reshape(n, a.shape[-1]) for a in arrays])
        return
    per_array = [[(0, _lazy.Rows(a, 0, n))] if isinstance(a, _lazy.LazyLogits) else list(_row_blocks(a))
                 for a in arrays]
    lazy = [a for a in arrays if isinstance(a, _lazy.LazyLogits)]
    buffers = [{} for _ in arrays]
    # The arrays may split into different row ranges (one contiguous, one transposed):
    # walk the common refinement of all their block boundaries.
    edges = sorted({n, *(start for blocks in per_array for start, _ in blocks)})
    for a, b in zip(edges[:-1], edges[1:]):
        blocks = []
        for parts in per_array:
            start, block = next((s, blk) for s, blk in reversed(parts) if s <= a)
            blocks.append(block[a - start:b - start])
        native = not lazy and all(blk.dtype == dtype and blk.flags.c_contiguous for blk in blocks)
        mapped = [None if _lazy.is_lazy(blk) else _chunks.mapping(blk) for blk in blocks]
        if native and all(m is None for m in mapped):
            call(a, b, *blocks)
            continue
        # Converted inputs go in BLOCK_BYTES blocks; file-backed ones (see fastdiv._chunks)
        # in CHUNK_BYTES chunks (fewer, larger kernel calls over a slow source) whose pages
        # are released after use, so RSS stays bounded.
        itemsize = max(dtype.itemsize, max(blk.dtype.itemsize for blk in blocks))
        if lazy:                  # computed logits: each lazy array's block, one reused buffer
            step = min(a.block_rows(itemsize) for a in lazy)
        elif any(m is not None for m in mapped):
            step = _chunks.rows_per_chunk(v, itemsize, _chunks.CHUNK_BYTES)
        else:
            step = rows_per_block(v, itemsize)
        with _lazy_threads(lazy):
            for r0 in range(a, b, step):
                r1 = min(r0 + step, b)
                parts = [blk[r0 - a:r1 - a] for blk in blocks]
                call(r0, r1, *[prepare(part, dtype, buf) for part, buf in zip(parts, buffers)])
                for part, m in zip(parts, mapped):
                    _chunks.release(part, m)


def _one_thread(fn, *args):
    """``fn(*args)`` with the kernels this thread calls single-threaded (a worker's share)."""
    before = getattr(_thread_local, "nthreads", None)
    _thread_local.nthreads = 1
    try:
        return fn(*args)
    finally:
        _thread_local.nthreads = before


@contextlib.contextmanager
def _lazy_shares(lazy):
    """How many threads may compute blocks of the lazy logits ``lazy`` at once
    (``LazyLogits.shares``, held for the block): > 1, each thread with single-threaded kernels
    (:func:`_by_shares`); 1, one block at a time, the kernels on at most the lazy logits'
    ``kernel_threads``."""
    with contextlib.ExitStack() as stack:
        workers = min((stack.enter_context(a.shares(get_num_threads())) for a in lazy), default=1)
        if workers <= 1:
            stack.enter_context(_lazy_threads(lazy))
        yield workers


@contextlib.contextmanager
def _lazy_threads(lazy):
    """Lazy logits may cap the kernels' threads (LazyLogits.kernel_threads: a BLAS whose
    workers spin after each block's matmul would take a core from them)."""
    cap = min((a.kernel_threads for a in lazy if a.kernel_threads), default=None)
    before = getattr(_thread_local, "nthreads", None)
    if cap is not None:
        _thread_local.nthreads = min(cap, get_num_threads())
    try:
        yield
    finally:
        _thread_local.nthreads = before


# --------------------------------------------------------------------------- vocabulary tiles

#: the kernels whose per-row result is a function of the evaluate state: on lazy logits they
#: run by vocabulary tiles (every row and a slice of the classes per matmul, #20), the tiles'
#: states merged exactly (``_state.merge_sums``), instead of by row blocks (evaluate's own
#: state goes by tiles in ``run_state``)
TILED_OPS = ("lse", "entropy_logits", "kl_logits", "ce_hard")


def _tiles(op, arrays, scalars):
    """``(shape, arrays)``: the ``(rows, classes)`` of the vocabulary tiles of kernel ``op``
    on ``arrays`` and the lazy logits to tile, or None: an op of TILED_OPS on tiled lazy
    logits (label smoothing only where the head gives its class sums,
    ``LazyLogits.has_class_sums``; temperature where the heads give their scaled selves,
    ``LazyLogits.scaled``, which are then tiled instead)."""
    if op not in TILED_OPS or not isinstance(arrays[0], _lazy.LazyLogits):
        return None
    shape = _tile_shape(arrays)
    if shape is None:
        return None
    if op in ("entropy_logits", "kl_logits") and scalars[0] != 1.0:
        arrays = [a.scaled(scalars[0]) for a in arrays]
        if any(a is None for a in arrays):
            return None
    if op == "ce_hard" and scalars[1] != 0.0 and not all(a.has_class_sums for a in arrays):
        return None                     # label smoothing's class sums, without the logits
    return shape, arrays


def _tile_shape(arrays):
    """The vocabulary tiles of ``arrays`` when every one is lazy and tiled (``LazyLogits.tiles``)."""
    if not all(isinstance(a, _lazy.LazyLogits) for a in arrays):
        return None
    itemsize = out_dtype(*arrays).itemsize
    shapes = [a.tiles(itemsize) for a in arrays]
    if any(shape is None for shape in shapes):
        return None
    return min(r for r, _ in shapes), min(c for _, c in shapes)


def _tiled_state(backend, arrays, target, shape, rank=False):
    """The evaluate state ``(st, ix)`` of host lazy logits ``arrays[0]`` (reference
    ``arrays[1]``) by vocabulary tiles of ``shape`` (:func:`merge_tiles`): each tile computed
    into one buffer per array and thread reused for the call, its state from ``backend``'s
    evaluate kernel (with a reference, each tile's own KLs, which the kernel sums again while
    the tile is in cache where its one pass cancelled, merged by the chain rule).  Where the
    heads allow it (``LazyLogits.shares``) the row blocks go to every thread at once
    (:func:`_share_shape`, :func:`_by_shares`), else one at a time.
    ``rank``: the count column too -- in the target's tile against the tile's own target
    logit, in the others against the target's logit formed as one dot product
    (``LazyLogits.target_logits``: the same value up to the matmul's summation order), which
    the kernel reads from the state's xt column where the row has no target in the tile."""
    dtype = out_dtype(*arrays)
    kern = _registry.kernel(backend, "evaluate")
    mine = threading.local()           # each thread's tile buffers, one per array
    ncol = _state.width(len(arrays) > 1)

    def block(r0, r1, spans, locals_, thr):
        bufs = getattr(mine, "bufs", None)
        if bufs is None:
            rows, width = shape
            bufs = mine.bufs = [np.empty(min(rows, nrows(arrays[0])) * width, dtype=dtype) for _ in arrays]
        for (v0, v1), local in zip(spans, locals_):     # one tile at a time, in the reused buffers
            tiles = [a.compute(r0, r1, dtype, out=buf[:(r1 - r0) * (v1 - v0)].reshape(r1 - r0, v1 - v0),
                               cols=(v0, v1)) for a, buf in zip(arrays, bufs)]
            zb = tiles[1] if len(arrays) > 1 else np.empty((0, v1 - v0), dtype=dtype)
            st_t = np.full((r1 - r0, ncol), np.nan)
            if thr is not None:               # the rank of a target outside the tile
                st_t[:, _state.XT] = np.where(local >= 0, np.nan, thr)
            ix_t = np.zeros((r1 - r0, 3), dtype=np.int64)
            kern(tiles[0], zb, local, st_t, ix_t, get_num_threads())
            yield st_t, ix_t

    with _lazy_shares(arrays) as workers:
        if workers > 1:
            shape = _share_shape(shape, nrows(arrays[0]), workers)
        return merge_tiles(arrays, target, shape, block, dtype if rank else None, workers,
                           kls=len(arrays) > 1)


def _share_shape(shape, n, workers):
    """Tiles of ``shape`` for ``workers`` threads at once: the rows of a tile divided by the
    workers, so their buffers together stay as large as one tile, and the row blocks made as
    many as a multiple of the workers (of near-equal rows), so the threads finish together
    when none is slowed."""
    rows, width = shape
    blocks = -(-n // max(1, rows // workers))
    blocks = -(-blocks // workers) * workers
    return max(1, -(-n // blocks)), width


def merge_tiles(arrays, target, shape, block, rank_dtype=None, workers=1, kls=False):
    """The evaluate state ``(st, ix)`` of lazy logits ``arrays[0]`` (reference ``arrays[1]``)
    by vocabulary tiles of ``shape``, host or device: ``block(r0, r1, spans, locals_, thr)``
    gives, for rows ``r0 .. r1 - 1``, the state ``(st_t, ix_t)`` of each tile of classes
    ``spans[k] = (v0, v1)`` in turn (``locals_[k]``: the target's index in that tile, -1
    where it lies outside), its count column against the targets' logits ``thr`` where
    given (None: no rank); the tiles' states merge along the classes
    (``_state.merge_sums``) and the counts add up.  ``rank_dtype``: count the rank, the
    targets' logits formed in that dtype (None: no rank).  ``workers`` > 1: the row blocks
    go to that many threads (:func:`_by_shares`: each takes the next one not yet taken),
    their kernels single-threaded; ``block`` is then called from several threads at once, on
    disjoint rows.  ``kls``: the tiles' states hold their own KLs (10 columns), which merge
    by the chain rule (``_state.chain_columns``) into the returned state's KL columns."""
    x = arrays[0]
    n, v = nrows(x), x.shape[-1]
    rows, width = shape
    reference = len(arrays) > 1
    st = np.full((n, _state.width(kls)), np.nan)
    ix = np.zeros((n, 3), dtype=np.int64)
    spans = [(v0, min(v, v0 + width)) for v0 in range(0, v, width)]

    def row_block(r0):
        r1 = min(n, r0 + rows)
        t = target[r0:r1]
        merged, xt, thr = None, np.full(r1 - r0, np.nan), None
        if rank_dtype is not None:
            thr = np.ascontiguousarray(x.target_logits(r0, r1, np.where((t >= 0) & (t < v), t, -1), rank_dtype))
            cnt = np.zeros(r1 - r0, dtype=np.int64)
        locals_ = [np.where((t >= v0) & (t < v1), t - v0, -1) for v0, v1 in spans]
        for (v0, _), local, (st_t, ix_t) in zip(spans, locals_, block(r0, r1, spans, locals_, thr)):
            inside = local >= 0
            if thr is not None:
                cnt += ix_t[:, _state.COUNT]
            part = _state.state_columns(st_t, ix_t, reference, offset=v0)
            merged = part if merged is None else _state.merge_sums(merged, part)
            xt = np.where(inside, st_t[:, _state.XT], xt)
        _state.store_columns(st[r0:r1], ix[r0:r1], merged)
        st[r0:r1, _state.XT] = xt
        if thr is not None:
            ix[r0:r1, _state.COUNT] = cnt

    _by_shares(range(0, n, rows), workers, row_block)
    return st, ix


def _by_shares(starts, workers, body):
    """``body(start)`` for each row block start of ``starts``: in turn, or on ``workers``
    threads (``fastdiv._pool``, the kernels single-threaded), each taking the next block not
    yet taken until none is left, so a thread slowed by another process takes fewer."""
    workers = min(workers, len(starts))
    if workers <= 1:
        for r0 in starts:
            body(r0)
        return
    it, lock = iter(starts), threading.Lock()

    def share():
        while True:
            with lock:
                r0 = next(it, None)
            if r0 is None:
                return
            body(r0)

    _pool.run(functools.partial(_one_thread, share) for _ in range(workers))


def _per_row_tiled(op, backend, arrays, shape, scalars, extra, state=None):
    """Kernel ``op``'s per-row results (float64) from the tiled evaluate state
    (``state(arrays, local, shape) -> (st, ix)``; default the host's, :func:`_tiled_state`)
    of ``arrays`` as :func:`_tiles` gives them (already scaled)."""
    n = nrows(arrays[0])
    counted = np.ones(n, dtype=bool)
    local = np.full(n, -1, dtype=np.int64)
    if op == "ce_hard":
        t, w = extra
        counted = t != scalars[0]
        local = np.where(counted, t, -1)
    # kl_logits(p, q) = D(P || Q): evaluate's D(reference || model) with model q, reference p
    ordered = arrays[::-1] if op == "kl_logits" else arrays
    st, ix = _tiled_state(backend, ordered, local, shape) if state is None else state(ordered, local, shape)
    res = _state.finish_state(st, ix, counted, (), op == "kl_logits")
    if op == "ce_hard":
        loss = _state.hard_loss(res["nll"], counted, t, w)
        eps = scalars[1]
        if eps == 0.0:
            return loss
        # label smoothing: eps / V sum_j w_j (lse - x_j) = eps / V (lse sum(w) - sum_j w_j x_j),
        # the class sums from the head (LazyLogits.class_sums), no pass over the logits
        lse, wsum = res["lse"], float(np.sum(w, dtype=np.float64))
        with np.errstate(invalid="ignore"):
            smooth = eps / arrays[0].shape[-1] * (lse * wsum - arrays[0].class_sums(w))
            # an all-masked row: every term infinite (a weighted one), as the kernels give
            smooth = np.where(lse == -np.inf, np.inf if np.any(w > 0) else 0.0, smooth)
            hard = (1.0 - eps) * loss if eps < 1.0 else 0.0     # no 0 * inf at eps = 1
            return np.where(counted, hard + smooth, 0.0)
    return res[{"lse": "lse", "entropy_logits": "entropy", "kl_logits": "kl_ref_model"}[op]]


_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


def out_dtype(*arrays):
    """The compute dtype of a call: float64 if any float input is float64, else float32."""
    first = arrays[0].dtype
    if first in _NATIVE and all(a.dtype == first for a in arrays[1:]):   # the common case, without the checks
        return first
    dts = [_checks.compute_dtype(f"arg{i}", a.dtype) for i, a in enumerate(arrays)]
    return np.dtype(np.float64) if any(d == np.float64 for d in dts) else np.dtype(np.float32)


def _half_bits(backend, arrays):
    """``(half, bits)``: the native half dtype in which ``arrays`` go to ``backend`` and the
    raw-bits dtype (uint16 / int16) its kernels read them as (contract v2 item 2), or None: only
    when its kernels read half inputs (HALF_INPUTS) and every array holds one half dtype (any
    byte order or layout).  A non-C layout is copied to C-contiguous half blocks, not widened to
    float32, so it runs the same kernel as the C layout and gets the same bits.  Otherwise the
    rows are converted to float32 in blocks of BLOCK_BYTES."""
    if arrays[0].dtype.itemsize > 2:
        return None
    half = arrays[0].dtype.newbyteorder("=")
    bits = _checks.half_bits_dtype(half)
    if bits is None or not _registry.half_inputs(backend):
        return None
    if any(a.dtype.newbyteorder("=") != half for a in arrays):
        return None
    return half, bits


def per_row(op, backend, arrays, *, scalars=(), extra=None):
    """Per-row results (1-D, C order over the leading axes) of kernel ``op`` on ``arrays``.

    ``scalars`` follow the float arrays in the kernel's signature (``_registry``)."""
    n = nrows(arrays[0])
    dtype = out_dtype(*arrays)
    out = np.empty(n, dtype=dtype)
    if n == 0:
        return out
    tiled = _tiles(op, arrays, scalars)
    if tiled is not None:
        out[:] = _per_row_tiled(op, backend, tiled[1], tiled[0], scalars, extra)
        return out
    kern = _registry.kernel(backend, op)

    def call(r0, r1, *blocks):
        nthreads = get_num_threads()                   # per block: lazy logits may lower it
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

    half = _half_bits(backend, arrays)
    if half is None:
        run_rows(arrays, dtype, call, n)
    else:
        run_rows(arrays, half[0], lambda r0, r1, *blocks: call(r0, r1, *[b.view(half[1]) for b in blocks]), n)
    return out


def rows(plan, arrays):
    """Per-row results of ``plan.op`` (a kernel with float arrays and scalars only) on host
    ``arrays`` of one shape (``fastdiv.plan``: scalars, argument order)."""
    return per_row(plan.op, plan.backend, arrays, scalars=plan.scalars(arrays[0].shape[-1]))


# --------------------------------------------------------------------------- softcap


def softcap_impl(name):
    """The soft-capping transform of the Cython extension (``_softcap_rows.h``) or of numba
    (``fastdiv._numba.softcap``): ``f(block, inv, cap, out)``, ``block`` 2-D with contiguous
    rows.  The two agree within a few ulp (tests/test_softcap.py)."""
    if name == "cython":
        from ._cython._kernels import softcap
        return softcap
    from ._numba.simd import read_only
    from ._numba.softcap import softcap_rows

    def softcap(block, inv, cap, out):
        # read-only like every kernel input (simd.read_only): writable and read-only blocks
        # share one specialization instead of compiling two
        (block,) = read_only(block)
        softcap_rows(block, block.dtype.type(inv), block.dtype.type(cap), out)
    return softcap


def _softcap_kernel():
    """The transform every CPU backend's ``softcap=`` runs, one per process: the Cython
    extension's when it is built (no JIT: ``backend="cython"`` with softcap loads no numba
    code; its first call took 0.86 s with numba's, 0.006 s with it), else numba's.  One for
    all backends, so the soft-capped logits, and so ranks and ties, are the same bits on each."""
    global _SOFTCAP
    if _SOFTCAP is None:
        _SOFTCAP = softcap_impl("cython" if _registry.unavailable_reason("cython") is None else "numba")
    return _SOFTCAP


_SOFTCAP = None


def apply_softcap(block, cap, dtype, out=None):
    """``cap * tanh(block / cap)`` in ``dtype`` (semantics of ``fastdiv.reference.softcap_rows``:
    ``-inf`` stays ``-inf``, NaN stays NaN, ``+inf`` becomes ``cap``), one compiled pass on one
    thread (``_softcap_kernel``).  ``block``: 2-D, any strides; ``out``: a C-contiguous ``dtype``
    array of its shape to write into (a new one when None), returned."""
    block = np.asarray(block)
    if block.dtype != dtype or block.strides[-1] != block.itemsize:
        # the transform reads rows with unit stride (astype alone keeps a Fortran layout)
        block = np.ascontiguousarray(block, dtype=dtype)
    if out is None:
        out = np.empty(block.shape, dtype=dtype)
    if block.size:
        _softcap_kernel()(block, 1.0 / cap, cap, out)
    return out


def run_blocks(arrays, dtype, softcap, fn):
    """Call ``fn(r0, r1, *blocks)`` over all rows of ``arrays`` (same leading shape), the
    first array soft-capped when ``softcap`` is set: C-contiguous native input goes whole
    (no softcap) or in blocks of ``BLOCK_BYTES`` (converted input), so memory stays O(block).

    With ``softcap`` the rows are split into one contiguous share per thread, each run by a
    worker thread that transforms ``SOFTCAP_BLOCK_BYTES`` of its rows at a time into its own
    reused buffer and calls ``fn`` on it at once, single-threaded (the per-thread thread
    count): the kernel reads the block back from that core's L2, so the logits are still
    read once from memory, and the workers never wait for each other (one parallel region
    per block and kernel would: on a busy machine each costs a scheduler time slice).
    ``fn`` calls from different workers touch disjoint rows."""
    n = nrows(arrays[0])
    if n == 0:
        return
    if softcap is None:
        run_rows(arrays, dtype, fn, n)
        return
    v = arrays[0].shape[-1]
    step = max(1, SOFTCAP_BLOCK_BYTES // (v * dtype.itemsize))

    def share(r0, a0, a1, blocks):
        buf = np.empty((min(step, a1 - a0), v), dtype=dtype)
        for a in range(a0, a1, step):
            b = min(a + step, a1)
            capped = apply_softcap(blocks[0][a:b], softcap, dtype, out=buf[:b - a])
            fn(r0 + a, r0 + b, capped, *[blk[a:b] for blk in blocks[1:]])

    def call(r0, r1, *blocks):
        rows_ = r1 - r0
        workers = min(get_num_threads(), -(-rows_ // step))
        if workers <= 1:
            share(r0, 0, rows_, blocks)
            return
        cuts = _pool.edges(rows_, workers)
        _pool.run(functools.partial(_one_thread, share, r0, a0, a1, blocks) for a0, a1 in zip(cuts[:-1], cuts[1:]))

    run_rows(arrays, dtype, call, n)


# --------------------------------------------------------------------------- the evaluate state


#: the per-row state of each state op (``fastdiv._registry``): (float64 columns, int64 columns);
#: evaluate with a reference has two more, its KLs (``_state.KL_MR``, ``_state.KL_RM``)
STATE_COLUMNS = {"evaluate": (_state.width(False), 3), "compare": (12, 4)}


def run_state(backend, x, target, reference=None, softcap=None, per_block=None, op="evaluate", rank=True):
    """The state of kernel ``op`` for every row: ``(st float64[rows, 8], ix int64[rows, 3],
    dtype)`` for ``evaluate`` (``STATE_COLUMNS`` gives the widths of each op; ``compare``
    needs ``reference``: the base's logits).  evaluate's state with a reference has its two
    KL columns too (``st[:, 10]``; by vocabulary tiles, the tiles' own merged by the chain
    rule).

    ``target``: int64[rows]; values outside ``[0, V)`` mean "no target in this row".
    ``per_block(r0, r1, xblock)`` is also called on each (soft-capped) block, for callers that
    need something more from the same block while it is in cache (top-k candidates).
    Lazy logits (and reference) go by vocabulary tiles for evaluate's state without softcap;
    ``rank=False``: the caller does not use the count column, which is then not formed."""
    arrays = [x] if reference is None else [x, reference]
    dtype = out_dtype(*arrays)
    n = nrows(x)
    ncol, nix = STATE_COLUMNS[op]
    if op == "evaluate":
        ncol = _state.width(reference is not None)
    st = np.full((n, ncol), np.nan)
    ix = np.zeros((n, nix), dtype=np.int64)
    if n == 0:
        return st, ix, dtype
    tiles = _tile_shape(arrays) if op == "evaluate" and softcap is None and per_block is None else None
    if tiles is not None:
        st, ix = _tiled_state(backend, arrays, target, tiles, rank)
        return st, ix, dtype
    kern = _registry.kernel(backend, op)
    no_ref = np.empty((0, x.shape[-1]), dtype=dtype)

    def fn(r0, r1, xb, *rest):
        xb = prepare(xb, dtype)
        zb = prepare(rest[0], dtype) if rest else no_ref
        kern(xb, zb, target[r0:r1], st[r0:r1], ix[r0:r1], get_num_threads())
        if per_block is not None:
            per_block(r0, r1, xb)

    run_blocks(arrays, dtype, softcap, fn)
    return st, ix, dtype


def state_targets(plan, target, lead, v):
    """Validated int64 class indices ``t`` and ``counted = t != ignore_index``, with the
    evaluate kernel's targets ``local`` (an ignored row gets -1: "no target")."""
    t = _checks.class_targets(_checks.as_array("target", target), lead, v, plan.ignore_index)
    counted = t != plan.ignore_index
    return t, counted, np.where(counted, t, -1)


# --------------------------------------------------------------------------- cross-entropy


#: cross-entropy's per-row values on the host, for ``fastdiv.reduce``: ``loss`` (and ``lse``
#: with the options) per row, ``t`` int64 targets (class indices) or None, ``counted`` rows
#: (None when not formed), ``n_ignored`` (None when unknown), ``w`` the class weights in the
#: compute ``dtype``
CERows = collections.namedtuple("CERows", "loss lse t counted n_ignored w lead dtype")


def cross_entropy(plan, logits, target):
    """``cross_entropy``'s per-row values on a CPU backend (no options: one kernel call)."""
    logits = _checks.float_array("logits", logits)
    target = _checks.as_array("target", target)
    lead, v = logits.shape[:-1], logits.shape[-1]
    if plan.target == "probs":
        _checks.probability_target(target, logits.shape)
        dtype = out_dtype(logits, target)
        w = plan.class_weight(v, dtype)
        loss = per_row("ce_soft", plan.backend, [logits, target], scalars=plan.scalars(v), extra=(w,))
        return CERows(loss, None, None, None, None, w, lead, dtype)
    t, n_ignored = _checks.class_targets(target, lead, v, plan.ignore_index, count_ignored=True)
    dtype = out_dtype(logits)
    w = plan.class_weight(v, dtype)
    loss = per_row("ce_hard", plan.backend, [logits], scalars=plan.scalars(v), extra=(t, w))
    return CERows(loss, None, t, None, n_ignored, w, lead, dtype)


def cross_entropy_with_options(plan, logits, target):
    """``cross_entropy`` with ``z_loss`` / ``softcap`` / ``return_lse``: float64 per-row loss and lse.

    Class indices without label smoothing: one read through the evaluate kernel (the loss is
    ``w_t * nll``).  Otherwise the loss kernel and, when needed, the lse kernel run block by
    block (the second read of each block comes from cache when soft-capping, else from memory)."""
    x = _checks.float_array("logits", logits)
    tgt = _checks.as_array("target", target)
    lead, v = x.shape[:-1], x.shape[-1]
    n = nrows(x)
    need_lse = bool(plan.z_loss) or plan.return_lse
    soft = plan.target == "probs"
    if soft:
        _checks.probability_target(tgt, x.shape)
        dtype = out_dtype(x, tgt)
        counted = np.ones(n, dtype=bool)
        t, arrays = None, [x, tgt]
    else:
        t, counted, local = state_targets(plan, tgt, lead, v)
        dtype = out_dtype(x)
        arrays = [x]
    w = plan.class_weight(v, dtype)
    loss = np.zeros(n, dtype=np.float64)
    lse = np.zeros(n, dtype=np.float64)
    if not soft and plan.smoothing == 0:
        st, ix, _ = run_state(plan.backend, x, local, None, plan.softcap, rank=False)
        res = _state.finish_state(st, ix, counted, (), False)
        loss = _state.hard_loss(res["nll"], counted, t, w)
        lse = res["lse"]
    else:
        scalars = plan.scalars(v)

        def fn(r0, r1, xb, *rest):
            if soft:
                loss[r0:r1] = per_row("ce_soft", plan.backend, [xb, rest[0]], scalars=scalars, extra=(w,))
            else:
                loss[r0:r1] = per_row("ce_hard", plan.backend, [xb], scalars=scalars, extra=(t[r0:r1], w))
            if need_lse:
                lse[r0:r1] = per_row("lse", plan.backend, [xb])

        run_blocks(arrays, dtype, plan.softcap, fn)
    return CERows(loss, lse, t, counted, None, w, lead, dtype)
