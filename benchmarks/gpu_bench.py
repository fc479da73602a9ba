#!/usr/bin/env python3
"""GPU benchmark and LLM-size correctness check of fastdiv's cuda backend.

One run on one GPU measures, side by side:

* the bandwidth ceiling: a device-to-device copy (``dst.copy_(src)``, 4 GiB) and a
  read-only reduction (``torch.sum``) of the same buffer;
* fastdiv's kernels (``fastdiv._cuda.kernels``) on the shapes (4096, 128256),
  (16384, 50257) and (1048576, 51) in float32 and bfloat16;
* torch's forward passes: ``F.cross_entropy(x, t)`` and
  ``F.kl_div(log_softmax(q), log_softmax(p), log_target=True, reduction='batchmean')``
  (and ``torch.logsumexp``).

GPU times are medians of CUDA-event timings over repeated batches of launches, after
warm-ups, with a ``torch.cuda._sleep`` kernel queued ahead of each batch so that host
dispatch overhead (Python, numba's launcher) is not what is measured; host overhead is
reported separately.  Inputs are random (never zeros) and rotate between two copies when
a copy is smaller than 1 GiB.

Before timing it checks fresh random inputs at these sizes (with masked, all ``-inf``,
NaN and ``+inf`` rows planted) against the float64 reference ``fastdiv.reference``,
computed on the CPU for a sample of rows, for every op; and it checks rows past
element 2^31 of a > 2^31-element input (64-bit offsets).

Writes ``gpu_bench.json`` and ``gpu_bench.md`` to ``--out`` (default ``$OUT`` or this
folder).  Run from the repository root::

    PYTHONPATH=. python3 benchmarks/gpu_bench.py

``--dry`` runs the whole script in numba's CUDA simulator on tiny shapes (no torch CUDA,
no timings that mean anything): a smoke test of the script itself.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _import(name):
    return importlib.import_module(f"fastdiv.{name}")


SHAPES = [(4096, 128256), (16384, 50257), (1048576, 51)]
DTYPES = ["float32", "bfloat16"]


# ---------------------------------------------------------------------------- context


class Ctx:
    """Arrays and timers: torch on a GPU, or numpy + the simulator with ``--dry``."""

    def __init__(self, dry):
        self.dry = dry
        from numba import cuda

        self.cuda = cuda
        self.K = _import("_cuda.kernels")
        self.I = _import("_cuda.interop")
        self.R = _import("reference")
        if not dry:
            import torch

            self.torch = torch
            self.dev = torch.device("cuda")
            self.stream = self.I.stream_for(self.I.DeviceTag("torch", 0))
        else:
            self.torch = None
            self.stream = 0

    # -- arrays (a "tensor" is a torch CUDA tensor, or a numpy array in dry mode)
    def randn(self, rows, V, dtype, seed, scale=2.0):
        if self.dry:
            rng = np.random.default_rng(seed)
            return (rng.standard_normal((rows, V)) * scale).astype(np.float32)
        torch = self.torch
        g = torch.Generator(device="cuda").manual_seed(seed)
        out = torch.empty((rows, V), dtype=getattr(torch, dtype), device="cuda")
        step = max(1, (1 << 28) // V)
        for r in range(0, rows, step):  # chunked: no full float32 temporary for bf16
            out[r:r + step] = (torch.randn((min(step, rows - r), V), generator=g, device="cuda") * scale).to(out.dtype)
        return out

    def cast(self, t, dtype):
        if self.dry:
            return t
        return t.to(getattr(self.torch, dtype))

    def view(self, t, dtype):
        """(numba device view, bf16 flag)."""
        if self.dry:
            if dtype == "bfloat16":
                bits = (np.ascontiguousarray(t, np.float32).view(np.uint32) >> 16).astype(np.uint16)
                return self.cuda.to_device(bits), True
            return self.cuda.to_device(np.ascontiguousarray(t, np.float32)), False
        v, tag = self.I.to_device_view(t)
        return v, tag.bf16

    def host64(self, t, rows_idx, dtype):
        """float64 host copy of the given rows (what the kernel actually read)."""
        if self.dry:
            a = np.asarray(t)[rows_idx]
            if dtype == "bfloat16":
                a = ((np.ascontiguousarray(a, np.float32).view(np.uint32) >> 16) << 16).view(np.float32)
            return a.astype(np.float64)
        idx = self.torch.as_tensor(rows_idx, device="cuda")
        return t.index_select(0, idx).double().cpu().numpy()

    def empty_out(self, rows):
        if self.dry:
            a = self.cuda.to_device(np.full(rows, 12345.0, np.float32))
            return a, a
        t = self.torch.full((rows,), 12345.0, dtype=self.torch.float32, device="cuda")
        return t, self.I.to_device_view(t)[0]

    def to_host(self, t):
        if self.dry:
            return t.copy_to_host() if hasattr(t, "copy_to_host") else np.asarray(t)
        return t.double().cpu().numpy()

    def sync(self):
        if self.dry:
            return
        self.torch.cuda.synchronize()

    def free(self):
        if not self.dry:
            self.torch.cuda.empty_cache()

    # -- timing
    def time(self, fn, iters=20, reps=7, warmup=3):
        """(median GPU ms per call, host ms per call)."""
        for i in range(warmup):
            fn(i)
        self.sync()
        if self.dry:
            t0 = time.perf_counter()
            fn(0)
            dt = (time.perf_counter() - t0) * 1e3
            return dt, dt
        torch = self.torch
        t0 = time.perf_counter()
        for i in range(iters):
            fn(i)
        host = (time.perf_counter() - t0) / iters  # enqueue time per call (s)
        torch.cuda.synchronize()
        wall = (time.perf_counter() - t0) / iters
        cycles = int(min(2e9 * (host * iters * 1.5 + 2e-3), 4e8))
        times = []
        for r in range(reps):
            torch.cuda._sleep(cycles)  # GPU busy while the host enqueues the batch
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            for i in range(iters):
                fn(i)
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / iters)
        return statistics.median(times), wall * 1e3


# ------------------------------------------------------------------------ correctness


def plant_edges(ctx, t, rows, V, rng):
    """Overwrite a few rows with the reference's edge cases; returns their indices."""
    idx = sorted(set(rng.choice(rows, size=min(rows, 6), replace=False).tolist()))
    kinds = ["mask", "allneg", "startneg", "nan", "posinf", "offset"]
    for i, k in zip(idx, kinds):
        if ctx.dry:
            row = t[i]
        else:
            row = t[i]  # a view
        if k == "mask":
            cols = rng.random(V) < 0.3
            if ctx.dry:
                row[cols] = -np.inf
            else:
                row[ctx.torch.as_tensor(cols, device="cuda")] = -math.inf
        elif k == "allneg":
            row[:] = -math.inf
        elif k == "startneg":
            row[: max(1, V // 2)] = -math.inf
        elif k == "nan":
            row[int(rng.integers(V))] = math.nan
        elif k == "posinf":
            row[int(rng.integers(V))] = math.inf
        elif k == "offset":
            row += 500.0
    return idx


def rel_err(got, want):
    """max |got - want| / max(1, |want|) over rows where both are finite; NaN/inf must match."""
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    nan_ok = bool(np.array_equal(np.isnan(got), np.isnan(want)))
    inf_ok = bool(np.array_equal(np.isposinf(got), np.isposinf(want)) and np.array_equal(np.isneginf(got), np.isneginf(want)))
    fin = np.isfinite(got) & np.isfinite(want)
    err = float(np.max(np.abs(got[fin] - want[fin]) / np.maximum(1.0, np.abs(want[fin])))) if fin.any() else 0.0
    return err, nan_ok and inf_ok


def check_shape(ctx, rows, V, dtype, nsample, seed, log):
    """Every op on a fresh random rows x V input vs the float64 reference on sampled rows."""
    K, R = ctx.K, ctx.R
    rng = np.random.default_rng(seed)
    x32 = ctx.randn(rows, V, "float32", seed)
    z32 = ctx.randn(rows, V, "float32", seed + 1)
    z32 = z32 * 0.5 + x32 * 0.5 if not ctx.dry else (z32 * 0.5 + x32 * 0.5).astype(np.float32)
    edge_x = plant_edges(ctx, x32, rows, V, rng)
    edge_z = plant_edges(ctx, z32, rows, V, rng)
    sample = sorted(set(rng.choice(rows, size=min(rows, nsample), replace=False).tolist()) | set(edge_x) | set(edge_z))
    if ctx.dry:
        lx = R.log_softmax_rows(x32).astype(np.float32)
        lz = R.log_softmax_rows(z32).astype(np.float32)
        px, pz = np.exp(lx), np.exp(lz)
    else:
        F = ctx.torch.nn.functional
        lx, lz = F.log_softmax(x32, -1), F.log_softmax(z32, -1)
        px, pz = lx.exp(), lz.exp()
    tgt_h = rng.integers(0, V, rows)
    tgt_h[rng.random(rows) < 0.05] = -100
    w_h = (rng.random(V) + 0.5).astype(np.float32)
    w_h[rng.random(V) < 0.1] = 0.0
    cuda = ctx.cuda
    tgt = cuda.to_device(tgt_h)
    w = cuda.to_device(w_h)
    results = []

    def one(name, fn, ref, arrays):
        try:
            _one(name, fn, ref, arrays)
        except Exception as exc:  # record and go on: one broken op must not hide the rest
            log(f"  check {name:22s} {rows}x{V} {dtype:8s} ERROR {type(exc).__name__}: {exc}")
            results.append(dict(check=name, rows=rows, V=V, dtype=dtype, sampled_rows=0, max_rel_err=float("nan"),
                                nan_inf_pattern_ok=False, unwritten=-1, ok=False, error=f"{type(exc).__name__}: {exc}"))

    def _one(name, fn, ref, arrays):
        out_t, out = ctx.empty_out(rows)
        fn(*[a[0] for a in arrays], out, bf16=arrays[0][1])
        ctx.sync()
        got = ctx.to_host(out_t)[sample]
        hs = [ctx.host64(a[2], sample, dtype) for a in arrays]
        want = ref(*hs)
        unwritten = int(np.sum(ctx.to_host(out_t) == 12345.0))
        err, pattern = rel_err(got, want)
        tolerance = 2e-4
        ok = pattern and err < tolerance and unwritten == 0
        rec = dict(check=name, rows=rows, V=V, dtype=dtype, sampled_rows=len(sample), max_rel_err=err,
                   nan_inf_pattern_ok=pattern, unwritten=unwritten, ok=ok)
        results.append(rec)
        log(f"  check {name:22s} {rows}x{V} {dtype:8s} rel_err={err:.2e} pattern={'ok' if pattern else 'MISMATCH'}"
            f"{'' if unwritten == 0 else f' UNWRITTEN={unwritten}'} -> {'PASS' if ok else 'FAIL'}")

    def arr(t):
        tt = ctx.cast(t, dtype)
        v, b = ctx.view(tt, dtype)
        return (v, b, tt)

    X, Z = arr(x32), arr(z32)
    one("lse", lambda x, o, bf16: K.lse(x, o, stream=ctx.stream, bf16=bf16), R.logsumexp_rows, [X])
    one("entropy_logits", lambda x, o, bf16: K.entropy_logits(x, 1.0, o, stream=ctx.stream, bf16=bf16),
        lambda a: R.entropy_rows(a, "logits"), [X])
    one("kl_logits", lambda x, z, o, bf16: K.kl_logits(x, z, 1.0, o, stream=ctx.stream, bf16=bf16),
        lambda a, b: R.kl_rows(a, b, "logits"), [X, Z])
    one("ce_hard", lambda x, o, bf16: K.ce_hard(x, tgt, -100, None, 0.0, o, stream=ctx.stream, bf16=bf16),
        lambda a: R.cross_entropy_hard_rows(a, tgt_h[sample], -100), [X])
    one("ce_hard_w_smooth", lambda x, o, bf16: K.ce_hard(x, tgt, -100, w, 0.1, o, stream=ctx.stream, bf16=bf16),
        lambda a: R.cross_entropy_hard_rows(a, tgt_h[sample], -100, w_h, 0.1), [X])
    PZ = arr(pz)
    one("ce_soft_w_smooth", lambda x, p, o, bf16: K.ce_soft(x, p, w, 0.9, 0.1 / V, 1.0, o, stream=ctx.stream, bf16=bf16),
        lambda a, b: R.cross_entropy_soft_rows(a, b, w_h, 0.1), [X, PZ])
    LX, LZ = arr(lx), arr(lz)
    one("entropy_log_probs", lambda x, o, bf16: K.entropy_log_probs(x, o, stream=ctx.stream, bf16=bf16),
        lambda a: R.entropy_rows(a, "log_probs"), [LX])
    one("kl_log_probs", lambda a, b, o, bf16: K.kl_log_probs(a, b, o, stream=ctx.stream, bf16=bf16),
        lambda a, b: R.kl_rows(a, b, "log_probs"), [LX, LZ])
    PX = arr(px)
    one("entropy_probs", lambda x, o, bf16: K.entropy_probs(x, o, stream=ctx.stream, bf16=bf16),
        lambda a: R.entropy_rows(a, "probs"), [PX])
    one("kl_probs", lambda a, b, o, bf16: K.kl_probs(a, b, o, stream=ctx.stream, bf16=bf16),
        lambda a, b: R.kl_rows(a, b, "probs"), [PX, PZ])
    del X, Z, LX, LZ, PX, PZ, x32, z32, lx, lz, px, pz
    ctx.free()
    return results


def check_int64_offsets(ctx, log):
    """Rows past element 2^31 of one > 2^31-element input (64-bit offsets)."""
    if ctx.dry:
        return []
    K, R = ctx.K, ctx.R
    out = []
    rows, V = 16800, 128256  # 2.155e9 elements
    assert rows * V > 2 ** 31
    for dtype in ("bfloat16", "float32"):
        x = ctx.randn(rows, V, dtype, 7)
        xv, bf = ctx.view(x, dtype)
        o_t, o = ctx.empty_out(rows)
        K.lse(xv, o, stream=ctx.stream, bf16=bf)
        ctx.sync()
        sample = list(range(rows - 8, rows)) + [0, (2 ** 31) // V, (2 ** 31) // V + 1]
        err, pattern = rel_err(ctx.to_host(o_t)[sample], R.logsumexp_rows(ctx.host64(x, sample, dtype)))
        ok = pattern and err < 2e-4 and not np.any(ctx.to_host(o_t) == 12345.0)
        log(f"  check lse 64-bit offsets {rows}x{V} {dtype} rel_err={err:.2e} -> {'PASS' if ok else 'FAIL'}")
        out.append(dict(check="lse_int64_offsets", rows=rows, V=V, dtype=dtype, max_rel_err=err, ok=ok))
        del x, xv
        ctx.free()
    return out


# ----------------------------------------------------------------------------- timing


def linear_head(ctx, log, dry):
    """The hidden-state path (``fastdiv.linear``, #20) on device arrays: correctness against
    the same functions on the head's materialized logits, then (on a GPU) time and peak
    device memory of ``fastdiv.cross_entropy(linear(h, W), t)`` against torch's
    ``F.cross_entropy(h @ W.T, t)`` and the bare ``h @ W.T``.  LLaMA-3's head in bfloat16:
    4096 rows x D 4096 -> V 128256 (logits 1 GiB in bfloat16); in ``--dry`` a tiny float32
    head of numba device arrays.  Returns ``(checks, records)``."""
    import fastdiv

    rows, d, v = (12, 16, 300) if dry else (4096, 4096, 128256)
    dtype = "float32" if dry else "bfloat16"
    rng = np.random.default_rng(20)
    t_host = rng.integers(0, v, rows)
    t_host[::17] = -100
    if dry:
        dev = [ctx.cuda.to_device(a.astype(np.float32)) for a in
               (rng.standard_normal((rows, d)), rng.standard_normal((v, d)) / np.sqrt(d) * 3,
                rng.standard_normal((v, d)) / np.sqrt(d) * 3)]
        h, w, w2 = dev
        t = t_host
    else:
        torch = ctx.torch
        g = torch.Generator(device="cuda").manual_seed(20)
        h = torch.randn((rows, d), generator=g, device="cuda").to(torch.bfloat16)
        w = (torch.randn((v, d), generator=g, device="cuda") * (3 / d ** 0.5)).to(torch.bfloat16)
        w2 = (w.float() + torch.randn((v, d), generator=g, device="cuda") * (0.3 / d ** 0.5)).to(torch.bfloat16)
        t = torch.as_tensor(t_host, device="cuda")
    head, head2 = fastdiv.linear(h, w), fastdiv.linear(h, w2)
    x, z = head.materialize(), head2.materialize()
    calls = [
        ("linear: cross_entropy", lambda a, b: fastdiv.cross_entropy(a, t, reduction="none")),
        ("linear: logsumexp", lambda a, b: fastdiv.logsumexp(a)),
        ("linear: entropy", lambda a, b: fastdiv.entropy(a, reduction="none")),
        ("linear: kl_div", lambda a, b: fastdiv.kl_div(a, b, reduction="none")),
        ("linear: js_div", lambda a, b: fastdiv.js_div(a, b, reduction="none")),
    ]
    checks = []
    for name, fn in calls:
        try:
            got, want = ctx.to_host(fn(head, head2)), ctx.to_host(fn(x, z))
            err, pattern = rel_err(got, want)
            ok = pattern and err < 2e-4
            checks.append(dict(check=name, rows=rows, V=v, dtype=dtype, sampled_rows=rows, max_rel_err=err,
                               nan_inf_pattern_ok=pattern, unwritten=0, ok=ok))
            log(f"  check {name:22s} {rows}x{v} {dtype:8s} rel_err={err:.2e} -> {'PASS' if ok else 'FAIL'}")
        except Exception as exc:
            checks.append(dict(check=name, rows=rows, V=v, dtype=dtype, sampled_rows=0, max_rel_err=float("nan"),
                               nan_inf_pattern_ok=False, unwritten=-1, ok=False, error=f"{type(exc).__name__}: {exc}"))
            log(f"  check {name:22s} ERROR {type(exc).__name__}: {exc}")
    del x, z
    records = []
    if dry:
        return checks, records
    torch = ctx.torch
    F = torch.nn.functional
    runs = [("h @ W.T alone", lambda i: h @ w.t()),
            ("torch F.cross_entropy(h @ W.T, t)", lambda i: F.cross_entropy(h @ w.t(), t, ignore_index=-100)),
            ("fastdiv.cross_entropy(linear(h, W), t)", lambda i: fastdiv.cross_entropy(fastdiv.linear(h, w), t))]
    for name, fn in runs:
        ctx.free()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(0)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        ms, host_ms = ctx.time(fn, iters=5, reps=5, warmup=1)
        records.append(dict(op=name, shape=f"{rows}x{d}->{v}", dtype=dtype, ms=ms, host_ms_per_call=host_ms,
                            peak_extra_MB=peak / 2**20))
        log(f"  linear {name:42s} {ms:8.3f} ms  peak extra {peak / 2**20:8.1f} MB")
    return checks, records


def bench(ctx, log):
    K = ctx.K
    torch = ctx.torch
    F = torch.nn.functional
    rec = []
    # ceiling: copy and read-only sum of 4 GiB
    n = 1 << 30
    src = torch.randn(n, device="cuda")
    dst = torch.empty_like(src)
    t_copy, _ = ctx.time(lambda i: dst.copy_(src))
    t_sum, _ = ctx.time(lambda i: src.sum())
    nbytes = n * 4
    copy_rw = 2 * nbytes / t_copy / 1e6  # GB/s read + written
    copy_r = nbytes / t_copy / 1e6
    sum_r = nbytes / t_sum / 1e6
    log(f"copy 4 GiB: {t_copy:.3f} ms = {copy_rw:.0f} GB/s read+write ({copy_r:.0f} GB/s read); "
        f"torch.sum read: {sum_r:.0f} GB/s")
    ceil = dict(copy_ms=t_copy, copy_rw_GBps=copy_rw, copy_read_GBps=copy_r, sum_read_GBps=sum_r)
    del src, dst
    ctx.free()
    stream = ctx.stream
    # host (Python + numba launch) cost of one op call: a tiny input, many calls, one sync
    tiny = ctx.I.to_device_view(torch.randn(8, 51, device="cuda"))[0]
    tiny_out = ctx.I.to_device_view(torch.empty(8, device="cuda"))[0]
    for _ in range(20):
        K.lse(tiny, tiny_out, stream=stream)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(500):
        K.lse(tiny, tiny_out, stream=stream)
    torch.cuda.synchronize()
    ceil["host_us_per_call"] = (time.perf_counter() - t0) / 500 * 1e6
    log(f"host cost of one fastdiv kernel call (8x51 lse, 500 calls): {ceil['host_us_per_call']:.1f} us")

    for rows, V in SHAPES:
        for dtype in DTYPES:
            esize = 4 if dtype == "float32" else 2
            nb = rows * V * esize
            ncopies = 2 if nb < (1 << 30) else 1
            xs = [ctx.randn(rows, V, dtype, 100 + c) for c in range(ncopies)]
            zs = [ctx.randn(rows, V, dtype, 200 + c) for c in range(ncopies)]
            ps = [torch.softmax(z.float(), -1).to(z.dtype) for z in zs]
            xv = [ctx.view(x, dtype)[0] for x in xs]
            zv = [ctx.view(z, dtype)[0] for z in zs]
            pv = [ctx.view(p, dtype)[0] for p in ps]
            bf = dtype == "bfloat16"
            tgt = torch.randint(0, V, (rows,), device="cuda")
            tgtv = ctx.I.to_device_view(tgt)[0]
            w = torch.rand(V, device="cuda") + 0.5
            wv = ctx.I.to_device_view(w)[0]
            out_t = torch.empty(rows, device="cuda")
            outv = ctx.I.to_device_view(out_t)[0]
            red_t = torch.empty(1, device="cuda")
            redv = ctx.I.to_device_view(red_t)[0]
            c = lambda i: i % ncopies  # noqa: E731
            cases = [
                ("lse", 1, lambda i: K.lse(xv[c(i)], outv, stream=stream, bf16=bf)),
                ("ce_hard", 1, lambda i: K.ce_hard(xv[c(i)], tgtv, -100, None, 0.0, outv, stream=stream, bf16=bf)),
                ("ce_hard+mean", 1, lambda i: (K.ce_hard(xv[c(i)], tgtv, -100, None, 0.0, outv, stream=stream, bf16=bf),
                                               K.device_mean(outv, tgtv, -100, None, out=redv, stream=stream))),
                ("kl_logits", 2, lambda i: K.kl_logits(xv[c(i)], zv[c(i)], 1.0, outv, stream=stream, bf16=bf)),
                ("kl_logits+batchmean", 2, lambda i: (K.kl_logits(xv[c(i)], zv[c(i)], 1.0, outv, stream=stream, bf16=bf),
                                                      K.device_mean(outv, out=redv, stream=stream))),
                ("entropy_logits", 1, lambda i: K.entropy_logits(xv[c(i)], 1.0, outv, stream=stream, bf16=bf)),
                ("ce_hard_w_smooth", 1, lambda i: K.ce_hard(xv[c(i)], tgtv, -100, wv, 0.1, outv, stream=stream, bf16=bf)),
                ("ce_soft", 2, lambda i: K.ce_soft(xv[c(i)], pv[c(i)], None, 1.0, 0.0, 1.0, outv, stream=stream, bf16=bf)),
                ("torch.logsumexp", 1, lambda i: torch.logsumexp(xs[c(i)], -1)),
                ("torch.cross_entropy", 1, lambda i: F.cross_entropy(xs[c(i)], tgt)),
                ("torch.kl_div", 2, lambda i: F.kl_div(F.log_softmax(zs[c(i)], -1), F.log_softmax(xs[c(i)], -1),
                                                       log_target=True, reduction="batchmean")),
            ]
            times = {}
            for name, narr, fn in cases:
                try:
                    ms, host_ms = ctx.time(fn)
                except Exception as exc:
                    log(f"  {rows}x{V} {dtype:8s} {name:22s} ERROR {type(exc).__name__}: {exc}")
                    torch.cuda.synchronize()
                    continue
                gbs = narr * nb / ms / 1e6
                times[name] = ms
                r = dict(shape=f"{rows}x{V}", rows=rows, V=V, dtype=dtype, op=name, ms=ms, host_ms_per_call=host_ms,
                         read_GBps=gbs, pct_copy_rw=100 * gbs / copy_rw, pct_copy_read=100 * gbs / copy_r,
                         pct_sum_read=100 * gbs / sum_r)
                rec.append(r)
                log(f"  {rows}x{V} {dtype:8s} {name:22s} {ms:8.3f} ms  {gbs:7.0f} GB/s read  "
                    f"{r['pct_copy_rw']:5.1f}% of copy  (host {host_ms:.3f} ms/call)")
            for r in rec:
                if r["shape"] != f"{rows}x{V}" or r["dtype"] != dtype:
                    continue
                peer = {"lse": "torch.logsumexp", "ce_hard": "torch.cross_entropy", "ce_hard+mean": "torch.cross_entropy",
                        "kl_logits": "torch.kl_div", "kl_logits+batchmean": "torch.kl_div"}.get(r["op"])
                if peer in times:
                    r["speedup_vs_torch"] = times[peer] / r["ms"]
            del xs, zs, ps, xv, zv, pv
            ctx.free()
    return ceil, rec


def sweep(ctx, log, rec, copy_rw):
    for rows, V in SHAPES:
        for dtype in DTYPES:
            esize = 4 if dtype == "float32" else 2
            nb = rows * V * esize
            ncopies = 2 if nb < (1 << 30) else 1
            xs = [ctx.randn(rows, V, dtype, 100 + c) for c in range(ncopies)]
            zs = [ctx.randn(rows, V, dtype, 200 + c) for c in range(ncopies)]
            xv = [ctx.view(x, dtype)[0] for x in xs]
            zv = [ctx.view(z, dtype)[0] for z in zs]
            out_t = ctx.torch.empty(rows, device="cuda")
            outv = ctx.I.to_device_view(out_t)[0]
            sweep_shape(ctx, log, rec, rows, V, dtype, xv, zv, outv, dtype == "bfloat16", nb, copy_rw)
            del xs, zs, xv, zv
            ctx.free()


def sweep_shape(ctx, log, rec, rows, V, dtype, xv, zv, outv, bf, nb, copy_rw):
    """Launch-shape sweep (module knobs; UNROLL recompiles), restored afterwards."""
    K = ctx.K
    if V > K.GROUP_MAX_V:
        grid = [("BLOCK", b, None, None) for b in (128, 256, 512)]
    else:
        grid = [("TILE_ROWS", t, None, None) for t in (64, 128, 256)]
        grid += [("TILE_MAX_V", 0, "SMALL_BLOCK", b) for b in (128, 256)]  # the register kernel
    saved = {k: getattr(K, k) for k in ("BLOCK", "SMALL_BLOCK", "UNROLL", "TILE_ROWS", "TILE_MAX_V")}
    try:
        for k1, v1, k2, v2 in grid:
            setattr(K, k1, v1)
            if k2:
                setattr(K, k2, v2)
            label = f"{k1}={v1}" + (f",{k2}={v2}" if k2 else "")
            for name, narr, fn in [
                ("lse", 1, lambda i: K.lse(xv[i % len(xv)], outv, stream=ctx.stream, bf16=bf)),
                ("kl_logits", 2, lambda i: K.kl_logits(xv[i % len(xv)], zv[i % len(zv)], 1.0, outv, stream=ctx.stream, bf16=bf)),
            ]:
                try:
                    ms, _ = ctx.time(fn, iters=10, reps=5)
                except Exception as exc:  # e.g. too many registers for 1024 threads
                    log(f"    sweep {label:22s} {name:10s} ERROR {type(exc).__name__}: {str(exc)[:120]}")
                    ctx.torch.cuda.synchronize()
                    continue
                gbs = narr * nb / ms / 1e6
                rec.append(dict(shape=f"{rows}x{V}", rows=rows, V=V, dtype=dtype, op=f"sweep:{name}:{label}",
                                ms=ms, read_GBps=gbs, pct_copy_rw=100 * gbs / copy_rw))
                log(f"    sweep {label:22s} {name:10s} {ms:8.3f} ms {100 * gbs / copy_rw:5.1f}% of copy")
    finally:
        for k, v in saved.items():
            setattr(K, k, v)


# ----------------------------------------------------------------------------- report


def markdown(env, ceil, rec, checks):
    lines = ["# fastdiv GPU benchmark", ""]
    lines.append("Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()))
    lines.append("")
    if ceil:
        lines.append(f"Ceiling: device-to-device copy of 4 GiB = {ceil['copy_ms']:.3f} ms, "
                     f"{ceil['copy_rw_GBps']:.0f} GB/s read+write ({ceil['copy_read_GBps']:.0f} GB/s read); "
                     f"read-only torch.sum: {ceil['sum_read_GBps']:.0f} GB/s. Host cost of one kernel call "
                     f"(Python + numba launch, 8x51 lse): {ceil.get('host_us_per_call', float('nan')):.1f} us.")
        lines.append("")
        lines.append("`% copy` = bytes the op must read / time, over the copy's bytes read+written / time "
                     "(the strict reading of the target); `x torch` = torch's time / fastdiv's time.")
        lines.append("")
        lines.append("| shape | dtype | op | ms | GB/s read | % copy | % torch.sum read | x torch | host ms/call |")
        lines.append("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in rec:
            if r["op"].startswith("sweep:"):
                continue
            sp = f"{r['speedup_vs_torch']:.1f}" if "speedup_vs_torch" in r else ""
            lines.append(f"| {r['shape']} | {r['dtype']} | {r['op']} | {r['ms']:.3f} | {r['read_GBps']:.0f} | "
                         f"{r['pct_copy_rw']:.1f} | {r['pct_sum_read']:.1f} | {sp} | {r['host_ms_per_call']:.3f} |")
        sw = [r for r in rec if r["op"].startswith("sweep:")]
        if sw:
            lines += ["", "Block-size sweep:", "", "| shape | dtype | op | ms | % copy |", "| --- | --- | --- | ---: | ---: |"]
            for r in sw:
                lines.append(f"| {r['shape']} | {r['dtype']} | {r['op'][6:]} | {r['ms']:.3f} | {r['pct_copy_rw']:.1f} |")
    return lines


def markdown_checks(checks):
    lines = []
    if checks:
        npass = sum(c["ok"] for c in checks)
        lines += ["", f"Correctness vs float64 reference: {npass}/{len(checks)} checks pass.", "",
                  "| check | shape | dtype | rows compared | max rel err | ok |", "| --- | --- | --- | ---: | ---: | --- |"]
        for c in checks:
            lines.append(f"| {c['check']} | {c['rows']}x{c['V']} | {c['dtype']} | {c.get('sampled_rows', '')} | "
                         f"{c['max_rel_err']:.1e} | {'yes' if c['ok'] else 'NO'} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or HERE)
    ap.add_argument("--dry", action="store_true", help="simulator smoke run on tiny shapes")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--no-bench", action="store_true")
    ap.add_argument("--sweep", action="store_true", help="also sweep block sizes")
    ap.add_argument("--sample", type=int, default=48, help="rows compared with the reference per shape")
    args = ap.parse_args(argv)
    if args.dry:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    os.makedirs(args.out, exist_ok=True)
    logf = open(os.path.join(args.out, "gpu_bench.log"), "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    ctx = Ctx(args.dry)
    if ctx.K.unavailable_reason() is not None:
        log(f"cuda backend unavailable: {ctx.K.unavailable_reason()}")
        return 2
    import numba

    env = {"python": platform.python_version(), "numpy": np.__version__, "numba": numba.__version__}
    try:
        import numba_cuda

        env["numba-cuda"] = numba_cuda.__version__
    except Exception:
        pass
    if not args.dry:
        torch = ctx.torch
        env["torch"] = torch.__version__
        env["gpu"] = torch.cuda.get_device_name()
        env["SMs"] = torch.cuda.get_device_properties(0).multi_processor_count
        env["knobs"] = dict(BLOCK=ctx.K.BLOCK, UNROLL=ctx.K.UNROLL, TILE_ROWS=ctx.K.TILE_ROWS,
                            TILE_MAX_V=ctx.K.TILE_MAX_V, GROUP_MAX_V=ctx.K.GROUP_MAX_V)
    log("env: " + json.dumps(env))
    checks = []
    if not args.no_check:
        t0 = time.time()
        shapes = [(7, 300), (9, 51), (6, 5000)] if args.dry else SHAPES
        for k, (rows, V) in enumerate(shapes):
            for dtype in DTYPES:
                nsample = min(args.sample if V > 1000 else 4096, rows)
                checks += check_shape(ctx, rows, V, dtype, nsample, 1000 + 10 * k, log)
        checks += check_int64_offsets(ctx, log)
        lin_checks, lin_rec = linear_head(ctx, log, args.dry)
        checks += lin_checks
        log(f"checks: {sum(c['ok'] for c in checks)}/{len(checks)} pass ({time.time() - t0:.0f} s)")
    else:
        lin_rec = []
    ceil, rec = {}, []

    def write():
        with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
            json.dump(dict(env=env, ceiling=ceil, results=rec, checks=checks, linear=lin_rec), f, indent=1,
                      default=str)
        head = markdown(env, ceil, rec, checks)
        lin = ["", "Hidden states (`fastdiv.linear`, #20): GPU ms and peak extra device memory", "",
               "| run | shape | dtype | ms | peak extra MB |", "| --- | --- | --- | ---: | ---: |"]
        lin += [f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['ms']:.3f} | {r['peak_extra_MB']:.1f} |"
                for r in lin_rec]
        md = "\n".join(head[:4] + markdown_checks(checks) + (lin if lin_rec else []) + [""] + head[4:]) + "\n"
        with open(os.path.join(args.out, "gpu_bench.md"), "w") as f:
            f.write(md)
        return md

    write()
    if not args.no_bench and not args.dry:
        ceil, rec = bench(ctx, log)
        write()
        if args.sweep:
            log("sweep:")
            sweep(ctx, log, rec, ceil["copy_rw_GBps"])
    md = write()
    print(md)
    return 0 if all(c["ok"] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
