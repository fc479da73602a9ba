"""API behaviour: shapes, leading axes, memmaps, result dtypes, reductions, edge semantics and
agreement with torch and scipy.  Per-row values against the reference in every dtype and
layout: tests/test_cases.py."""
from __future__ import annotations

import numpy as np
import pytest

import fastdiv
from fastdiv import reference as R

from conftest import ALL_HOST, assert_rows_close, backend_params, make_logits, make_probs

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # torch is an optional oracle
    torch = None
try:
    import scipy.special as sps
except ImportError:
    sps = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (optional oracle)")
needs_scipy = pytest.mark.skipif(sps is None, reason="scipy is not installed (optional oracle)")
host = pytest.mark.parametrize("backend", ALL_HOST)
#: tests on float64 inputs: numba's float64 specializations are compiled in the slow tier only
host64 = pytest.mark.parametrize("backend", backend_params(ALL_HOST, dtype=np.float64))


# --------------------------------------------------------------------------- shapes and layouts


@host
def test_leading_dims_are_preserved(backend, rng):
    x = make_logits(rng, 24, 33, np.float32, edges=False).reshape(2, 3, 4, 33)
    t = rng.integers(0, 33, (2, 3, 4))
    assert fastdiv.logsumexp(x, backend=backend).shape == (2, 3, 4)
    assert fastdiv.entropy(x, backend=backend).shape == (2, 3, 4)
    assert fastdiv.kl_div(x, x[::-1], reduction="none", backend=backend).shape == (2, 3, 4)
    assert fastdiv.cross_entropy(x, t, reduction="none", backend=backend).shape == (2, 3, 4)
    flat = fastdiv.cross_entropy(x.reshape(-1, 33), t.reshape(-1), reduction="none", backend=backend)
    np.testing.assert_array_equal(fastdiv.cross_entropy(x, t, reduction="none", backend=backend).reshape(-1), flat)


@host64
def test_one_dimensional_input_gives_scalars(backend, rng):
    x = rng.standard_normal(10)
    out = fastdiv.logsumexp(x, backend=backend)
    assert np.ndim(out) == 0 and isinstance(out, np.float64)
    assert np.isclose(out, np.log(np.exp(x).sum()))
    assert np.ndim(fastdiv.cross_entropy(x, np.array(3), backend=backend)) == 0


@host
def test_leading_axes_that_cannot_be_merged(backend, rng):
    """A transposed 3-D input: its rows are split along the first axis, never copied whole
    (other layouts: cases.LAYOUTS, tests/test_cases.py)."""
    base = make_logits(rng, 64, 301, np.float32, edges=False)
    x = base.reshape(4, 16, 301).transpose(1, 0, 2)
    want = R.logsumexp_rows(np.ascontiguousarray(x).reshape(-1, 301)).reshape(16, 4)
    assert_rows_close(fastdiv.logsumexp(x, backend=backend), want, np.float32, "transposed")
    z = np.ascontiguousarray(x)[::-1]
    want = R.kl_rows(np.ascontiguousarray(x).reshape(-1, 301), np.ascontiguousarray(z).reshape(-1, 301))
    assert_rows_close(fastdiv.kl_div(x, z, reduction="none", backend=backend).reshape(-1), want, np.float32,
                      "transposed", kind="kl")


def test_small_blocks_cover_every_row(rng, monkeypatch):
    """Converted inputs are processed in row blocks; force tiny blocks to test the stitching."""
    from fastdiv import execute
    monkeypatch.setattr(execute, "BLOCK_BYTES", 1000)
    x = make_logits(rng, 50, 77, np.float64, edges=False)
    t = rng.integers(0, 77, 50)
    xf = np.asfortranarray(x)
    np.testing.assert_allclose(fastdiv.cross_entropy(xf, t, reduction="none"),
                               R.cross_entropy_hard_rows(x, t), rtol=1e-12)
    np.testing.assert_allclose(fastdiv.cross_entropy(xf.astype(np.float16), t, reduction="none"),
                               R.cross_entropy_hard_rows(x.astype(np.float16), t), rtol=1e-5)


@host
def test_read_only_and_memmap_inputs(backend, rng, tmp_path):
    x = make_logits(rng, 30, 129, np.float32)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    ro = x.copy()
    ro.flags.writeable = False
    want = R.logsumexp_rows(x)
    assert_rows_close(fastdiv.logsumexp(mm, backend=backend), want, np.float32, "memmap")
    assert_rows_close(fastdiv.logsumexp(ro, backend=backend), want, np.float32, "read-only")
    t = rng.integers(0, 129, 30)
    t.flags.writeable = False
    assert_rows_close(fastdiv.cross_entropy(mm, t, reduction="none", backend=backend),
                      R.cross_entropy_hard_rows(x, t), np.float32, "memmap ce")


# --------------------------------------------------------------------------- dtypes


