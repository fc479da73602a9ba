"""Run in a subprocess by tests/test_guarantees.py: the peak extra memory of every function
of the table (tests/cases.py, ``FUNCTIONS``), on compiled backends, for inputs that need no
conversion and for inputs that do (float16, non-contiguous, big-endian).

Prints one JSON line per call: numpy allocations at their peak (tracemalloc) and the peak
growth of the process's resident set (rss.py), both beyond the inputs themselves.

    python tests/memory_probe.py ROWS V TMPDIR VARIANT[,VARIANT...] BACKEND[=VARIANT,...] ...

A backend given as ``BACKEND=VARIANT,...`` runs only those of the variants (the tests run every
backend's cells in one process: the inputs, most of the probe's time, are made once).

The "memmap" variant writes the inputs to files in TMPDIR and maps them read-only: their
pages must be released chunk by chunk (fastdiv._chunks), so the RSS stays bounded too.
"""
from __future__ import annotations

import json
import os
import sys
import tracemalloc

import numpy as np

import fastdiv
import rss
from fastdiv import _chunks, execute
from cases import FUNCTIONS

#: Small conversion blocks, so that O(1) blocks and O(rows x V) copies are far apart.
execute.BLOCK_BYTES = 256 << 10
_chunks.CHUNK_BYTES = 256 << 10

VARIANTS = {
    "float32": lambda a: a,
    "float16": lambda a: a.astype(np.float16),
    "non-contiguous": lambda a: np.repeat(a, 2, axis=-1)[:, ::2],
    "big-endian": lambda a: a.astype(a.dtype.newbyteorder(">")),
}


def _memmap(a, tmpdir):
    path = os.path.join(tmpdir, f"in{len(os.listdir(tmpdir))}.bin")
    a.tofile(path)
    return np.memmap(path, a.dtype, "r", shape=a.shape)


def main(rows, v, tmpdir, variants, backends):
    VARIANTS["memmap"] = lambda a: _memmap(a, tmpdir)
    only = {}                                  # backend -> its variants (BACKEND=VARIANT,...)
    for b in backends:
        name, _, vs = b.partition("=")
        only[name] = vs.split(",") if vs else variants
    backends = list(only)
    # One thread: memory does not depend on it, and small blocks on a loaded 2-core machine
    # would otherwise wait at a thread barrier in every kernel call.
    fastdiv.set_num_threads(1)
    rng = np.random.default_rng(0)
    for fn in FUNCTIONS:
        good = fn.good(rng, (rows,), v, np.float32)
        for variant in variants:
            change = VARIANTS[variant]
            args = {k: (change(a) if k in fn.arrays else a) for k, a in good.items()}
            small = {k: a[:3] for k, a in args.items()}
            for backend in backends:
                if variant not in only[backend]:
                    continue
                fn.call(small, backend, **fn.per_row)          # compile / load first
                if variant == "memmap":                        # the file's pages start unmapped
                    for k in fn.arrays:
                        _chunks.release(args[k], _chunks.mapping(args[k]))
                exact = rss.peak_rss_reset()
                base = rss.rss_bytes()
                tracemalloc.start()
                out = fn.call(args, backend, **fn.per_row)
                traced = tracemalloc.get_traced_memory()[1]
                tracemalloc.stop()
                grown = rss.peak_rss_bytes() - base          # without a reset: the peak so far, an upper bound
                print(json.dumps({"fn": fn.id, "variant": variant, "backend": backend, "traced": traced,
                                  "rss": grown, "exact": exact, "out": int(np.asarray(out).nbytes),
                                  "input": int(sum(args[k].nbytes for k in fn.arrays))}), flush=True)
                del out


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4].split(","), sys.argv[5:])
