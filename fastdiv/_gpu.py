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

Device heads (``fastdiv.linear`` of device arrays) by vocabulary tiles are the exception:
their per-tile states merge on the host (one synchronisation per row block of tiles), and
the targets, copied there for it, are validated as host targets are (a target out of range
raises instead of giving NaN).

Options come from a ``fastdiv.plan.Plan`` and every reduction is ``fastdiv.reduce``'s (on the
device for device results, on the host for what ``evaluate``'s state brings back).
"""
from __future__ import annotations

import numpy as np

from . import _checks, _lazy, _state, reduce
from ._cuda import interop

#: bytes of the device buffer the soft-capped logits of a block of rows are written to
SOFTCAP_DEVICE_BYTES = 64 << 20


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
        """A numba device view of ``a`` (copying host arrays over; a ``_LazyRows`` for device
        ``fastdiv.linear`` logits), plus validation."""
        if _lazy.is_lazy(a):                    # the plan let only device heads through
            tag = a.device_tag()
            if self.tag is None:
                self.tag = tag
            bf16 = a.dtype == _checks._bfloat16()
            self.bf16 = self.bf16 or bf16
            return _LazyRows(a, np.dtype(np.int16) if bf16 else np.dtype(a.dtype))
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
            native = arr.dtype.newbyteorder("=")
            if native in (np.float16, np.float32, np.float64):
                # a non-native byte order keeps its type ('>f2' is float16, as beside a '<f2'
                # reference: widened alone, the pair's dtypes differed)
                arr = arr.astype(native, copy=False)
            else:
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


class _LazyRows:
    """Rows ``[r0, r1)`` of device ``fastdiv.linear`` logits where the kernels' 2-D view of
    stored logits would go: sliced by rows like it, computed block by block into a device
    buffer by :func:`_by_blocks`.  ``dtype``: the kernels' view dtype (int16 for bfloat16)."""

    def __init__(self, lazy, dtype, r0=0, r1=None, shape=None):
        self.lazy, self.dtype, self.r0 = lazy, dtype, r0
        self.r1 = lazy.rows if r1 is None else r1
        self.shape = tuple(lazy.shape) if shape is None else shape

    def reshape(self, rows, v):
        return _LazyRows(self.lazy, self.dtype, self.r0, self.r0 + rows, (rows, v))

    def __getitem__(self, index):
        start, stop, _ = index.indices(self.r1 - self.r0)
        stop = max(start, stop)
        return _LazyRows(self.lazy, self.dtype, self.r0 + start, self.r0 + stop, (stop - start, self.shape[-1]))


def _by_blocks(stream, rows, arrays, fn, step=None, widen=False):
    """``fn(r0, r1, *blocks)`` over the ``rows`` rows of the 2-D device ``arrays``: one call,
    or blocks of at most ``step`` rows and of each lazy array's ``block_rows`` (each lazy
    block computed into a device buffer reused for the whole call; ``widen``: a 16-bit
    head's blocks as float32, ``LinearLogits.compute_device``)."""
    lazy = [a for a in arrays if isinstance(a, _LazyRows)]
    limits = [rows] if step is None else [step]
    limits += [a.lazy.block_rows(4 if widen else np.dtype(a.dtype).itemsize) for a in lazy]
    step = max(1, min(limits))
    buffers = [{} for _ in arrays]
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        fn(r0, r1, *[a.lazy.compute_device(a.r0 + r0, a.r0 + r1, buf, stream, widen=widen)
                     if isinstance(a, _LazyRows) else a[r0:r1] for a, buf in zip(arrays, buffers)])


def _tiled_rows(call, op, arrays, scalars, extra=None):
    """Per-row results (host float64) of kernel ``op`` on device heads ``arrays`` by
    vocabulary tiles, as the host path goes (``fastdiv.execute``: every row by a slice of the
    classes per matmul, so the weight is read once; the tiles' evaluate states merged), or
    None where ``op`` and its options go by row blocks.  Each tile: the library's matmul into
    a device buffer, the cuda evaluate kernel, its O(rows) state copied back (one
    synchronisation per row block of tiles, :func:`_tiled_state`) and merged on the host."""
    from . import execute

    tiled = execute._tiles(op, arrays, scalars) if all(_lazy.is_lazy(a) for a in arrays) else None
    if tiled is None:
        return None
    shape, arrays = tiled
    return execute._per_row_tiled(op, "cuda", arrays, shape, scalars, extra,
                                  state=lambda ordered, local, shp: _tiled_state(call, ordered, local, shp))


