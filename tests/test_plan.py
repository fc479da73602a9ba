"""#17 items 1-2 and #18's two option items: the plan, one empty-mean rule through every door,
``ignore_index`` with probability targets, bfloat16 class weights.

Doors: the API on each host backend, ``evaluate``, the meters, the states, ``fastdiv.dask``
and the cuda backend in numba's simulator (host arrays and numba device arrays)."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

import fastdiv
from fastdiv import _registry, meters, plan, reduce, states

from conftest import ALL_HOST

CUDA = _registry.unavailable_reason("cuda")
cuda_only = pytest.mark.skipif(CUDA is not None, reason=str(CUDA))
DOORS = ALL_HOST + ([] if CUDA else ["cuda"])
V = 6


@pytest.fixture(autouse=True)
def small_cuda_blocks(monkeypatch):
    if CUDA is None:
        from fastdiv._cuda import evaluate as E
        from fastdiv._cuda import kernels as K

        for name, value in dict(SMALL_BLOCK=32, GROUP_BLOCK=64, BLOCK=64, RED_BLOCK=32, RED_CHUNK=64,
                                TILE_ROWS=32).items():
            monkeypatch.setattr(K, name, value)
        monkeypatch.setattr(E, "BLOCK", 4)


def _data(n=5, v=V, dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, v)).astype(dtype)
    t = rng.integers(0, v, n)
    p = rng.dirichlet(np.ones(v), n).astype(dtype)
    return x, t, p


def _nan(value):
    return bool(np.isnan(np.asarray(_host(value), dtype=np.float64)).all())


def _host(a):
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------- the plan


def test_plan_is_immutable_and_holds_the_kernel_scalars():
    x, t, p = _data()
    pl = plan.cross_entropy(reduction="mean", ignore_index=-100, weight=None, label_smoothing=0.25, temperature=2.0,
                            backend="numpy", validate=False, z_loss=0.0, softcap=None, return_lse=False, logits=x,
                            target=p)
    assert (pl.op, pl.target, pl.backend) == ("ce_soft", "probs", "numpy")
    assert pl.scalars(8) == (0.75, 0.25 / 8, 0.5)                  # (alpha, beta, 1 / T)
    with pytest.raises(dataclasses.FrozenInstanceError):
        pl.reduction = "sum"
    hard = dataclasses.replace(pl, op="ce_hard", target="indices")
    assert hard.scalars(8) == (-100, 0.25)
    js = plan.js_div(beta=1.0, inputs="logits", temperature=1.0, reduction="mean", backend="numpy", validate=False,
                     p=x, q=x)
    assert (js.op, js.swap) == ("kl_logits", True)                   # beta = 1: reverse KL, swapped
    assert plan.js_div(beta=0.3, inputs="probs", temperature=1.0, reduction="mean", backend="numpy",
                       validate=False, p=p, q=p).scalars(V) == (0.3,)
    np.testing.assert_array_equal(pl.class_weight(3, np.dtype(np.float32)), np.ones(3, np.float32))


@pytest.mark.parametrize("kwargs, exc, says", [
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(ignore_index=1.5), TypeError, "ignore_index must be an integer"),
    (dict(label_smoothing=2.0), ValueError, "label_smoothing must be a number in [0, 1]"),
    (dict(temperature=0.0), ValueError, "temperature must be a positive finite number"),
    (dict(z_loss=-1.0), ValueError, "z_loss must be a finite number >= 0"),
    (dict(softcap=0.0), ValueError, "softcap must be None or a finite number > 0"),
    (dict(z_loss=0.1, temperature=2.0), ValueError, "temperature cannot be combined"),
    (dict(temperature=2.0), ValueError, "temperature applies to soft (probability) targets"),
    (dict(backend="gpu"), ValueError, "backend must be one of"),
])
def test_every_option_is_checked_by_the_plan_naming_it(kwargs, exc, says):
    x, t, _ = _data()
    args = dict(reduction="mean", ignore_index=-100, weight=None, label_smoothing=0.0, temperature=1.0,
                backend="numpy", validate=False, z_loss=0.0, softcap=None, return_lse=False)
    args.update(kwargs)
    with pytest.raises(exc, match=says.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        plan.cross_entropy(logits=x, target=t, **args)
    with pytest.raises(exc):                                         # the public function: the same error
        fastdiv.cross_entropy(x, t, **{k: v for k, v in args.items() if k in kwargs or k == "backend"})


def test_target_kind_reads_dtypes_without_converting():
    import ml_dtypes

    assert plan.target_kind(np.zeros(3, np.int32)) == "indices"
    assert plan.target_kind(np.zeros((3, 2), ml_dtypes.bfloat16)) == "probs"
    assert plan.target_kind([[0.5, 0.5]]) == "probs"
    assert plan.target_kind([1, 2]) == "indices"
    torch = pytest.importorskip("torch")
    assert plan.target_kind(torch.zeros(3, 2, dtype=torch.bfloat16)) == "probs"
    assert plan.target_kind(torch.zeros(3, dtype=torch.int64)) == "indices"


# --------------------------------------------------------------------------- one empty-mean rule, every door


def _ce_cases():
    x, t, _ = _data()
    w = np.linspace(0.5, 2.0, V)
    zero_w = w.copy()
    zero_w[t] = 0.0
    return {
        "no rows": (x[:0], t[:0], None),
        "every target ignored": (x, np.full(5, -100), None),
        "every target ignored, weighted": (x, np.full(5, -100), w),
        "zero total weight": (x, t, zero_w),
    }


@pytest.mark.parametrize("case", list(_ce_cases()))
@pytest.mark.parametrize("backend", DOORS)
def test_empty_cross_entropy_mean_is_nan_like_torch(case, backend):
    x, t, w = _ce_cases()[case]
    with pytest.warns(RuntimeWarning, match="mean of an empty batch is NaN") if backend != "cuda" else \
            warnings.catch_warnings():
        got = fastdiv.cross_entropy(x, t, weight=w, backend=backend)
    assert _nan(got)
    assert float(_host(fastdiv.cross_entropy(x, t, weight=w, reduction="sum", backend=backend))) == 0.0
    out = _quiet(fastdiv.cross_entropy, x, t, weight=w, z_loss=0.1, return_lse=True, backend=backend)
    assert _nan(out.loss)
    if case != "zero total weight":                 # the z-loss mean is unweighted: rows are counted there
        assert _nan(out.z_loss)


@pytest.mark.parametrize("backend", DOORS)
def test_empty_means_of_the_other_functions_are_nan(backend):
    x = np.zeros((0, V), np.float32)
    for fn in (lambda: fastdiv.kl_div(x, x, backend=backend), lambda: fastdiv.entropy(x, reduction="mean", backend=backend),
               lambda: fastdiv.js_div(x, x, backend=backend),
               lambda: fastdiv.cross_entropy(x, x, backend=backend)):       # probability targets, no rows
        assert _nan(_quiet(fn))


def test_torch_agrees_on_the_empty_cases():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    for case, (x, t, w) in _ce_cases().items():
        want = F.cross_entropy(torch.from_numpy(x), torch.from_numpy(t), weight=None if w is None else
                               torch.from_numpy(w.astype(np.float32)))
        assert torch.isnan(want), case
        assert _nan(_quiet(fastdiv.cross_entropy, x, t, weight=w, backend="numpy")), case


@pytest.mark.parametrize("backend", DOORS)
def test_evaluate_meters_and_states_follow_the_rule(backend):
    x, t, _ = _data()
    ignored = np.full(5, -100)
    res = _quiet(fastdiv.evaluate, x, ignored, topk=(1,), z_loss=0.1, backend=backend)
    assert res.count == 0 and all(np.isnan(res[k]) for k in ("mean_nll", "perplexity", "accuracy@1",
                                                              "mean_entropy", "mean_z_loss"))
    with pytest.warns(RuntimeWarning, match="mean of an empty batch is NaN"):
        fastdiv.evaluate(x, ignored, backend=backend)
    for case, (xx, tt, w) in _ce_cases().items():
        m = meters.CrossEntropyMeter(weight=w, backend=backend)
        m.update(xx[:2], tt[:2]).update(xx[2:], tt[2:])           # a batch of padding is normal: no warning
        with pytest.warns(RuntimeWarning, match="mean of an empty batch is NaN"):
            assert np.isnan(m.compute()), case
    for meter in (meters.Perplexity(backend=backend), meters.Evaluator(topk=(1,), backend=backend)):
        meter.update(x, ignored)
        with pytest.warns(RuntimeWarning, match="mean of an empty batch is NaN"):
            out = meter.compute()
        assert np.isnan(out if isinstance(out, float) else out["mean_nll"])
    if backend != "cuda":                              # states run on the CPU backends
        st = states.merge(states.row_state(x[:, :3], target=ignored, topk=(1,), backend=backend),
                          states.row_state(x[:, 3:], offset=3, target=ignored, topk=(1,), backend=backend))
        fin = _quiet(states.finalize, st, topk=(1,), z_loss=0.1)
        assert fin.count == 0 and np.isnan(fin.mean_nll) and np.isnan(fin["mean_z_loss"])


@cuda_only
def test_device_reduction_follows_the_rule():
    from numba import cuda

    for case, (x, t, w) in _ce_cases().items():
        dw = None if w is None else cuda.to_device(w.astype(np.float32))
        got = fastdiv.cross_entropy(cuda.to_device(x), cuda.to_device(t), weight=dw)   # reduced on the device
        assert hasattr(got, "copy_to_host") and _nan(got), case


def test_dask_follows_the_rule():
    da = pytest.importorskip("dask.array")
    import fastdiv.dask as fdd

    for case, (x, t, w) in _ce_cases().items():
        for split in (False, True):
            if split and w is not None:
                continue
            lx = da.from_array(x, chunks=(2, 3 if split else -1))
            got = _quiet(lambda: fdd.cross_entropy(lx, da.from_array(t, chunks=2), weight=w).compute())
            assert _nan(got), (case, split)
    x, t, _ = _data()
    res = _quiet(lambda: fdd.evaluate(da.from_array(x, chunks=(2, 3)), da.from_array(np.full(5, -100), chunks=2),
                                      topk=(1,)).aggregates())
    assert res["count"] == 0 and np.isnan(res["mean_nll"])


def test_the_rule_is_written_once():
    assert "Empty means are NaN" in reduce.__doc__
    assert np.isnan(reduce.EMPTY_MEAN)


# --------------------------------------------------------------------------- #18: ignore_index with probabilities


@pytest.mark.parametrize("backend", DOORS)
def test_a_class_ignore_index_with_probability_targets_is_refused_like_torch(backend):
    x, _, p = _data()
    for ii in (0, 3):
        with pytest.raises(ValueError, match="ignore_index=.* applies to class-index targets only"):
            fastdiv.cross_entropy(x, p, ignore_index=ii, backend=backend)
        with pytest.raises(ValueError, match="ignore_index"):
            fastdiv.cross_entropy(x, p, ignore_index=ii, z_loss=0.1, backend=backend)
    base = _host(fastdiv.cross_entropy(x, p, backend=backend))
    for ii in (-100, -1):                           # a negative index names no class: no effect (torch too)
        assert _host(fastdiv.cross_entropy(x, p, ignore_index=ii, backend=backend)) == base
    meter = meters.CrossEntropyMeter(ignore_index=2, backend=backend)
    with pytest.raises(ValueError, match="ignore_index"):
        meter.update(x, p)


def test_torch_refuses_the_same_ignore_index():
    torch = pytest.importorskip("torch")
    x, _, p = _data()
    with pytest.raises(RuntimeError, match="ignore_index is not supported for floating point target"):
        torch.nn.functional.cross_entropy(torch.from_numpy(x), torch.from_numpy(p), ignore_index=3)
    torch.nn.functional.cross_entropy(torch.from_numpy(x), torch.from_numpy(p), ignore_index=-1)


def test_dask_refuses_a_class_ignore_index_with_probabilities():
    da = pytest.importorskip("dask.array")
    import fastdiv.dask as fdd

    x, _, p = _data()
    with pytest.raises(ValueError, match="ignore_index"):
        fdd.cross_entropy(da.from_array(x), da.from_array(p), ignore_index=1)


# --------------------------------------------------------------------------- #18: bfloat16 class weights


def _bf16_weights():
    import ml_dtypes

    w = np.array([0.5, 1.0, 1.5, 2.0, 0.25, 3.0])
    out = {"ml_dtypes": w.astype(ml_dtypes.bfloat16)}
    try:
        import torch

        out["torch"] = torch.tensor(w, dtype=torch.bfloat16)
    except ImportError:
        pass
    return w, out


@pytest.mark.parametrize("backend", DOORS)
@pytest.mark.parametrize("soft", [False, True])
def test_bfloat16_class_weights_are_accepted(backend, soft):
    x, t, p = _data()
    t[1] = -100
    w, bf = _bf16_weights()
    target = p if soft else t
    for reduction in ("none", "mean", "sum"):
        want = _host(fastdiv.cross_entropy(x, target, weight=w.astype(np.float32), reduction=reduction,
                                           backend=backend))
        for kind, wb in bf.items():
            got = _host(fastdiv.cross_entropy(x, target, weight=wb, reduction=reduction, backend=backend))
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"{kind} {reduction}")
    got = fastdiv.cross_entropy(x, target, weight=bf["ml_dtypes"], z_loss=0.1, backend=backend)
    assert np.isfinite(float(_host(got.loss)))
    m = meters.CrossEntropyMeter(weight=bf["ml_dtypes"], backend=backend)
    mean = _host(fastdiv.cross_entropy(x, target, weight=w.astype(np.float32), backend=backend))
    assert np.float32(m.update(x, target).compute()) == mean        # one batch: the same sums


def test_bfloat16_class_weights_in_dask():
    da = pytest.importorskip("dask.array")
    import fastdiv.dask as fdd

    x, t, _ = _data()
    w, bf = _bf16_weights()
    got = fdd.cross_entropy(da.from_array(x, chunks=(2, -1)), da.from_array(t, chunks=2), weight=bf["ml_dtypes"])
    assert got.compute() == fastdiv.cross_entropy(x, t, weight=w.astype(np.float32))


# --------------------------------------------------------------------------- one probability-target check


@pytest.mark.parametrize("backend", DOORS)
def test_bfloat16_probability_targets_on_every_path(backend):
    import ml_dtypes

    x, _, p = _data()
    pb = p.astype(ml_dtypes.bfloat16)
    want = fastdiv.cross_entropy(x, pb.astype(np.float32), backend=backend)
    assert np.isclose(_host(fastdiv.cross_entropy(x, pb, backend=backend)), _host(want), rtol=1e-6)
    with pytest.raises(ValueError, match="float target .* must have the same shape as logits"):
        fastdiv.cross_entropy(x, pb[:, :3], backend=backend)
    with pytest.raises(ValueError, match="float target .* must have the same shape as logits"):
        fastdiv.cross_entropy(x, pb[:, :3], return_lse=True, backend=backend)
