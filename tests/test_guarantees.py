"""docs/guarantees.rst, for every function of the table (tests/cases.py, ``FUNCTIONS``):

* extra memory is O(rows), not O(rows x V) -- measured in a subprocess (tracemalloc for numpy
  allocations, the peak resident set for everything), for native, converted and file-backed
  inputs (tests/memory_probe.py);
* inputs are never modified (writable, read-only, Fortran, byte-swapped, float16, torch);
* results are bit-identical for 1 and 2 threads, across repeated calls, and across 8 Python
  threads calling at once.
"""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastdiv
from cases import FUNCTIONS, LAYOUTS, fast
from conftest import ALL_HOST, COMPILED

HERE = pathlib.Path(__file__).resolve().parent
FN_IDS = [f.id for f in FUNCTIONS]


# --------------------------------------------------------------------------- memory


def _memory_params():
    """A cell per compiled backend (all measured in one subprocess: _probe_lines); numba's
    float16 variant (its half specializations) in the slow tier (cases.fast)."""
    for backend in COMPILED:
        fast_variants = [v for v in MEMORY_VARIANTS if fast(backend, np.float16 if v == "float16" else np.float32)]
        yield pytest.param(backend, fast_variants, id=backend)
        slow_variants = [v for v in MEMORY_VARIANTS if v not in fast_variants]
        if slow_variants:
            yield pytest.param(backend, slow_variants, marks=pytest.mark.slow, id=f"{backend}-{'-'.join(slow_variants)}")


MEMORY_VARIANTS = ("float32", "float16", "non-contiguous", "big-endian", "memmap")


_PROBED = {}


def _probe_lines(session, tmp_path_factory, rows, v):
    """The probe's JSON lines for every memory cell this session selected, from one subprocess
    (tests/memory_probe.py: the inputs, most of its time, are made once for all backends)."""
    if not _PROBED:
        cells = [item.callspec.params for item in session.items
                 if getattr(item, "originalname", None) == "test_extra_memory_is_o_rows"
                 and item.module.__name__ == __name__]
        wanted = {}
        for p in cells:
            wanted.setdefault(p["backend"], []).extend(p["variants"])
        union = [m for m in MEMORY_VARIANTS if any(m in vs for vs in wanted.values())]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
        proc = subprocess.run([sys.executable, str(HERE / "memory_probe.py"), str(rows), str(v),
                               str(tmp_path_factory.mktemp("memory_probe")), ",".join(union),
                               *[f"{b}={','.join(vs)}" for b, vs in wanted.items()]],
                              capture_output=True, text=True, env=env, timeout=900)
        _PROBED["result"] = (proc.returncode, proc.stderr, [json.loads(line) for line in proc.stdout.splitlines()])
    return _PROBED["result"]


@pytest.mark.parametrize("backend,variants", list(_memory_params()))
def test_extra_memory_is_o_rows(backend, variants, request, tmp_path_factory):
    rows, v = 1024, 8192
    returncode, stderr, lines = _probe_lines(request.session, tmp_path_factory, rows, v)
    assert returncode == 0, stderr[-3000:]
    lines = [d for d in lines if d["backend"] == backend and d["variant"] in variants]
    assert {(d["fn"], d["variant"]) for d in lines} == {(f, m) for f in FN_IDS for m in variants}
    block = 256 << 10                                   # BLOCK_BYTES and CHUNK_BYTES in the probe
    rows_sized = 64 * rows                              # outputs, targets, per-row scratch: O(rows)
    failures = []
    for d in lines:
        arrays = 2 if d["input"] > rows * v * (2 if d["variant"] == "float16" else 4) else 1
        # Converted blocks: one of each input at a time, twice over at most (source + converted).
        traced_bound = arrays * 2 * block + rows_sized + (64 << 10)
        # Resident pages also count allocator and page-cache granularity (a few MB, not O(V x rows)).
        rss_bound = arrays * (3 << 20) + rows_sized
        assert d["input"] >= 4 * rss_bound and rows * v * 2 >= 20 * rows_sized
        if d["traced"] > traced_bound or d["rss"] > rss_bound:
            failures.append(f"{d['fn']} {d['variant']} {d['backend']}: numpy peak {d['traced'] >> 10} KiB "
                            f"(bound {traced_bound >> 10}), RSS +{d['rss'] >> 10} KiB (bound {rss_bound >> 10}); "
                            f"inputs {d['input'] >> 20} MiB")
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------- inputs never modified