def _tiled_state(call, arrays, target, shape):
    """``fastdiv.execute.merge_tiles`` on the device, no rank.  Every tile of a row block is
    queued on the stream (the library's matmul into the reused buffer, then the cuda
    evaluate kernel into that tile's slot of one device state array; a bfloat16 head's tiles
    widened to float32, which that kernel reads) and the block's states come back in one
    copy: one synchronisation per row block, not per tile, so the device runs the tiles back
    to back while the host only enqueues them."""
    from numba import cuda

    from . import _registry, execute

    stream = call.ensure_stream()
    kern = _registry.kernel("cuda", "evaluate")
    buffers = [{} for _ in arrays]
    no_ref = []

    def block(r0, r1, spans, locals_, thr):
        st_d = cuda.to_device(np.full((len(spans), r1 - r0, _state.width(False)), np.nan), stream=stream)
        ix_d = cuda.to_device(np.zeros((len(spans), r1 - r0, 3), dtype=np.int64), stream=stream)
        t_d = cuda.to_device(np.stack(locals_), stream=stream)
        for k, cols in enumerate(spans):
            blocks = [a.compute_device(r0, r1, buf, stream, cols=cols, widen=True) for a, buf in zip(arrays, buffers)]
            if len(blocks) == 1:           # no reference: 0 rows (its width is not read)
                if not no_ref:
                    no_ref.append(cuda.device_array((0, shape[1]), dtype=blocks[0].dtype, stream=stream))
                blocks += no_ref
            kern(blocks[0], blocks[1], t_d[k], st_d[k], ix_d[k], None, stream=stream)
        st, ix = st_d.copy_to_host(stream=stream), ix_d.copy_to_host(stream=stream)
        stream.synchronize()
        return zip(st, ix)

    return execute.merge_tiles(arrays, target, shape, block)


def _device_rows(call, values, dtype):
    """Host per-row values as a device array of ``dtype`` in the caller's library:
    ``(native, numba view)``."""
    native, view = call.empty(len(values), dtype)
    view.copy_to_device(np.ascontiguousarray(values, dtype=dtype), stream=call.ensure_stream())
    return native, view


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


def _finish(call, out_native, out_view, lead, reduction, *, target=None, ignore_index=-100, weight=None):
    """Per-row device results reduced on the device (``fastdiv.reduce.on_device``)."""
    if reduction == "none":
        return call.result(out_native, out_view, lead)
    red_native, red_view = call.empty(1, np.dtype(out_view.dtype))
    reduce.on_device(call.k, out_view, reduction, red_view, call.ensure_stream(), target=target,
                     ignore_index=ignore_index, weight=weight)
    return call.result(red_native, red_view, ())


def per_row_op(plan, named_arrays):
    """logsumexp / entropy / kl_div / js_div on the device (``named_arrays``: [(name, array), ...])."""
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
    rows, v = (int(d) for d in flat[0].shape)
    acc = _acc_dtype(views, call.bf16)
    tiled = _tiled_rows(call, plan.op, [a for _, a in named_arrays], plan.scalars(v)) if rows else None
    if tiled is not None:
        return _finish(call, *_device_rows(call, tiled, acc), lead, plan.reduction)
    out_native, out_view = call.empty(rows, acc)
    stream = call.ensure_stream()
    kern = getattr(call.k, plan.op)
    _by_blocks(stream, rows, flat, lambda r0, r1, *blocks: kern(
        *blocks, *plan.scalars(v), out_view[r0:r1], None, stream=stream, bf16=call.bf16 or None))
    return _finish(call, out_native, out_view, lead, plan.reduction)


def _weight(call, plan, v, acc):
    """The plan's class weights as a device array of the compute dtype ``acc`` (None without
    weights: the kernels then take their unweighted path).  Host weights are checked and
    converted by the plan; a torch or CuPy device array of another float dtype (bfloat16
    included) is converted on the device."""
    weight = plan.weight
    if weight is None:
        return None
    if interop.is_device_array(weight):
        if np.dtype(acc) != _device_dtype(weight):
            if interop._is_torch(weight) and weight.is_floating_point():
                import torch

                weight = weight.detach().to({4: torch.float32, 8: torch.float64}[np.dtype(acc).itemsize])
            elif interop._is_cupy(weight) and np.dtype(weight.dtype).kind == "f":
                weight = weight.astype(acc)
        w_view = call.view("weight", weight)
        _checks.weight_shape(tuple(w_view.shape), v)
        if np.dtype(w_view.dtype) != acc:
            raise TypeError(f"a device weight must have the compute dtype {acc}, got {w_view.dtype}")
        return w_view
    from numba import cuda

    return cuda.to_device(plan.class_weight(v, acc))


