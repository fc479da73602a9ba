"""fastdiv.compare and meters.Comparator against a float64 oracle written from #19's definitions
(llama.cpp's KL-divergence statistics), on every CPU backend."""
from __future__ import annotations

import json
import math
import pickle
import warnings

import numpy as np
import pytest

import fastdiv
from cases import fast
from fastdiv.meters import Comparator

BACKENDS = [b for b in ("numpy", "numba", "cython") if b in fastdiv.available_backends()]


def float64_backends():
    """BACKENDS on float64 inputs: numba compiles its kernels once per dtype, and its float64
    specializations are in the slow tier (cases.fast); the fast tier runs numba's compare on
    float32 (test_float32_input_is_close_to_the_float64_oracle and the float32 cells below)."""
    return [pytest.param(b, marks=[] if fast(b, np.float64) or b == "numpy" else [pytest.mark.slow], id=b)
            for b in BACKENDS]


def backend_dtypes():
    """(backend, dtype) for the tests whose checks hold in either dtype: every backend on
    float64, and on float32 the backends whose float64 cells are slow (numba, numpy); the
    tier of each cell is cases.fast's (tests/conftest.py)."""
    return ([pytest.param(b, np.float64, id=f"{b}-float64") for b in BACKENDS]
            + [pytest.param(b, np.float32, id=f"{b}-float32") for b in BACKENDS if not fast(b, np.float64)])
Q = (0, 0.1, 1, 5, 10, 50, 90, 95, 99, 99.9, 100)
QP = (0, 0.1, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 100)


# --------------------------------------------------------------------------- the oracle


def _log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=-1, keepdims=True)))


def _quantile(x, q):
    """Linear interpolation between the order statistics at h = (n - 1) q (numpy's default)."""
    s = sorted(float(v) for v in x)
    h = (len(s) - 1) * q
    lo = int(math.floor(h))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


def _mean_se(x):
    n = len(x)
    mean = sum(x) / n
    return mean, math.sqrt((sum(v * v for v in x) / n - mean * mean) / (n - 1))


def oracle(base, model, target=None, ignore_index=-100, topk=(1, 5)):
    """The statistics of #19, one row at a time in float64."""
    b = np.asarray(base, dtype=np.float64).reshape(-1, base.shape[-1])
    m = np.asarray(model, dtype=np.float64).reshape(-1, base.shape[-1])
    rows = b.shape[0]
    t = None if target is None else np.asarray(target).reshape(-1)
    keep = [i for i in range(rows) if t is None or t[i] != ignore_index]
    per = {k: [] for k in ("kld", "rkld", "js", "nb", "nm", "pb", "pm", "same", "conf")}
    hits = {k: [] for k in topk if k > 1}
    for i in keep:
        lb, lm = _log_softmax(b[i]), _log_softmax(m[i])
        pb, pm = np.exp(lb), np.exp(lm)
        mix = 0.5 * (pb + pm)
        per["kld"].append(float(np.sum(pb * (lb - lm))))
        per["rkld"].append(float(np.sum(pm * (lm - lb))))
        per["js"].append(float(0.5 * np.sum(pb * (lb - np.log(mix))) + 0.5 * np.sum(pm * (lm - np.log(mix)))))
        top_b = int(np.argmax(b[i]))
        per["same"].append(1.0 if top_b == int(np.argmax(m[i])) else 0.0)
        per["conf"].append(float(pb[top_b]))
        for k in hits:
            hits[k].append(1.0 if int(np.sum(m[i] > m[i][top_b])) < k else 0.0)
        if t is not None:
            per["nb"].append(float(-lb[t[i]]))
            per["nm"].append(float(-lm[t[i]]))
            per["pb"].append(float(pb[t[i]]))
            per["pm"].append(float(pm[t[i]]))
    n = len(keep)
    out = {"rows": rows, "count": n}
    for key, col in (("kld", "kld"), ("reverse_kld", "rkld"), ("js", "js")):
        mean, se = _mean_se(per[col])
        out[key] = {"mean": mean, "se": se, "quantiles": {f"{q:g}": _quantile(per[col], q / 100) for q in Q}}
    p = sum(per["same"]) / n
    out["same_top1"] = {"mean": p, "se": math.sqrt(p * (1 - p) / (n - 1))}
    out["topk_agreement"] = {str(k): sum(v) / n for k, v in hits.items()}
    if t is None:
        out["delta_p"] = out["ppl"] = None
    else:
        dp = [a - c for a, c in zip(per["pm"], per["pb"])]
        mean, se = _mean_se(dp)
        msq, sesq = _mean_se([d * d for d in dp])
        rms = math.sqrt(msq)
        out["delta_p"] = {"mean": mean, "se": se, "rms": rms, "rms_se": sesq / (2 * rms),
                          "quantiles": {f"{q:g}": _quantile(dp, q / 100) for q in QP}}
        mb, seb = _mean_se(per["nb"])
        mm, sem = _mean_se(per["nm"])
        cov = (sum(x * y for x, y in zip(per["nm"], per["nb"])) / n - mm * mb) / (n - 1)
        ppl_b, ppl_m = math.exp(mb), math.exp(mm)
        ln_ratio_se = math.sqrt(sem ** 2 + seb ** 2 - 2 * cov)
        out["ppl"] = {"base": ppl_b, "model": ppl_m, "ln_ratio": mm - mb, "ln_ratio_se": ln_ratio_se,
                      "ratio": math.exp(mm - mb), "ratio_se": math.exp(mm - mb) * ln_ratio_se,
                      "diff": ppl_m - ppl_b,
                      "diff_se": math.sqrt((ppl_m * sem) ** 2 + (ppl_b * seb) ** 2 - 2 * ppl_m * ppl_b * cov),
                      "nll_correlation": cov / (sem * seb)}
    buckets = [[] for _ in range(10)]
    for kl, c in zip(per["kld"], per["conf"]):
        buckets[min(int(c * 10), 9)].append(kl)
    out["kld_by_confidence"] = [sum(v) / len(v) if v else float("nan") for v in buckets]
    return out