def _layouts(a):
    """The table's layouts (cases.LAYOUTS) and float16."""
    return {**{name: f(a) for name, f in LAYOUTS.items()}, "float16": a.astype(np.float16)}


def _snapshot(value):
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        return ("torch", value.clone(), value.dtype, value.stride())
    if isinstance(value, np.ndarray):
        return ("numpy", value.tobytes(order="A"), value.dtype, value.strides, value.flags.writeable)
    return ("other", repr(value))


def _same(before, after):
    if before[0] == "torch":
        import torch
        return torch.equal(before[1], after[1]) and before[2:] == after[2:]
    return before == after


def _never_modified_params():
    for backend in ALL_HOST:
        for fn in FUNCTIONS:
            for layout in (*LAYOUTS, "float16"):
                marks = [] if fast(backend, np.float16 if layout == "float16" else np.float32) else [pytest.mark.slow]
                yield pytest.param(fn, backend, layout, marks=marks, id=f"{fn.id}-{backend}-{layout}")


@pytest.mark.parametrize("fn,backend,layout", list(_never_modified_params()))
def test_inputs_are_never_modified(fn, backend, layout):
    for dirty in (True, False):                         # masked and NaN entries; clean + validate
        good = fn.good(np.random.default_rng(11), (6, 3), 37, np.float32)
        if dirty:
            for name in fn.arrays:
                good[name][0, 0, 1] = -np.inf
                good[name][1, 2, 3] = np.nan
        if "target" in good and good["target"].dtype.kind == "i":
            good["target"][0, 1] = -100
            good["weight"] = np.random.default_rng(12).uniform(0, 2, 37)
        extra = {"validate": True} if fn.validate and not dirty else {}
        args = {k: (_layouts(a)[layout] if k in fn.arrays else a.copy()) for k, a in good.items()}
        for a in args.values():
            if layout == "read-only" and a.flags.owndata:
                a.flags.writeable = False
        before = {k: _snapshot(a) for k, a in args.items()}
        with np.errstate(all="ignore"):
            for options in ({}, fn.per_row):
                fn.call(args, backend, **options, **extra)
        assert all(_same(before[k], _snapshot(a)) for k, a in args.items()), (fn.id, layout, dirty)


@pytest.mark.parametrize("backend", ALL_HOST)
@pytest.mark.parametrize("fn", FUNCTIONS, ids=FN_IDS)
def test_torch_inputs_are_never_modified(fn, backend):
    torch = pytest.importorskip("torch")
    good = fn.good(np.random.default_rng(12), (5,), 29, np.float32)
    args = {k: torch.from_numpy(a.copy()) for k, a in good.items()}
    before = {k: a.clone() for k, a in args.items()}
    fn.call(args, backend, **fn.per_row)
    assert all(torch.equal(before[k], a) for k, a in args.items())


# --------------------------------------------------------------------------- reproducibility


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("fn", FUNCTIONS, ids=FN_IDS)
def test_bit_identical_for_any_thread_count_and_repeated_calls(fn, backend):
    args = fn.good(np.random.default_rng(13), (257,), 3001, np.float32)
    for name, kind in fn.arrays.items():
        args[name][3, :1000] = 0.0 if kind == "probs" else -np.inf
    for opts in [dict(fn.per_row)] + ([{"reduction": "mean"}, {"reduction": "sum"}] if fn.per_row else []):
        with fastdiv.threads(1):
            one = fn.call(args, backend, **opts)
        with fastdiv.threads(2):
            two = fn.call(args, backend, **opts)
            again = fn.call(args, backend, **opts)
        assert np.array_equal(one, two, equal_nan=True), (fn.id, opts)
        assert np.array_equal(two, again, equal_nan=True), (fn.id, opts)


