"""CUDA backend: the registry's 9 per-row kernels on device arrays (numba-cuda).

Arrays are numba device arrays or anything ``numba.cuda.as_cuda_array`` accepts (torch
CUDA tensors, CuPy arrays, any ``__cuda_array_interface__`` exporter), shape ``(rows, V)``,
C-contiguous.  Input dtypes: float32, float64, float16, and bfloat16 handed over as the
raw bits in a uint16 / int16 array (``bf16=None`` infers it from those dtypes; torch:
``t.view(torch.int16)``).  Accumulation is float32 (float64 for float64 input).  ``out``
is a device array of ``rows`` float32 (float64 for float64 input).  ``nthreads`` is
accepted and ignored.  ``stream=`` takes a numba stream (e.g. ``cuda.external_stream(
torch.cuda.current_stream().cuda_stream)``); default: the default stream.  No op
synchronises the host.  Semantics are those of ``fastdiv.reference``.

Importing this module never needs CUDA; ``unavailable_reason()`` says whether kernels
can run (a GPU with a driver, or numba's simulator ``NUMBA_ENABLE_CUDASIM=1``).

Tuning knobs (module constants, read at launch time; tests patch them small):
``TILE_MAX_V``, ``TILE_ROWS``, ``TILE_SMEM``, ``SMALL_BLOCK``, ``SMALL_MAX_V``, ``GROUP_BLOCK``, ``BLOCK``, ``GROUP_MAX_V``, ``SPLIT_MIN_COLS``,
``SPLIT_TARGET_BLOCKS``, ``RED_BLOCK``, ``RED_CHUNK``; ``UNROLL`` is compiled in (kernels
are cached per value).
"""
from __future__ import annotations

import importlib
import importlib.util
import math
import os
import threading
import warnings

import numpy as np

__all__ = [
    "unavailable_reason",
    "lse",
    "entropy_logits",
    "entropy_log_probs",
    "entropy_probs",
    "kl_logits",
    "kl_log_probs",
    "kl_probs",
    "ce_hard",
    "ce_soft",
    "js_logits",
    "js_log_probs",
    "js_probs",
    "topk_kl",
    "device_sum",
    "device_mean",
    "launch_plan",
]

# ---------------------------------------------------------------- tuning knobs
#: V up to which the tile kernel (rows staged in shared memory, one thread per row) is used
TILE_MAX_V = 256
#: rows (= threads) per block of the tile kernel, at most; a multiple of 32
#: (H200 sweep, 1048576 x 51: 64 and 128 beat 256 by 5-10 %; see benchmarks/GPU_RESULTS.md)
TILE_ROWS = 64
#: dynamic shared memory per tile-kernel block (48 KiB: the most a kernel gets without opt-in)
TILE_SMEM = 48 * 1024
#: threads per block of the small-V kernel (a group of G <= 32 lanes per row)
SMALL_BLOCK = 256
#: threads per block of the medium-V kernel (one warp per row)
GROUP_BLOCK = 256
#: threads per block of the large-V kernel (one block per row or row slice); multiple of 32
#: (H200 sweep: 128 is best or within 1 % of best for lse and KL, float32 and bfloat16)
BLOCK = 128
#: V up to which the small kernel (8 values per lane, <= 32 lanes per row) is used; <= 256
SMALL_MAX_V = 256
#: V above which one block (not one warp) reads a row
GROUP_MAX_V = 4096
#: fewest columns a row slice may have when few rows are split across blocks
SPLIT_MIN_COLS = 16384
#: blocks wanted in flight before rows are split (None: 4 per multiprocessor)
SPLIT_TARGET_BLOCKS = None
#: 16-byte loads in flight per input and thread in the group / block kernels (compiled in);
#: None: 4 for one-input ops, 2 for two-input ops (fewer registers)
UNROLL = None
#: threads of the device reduction kernels (power of two <= 1024)
RED_BLOCK = 256
#: elements per block of the first reduction pass
RED_CHUNK = 8192

_lock = threading.Lock()
_cuda = None
_kernel_cache: dict = {}
_sm_count = None


def _import_cuda():
    global _cuda
    if _cuda is None:
        from numba import cuda

        _cuda = cuda
    return _cuda


