"""What the command-line benchmarks share: the size options and the probe line that every
figure is a ratio to (``fastdiv.bench.probe`` over the same bytes, in the same process)."""
from __future__ import annotations

import argparse

from fastdiv import bench


def parser(doc, between=()):
    """``--rows``, ``--vocab``, the integer options ``between`` ((flag, default) pairs), then
    ``--repeat``; the description is the first paragraph of ``doc``."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=50257)
    for flag, default in between:
        ap.add_argument(flag, type=int, default=default)
    ap.add_argument("--repeat", type=int, default=5)
    return ap


def probe_line(a, args, setting):
    """Time the read-bandwidth probe over ``a`` (median of ``args.repeat``), print the header
    line, and return ``(GB read, probe seconds)``."""
    gb = a.nbytes / 1e9
    probe = bench.median_time(lambda: bench.probe(a), args.repeat)
    print(f"{args.rows} x {args.vocab} float32 ({gb:.2f} GB), {setting}, "
          f"probe {gb / probe:.1f} GB/s (median of {args.repeat})")
    return gb, probe
