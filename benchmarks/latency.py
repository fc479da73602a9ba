"""Compile/first-call latency: ``import fastdiv``, a cold first call (empty numba cache) and
the first call in a new process with the cache warm.  Each is measured in a fresh process.

    python benchmarks/latency.py [--backend numba] [--op cross_entropy] [--temperature T]

``kl_div`` (and ``evaluate``, with it as the reference) compares ``x`` with a row 1e-3 away
(the rows its float32 redo takes; ``evaluate`` takes no temperature); a
temperature other than 1 is another numba specialization (the scale is a float, not None).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

SNIPPET = r"""
import time, json
t0 = time.perf_counter()
import numpy as np
t1 = time.perf_counter()
import fastdiv
t2 = time.perf_counter()
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 50257)).astype(np.float32)
z = (x + rng.standard_normal(x.shape) * 1e-3).astype(np.float32)
t = np.arange(64)
T = TEMP
ops = {"cross_entropy": lambda: fastdiv.cross_entropy(x, t, temperature=T, backend=BACKEND),
       "logsumexp": lambda: fastdiv.logsumexp(x, backend=BACKEND),
       "kl_div": lambda: fastdiv.kl_div(x, z, temperature=T, backend=BACKEND),
       "entropy": lambda: fastdiv.entropy(x, temperature=T, backend=BACKEND),
       "js_div": lambda: fastdiv.js_div(x, z, temperature=T, backend=BACKEND),
       "evaluate": lambda: fastdiv.evaluate(x, t, reference=z, backend=BACKEND)}
t3 = time.perf_counter()
ops[OP]()
t4 = time.perf_counter()
ops[OP]()
t5 = time.perf_counter()
print(json.dumps({"import_fastdiv_s": t2 - t1, "first_call_s": t4 - t3, "second_call_s": t5 - t4}))
"""


def run(backend, op, cache_dir, temperature=1.0):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    code = SNIPPET.replace("BACKEND", repr(backend)).replace("OP", repr(op)).replace("TEMP", repr(temperature))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="numba")
    ap.add_argument("--op", default="cross_entropy")
    ap.add_argument("--temperature", type=float, default=1.0)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as cache:
        cold = run(args.backend, args.op, cache, args.temperature)
        warm = [run(args.backend, args.op, cache, args.temperature) for _ in range(3)]
    warm_first = sorted(w["first_call_s"] for w in warm)[1]
    imp = sorted(w["import_fastdiv_s"] for w in warm)[1]
    print(f"{args.backend} {args.op} (T = {args.temperature:g}): import fastdiv {imp:.3f} s | cold first call {cold['first_call_s']:.2f} s | "
          f"first call in a new process, cache warm {warm_first:.3f} s | second call {warm[1]['second_call_s'] * 1e3:.1f} ms")
    return {"import_s": imp, "cold_first_call_s": cold["first_call_s"], "warm_first_call_s": warm_first}


if __name__ == "__main__":
    main()
