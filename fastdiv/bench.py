"""Benchmark pieces and ``fastdiv bench``: regimes, seeded inputs, the read-bandwidth probe,
peers, timing, the table and the plot.

Used by ``fastdiv bench``, the pytest-benchmark suite (``benchmarks/test_bench.py``) and the
regression gate (``benchmarks/gate.py``).  Speed is only ever judged as a ratio to something
measured in the same process, because the 2-core machines this runs on drift +-10-25 %
between runs.
"""
from __future__ import annotations

import functools
import json
import platform
import statistics
import sys
import time

import numba
import numpy as np
from numba import njit, prange

import fastdiv
from fastdiv import _registry

#: name -> (rows, V): about 200-400 MB of float32 each, far beyond L2, like real eval jobs.
REGIMES = {
    "V32000": (2048, 32000),
    "V50257": (2048, 50257),
    "V128256": (512, 128256),
    "V256000": (256, 256000),
    "V1024": (65536, 1024),
    "C51": (1 << 20, 51),
}
OPS = ("logsumexp", "entropy", "cross_entropy", "kl_div")
DTYPES = ("float32", "float64", "float16")
#: arrays of logits an op reads (KL reads two)
N_ARRAYS = {"logsumexp": 1, "entropy": 1, "cross_entropy": 1, "kl_div": 2}


@njit(parallel=True, fastmath={"reassoc", "contract", "nsz", "arcp"}, cache=True)
def _probe_sum(a):
    """The read-bandwidth probe: a parallel sum over every element, the cheapest possible
    reader of the same bytes (rows split across threads like the kernels)."""
    total = 0.0
    for i in prange(a.shape[0]):
        row = a[i]
        acc = row[0] * 0
        for j in range(row.shape[0]):
            acc += row[j]
        total += acc
    return total