def assert_close(got, want, rtol, path="", atol=1e-12):
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), f"{path}: keys {sorted(got)} != {sorted(want)}"
        for k in want:
            assert_close(got[k], want[k], rtol, f"{path}.{k}", atol)
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_close(g, w, rtol, f"{path}[{i}]", atol)
    elif want is None:
        assert got is None, path
    else:
        assert isinstance(got, (int, float)), f"{path}: {type(got)}"
        if math.isnan(want):
            assert math.isnan(got), f"{path}: {got} != NaN"
        else:
            assert got == pytest.approx(want, rel=rtol, abs=atol), f"{path}: {got} != {want}"


def data(rows=400, v=40, seed=0, dtype=np.float64, scale=2.0, noise=0.6):
    """A base with confident and unsure rows (every confidence bucket) and a perturbed model."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((rows, v)) * rng.uniform(0.2, scale * 3, (rows, 1))
    model = base + noise * rng.standard_normal((rows, v))
    target = rng.integers(0, v, rows)
    target[rng.random(rows) < 0.1] = -100
    return base.astype(dtype), model.astype(dtype), target


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("backend", float64_backends())
def test_every_statistic_matches_the_oracle(backend):
    base, model, target = data()
    res = fastdiv.compare(base, model, target, backend=backend)
    want = oracle(base, model, target)
    got = res.to_dict()
    assert_close(got, want, rtol=1e-7, atol=1e-10)
    assert sum(1 for m in want["kld_by_confidence"] if m == m) >= 8      # the buckets are exercised
    assert 0.3 < got["same_top1"]["mean"] < 0.95 and got["topk_agreement"]["5"] > got["same_top1"]["mean"]


@pytest.mark.parametrize("backend", float64_backends())
def test_without_targets_every_row_counts_and_ppl_and_delta_p_are_null(backend):
    base, model, _ = data(rows=120, seed=1)
    got = fastdiv.compare(base, model, topk=(1, 2, 10), backend=backend).to_dict()
    assert got["ppl"] is None and got["delta_p"] is None and got["count"] == got["rows"] == 120
    assert set(got["topk_agreement"]) == {"2", "10"}
    assert_close(got, oracle(base, model, topk=(1, 2, 10)), rtol=1e-7, atol=1e-10)
    assert json.loads(json.dumps(got))["ppl"] is None


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_input_is_close_to_the_float64_oracle(backend):
    base, model, target = data(rows=200, v=300, seed=2, dtype=np.float32)
    got = fastdiv.compare(base, model, target, backend=backend).to_dict()
    want = oracle(base, model, target)
    for key in ("kld", "reverse_kld", "js"):
        assert got[key]["mean"] == pytest.approx(want[key]["mean"], rel=1e-4)
    assert got["ppl"]["ln_ratio"] == pytest.approx(want["ppl"]["ln_ratio"], rel=1e-3, abs=1e-6)
    assert got["same_top1"] == want["same_top1"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_js_of_a_nearby_float32_model_keeps_its_relative_accuracy(backend):
    """A model within N(0, 1e-3) of its base (a runtime or precision change): JS ~ 1e-7 per
    row.  Before 2026-12-06 the float32 kernels' JS column was off by 50 % (median) there
    (tests/test_divergences.py, test_js_of_nearby_float32_rows_keeps_its_relative_accuracy)."""
    from fastdiv import reference as R

    rng = np.random.default_rng(11)
    base = (rng.standard_normal((16, 3000)) * 2).astype(np.float32)
    model = (base + rng.standard_normal(base.shape) * 1e-3).astype(np.float32)
    got = fastdiv.compare(base, model, backend=backend)
    want = R.js_rows(base.astype(np.float64), model.astype(np.float64), 0.5)
    np.testing.assert_allclose(got.js, want, rtol=1e-3, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("v", [37, 1000, 32000])
def test_a_confident_model_keeps_its_relative_accuracy(backend, v):
    """Base and model both sure of one class (logit 15 to 40 against N(0, 3) tails drawn
    independently): kld ~1e-3 down to ~1e-14.  Before 2026-12-07 the top class, in a vector
    (chunk) of far classes, took the far terms, which cancel to ~eps (p + q): Cython's kld 0.9x
    and js 1.6x off at 37 and 1000 classes, numba's 8e-2 and 1.5x at 32000
    (test_divergences.confident_rows)."""
    from fastdiv import reference as R
    from test_divergences import confident_rows

    base, model = confident_rows(v)
    b64, m64 = base.astype(np.float64), model.astype(np.float64)
    got = fastdiv.compare(base, model, backend=backend)
    np.testing.assert_allclose(got.kld, R.kl_rows(b64, m64), rtol=1e-4, atol=0)
    np.testing.assert_allclose(got.reverse_kld, R.kl_rows(m64, b64), rtol=1e-4, atol=0)
    np.testing.assert_allclose(got.js, R.js_rows(b64, m64, 0.5), rtol=1e-4, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_nearby_model_with_a_few_noisy_classes_keeps_its_relative_accuracy(backend):
    """A model within N(0, 1e-3) of its base but for a few noisy classes (rare tokens moved by
    N(0, 3); test_divergences.noisy_nearby_rows): kld was 32 % off on numba, 0.5 % on Cython
    at 50257 classes before 2026-12-07 (benchmarks/noisy_nearby.py)."""
    from fastdiv import reference as R
    from test_divergences import noisy_nearby_rows

    base, model = noisy_nearby_rows(20000, 5)
    b64, m64 = base.astype(np.float64), model.astype(np.float64)
    got = fastdiv.compare(base, model, backend=backend)
    np.testing.assert_allclose(got.kld, R.kl_rows(b64, m64), rtol=1e-5, atol=0)
    np.testing.assert_allclose(got.reverse_kld, R.kl_rows(m64, b64), rtol=1e-5, atol=0)
    np.testing.assert_allclose(got.js, R.js_rows(b64, m64, 0.5), rtol=1e-5, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sigma", [1e-2, 1e-3, 1e-4])
def test_kl_of_a_nearby_float32_model_keeps_its_relative_accuracy(backend, sigma):
    """A model within N(0, sigma) of its base: KL ~ sigma^2 / 2 per row.  Before 2026-12-06 the
    float32 kernels' kld and reverse_kld came from evaluate's one-pass sums, 2 % off (median)
    at sigma = 1e-3; the per-class terms q (e^-d - 1 + d) keep ~1e-7 (benchmarks/js_nearby.py).
    Beside them: equal rows (exactly 0), classes masked in both rows, large far logits (d as
    lq - lp), a model row far from its base, a class whose model probability underflows where
    the base's does not (its q d term), and a model offset by 1000 from its base (where z - x
    rounds at the size of the offset).  Rows 8 and 9 have a fifth of their classes, scattered,
    masked in one row only where the other keeps a small mass: one KL is +inf, the other adds
    those classes' mass and keeps the near terms elsewhere (before 2026-12-06 their vectors
    took the far terms, which cancel: kld 88 % off at sigma 1e-3)."""
    from fastdiv import reference as R

    rng = np.random.default_rng(int(1 / sigma))
    base = (rng.standard_normal((10, 3000)) * 2).astype(np.float32)
    model = (base + rng.standard_normal(base.shape) * sigma).astype(np.float32)
    model[1] = base[1]
    masked = rng.random(3000) < 0.2
    base[2, masked] = model[2, masked] = -np.inf
    base[3] = rng.standard_normal(3000) * 1e4
    model[3] = base[3] + rng.standard_normal(3000) * 3
    model[4] = rng.standard_normal(3000) * 2
    base[5, 7] = base[5].max() + 5
    model[5, 7] = -300.0
    base[6, :1500] = model[6, :1500] = -np.inf     # a chunk of classes masked in both rows
    model[7] = base[7] + np.float32(1000) + rng.standard_normal(3000).astype(np.float32) * sigma  # an offset
    one = masked & (np.arange(3000) > 0)
    base[8, one], model[8, one] = -np.inf, -30.0
    base[9, one], model[9, one] = -30.0, -np.inf
    b64, m64 = base.astype(np.float64), model.astype(np.float64)
    got = fastdiv.compare(base, model, backend=backend)
    if backend != "numpy":      # (the float64 reference's own equal rows come out at 1e-78)
        assert got.kld[1] == 0.0 and got.reverse_kld[1] == 0.0
    # the offset row's d is rounded at the size of the log-probabilities (~1e-6 of each
    # class's d at sigma 1e-3, 1e-5 at 1e-4), the others' at the size of d
    rtol = np.where(np.arange(10) == 7, 1e-4, 1e-5)
    for got_kl, want in ((got.kld, R.kl_rows(b64, m64)), (got.reverse_kld, R.kl_rows(m64, b64))):
        fin = np.isfinite(want)
        assert np.array_equal(np.isfinite(got_kl), fin) and fin.sum() == 9
        assert np.all(np.abs(got_kl[fin] - want[fin]) <= rtol[fin] * want[fin] + 1e-70), (got_kl, want)
    np.testing.assert_allclose(got.js[8:], R.js_rows(b64[8:], m64[8:], 0.5), rtol=1e-3, atol=0)


def test_the_kl_polynomial_is_one_fit_within_its_bound():
    """E(d) = (e^d - 1 - d) / d^2 (fastdiv._registry.KL_NEAR_POLY, which numba reads) has the
    Cython kernels' fd_kl_near_f32 literals, and in float32 Horner is within 3e-7 of E
    relative over |d| < 2, the kernels' Jeffreys factor 1 + d E = (e^d - 1) / d within 5e-7."""
    import math
    import pathlib
    import re

    from fastdiv import _registry

    src = (pathlib.Path(fastdiv.__file__).parent / "_cython" / "_simd.h").read_text()
    body = src[src.index("FD_INLINE fd_vf fd_kl_near_f32(fd_vf d)"):]
    body = body[:body.index("}")]
    lits = re.findall(r"(?:([-+])\s*)?(\d[\d.e+-]*)f\b", body)
    assert tuple(float(sign + digits) for sign, digits in lits) == _registry.KL_NEAR_POLY
    d = np.linspace(-2, 2, 200_001)[1:-1]
    d = d[d != 0]
    # (e^d - 1 - d) / d^2 from its series: no cancellation
    want = sum(d ** k / math.factorial(k + 2) for k in range(30))
    d32 = d.astype(np.float32)
    e = np.float32(_registry.KL_NEAR_POLY[0])
    for c in _registry.KL_NEAR_POLY[1:]:
        e = (e * d32 + np.float32(c)).astype(np.float32)
    assert np.max(np.abs(e - want) / want) < 3e-7
    jeff = (d32 * e + np.float32(1)).astype(np.float32)      # (e^d - 1) / d
    assert np.max(np.abs(jeff - np.expm1(d) / d) / (np.expm1(d) / d)) < 5e-7


