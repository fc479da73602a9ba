"""Inputs backed by a file: processed in row chunks, each chunk's pages released after use.

``np.memmap`` arrays (and ``np.load(..., mmap_mode=...)``, and arrays made over an
``mmap.mmap`` with ``np.frombuffer``) are read by the kernels through the page cache.  Every
page the kernel touches stays mapped into the process (and counted in its resident set)
until the mapping is closed, so a file larger than RAM handed over whole would make the
process's RSS grow to the file's size.  ``fastdiv.api`` therefore hands file-backed inputs to
the kernels ``CHUNK_BYTES`` of rows at a time and, after each chunk, tells the kernel
(``madvise(MADV_DONTNEED)``) that the chunk's pages are no longer needed: for a shared
mapping (memmap modes ``"r"``, ``"r+"``, ``"w+"``) that only unmaps them from this process --
the data stays in the file and the page cache, so nothing is lost and a later read of the
same rows is a page-cache hit.  Private copy-on-write mappings (mode ``"c"``) and raw
``mmap`` objects of unknown mode are chunked but never released: there ``MADV_DONTNEED``
would throw away the caller's in-memory changes.
"""
from __future__ import annotations

import mmap

import numpy as np

#: Bytes of rows (per input) handed to a kernel at a time when an input is file-backed.
CHUNK_BYTES = 64 << 20

_SHARED_MODES = ("r", "r+", "w+")          # np.memmap stores these canonical names


def mapping(a):
    """``(mmap.mmap, releasable)`` under ``a`` (following ``.base``), or ``None``."""
    releasable = None
    b = a
    while isinstance(b, np.ndarray):
        if releasable is None and isinstance(b, np.memmap):
            releasable = getattr(b, "mode", None) in _SHARED_MODES
        b = b.base
    if isinstance(b, memoryview):
        b = b.obj
    if not isinstance(b, mmap.mmap):
        return None
    return b, bool(releasable)


def release(block, mapped):
    """Drop the pages of ``block`` (a view into the mapping ``mapped``) from this process."""
    if mapped is None or not mapped[1] or not hasattr(mmap, "MADV_DONTNEED"):
        return
    mm = mapped[0]
    try:
        base = np.frombuffer(mm, dtype=np.uint8, count=1).ctypes.data
        lo, hi = np.lib.array_utils.byte_bounds(block)
        if hi - lo > 4 * block.nbytes + mmap.PAGESIZE:
            # A strided view (e.g. transposed) whose rows span far more of the file than
            # they hold: every chunk touches pages all over it, and releasing them would
            # make each later chunk fault them all in again.  Keep them.
            return
        start = (lo - base) // mmap.PAGESIZE * mmap.PAGESIZE
        mm.madvise(mmap.MADV_DONTNEED, start, hi - base - start)
    except (ValueError, OSError, BufferError):
        # A closed mapping or a platform without madvise: the pages simply stay resident.
        return


def rows_per_chunk(v, itemsize, nbytes):
    return max(1, nbytes // max(1, v * itemsize))


def row_chunks(a, nbytes):
    """Yield ``(first_row, 2-D (rows, V) view)`` of ``a`` in C row order, ``nbytes`` at a time.

    Views only (a leading shape that cannot be merged is walked axis by axis), so the
    extra memory is what the caller makes of one chunk."""
    v = a.shape[-1]
    step = rows_per_chunk(v, a.dtype.itemsize, nbytes)
    if a.ndim == 1:
        yield 0, a[None]
        return
    inner = a.shape[-2]
    for k, idx in enumerate(np.ndindex(a.shape[:-2])):
        m = a[idx]
        for r0 in range(0, inner, step):
            yield k * inner + r0, m[r0:r0 + step]
