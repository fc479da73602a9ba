"""pytest-benchmark suite: every public op x backend x regime x dtype, with peers.

Plain ``pytest`` runs each benchmark once on a tiny slice of rows (a smoke test: the suite
stays runnable).  For real figures::

    pytest benchmarks/ --benchmark-enable --benchmark-only -k "V50257 and float32"
    pytest benchmarks/ --benchmark-enable --benchmark-autosave      # then --benchmark-compare

Each fastdiv result records in ``extra_info``: bytes read, GB/s, the fraction of the
same-run read-bandwidth probe over the same bytes, and the speed-up over every installed
peer (numpy reference, scipy, torch CPU), all measured in this process.  Groups are
``op/regime/dtype`` so pytest-benchmark's tables compare like with like.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest

from fastdiv import bench as _bench

SMOKE_ROWS = 4


@pytest.fixture(scope="session")
def smoke(request):
    """True unless benchmarks were enabled (addopts disables them; --benchmark-enable wins)."""
    cfg = request.config
    return bool(cfg.getoption("benchmark_disable", True)) and not cfg.getoption("benchmark_enable", False)


def _data(regime, dtype, smoke):
    rows, v = _bench.REGIMES[regime]
    return _bench.inputs(SMOKE_ROWS if smoke else rows, v, dtype)


@functools.lru_cache(maxsize=None)
def _reference_times(op, regime, dtype):
    """Same-run medians of the probe and of each peer (computed once per op/regime/dtype)."""
    rows, v = _bench.REGIMES[regime]
    x, z, t = _bench.inputs(rows, v, dtype)
    arrays = (x, z) if op == "kl_div" else (x,)
    out = {"probe": _bench.median_time(lambda: _bench.probe(*arrays), repeat=9)}
    for peer in ("numpy", "scipy", "torch"):
        if dtype == "float16" and peer != "numpy":
            continue
        fn = _bench.peer_call(peer, op, x, z, t)
        if fn is None:
            continue
        # The numpy reference materialises rows x V float64 temporaries: time it on a
        # slice of rows and scale (it is linear in rows).
        if peer in ("numpy", "scipy") and rows > 256:
            k = 256 if v >= 1024 else 8192
            fn_s = _bench.peer_call(peer, op, x[:k], z[:k], t[:k])
            out[peer] = _bench.median_time(fn_s, repeat=1, warmup=0) * rows / k
        else:
            out[peer] = _bench.median_time(fn, repeat=3)
    return out


CASES = [(op, regime, dtype) for regime in _bench.REGIMES for op in _bench.OPS for dtype in _bench.DTYPES]


@pytest.mark.parametrize("backend", _bench.available_backends())
@pytest.mark.parametrize("op,regime,dtype", CASES, ids=["/".join(c) for c in CASES])
def test_fastdiv(benchmark, backend, op, regime, dtype, smoke):
    x, z, t = _data(regime, dtype, smoke)
    benchmark.group = f"{op}/{regime}/{dtype}"
    fn = _bench.fastdiv_call(op, backend, x, z, t)
    fn()                                        # compile outside the timing
    result = benchmark(fn)
    assert np.all(np.isfinite(result))
    if smoke:
        return
    median = benchmark.stats.stats.median
    ref = _reference_times(op, regime, dtype)
    nbytes = _bench.nbytes(op, x)
    benchmark.extra_info.update({
        "bytes": nbytes,
        "GB/s": round(nbytes / median / 1e9, 2),
        "fraction_of_probe": round(ref["probe"] / median, 3),
        **{f"speedup_vs_{peer}": round(t_ / median, 2) for peer, t_ in ref.items() if peer != "probe"},
    })


@pytest.mark.parametrize("peer", ["probe", "numpy", "scipy", "torch"])
@pytest.mark.parametrize("op,regime,dtype", [c for c in CASES if c[2] == "float32"],
                         ids=["/".join(c) for c in CASES if c[2] == "float32"])
def test_peer(benchmark, peer, op, regime, dtype, smoke):
    x, z, t = _data(regime, dtype, smoke)
    benchmark.group = f"{op}/{regime}/{dtype}"
    if peer == "probe":
        arrays = (x, z) if op == "kl_div" else (x,)
        fn = lambda: _bench.probe(*arrays)  # noqa: E731
    else:
        fn = _bench.peer_call(peer, op, x, z, t)
        if fn is None:
            pytest.skip(f"{peer} is not installed")
        if peer == "numpy" and not smoke:
            pytest.skip("the float64 reference takes seconds per call at this size; "
                        "its speed-up is recorded in the fastdiv entries' extra_info")
    fn()
    benchmark.pedantic(fn, rounds=1 if smoke else 5, iterations=1)
    benchmark.extra_info["bytes"] = _bench.nbytes(op, x)


# --------------------------------------------------------------------------- evaluate (issue 6)

EVAL_REGIMES = ("V50257", "V128256")


@pytest.mark.parametrize("backend", _bench.available_backends())
@pytest.mark.parametrize("regime", EVAL_REGIMES)
def test_evaluate(benchmark, backend, regime, smoke):
    """fastdiv.evaluate with topk=(1, 5) (NLL, lse, entropy, argmax, top-1/top-5) in float32,
    as a fraction of the same-run probe and of cross_entropy alone."""
    import fastdiv

    x, z, t = _data(regime, "float32", smoke)
    benchmark.group = f"evaluate/{regime}/float32"
    fn = lambda: fastdiv.evaluate(x, t, topk=(1, 5), backend=backend)  # noqa: E731
    fn()
    res = benchmark(fn)
    assert 0 <= res["accuracy@5"] <= 1
    if smoke:
        return
    median = benchmark.stats.stats.median
    probe = _bench.median_time(lambda: _bench.probe(x), repeat=9)
    ce = _bench.median_time(lambda: fastdiv.cross_entropy(x, t, backend=backend), repeat=5)
    benchmark.extra_info.update({"bytes": x.nbytes, "GB/s": round(x.nbytes / median / 1e9, 2),
                                 "fraction_of_probe": round(probe / median, 3),
                                 "time_vs_cross_entropy": round(median / ce, 3)})