def test_json_keys_are_exactly_those_of_the_issue():
    base, model, target = data(rows=50)
    d = fastdiv.compare(base, model, target).to_dict()
    assert list(d) == ["rows", "count", "kld", "reverse_kld", "js", "delta_p", "same_top1", "topk_agreement", "ppl",
                       "kld_by_confidence"]
    for key in ("kld", "reverse_kld", "js"):
        assert list(d[key]) == ["mean", "se", "quantiles"]
        assert list(d[key]["quantiles"]) == ["0", "0.1", "1", "5", "10", "50", "90", "95", "99", "99.9", "100"]
    assert list(d["delta_p"]) == ["mean", "se", "rms", "rms_se", "quantiles"]
    assert list(d["delta_p"]["quantiles"]) == ["0", "0.1", "1", "5", "10", "25", "50", "75", "90", "95", "99",
                                               "99.9", "100"]
    assert list(d["same_top1"]) == ["mean", "se"] and list(d["topk_agreement"]) == ["5"]
    assert list(d["ppl"]) == ["base", "model", "ln_ratio", "ln_ratio_se", "ratio", "ratio_se", "diff", "diff_se",
                              "nll_correlation"]
    assert len(d["kld_by_confidence"]) == 10
    json.dumps(d)


def test_ignored_rows_are_left_out_of_everything():
    base, model, target = data(rows=100, seed=3)
    target = np.where(target < 0, 1, target)
    target[::3] = -7
    res = fastdiv.compare(base, model, target, ignore_index=-7)
    keep = target != -7
    assert res.count == int(keep.sum()) and res.rows == 100
    np.testing.assert_array_equal(res.row, np.flatnonzero(keep))
    only = fastdiv.compare(base[keep], model[keep], target[keep], ignore_index=-7).to_dict()
    d = res.to_dict()
    assert d.pop("rows") == 100 and only.pop("rows") == int(keep.sum())
    assert json.dumps(d) == json.dumps(only)


