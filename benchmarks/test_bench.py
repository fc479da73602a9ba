"""pytest-benchmark suite: every benchmark row of the case table (tests/cases.py, ``bench``) x
backend x regime x dtype, with peers.

Plain ``pytest`` runs each benchmark once on a tiny slice of rows (a smoke test: the suite
stays runnable).  For real figures::

    pytest benchmarks/ -m "" --benchmark-enable --benchmark-only -k "V50257 and float32"
    pytest benchmarks/ -m "" --benchmark-enable --benchmark-autosave      # then --benchmark-compare

Each fastdiv result records in ``extra_info``: bytes read, GB/s, the fraction of the
same-run read-bandwidth probe over the same bytes, the speed-up over every installed peer
(numpy reference, scipy, torch CPU) and, for 16-bit inputs, over float32 of the same shape,
all measured in this process.  Groups are ``op/regime/dtype`` so pytest-benchmark's tables
compare like with like.  Which cells README's test command smoke-tests: ``cases.fast``.
"""
from __future__ import annotations

import functools
import pathlib
import sys

import numpy as np
import pytest

from fastdiv import bench as _bench

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import cases as C  # noqa: E402

SMOKE_ROWS = 4
BENCH = [c for c in C.CASES if c.bench]
DTYPES = [d.name for d in C.DTYPES]


@pytest.fixture(scope="session")
def smoke(request):
    """True unless benchmarks were enabled (addopts disables them; --benchmark-enable wins)."""
    cfg = request.config
    return bool(cfg.getoption("benchmark_disable", True)) and not cfg.getoption("benchmark_enable", False)


@functools.lru_cache(maxsize=2)
def _args(case_id, regime, dtype, smoke):
    """The case's arguments (seeded, no edge rows) at the regime's shape."""
    rows, v = _bench.REGIMES[regime]
    case = C.BY_ID[case_id]
    return case.args(np.random.default_rng(0), (SMOKE_ROWS if smoke else rows,), v, dtype, edges=False)


def _arrays(case, args):
    return [args[k] for k in case.arrays]


def _peer_inputs(case, args):
    """(x, z, t) for fastdiv.bench's peers: the first and second float arrays, the targets
    (an ignored target as class 0: not every peer has ignore_index; class 0 without targets)."""
    arrays = _arrays(case, args)
    t = args.get("target", np.zeros(arrays[0].shape[0], np.int64))
    return arrays[0], arrays[-1], np.where(t < 0, 0, t)


@functools.lru_cache(maxsize=None)
def _reference_times(case_id, regime, dtype):
    """Same-run medians of the probe and of each peer (computed once per row/regime/dtype)."""
    case = C.BY_ID[case_id]
    args = _args(case_id, regime, dtype, False)
    out = {"probe": _bench.median_time(lambda: _bench.probe(*_arrays(case, args)), repeat=9)}
    if case.bench not in _bench.OPS:
        return out
    rows, _ = _bench.REGIMES[regime]
    x, z, t = _peer_inputs(case, args)
    for peer in ("numpy", "scipy", "torch"):
        if dtype != "float32" and peer != "numpy":
            continue
        fn = _bench.peer_call(peer, case.bench, x, z, t)
        if fn is None:
            continue
        # The numpy reference materialises rows x V float64 temporaries: time it on a
        # slice of rows and scale (it is linear in rows).
        if peer in ("numpy", "scipy") and rows > 256:
            k = 256 if x.shape[1] >= 1024 else 8192
            fn_s = _bench.peer_call(peer, case.bench, x[:k], z[:k], t[:k])
            out[peer] = _bench.median_time(fn_s, repeat=1, warmup=0) * rows / k
        else:
            out[peer] = _bench.median_time(fn, repeat=3)
    return out


CELLS = [(case, regime, dtype) for case in BENCH for regime in _bench.REGIMES for dtype in DTYPES]


@pytest.mark.parametrize("backend", _bench.available_backends())
@pytest.mark.parametrize("case,regime,dtype", CELLS, ids=[f"{c.id}/{r}/{d}" for c, r, d in CELLS])
def test_fastdiv(benchmark, backend, case, regime, dtype, smoke):
    args = _args(case.id, regime, dtype, smoke)
    benchmark.group = f"{case.id}/{regime}/{dtype}"
    fn = lambda: case.call(args, backend)  # noqa: E731
    fn()                                        # compile outside the timing
    result = benchmark(fn)
    if case.check is None:
        assert np.all(np.isfinite(result))
    if smoke:
        return
    median = benchmark.stats.stats.median
    ref = _reference_times(case.id, regime, dtype)
    nbytes = sum(a.nbytes for a in _arrays(case, args))
    info = {"bytes": nbytes, "GB/s": round(nbytes / median / 1e9, 2),
            "fraction_of_probe": round(ref["probe"] / median, 3),
            **{f"speedup_vs_{peer}": round(t_ / median, 2) for peer, t_ in ref.items() if peer != "probe"}}
    if np.dtype(dtype).itemsize == 2:
        args32 = _args(case.id, regime, "float32", False)
        info["speedup_vs_float32"] = round(_bench.median_time(lambda: case.call(args32, backend), repeat=5) / median, 2)
    benchmark.extra_info.update(info)


PEER_CELLS = [(case, regime) for case in BENCH if case.bench in _bench.OPS for regime in _bench.REGIMES]


@pytest.mark.parametrize("peer", ["probe", "numpy", "scipy", "torch"])
@pytest.mark.parametrize("case,regime", PEER_CELLS, ids=[f"{c.id}/{r}/float32" for c, r in PEER_CELLS])
def test_peer(benchmark, peer, case, regime, smoke):
    args = _args(case.id, regime, "float32", smoke)
    x, z, t = _peer_inputs(case, args)
    benchmark.group = f"{case.id}/{regime}/float32"
    if peer == "probe":
        arrays = _arrays(case, args)
        fn = lambda: _bench.probe(*arrays)  # noqa: E731
    else:
        fn = _bench.peer_call(peer, case.bench, x, z, t)
        if fn is None:
            pytest.skip(f"{peer} is not installed")
        if peer == "numpy" and not smoke:
            pytest.skip("the float64 reference takes seconds per call at this size; "
                        "its speed-up is recorded in the fastdiv entries' extra_info")
    fn()
    benchmark.pedantic(fn, rounds=1 if smoke else 5, iterations=1)
    benchmark.extra_info["bytes"] = sum(a.nbytes for a in _arrays(case, args))