def _device_dtype(a):
    if interop._is_torch(a):
        return {"torch.float32": np.dtype(np.float32), "torch.float64": np.dtype(np.float64)}.get(str(a.dtype))
    return np.dtype(a.dtype)


def _device_targets(call, plan, target, lead, rows, v):
    """Class indices as a device int64[rows]: device targets read in place (not checked: no
    synchronisation), host targets checked and copied over."""
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
        return tv
    from numba import cuda

    return cuda.to_device(_checks.class_targets(_checks.as_array("target", target), lead, v, plan.ignore_index))


def cross_entropy(plan, logits, target):
    """``cross_entropy`` on the device (no options), reduced on the device."""
    call = _Call()
    x = call.view("logits", logits)
    x2, lead = _rows_view(x, "logits")
    rows, v = (int(d) for d in x2.shape)
    acc = _acc_dtype([x], call.bf16)
    w_view = _weight(call, plan, v, acc)
    out_native, out_view = call.empty(rows, acc)
    stream = call.ensure_stream()
    if plan.target == "probs":                           # soft targets: the mean is over rows
        p = call.view("target", target)
        _checks.probability_target(p, tuple(x.shape), check_dtype=False)
        if np.dtype(p.dtype) != np.dtype(x.dtype):
            raise TypeError("on the device, target probabilities must have the dtype of logits")
        p2, _ = _rows_view(p, "target")
        _by_blocks(stream, rows, [x2, p2], lambda r0, r1, xb, pb: call.k.ce_soft(
            xb, pb, w_view, *plan.scalars(v), out_view[r0:r1], None, stream=stream, bf16=call.bf16 or None))
        return _finish(call, out_native, out_view, lead, plan.reduction)
    tv = _device_targets(call, plan, target, lead, rows, v)
    ignore, eps = plan.scalars(v)
    if rows and _lazy.is_lazy(logits):
        t_host = _checks.class_targets(_checks.as_array("target", host_copy(target)), lead, v, plan.ignore_index)
        tiled = _tiled_rows(call, "ce_hard", [logits], (ignore, eps),
                            (t_host, _host_weights(plan).class_weight(v, acc)))
        if tiled is not None:
            out_native, out_view = _device_rows(call, tiled, acc)
            return _finish(call, out_native, out_view, lead, plan.reduction, target=tv, ignore_index=plan.ignore_index,
                           weight=w_view)
    _by_blocks(stream, rows, [x2], lambda r0, r1, xb: call.k.ce_hard(
        xb, tv[r0:r1], ignore, w_view, eps, out_view[r0:r1], None, stream=stream, bf16=call.bf16 or None))
    return _finish(call, out_native, out_view, lead, plan.reduction, target=tv, ignore_index=plan.ignore_index,
                   weight=w_view)


