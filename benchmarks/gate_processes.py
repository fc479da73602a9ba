"""One gate figure measured in many fresh processes: the process-to-process spread the gate's
confirmation (``gate.measure_fresh``) relies on.

Usage::

    python benchmarks/gate_processes.py numba/entropy/V50257/float64/2t --runs 40

Each run is ``gate.py --measure KEY`` in a new process; the figure is printed with its change
against this CPU's baseline entry, then the spread, and how many runs were above the gate's
threshold.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gate  # noqa: E402

from fastdiv import bench as _bench  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("keys", nargs="+", help="gate kernels, e.g. numba/entropy/V50257/float64/2t")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args(argv)
    short = all(any(f"/{r}/{d}/" in k for r, d in gate.SHORT) for k in args.keys)
    entry = gate.load(gate.BASELINE).get(_bench.cpu_identity()["key"], {}).get("figures", {})
    base = {k: entry.get(k, {}).get("kernel_over_probe") for k in args.keys}     # None: no baseline figure
    settings = argparse.Namespace(short=short, repeat=args.repeat, slowdown=1, slowdown_only=None)
    seen = {k: [] for k in args.keys}
    for run in range(args.runs):
        figures = gate.measure_fresh(set(args.keys), settings)
        line = []
        for k in args.keys:
            f = figures[k]["kernel_over_probe"]
            seen[k].append(f)
            line.append(f"{k} {f:.3f}" + (f" ({f / base[k]:.2f}x)" if base[k] else ""))
        print(f"run {run + 1:3d}: " + "; ".join(line), flush=True)
    for k, fs in seen.items():
        spread = f"median {statistics.median(fs):.3f}, min {min(fs):.3f}, max {max(fs):.3f}"
        if base[k]:
            b = base[k]
            over = sum(f > b * gate.THRESHOLD for f in fs)
            spread += f"; baseline {b:.3f}: {min(fs) / b:.2f}-{max(fs) / b:.2f}x, {over} of {len(fs)} over {gate.THRESHOLD}x"
        print(f"{k}: {spread}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