def unavailable_reason():
    """``None`` when numba.cuda can run kernels here, else a sentence saying why (never raises)."""
    try:
        if importlib.util.find_spec("numba_cuda") is None:
            return "numba-cuda is not installed (pip install 'fastdiv[cuda]')"
        sim = os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0")
        try:
            cuda = _import_cuda()
        except Exception as exc:  # bindings missing, broken install, ...
            return f"numba.cuda could not be imported ({type(exc).__name__}: {exc})"
        from . import intrinsics

        if intrinsics.SIM:
            return None
        if not cuda.is_available():
            if sim:
                return ("NUMBA_ENABLE_CUDASIM=1 was set after numba was imported, so the real CUDA "
                        "target loaded and found no GPU (call numba.core.config.reload_config() "
                        "before importing numba.cuda)")
            why = ""
            try:
                from numba.cuda.cudadrv.driver import driver

                err = getattr(driver, "initialization_error", None)
                if err:
                    why = f": {err}"
            except Exception:
                pass
            return f"no usable CUDA driver or GPU was found{why}"
        try:
            cc = cuda.get_current_device().compute_capability
        except Exception as exc:
            return f"the CUDA device could not be opened ({type(exc).__name__}: {exc})"
        if tuple(cc) < (5, 0):
            return f"the GPU's compute capability {cc} is below 5.0"
        try:  # what the first kernel compilation imports (numba-cuda 0.30 breaks on numpy 2.5)
            importlib.import_module("numba.cuda.np.arrayobj")
        except Exception as exc:
            import numba_cuda

            return (f"numba-cuda {numba_cuda.__version__} cannot compile kernels with numpy "
                    f"{np.__version__} ({type(exc).__name__}: {exc}); install numpy<2.5")
        return None
    except Exception as exc:  # pragma: no cover - belt and braces: never raise
        return f"the cuda backend failed to initialise ({type(exc).__name__}: {exc})"


# ------------------------------------------------------------------ array plumbing


def _dev(a, name):
    """A numba device array view of ``a`` (no copy)."""
    _import_cuda()
    from .interop import _is_numba, to_device_view

    if _is_numba(a):
        return a

    try:
        view, _tag = to_device_view(a)
    except TypeError as exc:
        raise TypeError(f"{name} must be a CUDA device array, got {type(a).__name__}") from exc
    return view


def _kind(dtype, bf16, name):
    dt = np.dtype(dtype)
    if bf16 is None:
        bf16 = dt in (np.dtype(np.uint16), np.dtype(np.int16))
    if bf16:
        if dt not in (np.dtype(np.uint16), np.dtype(np.int16)):
            raise TypeError(f"{name}: bf16=True needs the raw bits as uint16 or int16, got {dt}")
        return "bf16"
    if dt == np.float32:
        return "f32"
    if dt == np.float64:
        return "f64"
    if dt == np.float16:
        return "f16"
    raise TypeError(f"{name} must be float32, float64, float16 or bf16 bits (uint16/int16), got {dt}")


def _ptr(a):
    try:
        return int(a.__cuda_array_interface__["data"][0])
    except Exception:
        return int(a.__array_interface__["data"][0])  # simulator arrays


def _flat(a, name):
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (rows, V), got shape {a.shape}")
    if not a.is_c_contiguous():
        raise ValueError(f"{name} must be C-contiguous")
    return a.reshape(a.shape[0] * a.shape[1]) if a.size else a


def _sm():
    global _sm_count
    if _sm_count is None:
        try:
            _sm_count = int(_import_cuda().get_current_device().MULTIPROCESSOR_COUNT)
        except Exception:
            _sm_count = 1
    return _sm_count


#: the ops that read two inputs (their accumulators' NIN = 2): fewer loads in flight (UNROLL)
_TWO_INPUT = ("kl_logits", "kl_log_probs", "kl_probs", "ce_soft")


def _get(name, kind, has_w):
    unroll = int(UNROLL) if UNROLL is not None else (2 if name in _TWO_INPUT else 4)
    key = (name, kind, bool(has_w), unroll)
    k = _kernel_cache.get(key)
    if k is None:
        with _lock:
            k = _kernel_cache.get(key)
            if k is None:
                k = _make(name, kind, has_w, unroll)
                _kernel_cache[key] = k
    return k


def _make(name, kind, has_w, unroll):
    """Every launch shape's kernel for op ``name`` on input kind ``kind``, with its ``op``
    (accumulators.py) and ``kind`` (loaders.py)."""
    _import_cuda()
    from . import long_rows, short_rows
    from .accumulators import make_op
    from .loaders import Kind

    kd = Kind(kind)
    op = make_op(name, kd, has_w)
    return dict(short_rows.make_kernels(op, kd), **long_rows.make_kernels(op, kd, unroll), op=op, kind=kd)