@pytest.mark.parametrize("backend", COMPILED)
def test_means_of_many_rows_are_bit_identical_for_any_thread_count(backend):
    """From reduce.COMPILED_SUM_FROM rows on, a mean's float64 sum runs threaded (the Cython
    backend's sum64, fixed blocks): the same bits for 1 and 2 threads, and the float64 mean of
    the same per-row values to within the result's rounding."""
    rng = np.random.default_rng(17)
    n = fastdiv.reduce.COMPILED_SUM_FROM + 4097
    x = rng.standard_normal((n, 51)).astype(np.float32)
    z = rng.standard_normal((n, 51)).astype(np.float32)
    t = rng.integers(0, 51, n)
    calls = {"cross_entropy": lambda **o: fastdiv.cross_entropy(x, t, backend=backend, **o),
             "kl_div": lambda **o: fastdiv.kl_div(x, z, backend=backend, **o)}
    for name, call in calls.items():
        with fastdiv.threads(1):
            one = call()
        with fastdiv.threads(2):
            two = call()
        assert one.tobytes() == two.tobytes(), name
        rows = call(reduction="none")
        np.testing.assert_allclose(two, np.sum(rows, dtype=np.float64) / n, rtol=2.0 ** -23, err_msg=name)


@pytest.mark.parametrize("backend", COMPILED)
def test_eight_python_threads_at_once_get_the_same_bits(backend):
    """Every function from 8 Python threads at once (the compiled backends are thread-safe:
    docs/guarantees.rst)."""
    work = []
    for i, fn in enumerate(FUNCTIONS):
        args = fn.good(np.random.default_rng(20 + i), (64,), 1500, np.float32)
        work.append((fn, args, fn.call(args, backend, **fn.per_row)))
    bad = []
    barrier = threading.Barrier(8)

    def run(k):
        barrier.wait()
        for j in range(len(work)):
            fn, args, want = work[(j + k) % len(work)]          # different functions at once
            got = fn.call(args, backend, **fn.per_row)
            if not np.array_equal(got, want, equal_nan=True):
                bad.append(fn.id)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not bad, bad


# --------------------------------------------------------------------------- logits near the float maximum


def _near_max_rows(dtype, v):
    """Rows of 2.0 led by finite logits near the float maximum (one, two tied, both signs,
    halves, down to max / 16), and the comparison targets: the float64 reference's value
    rounded to ``dtype`` (a value past the dtype's range is inf, correctly)."""
    big = np.finfo(dtype).max
    rows = []
    for special in ([big], [big, big], [-big, big], [big / 2, -big / 2], [big / 8, big / 8], [big / 16], [-big, 5.0]):
        r = np.full(v, 2.0)
        r[: len(special)] = special
        rows.append(r)
    return np.array(rows, dtype)


def _rounded(values, dtype):
    with np.errstate(over="ignore"):
        return np.asarray(values).astype(dtype)


@pytest.mark.parametrize("backend", ALL_HOST)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("v", [3, 51, 130, 32000])          # small-V block path and row path
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_logits_near_the_float_maximum(backend, dtype, v):
    """Finite logits up to the float maximum: every shift is against the row maximum, so the
    results are exact even where x - m or m - x_t is near the range's end.  (The numba KL once
    floored e^dx at the smallest normal and added floor * (dx - dz): 0.25 at |dx - dz| ~ 2e37;
    its float64 cross-entropy let fast-math regroup (m - x_t) + log s into (m + log s) - x_t,
    0 instead of log 2 for [max, max].)"""
    from conftest import assert_rows_close
    from fastdiv import reference as R

    x = _near_max_rows(dtype, v)
    n = len(x)
    for z in (np.zeros_like(x), np.tile(np.linspace(-3, 3, v).astype(dtype), (n, 1))):
        t = np.zeros(n, np.int64)
        assert_rows_close(fastdiv.logsumexp(x, backend=backend), _rounded(R.logsumexp_rows(x), dtype), dtype, "lse")
        assert_rows_close(fastdiv.entropy(x, backend=backend), _rounded(R.entropy_rows(x), dtype), dtype, "entropy")
        assert_rows_close(fastdiv.kl_div(x, z, reduction="none", backend=backend), _rounded(R.kl_rows(x, z), dtype),
                          dtype, "kl", kind="kl")
        for a, b in ((x, z), (z, x)):
            assert_rows_close(fastdiv.js_div(a, b, reduction="none", backend=backend),
                              _rounded(R.js_rows(a, b), dtype), dtype, "js", kind="kl")
        for t in (np.zeros(n, np.int64), np.full(n, v - 1)):
            assert_rows_close(fastdiv.cross_entropy(x, t, reduction="none", backend=backend),
                              _rounded(R.cross_entropy_hard_rows(x, t), dtype), dtype, "ce")


