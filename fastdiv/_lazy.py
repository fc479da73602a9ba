"""Logits that are computed when read instead of stored (the base of ``fastdiv.linear``).

The execution layer (``fastdiv.execute.run_rows``) knows only this interface: a
:class:`LazyLogits` has the ``shape``, ``ndim`` and ``dtype`` of the logits it stands for and
computes any block of rows on request, into a buffer the caller reuses.  Every kernel path
therefore reads lazy logits exactly as it reads converted input, block by block, and no
option or reduction needs to know where the rows came from.  This module imports nothing
from fastdiv, so the validation and plan modules can recognise lazy logits without a cycle.
"""
from __future__ import annotations

import contextlib

import numpy as np


class LazyLogits:
    """Logits of shape ``shape`` (``(..., V)``) and dtype ``dtype``, computed by row blocks.

    Subclasses set ``shape``, ``dtype`` (numpy dtypes; bfloat16 as ``ml_dtypes.bfloat16``)
    and implement :meth:`compute` and :meth:`block_rows`.
    """

    shape: tuple
    dtype: np.dtype
    #: at most this many kernel threads while its blocks are computed (None: no cap)
    kernel_threads: int | None = None
    #: computed on a CUDA device (the cuda backend reads it, by ``compute_device``)
    on_device: bool = False
    #: whether :meth:`class_sums` gives the rows' weighted sums without reading the logits
    has_class_sums: bool = False

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def rows(self) -> int:
        return int(np.prod(self.shape[:-1], dtype=np.int64))

    def block_rows(self, itemsize: int) -> int:
        """How many rows to compute at a time when each logit takes ``itemsize`` bytes."""
        raise NotImplementedError

    def tiles(self, itemsize: int) -> tuple[int, int] | None:
        """``(rows, columns)`` of the vocabulary tiles to compute at a time for the ops whose
        per-row states merge across classes (``fastdiv.execute``), or None: row blocks only."""
        return None

    def shares(self, threads: int) -> contextlib.AbstractContextManager[int]:
        """A context in which up to ``threads`` shares of the rows may be computed at once, each
        on its own thread with single-threaded kernels; it gives how many (1: one block at a
        time, the kernels on up to ``kernel_threads``)."""
        return contextlib.nullcontext(1)

    def scaled(self, scale: float) -> LazyLogits | None:
        """These logits times ``scale`` (1 / temperature) as lazy logits of their own, computed
        as directly as these, or None where they cannot be (then temperature goes by row
        blocks, each block scaled by the kernel)."""
        return None

    def class_sums(self, weight: np.ndarray) -> np.ndarray | None:
        """``sum_j weight_j x[r, j]`` for every row (float64; a zero weight's term is exactly
        0), for label smoothing by vocabulary tiles; None where the logits are not linear in
        what they are computed from (soft-capped)."""
        return None

    def target_logits(self, r0: int, r1: int, target: np.ndarray, dtype) -> np.ndarray:
        """``x[r, target[r]]`` for rows ``r0 .. r1 - 1`` in ``dtype`` (NaN where the target is
        negative), each as one dot product: the threshold of a target's rank in the
        vocabulary tiles that do not hold it."""
        raise NotImplementedError

    def compute(self, r0: int, r1: int, dtype, out: np.ndarray | None = None, cols=None) -> np.ndarray:
        """Rows ``r0 .. r1 - 1`` (C order over the leading axes) as a C-contiguous
        ``(r1 - r0, V)`` array of ``dtype``, written into ``out`` when given (a buffer of at
        least that many rows and of that dtype, reused between blocks); ``cols = (v0, v1)``:
        only the classes ``v0 .. v1 - 1``, ``(r1 - r0, v1 - v0)``."""
        raise NotImplementedError


class Rows:
    """Rows ``[r0, r1)`` of a :class:`LazyLogits`, sliceable by rows like a 2-D array view."""

    def __init__(self, lazy: LazyLogits, r0: int, r1: int):
        self.lazy, self.r0, self.r1 = lazy, r0, r1
        self.shape = (r1 - r0, lazy.shape[-1])
        self.dtype = lazy.dtype

    def __getitem__(self, index):
        start, stop, step = index.indices(self.r1 - self.r0)
        if step != 1:
            raise IndexError("lazy logits are read by contiguous row ranges")
        return Rows(self.lazy, self.r0 + start, self.r0 + max(start, stop))

    def compute(self, dtype, buffers: dict) -> np.ndarray:
        """These rows in ``dtype``, into the buffer ``buffers`` (one dict per argument of a
        call) keeps for ``dtype``, allocated on first use with the lazy array's block size."""
        dtype = np.dtype(dtype)
        n = self.r1 - self.r0
        buf = buffers.get(dtype)
        if buf is None or buf.shape[0] < n:
            rows = max(n, min(self.lazy.block_rows(dtype.itemsize), self.lazy.rows))
            buf = buffers[dtype] = np.empty((rows, self.lazy.shape[-1]), dtype=dtype)
        return self.lazy.compute(self.r0, self.r1, dtype, out=buf[:n])


def is_lazy(a) -> bool:
    return isinstance(a, (LazyLogits, Rows))