def test_leading_axes_are_rows():
    base, model, target = data(rows=60, seed=4)
    flat = fastdiv.compare(base, model, target).to_dict()
    shaped = fastdiv.compare(base.reshape(3, 20, -1), model.reshape(3, 20, -1), target.reshape(3, 20)).to_dict()
    assert json.dumps(flat) == json.dumps(shaped)


def test_per_row_arrays():
    base, model, target = data(rows=30, seed=5)
    res = fastdiv.compare(base, model, target)
    keep = target != -100
    ev = fastdiv.evaluate(model, target, reference=base)
    np.testing.assert_allclose(res.kld, ev.kl_ref_model[keep])
    np.testing.assert_allclose(res.delta_p, res.p_model - res.p_base)
    np.testing.assert_allclose(res.nll_model, ev.nll[keep])
    assert res.same_top1.dtype == bool and res.topk[5].dtype == bool
    worst = res.worst(3)
    assert list(res.kld[worst]) == sorted(res.kld, reverse=True)[:3]
    assert sum(res.kld_by_confidence_counts()) == res.count
    assert fastdiv.compare(base, model).nll_base is None


def test_all_rows_ignored_gives_nan_with_a_warning():
    base, model, _ = data(rows=5)
    res = fastdiv.compare(base, model, np.full(5, -100))
    with pytest.warns(RuntimeWarning, match="no counted row"):
        d = res.to_dict()
    assert d["count"] == 0 and math.isnan(d["kld"]["mean"]) and math.isnan(d["ppl"]["ratio"])
    assert all(math.isnan(v) for v in d["kld"]["quantiles"].values())


