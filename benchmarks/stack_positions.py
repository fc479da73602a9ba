"""A kernel's time at every stack position of the calling thread, 16 bytes apart over 4 KiB.

A compiled loop that stores values to the stack in every iteration can run at a speed that
depends on where those stores land, and so on the calling thread's stack address: in one
process of a hundred numba's two-thread float64 entropy ran 2x slower for the whole process
(benchmarks/NOTES.md, 2026-12-07).  This scan finds such loops without luck: it calls the
public function from under an ``alloca`` of 0, 16, ..., 4080 bytes (a small function compiled
here with llvmlite) and times it at each position (best of ``--calls``), the positions in one
process; the main thread's share of a two-thread call moves with it, the worker's does not.

    PYTHONPATH=. python benchmarks/stack_positions.py --op entropy --dtype float64 --scans 2

Each scan prints one character per position: ``.`` within 1.15x of the scan's median, ``m``
above 1.15x, ``S`` above 1.5x; then the slow positions and the median / worst times (us).
Run it in several processes: the positions move with the process's stack randomisation.
"""
import argparse
import ctypes
import time

import numpy as np
from llvmlite import binding as llvm

import fastdiv
from fastdiv import bench

_IR = r"""
define void @call_with_pad(i64 %pad, ptr %fn) {
  %n = add i64 %pad, 16
  %buf = alloca i8, i64 %n, align 16
  store volatile i8 0, ptr %buf
  call void %fn()
  ret void
}
"""


def _padded_caller():
    """call_with_pad(pad, fn): fn() called with ``pad`` more bytes on the stack."""
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    module = llvm.parse_assembly(_IR)
    module.verify()
    machine = llvm.Target.from_default_triple().create_target_machine()
    engine = llvm.create_mcjit_compiler(module, machine)
    engine.finalize_object()
    callback = ctypes.CFUNCTYPE(None)
    fn = ctypes.CFUNCTYPE(None, ctypes.c_int64, callback)(engine.get_function_address("call_with_pad"))
    return fn, callback, engine


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--op", default="entropy", choices=bench.OPS + bench.GATE_ONLY_OPS, help="an operation as the gate calls it (bench.fastdiv_call)")
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--rows", type=int, default=10)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=8, help="calls per position (the best is kept)")
    ap.add_argument("--scans", type=int, default=2)
    a = ap.parse_args()

    fastdiv.set_num_threads(a.threads)
    x, z, t = bench.inputs(a.rows, a.vocab, a.dtype)
    op = bench.fastdiv_call(a.op, a.backend, x, z, t)
    op()                                             # compile outside the scan
    call_with_pad, callback, _engine = _padded_caller()
    holder = {}

    def measure():
        best = np.inf
        for _ in range(a.calls):
            t0 = time.perf_counter()
            op()
            best = min(best, time.perf_counter() - t0)
        holder["t"] = best * 1e6

    cb = callback(measure)
    for _ in range(3):
        call_with_pad(0, cb)                          # warm the caches and the thread pool
    print(f"{a.backend} {a.op} {a.rows} x {a.vocab} {a.dtype}, {a.threads} threads; "
          f"positions 0..4080 bytes by 16; {bench.cpu_identity()['key']}")
    for _ in range(a.scans):
        res = []
        for pad in range(0, 4096, 16):
            call_with_pad(pad, cb)
            res.append(holder["t"])
        med = float(np.median(res))
        line = "".join("S" if r > 1.5 * med else ("m" if r > 1.15 * med else ".") for r in res)
        slow = [16 * i for i, c in enumerate(line) if c == "S"]
        print(line)
        print(f"  median {med:.0f} us, worst {max(res):.0f} us ({max(res) / med:.2f}x); "
              f"S at {slow} bytes; {line.count('m')} positions at 1.15-1.5x")


if __name__ == "__main__":
    main()