@host
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_result_dtypes_of_reductions(backend, dtype, rng):
    want = np.float64 if dtype == np.float64 else np.float32
    x = make_logits(rng, 12, 40, dtype)
    t = rng.integers(0, 40, 12)
    assert fastdiv.entropy(x, reduction="mean", backend=backend).dtype == want
    assert fastdiv.cross_entropy(x, t, backend=backend).dtype == want
    assert fastdiv.kl_div(x, x, reduction="sum", backend=backend).dtype == want


@host64
def test_big_endian_and_mixed_dtypes(backend, rng):
    x = make_logits(rng, 15, 80, np.float64)
    xb = x.astype(">f8")
    assert_rows_close(fastdiv.logsumexp(xb, backend=backend), R.logsumexp_rows(x), np.float64, "big-endian")
    z = make_logits(rng, 15, 80, np.float32)
    got = fastdiv.kl_div(x, z, reduction="none", backend=backend)
    assert got.dtype == np.float64
    assert_rows_close(got, R.kl_rows(x, z), np.float64, "mixed", kind="kl")


def test_lists_are_accepted():
    assert np.isclose(fastdiv.logsumexp([0.0, 0.0]), np.log(2))
    assert np.isclose(fastdiv.cross_entropy([[0.0, 0.0]], [1]), np.log(2))


# --------------------------------------------------------------------------- reductions and edge semantics


@host64
def test_reductions(backend, rng):
    x = make_logits(rng, 30, 50, np.float64, edges=False)
    z = make_logits(rng, 30, 50, np.float64, edges=False)
    rows = R.kl_rows(x, z)
    assert np.isclose(fastdiv.kl_div(x, z, backend=backend), rows.mean(), rtol=1e-12)
    assert np.isclose(fastdiv.kl_div(x, z, reduction="sum", backend=backend), rows.sum(), rtol=1e-12)
    h = R.entropy_rows(x)
    assert np.isclose(fastdiv.entropy(x, reduction="mean", backend=backend), h.mean(), rtol=1e-12)


@host64
def test_weighted_mean_and_ignored_targets(backend, rng):
    x = make_logits(rng, 30, 20, np.float64, edges=False)
    t = rng.integers(0, 20, 30)
    t[:7] = -100
    w = rng.uniform(0.5, 2.0, 20)
    rows = R.cross_entropy_hard_rows(x, t, -100, w)
    want = rows.sum() / w[t[7:]].sum()
    assert np.isclose(fastdiv.cross_entropy(x, t, weight=w, backend=backend), want, rtol=1e-12)
    assert np.isclose(fastdiv.cross_entropy(x, t, backend=backend),
                      R.cross_entropy_hard_rows(x, t).sum() / 23, rtol=1e-12)


@host
def test_every_target_ignored_gives_nan_like_torch(backend, rng):
    x = make_logits(rng, 5, 10, np.float32)
    t = np.full(5, -100)
    with np.errstate(all="raise"), pytest.warns(RuntimeWarning, match="empty"):
        assert np.isnan(fastdiv.cross_entropy(x, t, backend=backend))       # fastdiv.reduce's empty-mean rule
    with np.errstate(all="raise"):
        assert fastdiv.cross_entropy(x, t, reduction="sum", backend=backend) == 0.0
    np.testing.assert_array_equal(fastdiv.cross_entropy(x, t, reduction="none", backend=backend), np.zeros(5))


@host
def test_empty_batches(backend):
    x = np.zeros((0, 7), np.float32)
    assert fastdiv.logsumexp(x, backend=backend).shape == (0,)
    assert fastdiv.entropy(x, backend=backend).shape == (0,)
    assert fastdiv.kl_div(x, x, reduction="sum", backend=backend) == 0.0
    with pytest.warns(RuntimeWarning, match="empty"):
        assert np.isnan(fastdiv.cross_entropy(x, np.zeros(0, np.int64), backend=backend))
    with pytest.warns(RuntimeWarning, match="empty"):
        assert np.isnan(fastdiv.kl_div(x, x, backend=backend))
    assert fastdiv.logsumexp(np.zeros((3, 0, 5)), backend=backend).shape == (3, 0)


@host64
def test_masked_rows_semantics(backend):
    inf = np.inf
    x = np.array([[-inf, -inf, -inf], [-inf, 0.0, 0.0], [inf, 0.0, 1.0], [np.nan, 0.0, 1.0]])
    lse = fastdiv.logsumexp(x, backend=backend)
    np.testing.assert_array_equal(lse[[0, 2]], [-inf, inf])
    assert np.isclose(lse[1], np.log(2)) and np.isnan(lse[3])
    h = fastdiv.entropy(x, backend=backend)
    assert h[0] == 0.0 and np.isclose(h[1], np.log(2)) and np.isnan(h[2]) and np.isnan(h[3])
    ce = fastdiv.cross_entropy(x, np.array([0, 0, 1, 1]), reduction="none", backend=backend)
    assert ce[0] == inf and ce[1] == inf and np.isnan(ce[2]) and np.isnan(ce[3])
    kl = fastdiv.kl_div(x[:2], x[[1, 0]], reduction="none", backend=backend)
    np.testing.assert_array_equal(kl, [0.0, inf])        # P all masked -> 0; Q all masked -> inf


