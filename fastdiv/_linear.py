"""``fastdiv.linear``: the logits of a linear head, never materialized.

``linear(hidden, weight, bias)`` stands for ``hidden @ weight.T + bias`` (``torch.nn.Linear``'s
layout: ``weight`` is ``(V, D)``) and goes wherever logits go.  The execution layer
(``fastdiv.execute.run_rows``) asks it for blocks of rows; each block is one matmul by the
input's own library (numpy's BLAS for numpy arrays, torch's for torch tensors, bfloat16
included) into a buffer reused for the whole call, read at once by the same per-row kernels as
stored logits, so every option and reduction is the one of the function called and the
result equals that function on the materialized logits up to the matmul's rounding (a block's
rows may be summed in another order by the BLAS than the whole matrix's).

Memory: one block of ``block_rows`` rows x V (``BLOCK_BYTES`` by default) instead of
rows x V; the hidden states and the weight are read in place.  The ops whose per-row state
merges across classes (lse, entropy, KL, hard-label cross-entropy and evaluate) go by
vocabulary tiles instead (``LinearLogits.tiles``, ``fastdiv.execute``): each tile is every row by a slice of
the classes, so the weight is read once per call instead of once per row block.  numpy heads
compute the tiles' row blocks on every thread at once, each thread's matmuls on one BLAS
thread and its kernels on its own core (``LinearLogits.shares``).

Device arrays (torch CUDA, CuPy, numba) make a device head: ``fastdiv._gpu`` asks it for row
blocks or tiles (``compute_device``), each one matmul by the arguments' library into a device
buffer read by the cuda kernels; the tiles' states merge by the host's ``merge_tiles``.
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np

from . import _blas, _checks, _interop, _lazy, execute, plan as _plan
from ._typing import ArrayLike

__all__ = ["linear", "LinearLogits"]

#: bytes of logits per block.  Each block is one matmul, which reads the whole weight once:
#: blocks of many rows amortise that read (at D = 256, V = 50257 in float32 on the 2-core
#: Zen 4, 2026-12-05: 64-row blocks cost 1.5x the whole matmul, 256-row blocks 1.07x), and
#: the block is the extra memory.  32 MiB is 160 rows at V = 50257 in float32.
BLOCK_BYTES = 32 << 20

#: the narrowest vocabulary tile: rows x TILE_MIN logits at least per matmul.  Tiles of every
#: row and a slice of the classes read the weight once per call, where row blocks read it once
#: per block: at 2048 x D 256 -> V 50257 float32 on the 2-core Zen 4 (2026-12-05), torch's
#: matmul by 4096-class tiles took 0.30 s against 0.44 s whole and 0.60 s by 160-row blocks;
#: numpy's 0.29 s against 0.26-0.28 s whole and 0.33 s by blocks (2048- to 8192-class tiles
#: alike).
TILE_MIN = 4096

#: a tile chosen here has rows an odd multiple of this many bytes apart: just under the width
#: that fills BLOCK_BYTES, never a power of two.  At 2048 x D 256 -> V 50257 float32 (2-core
#: Zen 4, 2026-12-06) the 13 tile matmuls by 4096 classes (16 KiB apart, every row of the
#: buffer on the same cache sets) took 295-306 ms with numpy (OpenBLAS) and 306 ms with torch
#: (MKL), by 4032 (63 x 256 bytes) 275-288 ms and 288 ms, against 260-268 ms for numpy's
#: whole matmul (benchmarks/NOTES.md).
TILE_STRIDE_UNIT = 256

#: kernel threads on numpy blocks while numpy's BLAS runs threaded.  numpy's BLAS (OpenBLAS;
#: MKL alike) keeps its worker threads spinning for a while after each matmul, so kernels on
#: every core lose one of them to a spinner: cross-entropy on 160-row blocks took 1.92x the
#: warm whole matmul with 2 kernel threads, 1.24x with 1 (2-core Zen 4, 2026-12-05,
#: benchmarks/linear_head.py).  Vocabulary tiles avoid it where the BLAS's threads can be set
#: (``LinearLogits.shares``, ``fastdiv._blas``).  torch's pool does not spin as long: its
#: blocks keep every thread (1.21x with 2, 1.28x with 1).
NUMPY_KERNEL_THREADS = 1


def _library(name, a):
    """``(library, on_device)`` of an argument: ``"numpy"`` or ``"torch"`` on the host,
    ``"torch"``, ``"cupy"`` or ``"numba"`` for CUDA arrays."""
    if _interop._is_torch(a):
        return "torch", bool(a.is_cuda)
    if _plan.on_device(a):
        from ._cuda import interop

        if interop._is_cupy(a):
            return "cupy", True
        if interop._is_numba(a) and type(a).__module__.startswith("numba"):
            return "numba", True
        raise TypeError(f"{name} is a {type(a).__module__}.{type(a).__name__} device array; fastdiv.linear "
                        "reads torch CUDA tensors, CuPy arrays and numba device arrays on the device")
    return "numpy", False


def _device_of(a):
    """The CUDA device index of a device argument (None for numba arrays: their context's)."""
    if _interop._is_torch(a):
        return a.device.index or 0
    return int(a.device.id) if hasattr(a, "device") and hasattr(a.device, "id") else None


def _numpy_dtype(name, a):
    """The numpy dtype of an argument (a torch tensor's bfloat16 as ml_dtypes')."""
    if _interop._is_torch(a):
        if str(a.dtype) == "torch.bfloat16":
            bf16 = _checks._bfloat16()
            if bf16 is None:
                raise TypeError(f"{name} is a bfloat16 tensor; install ml_dtypes to read it")
            return bf16
        import torch

        return torch.empty(0, dtype=a.dtype).numpy().dtype
    return a.dtype


def _arguments(hidden, weight, bias):
    """``(library, on_device, hidden, weight, bias)`` checked: one library on one device,
    float dtypes, the shapes of a head ``(V, D)`` with ``hidden (..., D)`` and ``bias (V,)``."""
    lib, dev = _library("hidden", hidden)
    where = f"a CUDA {lib} array" if dev else f"a {lib} array"
    for name, a in (("weight", weight), ("bias", bias)):
        if a is None:
            continue
        if _library(name, a) != (lib, dev):
            raise TypeError(f"hidden is {where} but {name} is a {type(a).__module__}.{type(a).__name__}"
                            f"{' on the device' if _plan.on_device(a) else ''}; pass hidden, weight and bias "
                            "from the same library, on the same device")
        if dev and _device_of(a) != _device_of(hidden):
            raise ValueError(f"{name} is on CUDA device {_device_of(a)} but hidden on {_device_of(hidden)}; "
                             "put the hidden states and the head on one device")
    if lib == "numpy":
        hidden, weight = _checks.as_array("hidden", hidden), _checks.as_array("weight", weight)
        bias = None if bias is None else _checks.as_array("bias", bias)
    elif lib == "torch":
        hidden, weight = hidden.detach(), weight.detach()
        bias = None if bias is None else bias.detach()
    for name, a in (("hidden", hidden), ("weight", weight), ("bias", bias)):
        if a is not None:
            _checks.compute_dtype(name, _numpy_dtype(name, a))
            if (lib == "torch" or dev) and a.dtype != hidden.dtype:    # torch's matmul does not promote
                raise TypeError(f"{name} is {a.dtype} but hidden is {hidden.dtype}; the {lib} matmul needs one "
                                "dtype (as torch.nn.functional.linear): convert one of them")
    if lib == "numba" and np.dtype(hidden.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"hidden is a numba device array of {hidden.dtype}; numba heads compute float32 or "
                        "float64 logits (use torch or CuPy for 16-bit heads)")
    if len(weight.shape) != 2:
        raise ValueError(f"weight must be 2-D (V, D) as torch.nn.Linear stores it, got shape {tuple(weight.shape)}")
    v, d = (int(s) for s in weight.shape)
    if v == 0:
        raise ValueError(f"weight has no rows (shape {tuple(weight.shape)}): V must be >= 1")
    hshape = tuple(int(s) for s in hidden.shape)     # (a simulator's shape has no negative indexing)
    if not hshape or hshape[-1] != d:
        raise ValueError(f"hidden must have D = {d} features in its last axis (weight is (V, D) = ({v}, {d})), "
                         f"got shape {tuple(hidden.shape)}")
    if bias is not None and tuple(bias.shape) != (v,):
        raise ValueError(f"bias must have shape (V,) = ({v},) to match weight ({v}, {d}), got {tuple(bias.shape)}")
    return lib, dev, hidden, weight, bias


class LinearLogits(_lazy.LazyLogits):
    """The logits ``hidden @ weight.T + bias`` (soft-capped), computed block by block.

    Made by :func:`linear`, which takes the same arguments (documented there; checked here);
    pass it wherever a function takes logits.  ``shape`` is ``hidden.shape[:-1] + (V,)``;
    ``dtype`` the matmul's result dtype (the compute dtype, float32 or float64, when
    soft-capped).  :meth:`materialize` builds the whole array (for checks: it is what the
    functions never do).
    """

    #: the logits' factor after the matmul (``scaled``; 1: none)
    scale = 1.0

    def __init__(self, hidden, weight, bias=None, *, softcap=None, block_rows=None, vocab_tile=None):
        self.library, self.on_device, self.hidden, self.weight, self.bias = _arguments(hidden, weight, bias)
        self.softcap = _plan._softcap(softcap)
        for name, value in (("block_rows", block_rows), ("vocab_tile", vocab_tile)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise ValueError(f"{name} must be None or a positive integer, got {value!r}")
        self._block_rows = None if block_rows is None else int(block_rows)
        self._vocab_tile = None if vocab_tile is None else int(vocab_tile)
        v, d = (int(s) for s in self.weight.shape)
        self.shape = tuple(int(s) for s in self.hidden.shape)[:-1] + (int(v),)
        if self.library == "numba" and not self.hidden.is_c_contiguous():
            raise ValueError("hidden must be C-contiguous as a numba device array (numba cannot reshape it "
                             "to rows x D otherwise)")
        self._h = self.hidden.reshape(-1, d)             # rows x D (a copy only if not mergeable)
        if self.library == "torch":
            import torch

            self._wt = self.weight.t()
            self._tdtype = self.hidden.dtype
            natural = _numpy_dtype("hidden", torch.empty(0, dtype=self._tdtype))
        else:
            # (numba's device .T is a copy, not a view: its heads never use it)
            self._wt = None if self.library == "numba" else self.weight.T
            natural = np.result_type(*(a.dtype for a in (self.hidden, self.weight, self.bias) if a is not None))
        if self.library == "numpy":
            self.kernel_threads = NUMPY_KERNEL_THREADS
        self.natural = np.dtype(natural)
        self.dtype = _checks.compute_dtype("hidden", natural) if self.softcap is not None else self.natural

    def __repr__(self):
        v, d = self.weight.shape
        where = "cuda" if self.on_device else "host"
        return (f"LinearLogits(rows={self.rows}, D={d}, V={v}, dtype={self.dtype}, library={self.library} ({where}), "
                f"bias={self.bias is not None}, softcap={self.softcap})")

    def block_rows(self, itemsize):
        if self._block_rows is not None:
            return self._block_rows
        return max(1, min(self.rows, BLOCK_BYTES // (self.shape[-1] * max(itemsize, self.natural.itemsize))))

    def tiles(self, itemsize):
        """Every row (or as many as ``BLOCK_BYTES`` allows at ``TILE_MIN`` classes) by as many
        classes as fit in ``BLOCK_BYTES``, rounded down to rows an odd multiple of
        ``TILE_STRIDE_UNIT`` bytes apart (unless ``vocab_tile`` was given); None where one
        tile would hold whole rows (row blocks do the same without merging) or when
        ``block_rows`` was given."""
        if self._block_rows is not None:
            return None
        v, size = self.shape[-1], max(itemsize, self.natural.itemsize)
        width = self._vocab_tile or TILE_MIN
        rows = max(1, min(self.rows, BLOCK_BYTES // (width * size)))
        if self._vocab_tile is None:
            width = max(width, BLOCK_BYTES // (rows * size))
            if width >= v:                # one tile holds whole rows: no need to round it
                return None
            unit = max(1, TILE_STRIDE_UNIT // size)
            k = max(1, width // unit)
            width = (k - 1 if k % 2 == 0 else k) * unit          # an odd multiple of the unit
        return None if width >= v else (rows, width)

    @contextlib.contextmanager
    def shares(self, threads):
        """numpy heads: ``threads`` threads computing row blocks at once, each with its own
        single-threaded matmuls (``fastdiv._blas``: numpy's BLAS held to one thread
        meanwhile), where its thread count can be set; other heads: one block at a time."""
        if self.library != "numpy" or threads < 2 or not _blas.available():
            yield 1
            return
        with _blas.single_threaded():
            yield threads

    def scaled(self, scale):
        """This head with its logits times ``scale`` (1 / temperature), each tile multiplied in
        the compute dtype right after its matmul: the values the kernels form from stored
        logits (``x * scale`` rounded once), with nothing copied, so temperature keeps the
        vocabulary tiles.  None when soft-capped (the cap comes before the temperature) and
        on the device (its tiles are the cuda backend's): those go by row blocks, each scaled
        by the kernel."""
        if self.softcap is not None or self.on_device:
            return None
        if scale == 1.0:
            return self
        head = copy.copy(self)
        head.scale = self.scale * scale
        return head

    def _matmul(self, r0, r1, v0, v1, out, stream=None):
        """``hidden[r0:r1] @ weight[v0:v1].T + bias[v0:v1]`` in the natural dtype, into ``out``
        (C order: a numpy array on the host, the library's own array on the device; numba
        device arrays go through ``fastdiv._cuda.linear`` on ``stream``, every class)."""
        whole = v0 == 0 and v1 == self.shape[-1]
        wt = self._wt if whole or self._wt is None else self._wt[:, v0:v1]
        bias = None if self.bias is None else self.bias if whole else self.bias[v0:v1]
        if self.library == "torch":
            import torch

            if isinstance(out, np.ndarray):       # host tensors write into the caller's numpy buffer
                t_out = torch.from_numpy(out.view(np.int16)).view(self._tdtype) \
                    if out.dtype == _checks._bfloat16() else torch.from_numpy(out)
            else:
                t_out = out
            if bias is None:
                torch.matmul(self._h[r0:r1], wt, out=t_out)
            else:                                # torch.nn.functional.linear's rounding: one addmm
                torch.addmm(bias, self._h[r0:r1], wt, out=t_out)
            return out
        if self.library == "numba":
            from ._cuda.linear import linear_rows

            linear_rows(self._h, self.weight if whole else self.weight[v0:v1], bias, r0, out, stream=stream)
            return out
        if self.library == "cupy":
            import cupy

            with self.hidden.device:               # the arguments' device, whichever is current
                cupy.matmul(self._h[r0:r1], wt, out=out)
                if bias is not None:
                    cupy.add(out, bias, out=out)
            return out
        np.matmul(self._h[r0:r1], wt, out=out)
        if bias is not None:
            np.add(out, bias, out=out)
        return out

    def compute_device(self, r0, r1, buffers, stream, cols=None, widen=False):
        """Rows ``r0 .. r1 - 1`` on the device (``cols = (v0, v1)``: only those classes), as
        the C-order numba view the cuda kernels read (a bfloat16 block as its int16 bits):
        the matmul by the arguments' library into a buffer of ``buffers`` (a dict the caller
        keeps for the call: ``block_rows`` rows, or the first tile's size, allocated on first
        use), then widened to the compute dtype where soft-capped (capped there) or where
        ``widen`` asks (a bfloat16 head as float32, for the cuda evaluate kernel, which reads
        float16).  The library's
        matmul runs on its current stream, the cuda backend's ``stream`` for torch and CuPy."""
        from ._cuda import interop
        from ._cuda.softcap import softcap_rows

        v0, v1 = (0, self.shape[-1]) if cols is None else cols
        n, width = r1 - r0, v1 - v0
        bf16 = self.natural == _checks._bfloat16()
        wide = _checks.compute_dtype("hidden", self.natural) if widen and bf16 else self.dtype
        if buffers.get("size", 0) < n * width:
            rows = n if cols is not None else max(n, min(self.block_rows(wide.itemsize), self.rows))
            buffers["size"] = rows * width
            buffers["natural"] = interop.empty_like_lib(rows * width, self.natural, self.device_tag(), stream)
            if wide != self.natural:
                buffers["wide"] = interop.empty_like_lib(rows * width, wide, self.device_tag(), stream)
        native, view = (a[:n * width].reshape(n, width) for a in buffers["natural"])
        self._matmul(r0, r1, v0, v1, view if self.library == "numba" else native, stream)
        if "wide" in buffers:          # a 16-bit head: widened to float32 (capped there, as on the host)
            out_native, out_view = (a[:n * width].reshape(n, width) for a in buffers["wide"])
            if self.library == "torch":
                out_native.copy_(native)
            else:
                out_native[...] = native
            native, view = out_native, out_view
        if self.softcap is not None:
            softcap_rows(view, view, self.softcap, stream=stream)
        return view

    def device_tag(self):
        """The ``fastdiv._cuda.interop.DeviceTag`` of the hidden states: results come back in
        their library, on its stream."""
        from ._cuda import interop

        return interop.to_device_view(self.hidden)[1]

    def _float64(self, a, lo, hi):
        """Rows ``lo .. hi - 1`` of the weight / hidden / bias as numpy float64."""
        part = a[lo:hi]
        return part.double().numpy() if self.library == "torch" else np.asarray(part, dtype=np.float64)

    @property
    def _float64_rows(self):
        """Rows of D float64 values per 1 MiB: the chunks in which the head's float64 side
        computations (class sums, target logits) read the weight and the hidden states."""
        return max(1, (1 << 20) // (8 * self.weight.shape[1]))

    @property
    def has_class_sums(self):
        return self.softcap is None and not self.on_device and self.scale == 1.0

    def class_sums(self, weight):
        """``hidden @ (weight @ W) + sum_j weight_j b_j`` in float64, the weight read in 1 MiB
        chunks: no pass over the logits (None when soft-capped)."""
        if not self.has_class_sums:
            return None
        v, d = self.weight.shape
        w = np.asarray(weight, dtype=np.float64)
        u = np.zeros(d)
        step = self._float64_rows
        for a in range(0, v, step):
            u += w[a:a + step] @ self._float64(self.weight, a, a + step)
        sb = 0.0
        if self.bias is not None:
            b = self._float64(self.bias, 0, v)
            with np.errstate(invalid="ignore"):
                sb = float(np.sum(np.where(w == 0, 0.0, w * b)))
        out = np.empty(self.rows)
        for a in range(0, self.rows, step):
            out[a:a + step] = self._float64(self._h, a, a + step) @ u + sb
        return out

    def target_logits(self, r0, r1, target, dtype):
        """One dot product per row in float64, rounded to the matmul's dtype (then ``dtype``):
        the tile's own value up to the BLAS's summation order (a few units in the last place
        of float32; bfloat16 logits are rounded from float32 sums either way)."""
        ok = target >= 0
        idx = np.where(ok, target, 0)
        vals = np.empty(r1 - r0)
        step = self._float64_rows
        for a in range(0, r1 - r0, step):
            b = min(r1 - r0, a + step)
            sel = idx[a:b]
            if self.library == "torch":
                import torch

                sel = torch.from_numpy(sel)
            h = self._float64(self._h, r0 + a, r0 + b)
            w = self._float64(self.weight[sel], 0, b - a)
            bias = None if self.bias is None else self._float64(self.bias[sel], 0, b - a)
            vals[a:b] = np.einsum("rd,rd->r", h, w) + (0.0 if bias is None else bias)
        vals = vals.astype(self.natural).astype(dtype)
        if self.softcap is not None:
            vals = execute.apply_softcap(vals[:, None], self.softcap, dtype)[:, 0]
        if self.scale != 1.0:
            vals = vals * np.dtype(dtype).type(self.scale)
        return np.where(ok, vals, np.nan).astype(dtype)

    def compute(self, r0, r1, dtype, out=None, cols=None):
        if self.on_device:
            raise TypeError("these fastdiv.linear logits live on the device: the cuda backend reads them "
                            "(compute_device)")
        dtype = np.dtype(dtype)
        v0, v1 = (0, self.shape[-1]) if cols is None else cols
        n, v = r1 - r0, v1 - v0
        if out is None:
            out = np.empty((n, v), dtype=dtype)
        if dtype == self.natural:
            block = self._matmul(r0, r1, v0, v1, out)
        else:
            block = self._matmul(r0, r1, v0, v1, np.empty((n, v), dtype=self.natural))
        if self.softcap is not None:
            return execute.apply_softcap(block, self.softcap, dtype, out=out)
        if block is not out:
            out[...] = block
        if self.scale != 1.0:                  # as the kernels scale stored logits: x * s, rounded once
            np.multiply(out, dtype.type(self.scale), out=out)
        return out

    def materialize(self):
        """The whole logits array ``(..., V)``, as the functions would see it: numpy for host
        arguments, an array of the arguments' library on the device."""
        if not self.on_device:
            return self.compute(0, self.rows, self.dtype).reshape(self.shape)
        from ._cuda import interop

        buffers = {}
        stream = interop.stream_for(self.device_tag())
        if self.rows:
            self.compute_device(0, self.rows, buffers, stream)
        else:
            buffers["natural"] = interop.empty_like_lib(0, self.dtype, self.device_tag(), stream)
        native = buffers.get("wide", buffers["natural"])[0]
        return native[:self.size].reshape(self.shape)


@_interop.native_arrays
def linear(hidden: ArrayLike, weight: ArrayLike, bias: ArrayLike | None = None, *, softcap: float | None = None,
           block_rows: int | None = None, vocab_tile: int | None = None) -> LinearLogits:
    """The logits of a linear head, ``hidden @ weight.T + bias``, to pass in place of logits.

    Every function that takes logits accepts the result, with all its options:
    :func:`logsumexp`, :func:`entropy`, :func:`cross_entropy`, :func:`kl_div` and
    :func:`js_div` (either argument or both: a teacher head and a student head),
    :func:`topk_kl_div`'s student, :func:`evaluate` (``reference=`` another ``linear``),
    :func:`compare` (host arrays) and the meters.  The rows x V logits never exist: they are
    computed in blocks of rows by the input library's matmul and each block is read by the
    kernels at once.

    On the device (torch CUDA tensors, CuPy arrays, numba device arrays) the head runs on the
    cuda backend: each row block is one matmul by the arguments' library on its current
    stream (``torch.addmm`` / ``cupy.matmul``; numba arrays, which have no matmul, a plain
    one-thread-per-logit kernel summed in float64, for tests and small heads) into one
    device buffer reused for the call, read by the same cuda kernels as stored device logits;
    results stay on the device in that library.  ``logsumexp``, ``entropy``, ``kl_div`` and
    hard-label ``cross_entropy`` go by vocabulary tiles there too (the cuda evaluate kernel's
    state of each tile, merged on the host: one synchronisation per row block; a bfloat16 head's
    tiles widened to float32 for that kernel); the rest by row blocks, each of which reads
    the whole weight.  ``compare`` refuses device arrays as it does for stored ones.

    Parameters
    ----------
    hidden : array_like, shape (..., D)
        Hidden states: a numpy array (or memmap), a torch tensor (CPU or CUDA; bfloat16
        included), a CuPy array or a C-contiguous numba device array (float32 / float64).
    weight : same library and device, shape (V, D)
        The head's weight as ``torch.nn.Linear`` and language-model heads store it; on the
        device and with torch, of ``hidden``'s dtype.
    bias : same library and device, shape (V,), optional
    softcap : float > 0, optional
        The logits become ``softcap * tanh(logits / softcap)`` (Gemma's final soft-cap),
        computed in the compute dtype.
    block_rows : int, optional
        Rows per block (default: ``BLOCK_BYTES`` = 32 MiB of logits per block).  The extra
        memory is one block; larger blocks let the matmul reuse each weight row more.  Given,
        it also turns the vocabulary tiles off.
    vocab_tile : int, optional
        Classes per vocabulary tile (default: as many as fit in ``BLOCK_BYTES`` with every
        row, about ``TILE_MIN`` = 4096 at least, rounded down so that a tile's rows are an
        odd multiple of 256 bytes apart: 4032 in float32).  ``logsumexp``, ``entropy``, ``kl_div`` (from
        logits, both arguments linear; with a temperature, each tile divided by it as the
        kernels divide stored logits, on the host and unless soft-capped),
        ``cross_entropy`` with class indices (label smoothing too, from
        ``sum_j w_j x_j = hidden @ (w @ W) + w . b`` unless soft-capped) and ``evaluate`` (no
        ``softcap=`` option; the reference linear too) compute each tile of every row and a
        slice of the classes into a mergeable per-row state (``fastdiv._state.merge_sums``),
        so the matmul reads the weight once per row block (one block of every row, or one per
        thread below); the other functions and options use row blocks.  numpy heads compute
        the tiles in row blocks shared among the threads, each with its own single-threaded
        matmuls, where threadpoolctl (the ``linear`` extra) can hold numpy's BLAS to one
        thread for the call (``fastdiv._blas``: other threads' BLAS calls run on one thread
        meanwhile).  ``evaluate``'s rank counts, outside the target's own tile, the classes
        above the target's logit formed as one dot product (in float64, rounded to the
        matmul's dtype): a class within the matmul's rounding of the target may count
        differently than on the materialized logits.  Tiles change the last bits (the states
        merge in another order); a ``vocab_tile`` of V or more turns them off.

    Returns
    -------
    LinearLogits
        Lazy logits of shape ``hidden.shape[:-1] + (V,)``.  Results come back in the
        library of ``hidden`` (on its device).  With torch tensors the blocks are
        ``torch.addmm(bias, h, W.T)`` (``torch.nn.functional.linear``'s arithmetic); with numpy
        and CuPy ``h @ W.T + bias``.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> rng = np.random.default_rng(0)
    >>> h = rng.standard_normal((8, 16)); W = rng.standard_normal((100, 16)); t = rng.integers(0, 100, 8)
    >>> a = fastdiv.cross_entropy(fastdiv.linear(h, W), t)
    >>> bool(np.isclose(a, fastdiv.cross_entropy(h @ W.T, t)))
    True
    """
    return LinearLogits(hidden, weight, bias, softcap=softcap, block_rows=block_rows, vocab_tile=vocab_tile)