# --------------------------------------------------------------------------- bad input, NaN


def test_mismatched_shapes_name_the_argument():
    base, model, target = data(rows=10)
    with pytest.raises(ValueError, match=r"base and logits .*vocabulary sizes differ"):
        fastdiv.compare(base, model[:, :-1])
    with pytest.raises(ValueError, match=r"base and logits .*base \(10, 40\) and logits \(9, 40\)"):
        fastdiv.compare(base, model[:9])
    with pytest.raises(ValueError, match="target"):
        fastdiv.compare(base, model, target[:9])
    bad = target.copy()
    bad[2] = 40
    with pytest.raises(ValueError, match=r"target\[2\] = 40"):
        fastdiv.compare(base, model, bad)
    with pytest.raises(TypeError, match="base"):
        fastdiv.compare(np.zeros((2, 3), dtype=np.int64), model[:2, :3])
    with pytest.raises(ValueError, match="topk"):
        fastdiv.compare(base, model, topk=(0,))
    with pytest.raises(fastdiv.BackendUnavailable, match="CPU backends"):
        fastdiv.compare(base, model, backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        fastdiv.compare(base, model, backend="gpu")


def test_torch_and_jax_cpu_inputs():
    base, model, target = data(rows=40, seed=9, dtype=np.float32)
    want = json.dumps(fastdiv.compare(base, model, target).to_dict())
    torch = pytest.importorskip("torch")
    got = fastdiv.compare(torch.from_numpy(base), torch.from_numpy(model), torch.from_numpy(target))
    assert json.dumps(got.to_dict()) == want and isinstance(got.kld, np.ndarray)
    try:
        import jax.numpy as jnp
    except ImportError:
        return
    got = fastdiv.compare(jnp.asarray(base), jnp.asarray(model), jnp.asarray(target))
    assert json.dumps(got.to_dict()) == want


@pytest.mark.parametrize("backend,dtype", backend_dtypes())
def test_nan_rows_stay_counted_and_make_their_statistics_nan(backend, dtype):
    """A NaN row (in either model) is counted: KLD/JS/NLL aggregates it enters are NaN (the
    command line fails any --fail-if on them), nothing is silently dropped.  A NaN base row has
    no top-1 class: it agrees with nothing and falls in no confidence bucket."""
    base, model, target = data(rows=50, seed=6, dtype=dtype)
    target[:] = np.where(target < 0, 0, target)
    model = model.copy()
    model[7, 3] = np.nan
    d = fastdiv.compare(base, model, target, backend=backend).to_dict()
    assert d["count"] == 50
    for key in ("kld", "reverse_kld", "js"):
        assert math.isnan(d[key]["mean"]) and math.isnan(d[key]["quantiles"]["100"])
    assert math.isnan(d["ppl"]["model"]) and math.isnan(d["delta_p"]["mean"])
    assert not math.isnan(d["ppl"]["base"]) and not math.isnan(d["same_top1"]["mean"])
    base = base.copy()
    base[9, :] = np.nan
    res = fastdiv.compare(base, data(rows=50, seed=6, dtype=dtype)[1], target, backend=backend)
    assert not res.same_top1[9] and not res.topk[5][9] and math.isnan(res.base_top1_prob[9])
    assert sum(res.kld_by_confidence_counts()) == 49 and math.isnan(res.to_dict()["kld"]["mean"])
    assert res.worst(1)[0] == 9                                  # NaN ranks as the worst row


# --------------------------------------------------------------------------- Comparator


@pytest.mark.parametrize("backend,dtype", backend_dtypes())
def test_comparator_batches_and_merges_equal_one_pass(backend, dtype):
    base, model, target = data(rows=210, seed=7, dtype=dtype)
    one = json.dumps(fastdiv.compare(base, model, target, backend=backend).to_dict())
    a, b = Comparator(backend=backend), Comparator(backend=backend)
    a.update(base[:50], model[:50], target[:50]).update(base[50:51], model[50:51], target[50:51])
    b.update(base[51:200], model[51:200], target[51:200])
    c = Comparator(backend=backend).update(base[200:], model[200:], target[200:])
    a = pickle.loads(pickle.dumps(a))
    res = a.merge(b).merge(pickle.loads(pickle.dumps(c))).compute()
    assert json.dumps(res.to_dict()) == one
    np.testing.assert_array_equal(res.row, np.flatnonzero(target != -100))
    assert a.nbytes() == res.count * (9 * 8 + 2)                 # 74 bytes per counted row
    with pytest.warns(RuntimeWarning, match="no counted row"):
        assert a.reset().compute().to_dict()["count"] == 0               # empty after reset
    assert a.compute().rows == 0


def test_comparator_without_targets_and_mixed_batches():
    base, model, target = data(rows=40, seed=8)
    c = Comparator(topk=(1, 3)).update(base[:10], model[:10]).update(base[10:], model[10:])
    assert c.nbytes() == 40 * (5 * 8 + 2)                     # 42 bytes per row without targets
    assert json.dumps(c.compute().to_dict()) == json.dumps(fastdiv.compare(base, model, topk=(1, 3)).to_dict())
    with pytest.raises(ValueError, match="targets"):
        c.update(base, model, target)
    with pytest.raises(ValueError, match="settings"):
        Comparator(topk=(1,)).merge(Comparator())
    with pytest.raises(ValueError, match="targets"):
        Comparator().update(base, model, target).merge(Comparator().update(base, model))


def test_empty_comparator_warns():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d = Comparator().compute().to_dict()
    assert d["count"] == 0 and any("no counted row" in str(x.message) for x in w)


def test_quantiles_are_numpys_and_handle_infinite_values():
    from fastdiv.comparison import QUANTILES, _quantiles

    rng = np.random.default_rng(10)
    for n in (1, 2, 3, 10, 1001):
        x = rng.standard_normal(n) ** 3
        got = _quantiles(x, QUANTILES)
        assert list(got.values()) == list(np.quantile(x, np.array(QUANTILES) / 100))   # bit for bit
    got = _quantiles(np.array([1.0, 2.0, np.inf]), (0, 50, 75, 100))
    assert got == {"0": 1.0, "50": 2.0, "75": np.inf, "100": np.inf}
    assert math.isnan(_quantiles(np.array([1.0, np.nan]), (0,))["0"])


def test_a_class_only_the_model_masks_makes_kld_infinite():
    base, model, target = data(rows=20, seed=11)
    model = model.copy()
    model[4, :] = -np.inf
    model[4, 0] = 0.0                                  # the model puts all its mass on class 0
    target[:] = 0
    res = fastdiv.compare(base, model, target)
    d = res.to_dict()
    assert res.kld[4] == np.inf and np.isfinite(res.reverse_kld[4])
    assert d["kld"]["mean"] == np.inf and d["kld"]["quantiles"]["100"] == np.inf
    assert np.isfinite(d["kld"]["quantiles"]["50"]) and res.worst(1)[0] == 4


def test_dask_compare_equals_in_memory():
    da = pytest.importorskip("dask.array")
    import fastdiv.dask

    base, model, target = data(rows=120, seed=12)
    b3, m3, t3 = base.reshape(4, 30, -1), model.reshape(4, 30, -1), target.reshape(4, 30)
    want = fastdiv.compare(base, model, target)
    got = fastdiv.dask.compare(da.from_array(b3, chunks=(1, 13, -1)), da.from_array(m3, chunks=(2, 30, -1)),
                               da.from_array(t3, chunks=(3, 7))).compute()
    assert json.dumps(got.to_dict()) == json.dumps(want.to_dict())
    np.testing.assert_array_equal(got.row, want.row)
    got = fastdiv.dask.compare(da.from_array(base, chunks=(50, -1)), model, topk=(1, 3)).compute()
    assert json.dumps(got.to_dict()) == json.dumps(fastdiv.compare(base, model, topk=(1, 3)).to_dict())
    empty = fastdiv.dask.compare(da.zeros((0, 5), chunks=(10, -1)), da.zeros((0, 5)), da.zeros(0, dtype=int))
    assert empty.compute().with_target and empty.compute().rows == 0
    with pytest.raises(ValueError, match=r"rechunk"):
        fastdiv.dask.compare(da.from_array(base, chunks=(50, 20)), model)
    with pytest.raises(ValueError, match="base and logits"):
        fastdiv.dask.compare(da.from_array(base), model[:, :-1])
    with pytest.raises(ValueError, match="target"):
        fastdiv.dask.compare(da.from_array(base), model, target[:-1])