@host64
def test_probabilities_zero_conventions(backend):
    p = np.array([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    q = np.array([[0.5, 0.0, 0.5], [0.25, 0.75, 0.0]])
    kl = fastdiv.kl_div(p, q, inputs="probs", reduction="none", backend=backend)
    assert kl[0] == np.inf and np.isfinite(kl[1])
    assert np.isclose(fastdiv.entropy(p[0], inputs="probs", backend=backend), np.log(2))


# --------------------------------------------------------------------------- peers


@needs_scipy
@host64
def test_matches_scipy(backend, rng):
    x = make_logits(rng, 25, 300, np.float64, edges=False)
    np.testing.assert_allclose(fastdiv.logsumexp(x, backend=backend), sps.logsumexp(x, axis=-1), rtol=1e-12)
    p = make_probs(rng, 25, 300, np.float64)
    q = make_probs(rng, 25, 300, np.float64, zeros=False)
    np.testing.assert_allclose(fastdiv.kl_div(p, q, inputs="probs", reduction="none", backend=backend),
                               sps.rel_entr(p, q).sum(-1), rtol=1e-11, atol=1e-13)
    np.testing.assert_allclose(fastdiv.entropy(p, inputs="probs", backend=backend),
                               sps.entr(p).sum(-1), rtol=1e-11, atol=1e-13)


@needs_torch
@host
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_matches_torch(backend, dtype, rng):
    n, v = 64, 97
    x = make_logits(rng, n, v, dtype, edges=False)
    t = rng.integers(0, v, n)
    t[rng.random(n) < 0.25] = 5
    w = rng.uniform(0.2, 2.0, v).astype(dtype)
    p = make_probs(rng, n, v, dtype, zeros=False)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    tx, tt, tw, tp = map(torch.from_numpy, (x, t, w, p))
    for reduction in ("none", "mean", "sum"):
        for weight in (None, w):
            for eps in (0.0, 0.15):
                want = F.cross_entropy(tx, tt, weight=None if weight is None else tw, ignore_index=5,
                                       label_smoothing=eps, reduction=reduction).numpy()
                got = fastdiv.cross_entropy(x, t, weight=weight, ignore_index=5, label_smoothing=eps,
                                            reduction=reduction, backend=backend)
                np.testing.assert_allclose(got, want, **tol, err_msg=f"{reduction} weight={weight is not None} eps={eps}")
                want = F.cross_entropy(tx, tp, weight=None if weight is None else tw, label_smoothing=eps,
                                       reduction=reduction).numpy()
                got = fastdiv.cross_entropy(x, p, weight=weight, label_smoothing=eps, reduction=reduction, backend=backend)
                np.testing.assert_allclose(got, want, **tol, err_msg=f"soft {reduction} weight={weight is not None} eps={eps}")
    # leading dims: torch wants the class axis second
    x3 = x.reshape(4, 16, v)
    want = F.cross_entropy(torch.from_numpy(x3).permute(0, 2, 1), torch.from_numpy(t.reshape(4, 16)), ignore_index=5).numpy()
    np.testing.assert_allclose(fastdiv.cross_entropy(x3, t.reshape(4, 16), ignore_index=5, backend=backend), want, **tol)


@needs_torch
@host64
def test_kl_matches_torch(backend, rng):
    x = make_logits(rng, 40, 211, np.float64, edges=False)
    z = make_logits(rng, 40, 211, np.float64, edges=False)
    lp, lq = (torch.log_softmax(torch.from_numpy(a), -1) for a in (x, z))
    # torch.kl_div(input=log q, target=log p, log_target=True) is D(P || Q).
    want = F.kl_div(lq, lp, log_target=True, reduction="batchmean").item()
    assert np.isclose(fastdiv.kl_div(x, z, backend=backend), want, rtol=1e-10)
    assert np.isclose(fastdiv.kl_div(lp.numpy(), lq.numpy(), inputs="log_probs", backend=backend), want, rtol=1e-10)
    assert np.isclose(fastdiv.kl_div(lp.exp().numpy(), lq.exp().numpy(), inputs="probs", backend=backend), want, rtol=1e-9)


@needs_torch
def test_torch_tensors_are_accepted(rng):
    x = torch.from_numpy(make_logits(rng, 8, 30, np.float32, edges=False)).requires_grad_(True)
    t = torch.from_numpy(rng.integers(0, 30, 8))
    assert np.isclose(fastdiv.cross_entropy(x, t), F.cross_entropy(x, t).item(), rtol=1e-5)
    bf = x.detach().to(torch.bfloat16)
    assert np.isclose(fastdiv.logsumexp(bf)[0], torch.logsumexp(bf.float(), -1)[0].item(), rtol=1e-5)