def probe(*arrays):
    """Read ``arrays`` once with the probe, on fastdiv's thread count (``fastdiv.threads``)."""
    numba.set_num_threads(min(fastdiv.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    for a in arrays:
        _probe_sum(a.view(np.uint16) if a.dtype.itemsize == 2 else a)


@functools.lru_cache(maxsize=4)
def inputs(rows, v, dtype, seed=0):
    """Seeded logits x, z (for KL) and targets; float16 is generated in float32 then cast."""
    rng = np.random.default_rng(seed)
    gen = np.float64 if dtype == "float64" else np.float32
    x = rng.standard_normal((rows, v), dtype=gen)
    x *= 2
    z = rng.standard_normal((rows, v), dtype=gen)
    z *= 2
    t = rng.integers(0, v, rows)
    if dtype == "float16":
        x, z = x.astype(np.float16), z.astype(np.float16)
    return x, z, t


#: ops only the regression gate times (benchmarks/gate.py): the probability-input kernels, JS
#: from logits and compare's fused kernel (#19), which have kernels of their own that OPS does
#: not reach
GATE_ONLY_OPS = ("kl_div(probs)", "js_div", "compare")
#: the ops that read two arrays of logits (the probe reads both)
TWO_ARRAY_OPS = ("kl_div", "kl_div(probs)", "js_div", "compare")


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def fastdiv_call(op, backend, x, z, t):
    if op == "kl_div(probs)":
        p, q = _softmax(x), _softmax(z)
        return lambda: fastdiv.kl_div(p, q, inputs="probs", backend=backend)
    if op == "js_div":
        return lambda: fastdiv.js_div(x, z, backend=backend)
    if op == "compare":                 # base x, model z: the per-row columns (no statistics)
        return lambda: fastdiv.compare(x, z, t, backend=backend)
    if op == "logsumexp":
        return lambda: fastdiv.logsumexp(x, backend=backend)
    if op == "entropy":
        return lambda: fastdiv.entropy(x, backend=backend)
    if op == "cross_entropy":
        return lambda: fastdiv.cross_entropy(x, t, backend=backend)
    return lambda: fastdiv.kl_div(x, z, backend=backend)


def peer_call(peer, op, x, z, t):
    """The same quantity computed by a peer library, or None if it is not installed."""
    if peer == "numpy":
        return fastdiv_call(op, "numpy", x, z, t)
    if peer == "torch":
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            return None
        tx, tz, tt = torch.from_numpy(x), torch.from_numpy(z), torch.from_numpy(t)
        return {
            "logsumexp": lambda: torch.logsumexp(tx, -1),
            "entropy": lambda: torch.distributions.Categorical(logits=tx).entropy(),
            "cross_entropy": lambda: F.cross_entropy(tx, tt),
            "kl_div": lambda: F.kl_div(F.log_softmax(tz, -1), F.log_softmax(tx, -1), log_target=True,
                                       reduction="batchmean"),
        }[op]
    if peer == "scipy":
        try:
            import scipy.special as sps
        except ImportError:
            return None
        return {
            "logsumexp": lambda: sps.logsumexp(x, axis=-1),
            "entropy": lambda: sps.entr(sps.softmax(x, axis=-1)).sum(-1),
            "cross_entropy": lambda: np.mean(sps.logsumexp(x, axis=-1) - x[np.arange(len(t)), t]),
            "kl_div": lambda: np.mean(sps.rel_entr(sps.softmax(x, axis=-1), sps.softmax(z, axis=-1)).sum(-1)),
        }[op]
    raise ValueError(peer)


def available_backends():
    return [b for b in ("numba", "cython") if _registry.unavailable_reason(b) is None]


def median_time(fn, repeat=7, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def interleaved_ratio(kernel, reference, repeat=9):
    """Median kernel time / median reference time, measured alternately so that both see
    the same machine state (drift, a neighbour's load) within one run."""
    kernel()
    reference()
    tk, tr = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        reference()
        t1 = time.perf_counter()
        kernel()
        t2 = time.perf_counter()
        tr.append(t1 - t0)
        tk.append(t2 - t1)
    return statistics.median(tk) / statistics.median(tr), statistics.median(tk), statistics.median(tr)


def _batch(fn, k):
    t0 = time.perf_counter()
    for _ in range(k):
        fn()
    return (time.perf_counter() - t0) / k


def best_batch_ratio(kernel, reference, repeat=15, batch_s=2e-3):
    """Kernel time / reference time for work that stays in cache: each is timed in batches
    of calls lasting about ``batch_s``, the batches alternating ``repeat`` times, and the
    fastest batch of each is kept.  In cache the work is bound by the core, and on a shared
    machine interference (preemption, a neighbour's cache traffic, a migrated thread) only
    ever adds time, so the minimum is the figure that does not swing with the machine.

    Returns ``(ratio, kernel seconds per call, reference seconds per call)``."""
    kernel()
    reference()
    kk = max(1, round(batch_s / max(_batch(kernel, 3), 1e-7)))
    kr = max(1, round(batch_s / max(_batch(reference, 3), 1e-7)))
    tk, tr = [], []
    for _ in range(repeat):
        tr.append(_batch(reference, kr))
        tk.append(_batch(kernel, kk))
    return min(tk) / min(tr), min(tk), min(tr)


def _read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def cpu_identity():
    """What the regression gate keys its baselines by: the CPU's vendor, model name, family
    and model, the vector instruction set the kernels are compiled for, and the per-core L2 and
    shared L3 sizes.  ``key`` is one readable line of these; the rest is recorded beside it."""
    fields = {}
    text = _read("/proc/cpuinfo") or ""
    for line in text.split("\n\n")[0].splitlines():
        name, _, value = line.partition(":")
        fields[name.strip()] = value.strip()
    flags = set(fields.get("flags", "").split())
    try:
        from llvmlite import binding as llvm

        llvm_cpu = llvm.get_host_cpu_name()
        flags |= {f for f, on in llvm.get_host_cpu_features().items() if on}
    except Exception:          # llvmlite missing: /proc/cpuinfo's flags only
        llvm_cpu = None
    isa = next((name for name, need in (("avx512", "avx512f"), ("avx2", "avx2"), ("sse4.2", "sse4_2"), ("neon", "neon"))
                if need in flags), platform.machine())
    caches = {}
    for index in range(8):
        base = f"/sys/devices/system/cpu/cpu0/cache/index{index}/"
        level, kind, size = _read(base + "level"), _read(base + "type"), _read(base + "size")
        if level in ("2", "3") and kind in ("Unified", "Data") and size:
            caches[f"L{level}"] = size
    info = {
        "vendor": fields.get("vendor_id") or platform.machine(),
        "model_name": fields.get("model name") or platform.processor() or "unknown",
        "family_model": f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
        "llvm_cpu": llvm_cpu,
        "isa": isa,
        "L2_per_core": caches.get("L2", "?"),
        "L3": caches.get("L3", "?"),
    }
    info["key"] = (f"{info['vendor']} {info['model_name']} (family/model {info['family_model']}), {isa}, "
                   f"L2 {info['L2_per_core']}, L3 {info['L3']}")
    return info


def nbytes(op, x):
    return N_ARRAYS[op] * x.nbytes


# --------------------------------------------------------------------------- fastdiv bench

PEERS = ("numpy", "scipy", "torch")


def _peer_time(peer, op, x, z, t, repeat):
    """A peer's time on the whole array; the numpy/scipy peers materialise rows x V
    temporaries, so big inputs are timed on a slice of rows and scaled (linear in rows)."""
    rows = x.shape[0]
    k = rows
    if peer in ("numpy", "scipy"):
        k = max(1, min(rows, (64 << 20) // max(1, x.shape[1] * 8)))
    fn = peer_call(peer, op, x[:k], z[:k], t[:k])
    if fn is None:
        return None
    return median_time(fn, repeat=1 if k < rows else repeat, warmup=0 if k < rows else 1) * rows / k


def run_bench(ops=OPS, backends=None, peers=PEERS, vocabs=(1024, 32000, 50257, 128256), dtype="float32",
              mbytes=256, repeat=5, progress=True, shapes=None):
    """Measure every (op, V, backend) plus the probe and peers; return a list of records.

    ``shapes`` ([(rows, V), ...]) overrides ``vocabs``/``mbytes``."""
    backends = list(backends or available_backends())
    itemsize = np.dtype(dtype).itemsize
    if shapes is None:
        shapes = [(max(1, int(mbytes * 1e6) // (v * itemsize)), v) for v in vocabs]
    jobs = [(op, rows, v) for rows, v in shapes for op in ops]
    records = []
    for k, (op, rows, v) in enumerate(jobs):
        x, z, t = inputs(rows, v, dtype)
        arrays = (x, z) if op == "kl_div" else (x,)
        nb = nbytes(op, x)
        if progress:
            print(f"\r  [{k + 1}/{len(jobs)}] {op} V={v} ({rows} rows)".ljust(60), end="", file=sys.stderr, flush=True)
        t_probe = median_time(lambda: probe(*arrays), repeat=repeat)
        rec = {"op": op, "V": v, "rows": rows, "dtype": dtype, "bytes": nb, "probe_ms": t_probe * 1e3,
               "probe_GBps": nb / t_probe / 1e9, "backends": {}, "peers": {}}
        for peer in peers:
            tp = _peer_time(peer, op, x, z, t, repeat)
            if tp is not None:
                rec["peers"][peer] = {"ms": tp * 1e3, "GBps": nb / tp / 1e9}
        for b in backends:
            ratio, tk, tpr = interleaved_ratio(fastdiv_call(op, b, x, z, t), lambda: probe(*arrays), repeat)
            rec["backends"][b] = {"ms": tk * 1e3, "GBps": nb / tk / 1e9, "fraction_of_probe": 1.0 / ratio,
                                  "speedup": {p: r["ms"] / (tk * 1e3) for p, r in rec["peers"].items()}}
        records.append(rec)
        inputs.cache_clear()
    if progress:
        print(file=sys.stderr)
    return records


def format_table(records):
    peers = sorted({p for r in records for p in r["peers"]})
    head = f"{'op':14s} {'rows x V':>15s} {'backend':8s} {'ms':>9s} {'GB/s':>7s} {'% probe':>8s}" + "".join(
        f" {'vs ' + p:>9s}" for p in peers)
    lines = [head, "-" * len(head)]
    for r in records:
        for b, m in r["backends"].items():
            lines.append(f"{r['op']:14s} {str(r['rows']) + 'x' + str(r['V']):>15s} {b:8s} {m['ms']:9.2f} {m['GBps']:7.1f} {m['fraction_of_probe']:8.0%}"
                         + "".join(f" {m['speedup'][p]:8.1f}x" if p in m["speedup"] else f" {'-':>9s}" for p in peers))
        for p, m in r["peers"].items():
            lines.append(f"{r['op']:14s} {str(r['rows']) + 'x' + str(r['V']):>15s} {p:8s} {m['ms']:9.2f} {m['GBps']:7.1f} {r['probe_ms'] / m['ms']:8.0%}")
        lines.append(f"{r['op']:14s} {str(r['rows']) + 'x' + str(r['V']):>15s} {'probe':8s} {r['probe_ms']:9.2f} {r['probe_GBps']:7.1f} {1:8.0%}")
    return "\n".join(lines)


def plot(records, path):
    """Throughput against vocabulary size, one panel per op, one line per backend and peer,
    the read-bandwidth probe as the ceiling."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from exc
    ops = list(dict.fromkeys(r["op"] for r in records))
    fig, axes = plt.subplots(1, len(ops), figsize=(4.2 * len(ops), 3.6), squeeze=False, sharey=True)
    for ax, op in zip(axes[0], ops):
        rs = sorted((r for r in records if r["op"] == op), key=lambda r: r["V"])
        vs = [r["V"] for r in rs]
        ax.plot(vs, [r["probe_GBps"] for r in rs], "k--", label="read-bandwidth probe")
        for b in rs[0]["backends"]:
            ax.plot(vs, [r["backends"][b]["GBps"] for r in rs], "o-", label=f"fastdiv {b}")
        for p in rs[0]["peers"]:
            ax.plot(vs, [r["peers"][p]["GBps"] for r in rs], "s:", label=p)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(op)
        ax.set_xlabel("vocabulary size V")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel(f"GB/s of logits read ({records[0]['dtype']})")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"fastdiv throughput, {fastdiv.get_num_threads()} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_json(records, path):
    with open(path, "w") as fh:
        json.dump({"threads": fastdiv.get_num_threads(), "records": records}, fh, indent=1)