_dummy_cache: dict = {}


def _dummy(dtype, ncols=None):
    """A 1-element device array (``ncols``: of shape ``(1, ncols)``) standing in for an absent
    argument (types stay stable)."""
    dt = np.dtype(dtype)
    key = (dt.str, ncols)
    a = _dummy_cache.get(key)
    if a is None:
        a = _import_cuda().to_device(np.zeros(1 if ncols is None else (1, ncols), dtype=dt))
        _dummy_cache[key] = a
    return a


_scratch: dict = {}


def _scratch_array(shape, dtype, stream):
    """Grow-only scratch per (stream, dtype): no allocation in steady state."""
    cuda = _import_cuda()
    handle = getattr(stream, "handle", None)
    try:
        handle = int(getattr(handle, "value", handle) or 0)
    except Exception:
        handle = id(stream)
    key = (handle, np.dtype(dtype).str, shape[1:])
    a = _scratch.get(key)
    if a is None or a.shape[0] < shape[0]:
        a = cuda.device_array((max(shape[0], 64),) + tuple(shape[1:]), dtype=dtype)
        _scratch[key] = a
    return a[: shape[0]]


def _launch(kern, grid, block, stream, args, smem=0):
    if grid <= 0:
        return
    if grid < 128:  # numba warns about small grids; fine for us (tiny problems)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kern[grid, block, stream, smem](*args)
    else:
        kern[grid, block, stream, smem](*args)


def _pow2_at_least(n):
    p = 1
    while p < n:
        p <<= 1
    return p


