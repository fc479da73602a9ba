"""Stack stores in the innermost vector loops of the numba kernels, read from their assembly.

A hot loop that stores to the stack in every iteration (the register allocator spilling
vectors) can run at a speed that depends on the calling thread's stack address
(benchmarks/stack_positions.py; ``fastdiv._numba.simd.held``).  This compiles every public
operation on long (50257) and short (51) float32 and float64 rows with numba's cache off (its
assembly cannot be read back from the cache), then lists, per compiled kernel, its innermost
loops that hold at least 8 vector fmas and store to ``rsp``: ``(lines, fmas, stores)``.

    PYTHONPATH=. python benchmarks/loop_spills.py

x86-64 only (it reads AT&T assembly).  Takes about a minute.
"""
import importlib
import re
import warnings

from numba.core import dispatcher

dispatcher.Dispatcher.enable_caching = lambda self: None    # before any kernel is defined

import fastdiv  # noqa: E402
from fastdiv import bench  # noqa: E402

MODULES = ["long_rows", "short_rows", "evaluate", "compare", "divergences", "softcap", "row_state"]
_LABEL = re.compile(r"^(\.LBB\S+):$")
_JUMP = re.compile(r"\s+j\w+\s+(\.LBB\S+)$")
_STACK_STORE = re.compile(r"vmov\w+\s+%[xyz]mm\d+, -?\d+\(%rsp\)")


def inner_loops(asm):
    """(lines, vector fmas, stack stores) of each innermost loop: a label that a later jump
    goes back to, with no such loop inside it."""
    lines = asm.splitlines()
    labels = {m.group(1): i for i, l in enumerate(lines) if (m := _LABEL.match(l))}
    back = {}                                    # label -> the last line that jumps back to it
    for i, l in enumerate(lines):
        m = _JUMP.match(l)
        if m and m.group(1) in labels and labels[m.group(1)] < i:
            back[m.group(1)] = i
    loops = []
    for label, end in back.items():
        start = labels[label]
        if any(start < labels[other] <= end for other in back if other != label):
            continue
        body = lines[start:end + 1]
        fmas = sum(bool(re.search(r"vf\w*m(add|sub)\w*\s.*[yz]mm", b)) for b in body)
        if fmas >= 8:
            loops.append((len(body), fmas, sum(bool(_STACK_STORE.search(b)) for b in body)))
    return loops


def exercise():
    fastdiv.set_num_threads(2)
    for dtype in ("float32", "float64"):
        for v in (50257, 51):
            x, z, t = bench.inputs(64, v, dtype)
            fastdiv.logsumexp(x, backend="numba")
            fastdiv.entropy(x, backend="numba")
            fastdiv.cross_entropy(x, t, backend="numba")
            fastdiv.kl_div(x, z, backend="numba")
            fastdiv.js_div(x, z, backend="numba")
            fastdiv.evaluate(x, t, reference=z, backend="numba")
            fastdiv.compare(z, x, t, backend="numba")


def main():
    warnings.filterwarnings("ignore")
    exercise()
    print(bench.cpu_identity()["key"])
    spilling = 0
    for name in MODULES:
        mod = importlib.import_module("fastdiv._numba." + name)
        for fname, obj in sorted(vars(mod).items()):
            if not (isinstance(obj, dispatcher.Dispatcher) and obj.__module__ == mod.__name__):
                continue
            for sig, asm in obj.inspect_asm().items():
                loops = inner_loops(asm)
                bad = sorted({lp for lp in loops if lp[2]})
                if bad:
                    spilling += 1
                    dtypes = ",".join(str(getattr(a, "dtype", a)) for a in sig[:2])
                    print(f"{name}.{fname} [{dtypes}]: {len(bad)} of {len(loops)} loops store: {bad}")
    print(f"{spilling} kernel specialisations with stack stores in an innermost vector loop")


if __name__ == "__main__":
    main()