SUMS_PAST_THE_MAXIMUM = (
    "known limit of both compiled kernels: a result built from a sum over the row's classes overflows "
    "to +inf when that sum passes the float maximum, though the result does not: reverse KL against "
    "logits above ~max / V (w = sum e^dz (dz - dx) is V times the result), and label-smoothed "
    "cross-entropy in float32 (sum_j (m - x_j)).  torch's float32 sums overflow alike.")


@pytest.mark.parametrize("backend", [pytest.param(b, marks=pytest.mark.xfail(reason=SUMS_PAST_THE_MAXIMUM, strict=True))
                                     for b in COMPILED] + ["numpy"])
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_sums_past_the_float_maximum(backend):
    from conftest import assert_rows_close
    from fastdiv import reference as R

    dtype = np.float32
    x = _near_max_rows(dtype, 32000)
    z = np.zeros_like(x)
    t = np.zeros(len(x), np.int64)
    assert_rows_close(fastdiv.kl_div(z, x, reduction="none", backend=backend), _rounded(R.kl_rows(z, x), dtype), dtype,
                      "reverse kl", kind="kl")
    assert_rows_close(fastdiv.cross_entropy(x, t, label_smoothing=0.1, reduction="none", backend=backend),
                      _rounded(R.cross_entropy_hard_rows(x, t, label_smoothing=0.1), dtype), dtype, "smoothed ce")


# --------------------------------------------------------------------------- file-backed inputs


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_memmap_chunks_never_lose_the_callers_changes(backend, mode, tmp_path, monkeypatch):
    """Released pages of a shared mapping come back from the page cache (changes written
    through "r+" included); a copy-on-write ("c") mapping is never released, since that would
    throw away the caller's in-memory changes."""
    from fastdiv import _chunks
    from fastdiv import reference as R

    monkeypatch.setattr(_chunks, "CHUNK_BYTES", 8192)             # many chunks of 4 rows
    x = np.random.default_rng(5).standard_normal((64, 512)).astype(np.float32)
    path = tmp_path / "x.bin"
    x.tofile(path)
    mm = np.memmap(path, np.float32, mode, shape=x.shape)
    if mode != "r":
        mm[10] += 100.0                                            # the caller's change, in memory
        x[10] += 100.0
    for _ in range(2):                                             # the second pass re-reads released pages
        got = fastdiv.logsumexp(mm, backend=backend)
        np.testing.assert_allclose(got, R.logsumexp_rows(x), rtol=1e-6)
        assert np.array_equal(got, fastdiv.logsumexp(x, backend=backend))   # the bits of in-memory input
    assert np.array_equal(np.asarray(mm), x)
    assert _chunks.mapping(mm)[1] == (mode != "c")


def test_validate_refuses_device_arrays():
    from fastdiv import _registry

    if _registry.unavailable_reason("cuda") is not None:
        pytest.skip(_registry.unavailable_reason("cuda"))
    from numba import cuda

    p = cuda.to_device(np.full((2, 4), 0.25, np.float32))
    with pytest.raises(ValueError, match="validate=True checks host arrays; p is a device array"):
        fastdiv.entropy(p, inputs="probs", validate=True)
    with pytest.raises(ValueError, match="validate=True checks host arrays; target is a device array"):
        fastdiv.cross_entropy(p, p, validate=True)
    assert np.allclose(fastdiv.entropy(p, inputs="probs").copy_to_host(), np.log(4))   # without validate: fine