def evaluate_state(plan, logits, target, reference=None):
    """The evaluate kernel's state of every row, computed on the device (inputs read in place,
    numpy input copied over; with ``plan.softcap`` blocks of rows soft-capped on the device
    into one reused buffer of about ``SOFTCAP_DEVICE_BYTES``, ``fastdiv._cuda.softcap``) and
    brought to the host (O(rows), one synchronisation).

    Returns ``(call, st, ix, t, counted, lead, dtype, mend)``: ``t`` the checked int64 targets
    (a device target is copied to the host for it), ``counted = t != ignore_index`` and, for
    float64 logits with a reference, ``mend(rows)``: :func:`_mend_near_kl` on ``finish_state``'s
    dict of this state (else None)."""
    from numba import cuda

    from . import _registry
    from ._cuda.softcap import softcap_rows

    call = _Call()
    xv = call.view("logits", logits)
    # a bfloat16 head's blocks are widened to float32 as they are computed; stored bfloat16
    # logits the kernel cannot read
    widen = isinstance(xv, _LazyRows) and call.bf16
    if call.bf16 and not widen:
        raise TypeError("evaluate on cuda reads float16, float32 or float64 logits; convert bfloat16 first")
    x2, lead = _rows_view(xv, "logits")
    rows, v = (int(d) for d in x2.shape)
    z2 = None
    if reference is not None:
        zv = call.view("reference", reference)
        if tuple(zv.shape) != tuple(xv.shape) or np.dtype(zv.dtype) != np.dtype(xv.dtype) or \
                (call.bf16 and not (widen and isinstance(zv, _LazyRows))):
            raise ValueError(f"reference must have the shape and dtype of logits {tuple(xv.shape)} {xv.dtype}, "
                             f"got {tuple(zv.shape)} {zv.dtype}")
        z2, _ = _rows_view(zv, "reference")
    t_host = host_copy(target)
    t = _checks.class_targets(_checks.as_array("target", t_host), lead, v, plan.ignore_index)
    counted = t != plan.ignore_index
    local = np.where(counted, t, -1)
    dtype = np.dtype(np.float64) if np.dtype(xv.dtype) == np.float64 else np.dtype(np.float32)
    st = np.full((rows, _state.width(False)), np.nan)
    ix = np.zeros((rows, 3), dtype=np.int64)
    if rows:
        stream = call.ensure_stream()
        st_d = cuda.to_device(st, stream=stream)
        ix_d = cuda.to_device(ix, stream=stream)
        t_d = cuda.to_device(local, stream=stream)
        kern = _registry.kernel("cuda", "evaluate")
        no_ref = cuda.device_array((0, v), dtype=dtype if widen else np.dtype(xv.dtype), stream=stream)
        step, capped = None, None
        if plan.softcap is not None:
            step = max(1, min(rows, SOFTCAP_DEVICE_BYTES // (v * dtype.itemsize)))
            _keep, capped = interop.empty_like_lib((step, v), dtype, call.tag, stream)

        def as_seen(r0, r1, xb):            # the block of logits as the kernels read it
            if capped is None:
                return xb
            softcap_rows(xb, capped[:r1 - r0], plan.softcap, stream=stream)
            return capped[:r1 - r0]

        def run(r0, r1, xb, *zb):
            kern(as_seen(r0, r1, xb), zb[0] if zb else no_ref, t_d[r0:r1], st_d[r0:r1], ix_d[r0:r1], None,
                 stream=stream)

        _by_blocks(stream, rows, [x2] if z2 is None else [x2, z2], run, step, widen=widen)
        st_d.copy_to_host(st, stream=stream)
        ix_d.copy_to_host(ix, stream=stream)
        stream.synchronize()
    if z2 is None or not rows or dtype != np.float64:
        return call, st, ix, t, counted, lead, dtype, None

    def pairs(a, b, fn):                    # fn(r0, r1, x block, z block) over rows [a, b)
        _by_blocks(stream, b - a, [x2[a:b], z2[a:b]],
                   lambda r0, r1, xb, zb: fn(r0, r1, as_seen(a + r0, a + r1, xb), zb), step, widen=widen)

    def mend(rows_):
        _mend_near_kl(st, rows_, dtype, stream, pairs)
    return call, st, ix, t, counted, lead, dtype, mend


#: flagged rows at most this far apart are summed again in one span (the rows between them
#: too: one launch instead of two)
NEAR_SPAN_GAP = 64


def _mend_near_kl(st, rows, dtype, stream, pairs):
    """The KL columns of ``rows`` (``finish_state``'s dict of the float64 device state ``st``)
    summed again by the device ``kl_logits`` kernel, both ways, where the one pass cancelled
    in either direction (``_state.near_kl_rows``, the CPU backends' rule, as
    ``fastdiv.execute.mend_near_kl`` on the host).  The flagged rows are read again by spans
    of consecutive rows (flagged rows up to ``NEAR_SPAN_GAP`` apart share a span), through
    ``pairs(a, b, fn)``: the rows [a, b) by blocks, soft-capped as the state's pass saw them.

    Float64 rows only: the device kernel sums float32 rows' terms in float64, so their one
    pass stays within ~1e-7 of the KL near 0 (5e-8 at 51-300 classes, ``N(0, 1e-4)``, in the
    simulator), where float64 rows lost up to 1.7e-7 (2e-16 summed again)."""
    from numba import cuda

    from ._cuda import kernels

    index = _state.near_kl_rows(st, rows, dtype)
    if index.size == 0:
        return
    mr_d = cuda.device_array(len(st), dtype=dtype, stream=stream)
    rm_d = cuda.device_array(len(st), dtype=dtype, stream=stream)
    for span in np.split(index, np.flatnonzero(np.diff(index) > NEAR_SPAN_GAP) + 1):
        a = int(span[0])

        def run(r0, r1, xb, zb, a=a):
            kernels.kl_logits(xb, zb, 1.0, mr_d[a + r0:a + r1], stream=stream)
            kernels.kl_logits(zb, xb, 1.0, rm_d[a + r0:a + r1], stream=stream)

        pairs(a, int(span[-1]) + 1, run)
    mr, rm = mr_d.copy_to_host(stream=stream), rm_d.copy_to_host(stream=stream)
    stream.synchronize()
    rows["kl_model_ref"][index] = mr[index]
    rows["kl_ref_model"][index] = rm[index]


def to_caller(call, a, shape):
    """A host array (O(rows)) copied to the device as an array of the caller's library."""
    host = np.ascontiguousarray(np.asarray(a).reshape(-1))
    native, view = interop.empty_like_lib(host.shape, host.dtype, call.tag, call.ensure_stream())
    view.copy_to_device(host, stream=call.ensure_stream())
    return call.result(native, view, shape)


def host_copy(a):
    """A device array's host copy (O(rows) or O(V) arrays only); anything else unchanged."""
    return interop.to_device_view(_torch_contiguous(a))[0].copy_to_host() if interop.is_device_array(a) else a


def cross_entropy_with_options(plan, logits, target):
    """``cross_entropy`` with ``z_loss`` / ``softcap`` / ``return_lse`` on cuda.  Class-index
    targets without label smoothing: the device evaluate pass (soft-capped on the device) gives
    each row's nll and lse; the O(rows) finish runs on the host as on the CPU backends, and
    for device logits every returned array goes back to the device in the caller's library.
    Probability targets or label smoothing (without softcap): :func:`_cross_entropy_two_reads`."""
    if plan.target == "probs" or plan.smoothing != 0:
        if plan.softcap is not None:
            from ._registry import BackendUnavailable

            raise BackendUnavailable(
                "on cuda, softcap takes class-index targets without label_smoothing; use a CPU backend for "
                "probability targets or label smoothing with softcap")
        return _cross_entropy_two_reads(plan, logits, target)
    call, st, ix, t, counted, lead, dtype, _ = evaluate_state(plan, logits, target)
    v = int(tuple(logits.shape)[-1])
    w = _host_weights(plan).class_weight(v, dtype)
    res = _state.finish_state(st, ix, counted, (), False)
    loss = _state.hard_loss(res["nll"], counted, t, w)
    to = None if call.tag is None else (lambda a, shape: to_caller(call, a, shape))
    return reduce.cross_entropy_output(plan, loss, res["lse"], counted, lead, dtype, t, w, to)


def _host_weights(plan):
    """The plan with its weights brought to the host (an O(V) copy of device weights)."""
    import dataclasses

    return plan if plan.weight is None else dataclasses.replace(plan, weight=host_copy(plan.weight))


def _cross_entropy_two_reads(plan, logits, target):
    """z_loss / return_lse on cuda for probability targets or label smoothing: the loss from the
    cuda cross-entropy kernel (every core option, reduced on the device) and the per-row lse
    from the cuda logsumexp kernel -- two reads of the logits; the z-loss is finished from the
    lse's O(rows) host copy and goes back to the device like the other results."""
    import dataclasses

    loss = cross_entropy(plan, logits, target)
    lse = per_row_op(dataclasses.replace(plan, op="lse", reduction="none"), [("x", logits)])
    call = _Call()
    call.view("logits", logits)
    lse_host = np.asarray(host_copy(lse))
    lead = lse_host.shape
    if plan.target == "indices":
        counted = np.asarray(host_copy(target)).reshape(lead) != plan.ignore_index
    else:
        counted = np.ones(lead, dtype=bool)
    z_rows = reduce.z_loss_rows(plan.z_loss, lse_host.astype(np.float64).reshape(-1), counted.reshape(-1))
    dtype = np.dtype(lse_host.dtype)
    if plan.reduction == "none":
        z_out = reduce.rows(z_rows, lead, dtype)
    else:
        z_out = reduce.finish(z_rows, lead, plan.reduction, dtype, int(np.count_nonzero(counted)))
    if call.tag is not None:
        z_out = to_caller(call, z_out, lead if plan.reduction == "none" else ())
    return reduce.CrossEntropyOutput(loss, z_out, lse if plan.return_lse else None)


def topk_kl(plan, teacher_indices, teacher_logprobs, student_logits):
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
        idx, t = _checks.topk_teacher(idx, t, lead, v, plan.tail)
        if call.bf16:
            t = t.astype(_checks._bfloat16()).view(np.int16)
        else:
            t = t.astype(np.dtype(z.dtype))
        iv = cuda.to_device(idx)
        tv = cuda.to_device(np.ascontiguousarray(t))
    out_native, out_view = call.empty(rows, _acc_dtype([z], call.bf16))
    stream = call.ensure_stream()
    _by_blocks(stream, rows, [z2], lambda r0, r1, zb: call.k.topk_kl(
        iv[r0:r1], tv[r0:r1], zb, *plan.scalars(v), out_view[r0:r1], None, stream=stream, bf16=call.bf16 or None))
    return _finish(call, out_native, out_view, lead, plan.reduction)
