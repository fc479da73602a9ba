"""python benchmarks/memmap_chunks.py BACKEND THREADS

logsumexp over a 1 GiB float32 np.memmap: handed over whole (chunking switched off) against
the API's 64 MB row chunks with pages released (fastdiv/_chunks.py), as a time ratio in one
process (page cache warm, both start with the file unmapped), median of 7, and the peak RSS
growth of each.  The file is written to a temporary directory and removed afterwards.
"""
from __future__ import annotations

import mmap
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
import rss  # noqa: E402

import fastdiv  # noqa: E402
from fastdiv import _chunks  # noqa: E402


def main(backend, nthreads, rows=2048, v=131072, repeat=7):
    fastdiv.set_num_threads(nthreads)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "x.bin")
        np.random.default_rng(0).standard_normal((rows, v), dtype=np.float32).tofile(path)
        mm = np.memmap(path, np.float32, "r", shape=(rows, v))
        chunked_mapping = _chunks.mapping
        fastdiv.logsumexp(mm[:4], backend=backend)
        times, peak = {"whole": [], "chunked": []}, {}
        for _ in range(repeat):
            for mode in ("whole", "chunked"):
                _chunks.mapping = chunked_mapping if mode == "chunked" else (lambda a: None)
                mm._mmap.madvise(mmap.MADV_DONTNEED)
                rss.peak_rss_reset()
                base = rss.rss_bytes()
                t = time.perf_counter()
                fastdiv.logsumexp(mm, backend=backend)
                times[mode].append(time.perf_counter() - t)
                peak[mode] = max(peak.get(mode, 0), rss.peak_rss_bytes() - base)
        _chunks.mapping = chunked_mapping
        del mm
    w, c = statistics.median(times["whole"]), statistics.median(times["chunked"])
    print(f"{backend}, {nthreads} thread(s): whole {w * 1e3:.0f} ms (+{peak['whole'] >> 20} MiB RSS), "
          f"chunked {c * 1e3:.0f} ms (+{peak['chunked'] >> 20} MiB RSS), chunked/whole time {c / w:.2f}; "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