def launch_plan(rows, V, vw=4, nin=1, accb=4):
    """``(mode, grid, block, extra)`` the ops would use for ``rows x V`` (also for tests).

    ``vw``: elements per 16 bytes, ``nin``: inputs read, ``accb``: bytes per accumulated value.
    """
    K = 8  # short_rows.SMALL_K (not imported: this module loads without numba-cuda)
    if V <= TILE_MAX_V:
        T = min(int(TILE_ROWS), (int(TILE_SMEM) // (nin * accb) - 2 * vw) // V) // 32 * 32
        if T >= 32:
            cap = T * V + 2 * vw
            return "tile", -(-rows // T), T, {"T": T, "cap": cap, "smem": nin * cap * accb}
    if V <= min(SMALL_MAX_V, K * 32):
        G = _pow2_at_least(max(1, -(-V // K)))
        block = max(SMALL_BLOCK, G)
        gpb = block // G
        return "small", -(-rows // gpb), block, {"G": G}
    if V <= GROUP_MAX_V:
        block = max(GROUP_BLOCK, 32)
        gpb = block // 32
        return "group", -(-rows // gpb), block, {"G": 32}
    target = SPLIT_TARGET_BLOCKS if SPLIT_TARGET_BLOCKS is not None else 4 * _sm()
    nsplit = 1
    if rows < target:
        nsplit = max(1, min(-(-target // max(rows, 1)), V // max(SPLIT_MIN_COLS, 1)))
    clen = -(-V // nsplit)
    clen = -(-clen // 16) * 16
    nsplit = -(-V // clen)
    return "block", rows * nsplit, BLOCK, {"nsplit": nsplit, "clen": clen}


def _run(name, x, z, tgt, wgt, out, ign, p0, p1, stream, bf16, xname="x", zname="z"):
    _import_cuda()
    x = _dev(x, xname)
    rows, V = (int(s) for s in x.shape) if x.ndim == 2 else (None, None)
    xf = _flat(x, xname)
    kind = _kind(x.dtype, bf16, xname)
    if z is not None:
        z = _dev(z, zname)
        if tuple(z.shape) != tuple(x.shape):
            raise ValueError(f"{zname} has shape {tuple(z.shape)}, expected {tuple(x.shape)}")
        if _kind(z.dtype, bf16, zname) != kind:
            raise TypeError(f"{zname} has dtype {z.dtype}, expected the dtype of {xname} ({x.dtype})")
        zf = _flat(z, zname)
    else:
        zf = xf
    out = _dev(out, "out")
    acc = np.float64 if kind == "f64" else np.float32
    if out.ndim != 1 or out.shape[0] != rows:
        raise ValueError(f"out must have shape ({rows},), got {tuple(out.shape)}")
    if out.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"out must be float32 or float64, got {out.dtype}")
    if rows == 0:
        return out
    if V < 1:
        raise ValueError("V must be >= 1")
    has_w = wgt is not None
    if has_w:
        wgt = _dev(wgt, "weight")
        if wgt.ndim != 1 or wgt.shape[0] != V:
            raise ValueError(f"weight must have shape ({V},), got {tuple(wgt.shape)}")
        if wgt.dtype.kind != "f":
            raise TypeError(f"weight must be a float array, got {wgt.dtype}")
    else:
        wgt = _dummy(acc)
    if tgt is not None:
        tgt = _dev(tgt, "target")
        if tgt.ndim != 1 or tgt.shape[0] != rows:
            raise ValueError(f"target must have shape ({rows},), got {tuple(tgt.shape)}")
        if tgt.dtype.kind not in "iu":
            raise TypeError(f"target must be an integer array, got {tgt.dtype}")
    else:
        tgt = _dummy(np.int64)
    stream = 0 if stream is None else stream
    ks = _get(name, kind, has_w)
    vw = ks["kind"].vw
    vec_ok = (_ptr(xf) % 16 == 0) and (_ptr(zf) % 16 == 0)
    p0 = acc(p0)
    p1 = acc(p1)
    ign = np.int64(ign)
    mode, grid, block, extra = launch_plan(rows, V, vw, ks["op"].NIN, np.dtype(acc).itemsize)
    if mode == "tile":
        _launch(ks["tile"], grid, block, stream,
                (xf, zf, tgt, wgt, out, np.int64(rows), np.int64(V), np.int64(extra["T"]), np.int64(extra["cap"]),
                 vec_ok, np.int64(rows * V), ign, p0, p1), extra["smem"])
    elif mode == "small":
        _launch(ks["small"], grid, block, stream,
                (xf, zf, tgt, wgt, out, np.int64(rows), np.int64(V), np.int64(extra["G"]), ign, p0, p1))
    elif mode == "group":
        _launch(ks["group"], grid, block, stream,
                (xf, zf, tgt, wgt, out, np.int64(rows), np.int64(V), np.int64(extra["G"]), vec_ok, ign, p0, p1))
    else:
        nsplit, clen = extra["nsplit"], extra["clen"]
        if nsplit == 1:
            part = _dummy(acc, ks["op"].NS)
        else:
            part = _scratch_array((rows * nsplit, ks["op"].NS), acc, stream)
        _launch(ks["block"], grid, block, stream,
                (xf, zf, tgt, wgt, out, part, np.int64(rows), np.int64(V), np.int64(nsplit),
                 np.int64(clen), vec_ok, ign, p0, p1))
        if nsplit > 1:
            mb = 128
            _launch(ks["merge"], -(-rows // mb), mb, stream,
                    (part, out, np.int64(rows), np.int64(nsplit), xf, tgt, wgt, np.int64(V), ign, p0, p1))
    return out


# ----------------------------------------------------------------------- the 9 ops


def lse(x, out, nthreads=None, *, stream=None, bf16=None):
    """out[i] = logsumexp(x[i])."""
    return _run("lse", x, None, None, None, out, 0, 0.0, 0.0, stream, bf16)


def entropy_logits(x, scale, out, nthreads=None, *, stream=None, bf16=None):
    """out[i] = H(softmax(scale * x[i]))."""
    if scale != 1.0:
        return _run_div("entropy", x, None, out, stream, bf16, sc=scale)
    return _run("entropy_logits", x, None, None, None, out, 0, 0.0, 0.0, stream, bf16)


def entropy_log_probs(l, out, nthreads=None, *, stream=None, bf16=None):  # noqa: E741
    """out[i] = -sum exp(l) * l (literal, no renormalising)."""
    return _run("entropy_log_probs", l, None, None, None, out, 0, 0.0, 0.0, stream, bf16, "l")


def entropy_probs(p, out, nthreads=None, *, stream=None, bf16=None):
    """out[i] = -sum p log p (0 log 0 = 0)."""
    return _run("entropy_probs", p, None, None, None, out, 0, 0.0, 0.0, stream, bf16, "p")


def kl_logits(x, z, scale, out, nthreads=None, *, stream=None, bf16=None):
    """out[i] = D(softmax(scale * x[i]) || softmax(scale * z[i])), one read of both rows."""
    if scale != 1.0:
        return _run_div("kl", x, z, out, stream, bf16, sc=scale)
    out = _run("kl_logits", x, z, None, None, out, 0, 0.0, 0.0, stream, bf16)
    # rows of nearly equal distributions, marked -inf by the tuned kernel, are recomputed
    # without cancellation, in float64 (a block per marked row; the others return at once)
    _run_div("kl_exact", x, z, out, stream, bf16)
    return out


def kl_log_probs(a, b, out, nthreads=None, *, stream=None, bf16=None):
    """out[i] = sum exp(a) * (a - b)."""
    return _run("kl_log_probs", a, b, None, None, out, 0, 0.0, 0.0, stream, bf16, "a", "b")


def kl_probs(p, q, out, nthreads=None, *, stream=None, bf16=None):
    """out[i] = sum p * (log p - log q)."""
    return _run("kl_probs", p, q, None, None, out, 0, 0.0, 0.0, stream, bf16, "p", "q")


def ce_hard(x, target, ignore_index, weight, eps, out, nthreads=None, *, stream=None, bf16=None):
    """Hard-label cross-entropy per row (torch's rule), 0 on ignored rows.

    ``weight`` may be None (unweighted: a cheaper kernel than passing ones).
    """
    eps = float(eps)
    x_dev = _dev(x, "x")
    V = int(x_dev.shape[1]) if x_dev.ndim == 2 else 1
    if eps == 0.0:
        return _run("ce_hard", x_dev, None, target, weight, out, ignore_index, 0.0, 0.0, stream, bf16)
    return _run("ce_hard_smooth", x_dev, None, target, weight, out, ignore_index, eps, eps / V, stream, bf16)


def ce_soft(x, p, weight, alpha, beta, scale, out, nthreads=None, *, stream=None, bf16=None):
    """out[i] = sum_j w_j q_j (lse - s x_j), q = alpha * p + beta, s = scale; ``weight`` may be None."""
    if scale != 1.0:
        return _run_div("ce_soft", x, p, out, stream, bf16, sc=scale, a=alpha, b=beta, weight=weight)
    return _run("ce_soft", x, p, None, weight, out, 0, float(alpha), float(beta), stream, bf16, "x", "p")


# ---------------------------------------------------------- device-side reductions


def _reduce(values, target, ignore_index, weight, out, stream, mean, empty):
    cuda = _import_cuda()
    values = _dev(values, "values")
    if values.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {tuple(values.shape)}")
    n = int(values.shape[0])
    odt = values.dtype if values.dtype in (np.dtype(np.float32), np.dtype(np.float64)) else np.dtype(np.float32)
    stream = 0 if stream is None else stream
    if out is None:
        out = cuda.device_array(1, dtype=odt, stream=stream)
    else:
        out = _dev(out, "out")
        if out.size < 1:
            raise ValueError("out must have at least one element")
    has_t = target is not None
    has_w = weight is not None
    tgt = _dev(target, "target") if has_t else _dummy(np.int64)
    if has_t and (tgt.ndim != 1 or tgt.shape[0] != n):
        raise ValueError(f"target must have shape ({n},), got {tuple(tgt.shape)}")
    wgt = _dev(weight, "weight") if has_w else _dummy(np.float32)
    chunk = max(int(RED_CHUNK), 1)
    nb = max(1, -(-n // chunk))
    if nb > 4096:
        chunk = -(-n // 4096)
        nb = -(-n // chunk)
    part = _scratch_array((nb, 2), np.float64, stream)
    blk = int(RED_BLOCK)
    from .reductions import k_reduce_final, k_reduce_partial

    _launch(k_reduce_partial, nb, blk, stream,
            (values, np.int64(n), tgt, wgt, has_t, has_w, np.int64(ignore_index), np.int64(chunk), part))
    _launch(k_reduce_final, 1, min(1024, max(blk, 32)), stream,
            (part, np.int64(nb), out, bool(mean), np.float64(empty)))
    return out


def device_sum(values, out=None, *, stream=None):
    """Deterministic sum of a 1-D device array into a 1-element device array (float64 accumulation)."""
    return _reduce(values, None, 0, None, out, stream, False, 0.0)


def device_mean(values, target=None, ignore_index=-100, weight=None, out=None, *, stream=None, empty=math.nan):
    """Deterministic ``sum(values) / denominator`` into a 1-element device array.

    The denominator is ``len(values)`` without ``target``; with ``target`` it is the number
    of rows whose target is not ``ignore_index``, or ``sum(weight[target])`` over those rows
    (torch's weighted-mean rule for cross-entropy).  A zero denominator gives ``empty``.
    """
    return _reduce(values, target, ignore_index, weight, out, stream, True, empty)


# ------------------------------------------------------- divergence family (issue 5)


def _run_div(op, x, z, out, stream, bf16, *, sc=1.0, a=0.0, b=0.0, weight=None, idx=None, t=None):
    """Validate and launch one op of ``divergences.py`` (x: (rows, V); z, t: see the ops)."""
    from . import divergences as DV

    _import_cuda()
    x = _dev(x, "x")
    xf = _flat(x, "x")
    rows, V = (int(s) for s in x.shape)
    kind = _kind(x.dtype, bf16, "x")
    acc = np.float64 if kind == "f64" else np.float32
    out = _dev(out, "out")
    if out.ndim != 1 or out.shape[0] != rows or np.dtype(out.dtype) != np.dtype(acc):
        raise ValueError(f"out must be a {np.dtype(acc)} array of shape ({rows},), got {out.dtype} {tuple(out.shape)}")
    if rows and V < 1:
        raise ValueError("V must be >= 1")
    zf = xf
    if z is not None:
        z = _dev(z, "z")
        if tuple(z.shape) != tuple(x.shape):
            raise ValueError(f"z has shape {tuple(z.shape)}, expected {tuple(x.shape)}")
        if _kind(z.dtype, bf16, "z") != kind:
            raise TypeError(f"z has dtype {z.dtype}, expected the dtype of x ({x.dtype})")
        zf = _flat(z, "z")
    K = 1
    idxf = _dummy(np.int64)
    tf = xf
    if idx is not None:
        idx = _dev(idx, "idx")
        t = _dev(t, "t")
        if idx.ndim != 2 or idx.shape[0] != rows or np.dtype(idx.dtype) != np.int64 or tuple(t.shape) != tuple(idx.shape):
            raise ValueError(f"idx must be int64 of shape ({rows}, k) and t of its shape")
        if _kind(t.dtype, bf16, "t") != kind:
            raise TypeError(f"t has dtype {t.dtype}, expected the dtype of the student logits ({x.dtype})")
        K = int(idx.shape[1])
        idxf = _flat(idx, "idx")
        tf = _flat(t, "t")
    w = None
    if weight is not None:
        w = _dev(weight, "weight")
        if w.ndim != 1 or w.shape[0] != V or np.dtype(w.dtype) != np.dtype(acc):
            raise ValueError(f"weight must be a {np.dtype(acc)} array of shape ({V},)")
    opcode = {"entropy": DV.OP_ENTROPY, "kl": DV.OP_KL, "ce_soft": DV.OP_CE_SOFT, "js_logits": DV.OP_JS_LOGITS,
              "js_log_probs": DV.OP_JS_LOG_PROBS, "js_probs": DV.OP_JS_PROBS, "topk": DV.OP_TOPK,
              "kl_exact": DV.OP_KL_EXACT}[op]
    DV.launch(opcode, kind, xf, zf, w if w is not None else _dummy(acc), weight is not None, idxf, tf, out, rows,
              V, K, float(sc), float(a), float(b), 0 if stream is None else stream)
    return out


def js_logits(x, z, beta, scale, out, nthreads=None, *, stream=None, bf16=None):
    """out[i] = generalized JSD of softmax(scale x[i]) and softmax(scale z[i]), 0 < beta < 1."""
    return _run_div("js_logits", x, z, out, stream, bf16, sc=scale, a=beta)


def js_log_probs(a, b, beta, out, nthreads=None, *, stream=None, bf16=None):
    """out[i] = generalized JSD of the log-probability rows a[i], b[i] (taken literally)."""
    return _run_div("js_log_probs", a, b, out, stream, bf16, a=beta)


def js_probs(p, q, beta, out, nthreads=None, *, stream=None, bf16=None):
    """out[i] = generalized JSD of the probability rows p[i], q[i]."""
    return _run_div("js_probs", p, q, out, stream, bf16, a=beta)


def topk_kl(idx, t, z, bucket, out, nthreads=None, *, stream=None, bf16=None):
    """out[i] = D(teacher || softmax(z[i])) from the sorted top-k classes idx[i] (int64) and
    log-probabilities t[i]; bucket: 0 renormalizes the teacher, 1 adds one tail class.  A row
    whose classes are not strictly increasing in [0, V) gives NaN."""
    return _run_div("topk", z, None, out, stream, bf16, b=float(bool(bucket)), idx=idx, t=t)
