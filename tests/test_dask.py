"""fastdiv.dask: lazy results over chunked dask arrays equal the in-memory functions.

Row-chunked arrays: per-row values are computed by the same kernels on each chunk, so they are
bit-identical; reductions add float64 partial sums across chunks, so they agree to float64
rounding (then rounded to the output dtype).  Vocabulary-chunked arrays go through the
mergeable per-row states (fastdiv.states), so they agree to rounding (conftest's TOL).  One
test runs on a dask.distributed LocalCluster of two worker processes over arrays stored as
chunked .npy files, row- and vocabulary-split.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import fastdiv  # noqa: E402
import fastdiv.dask as fdd  # noqa: E402
from conftest import TOL, assert_rows_close  # noqa: E402


@pytest.fixture(autouse=True)
def _synchronous():
    import dask

    with dask.config.set(scheduler="synchronous"):
        yield


def _data(rows=103, v=51, dtype=np.float32, seed=None):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, v)) * 3).astype(dtype)
    q = (rng.standard_normal((rows, v)) * 3).astype(dtype)
    x[5, :7] = -np.inf
    x[9] = -np.inf
    t = rng.integers(0, v, rows)
    t[::4] = -100
    t[20:40] = -100                      # a whole chunk of ignored targets (chunks of 16)
    return x, q, t


def _close(got, want):
    rtol = 1e-12 if np.asarray(want).dtype == np.float64 else 1e-6
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=0)
    assert np.asarray(got).dtype == np.asarray(want).dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_cross_entropy_hard_labels(dtype, reduction):
    x, _, t = _data(dtype=dtype)
    w = np.random.default_rng().uniform(0.1, 2.0, x.shape[1])
    dx = da.from_array(x, chunks=(16, -1))
    t3 = np.where(t == -100, 3, t)
    for kw, tt in (({}, t), ({"weight": w}, t), ({"label_smoothing": 0.1}, t),
                   ({"weight": w, "ignore_index": 3}, t3)):
        lazy = fdd.cross_entropy(dx, da.from_array(tt, chunks=23), reduction=reduction, **kw)  # other row chunks
        assert isinstance(lazy, da.Array)
        want = fastdiv.cross_entropy(x, tt, reduction=reduction, **kw)
        if reduction == "none":
            np.testing.assert_array_equal(lazy.compute(), want)
        else:
            _close(lazy.compute(), want)


def test_cross_entropy_every_target_ignored_and_lazy_weight():
    x, _, t = _data()
    t[:] = -100
    got = fdd.cross_entropy(da.from_array(x, chunks=(30, -1)), da.from_array(t, chunks=30),
                            weight=da.ones(x.shape[1], chunks=10))
    assert np.isnan(float(got.compute()))                # NaN, as in memory (torch's rule)


def test_cross_entropy_soft_targets_and_leading_axes():
    x, q, _ = _data(rows=120)
    p = np.exp(q - fastdiv.logsumexp(q)[:, None]).astype(np.float32)
    x3, p3 = x.reshape(6, 20, -1), p.reshape(6, 20, -1)
    dx, dp = da.from_array(x3, chunks=(4, 7, -1)), da.from_array(p3, chunks=(3, 20, -1))
    for reduction in ("none", "mean", "sum"):
        got = fdd.cross_entropy(dx, dp, reduction=reduction).compute()
        want = fastdiv.cross_entropy(x3, p3, reduction=reduction)
        if reduction == "none":
            np.testing.assert_array_equal(got, want)
        else:
            _close(got, want)
    t3 = np.random.default_rng().integers(0, x.shape[1], (6, 20))
    _close(fdd.cross_entropy(dx, da.from_array(t3, chunks=(2, 5))).compute(), fastdiv.cross_entropy(x3, t3))


@pytest.mark.parametrize("inputs", ["logits", "log_probs", "probs"])
def test_kl_entropy_logsumexp(inputs):
    x, q, _ = _data()
    if inputs != "logits":
        with np.errstate(invalid="ignore"):            # row 9 is all -inf: set again below
            x = (x - fastdiv.logsumexp(x)[:, None]).astype(np.float32)
        q = (q - fastdiv.logsumexp(q)[:, None]).astype(np.float32)
        x[9] = -np.inf
        if inputs == "probs":
            x, q = np.exp(x), np.exp(q)
    dx, dq = da.from_array(x, chunks=(10, -1)), da.from_array(q, chunks=(33, -1))
    for reduction in ("none", "mean", "sum"):
        got = fdd.kl_div(dx, dq, inputs=inputs, reduction=reduction).compute()
        want = fastdiv.kl_div(x, q, inputs=inputs, reduction=reduction)
        (np.testing.assert_array_equal if reduction == "none" else _close)(got, want)
        got = fdd.entropy(dx, inputs=inputs, reduction=reduction).compute()
        want = fastdiv.entropy(x, inputs=inputs, reduction=reduction)
        (np.testing.assert_array_equal if reduction == "none" else _close)(got, want)
    np.testing.assert_array_equal(fdd.logsumexp(dx).compute(), fastdiv.logsumexp(x))


def test_one_row_and_empty_batch():
    x, q, t = _data()
    assert fdd.logsumexp(da.from_array(x[0])).compute() == fastdiv.logsumexp(x[0])
    empty = da.from_array(np.ones((0, 5), np.float32), chunks=(1, 5))
    with pytest.warns(RuntimeWarning, match="empty"):
        assert np.isnan(fdd.entropy(empty, reduction="mean").compute())


def test_unknown_chunk_sizes():
    x, _, _ = _data()
    dx = da.from_array(x, chunks=(30, -1))
    keep = x[:, 1] > 0
    sel = dx[dx[:, 1] > 0]                               # boolean selection: row counts unknown until compute
    assert np.isnan(sel.shape[0])
    for reduction in ("mean", "sum"):
        _close(fdd.entropy(sel, reduction=reduction).compute(), fastdiv.entropy(x[keep], reduction=reduction))


def test_errors_name_the_argument():
    x, q, t = _data()
    split = da.from_array(x, chunks=(16, 20))
    for kw, name in (({"weight": np.ones(x.shape[1])}, "weight"), ({"label_smoothing": 0.1}, "label_smoothing")):
        with pytest.raises(ValueError, match=rf"{name}: .* class \(last\) axis is split.*rechunk"):
            fdd.cross_entropy(split, da.from_array(t), **kw)
    with pytest.raises(ValueError, match="target: a target of probabilities is not supported"):
        fdd.cross_entropy(split, da.from_array(q, chunks=(16, 20)))
    with pytest.raises(ValueError, match="inputs: inputs='probs' is not supported"):
        fdd.kl_div(da.from_array(x), da.from_array(q, chunks=(16, 25)), inputs="probs")
    with pytest.raises(ValueError, match="inputs: inputs='log_probs'"):
        fdd.entropy(split, inputs="log_probs")
    with pytest.raises(ValueError, match="target must have shape"):
        fdd.evaluate(split, da.from_array(t[:-1]))
    with pytest.raises(TypeError, match="integer class indices"):
        fdd.evaluate(split, da.from_array(t.astype(np.float32)))
    with pytest.raises(ValueError, match="target of class indices must have shape"):
        fdd.cross_entropy(da.from_array(x), da.from_array(t[:-1]))
    with pytest.raises(TypeError, match="x must be a floating-point array"):
        fdd.logsumexp(da.from_array(t.reshape(-1, 1)))
    with pytest.raises(ValueError, match="reduction must be one of"):
        fdd.entropy(da.from_array(x), reduction="batchmean")
    bad = t.copy()
    bad[50] = 51
    lazy = fdd.cross_entropy(da.from_array(x, chunks=(16, -1)), da.from_array(bad, chunks=16))
    with pytest.raises(ValueError, match="target must be in"):        # data errors surface at compute()
        lazy.compute()
    lazy = fdd.cross_entropy(split, da.from_array(bad, chunks=16))   # and on the vocabulary-split path
    with pytest.raises(ValueError, match=r"target of row \d+ is >= 51"):
        lazy.compute()


# --------------------------------------------------------------------------- vocabulary-split arrays

VOCAB_CHUNKS = (7, 20, 1, 23)             # uneven, a one-class chunk; V = 51


def _split_data(dtype, seed=None):
    x, q, t = _data(dtype=dtype, seed=seed)
    x[:, 7:27] = -np.inf                   # the second vocabulary chunk entirely masked
    q[:, 27:28] = -np.inf                  # and the third of q
    x[11] = np.nan                         # a NaN row
    t[40:50] = 50                          # targets in the last chunk
    t[60:62] = 10                          # a target in the masked chunk
    return x, q, t


@pytest.fixture
def one_thread():
    """Many tiny blocks: one thread per task, as on dask.distributed workers (conftest restores)."""
    fastdiv.set_num_threads(1)


def _agree(got, want, dtype, what, kind="rel"):
    assert np.asarray(got).dtype == np.asarray(want).dtype, what
    assert_rows_close(got, want, dtype, what, kind)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vocab_split_functions_equal_the_in_memory_ones(dtype, one_thread):
    x, q, t = _split_data(dtype)
    dx = da.from_array(x, chunks=(16, VOCAB_CHUNKS))
    dq = da.from_array(q, chunks=(33, 17))                       # other chunks: rechunked like dx
    dt = da.from_array(t, chunks=23)
    _agree(fdd.logsumexp(dx).compute(), fastdiv.logsumexp(x), dtype, "lse")
    _agree(fdd.entropy(dx, reduction="none").compute(), fastdiv.entropy(x), dtype, "entropy")
    _agree(fdd.kl_div(dx, dq, reduction="none").compute(), fastdiv.kl_div(x, q, reduction="none"), dtype, "kl",
           kind="kl")
    _agree(fdd.kl_div(dq, dx, reduction="none").compute(), fastdiv.kl_div(q, x, reduction="none"), dtype, "rkl",
           kind="kl")
    _agree(fdd.cross_entropy(dx, dt, reduction="none").compute(), fastdiv.cross_entropy(x, t, reduction="none"),
           dtype, "ce")
    ok = np.isfinite(fastdiv.cross_entropy(x, t, reduction="none"))
    xs, ts = x[ok], t[ok]                                        # finite rows: the means are numbers
    assert len(ts) > 50
    dxs = da.from_array(xs, chunks=(16, VOCAB_CHUNKS))
    for reduction in ("mean", "sum"):
        _agree(fdd.cross_entropy(dxs, da.from_array(ts, chunks=16), reduction=reduction).compute(),
               fastdiv.cross_entropy(xs, ts, reduction=reduction), dtype, reduction)
        _agree(fdd.entropy(dxs, reduction=reduction).compute(), fastdiv.entropy(xs, reduction=reduction), dtype,
               reduction)
    ts[:] = -100
    assert np.isnan(float(fdd.cross_entropy(dxs, da.from_array(ts, chunks=16)).compute()))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vocab_split_kl_of_nearby_rows_keeps_its_relative_accuracy(dtype, one_thread):
    """kl_div and evaluate's KL columns by vocabulary chunks, rows z = x + N(0, 1e-4) beside
    equal, masked, offset and one-sided rows (cases.nearby_kl_pair): merged by the chain rule
    (fastdiv.states), within 1e-4 of the float64 reference in float32, where the one-pass sums
    were up to 16x off before 2026-12-07."""
    from cases import nearby_kl_pair
    from fastdiv import reference as R

    x, z = nearby_kl_pair(4000, 1e-4, dtype, seed=7)
    want_mr = R.kl_rows(x.astype(np.float64), z.astype(np.float64))
    want_rm = R.kl_rows(z.astype(np.float64), x.astype(np.float64))
    tol = 1e-4 if dtype == np.float32 else 1e-9
    dx, dz = da.from_array(x, chunks=(3, (1000, 1, 1999, 1000))), da.from_array(z, chunks=(5, 700))
    np.testing.assert_allclose(fdd.kl_div(dx, dz, reduction="none").compute(), want_mr, rtol=tol, atol=1e-30)
    res = fdd.evaluate(dx, da.from_array(np.arange(8), chunks=3), topk=(), reference=dz).compute()
    np.testing.assert_allclose(res.kl_ref_model, want_rm, rtol=tol, atol=1e-30)
    np.testing.assert_allclose(res.kl_model_ref, want_mr, rtol=tol, atol=1e-30)


def test_vocab_split_evaluate_equals_in_memory_evaluate(one_thread):
    dtype = np.float32
    x, q, t = _split_data(dtype)
    x3, q3, t3 = x[:100].reshape(5, 20, -1), q[:100].reshape(5, 20, -1), t[:100].reshape(5, 20)
    want = fastdiv.evaluate(x3, t3, topk=(1, 3), reference=q3, z_loss=1e-3, kl_direction="model||ref")
    no_topk = fdd.evaluate(da.from_array(x3, chunks=(2, 7, VOCAB_CHUNKS)), da.from_array(t3), topk=()).compute()
    _agree(no_topk["nll"], want["nll"], dtype, "nll without topk")
    assert set(no_topk.aggregates()) == {"count", "mean_nll", "perplexity", "mean_entropy"}
    for chunks in ((2, 7, VOCAB_CHUNKS), (5, 20, -1), (1, 20, (5,) * 10 + (1,))):    # 4, 1 and 11 chunks
        lazy = fdd.evaluate(da.from_array(x3, chunks=chunks), da.from_array(t3, chunks=(3, 20)), topk=(1, 3),
                            reference=da.from_array(q3, chunks=(5, 20, 10 if chunks[-1] != -1 else -1)), z_loss=1e-3,
                            kl_direction="model||ref")
        assert isinstance(lazy["nll"], da.Array) and lazy["mean_nll"].ndim == 0
        got = lazy.compute()
        assert isinstance(got, fastdiv.Evaluation)
        for key in ("nll", "lse", "entropy", "target_prob", "z_loss"):
            _agree(got[key], want[key], dtype, key)
        for key in ("kl", "kl_model_ref", "kl_ref_model"):
            _agree(got[key], want[key], dtype, key, kind="kl")
        for key in ("argmax", "counted", "correct@1", "correct@3"):
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        if chunks[-1] == -1:                   # class axis whole: in-memory evaluate per row chunk
            for key in ("nll", "lse", "entropy", "kl", "rank"):
                np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        else:                                  # states: rank capped at max(topk)
            np.testing.assert_array_equal(got["rank"], np.minimum(want["rank"], 3))
        agg = lazy.aggregates()
        assert agg.keys() == want.aggregates().keys() and agg["count"] == want["count"]
        for key, value in want.aggregates().items():
            np.testing.assert_allclose(agg[key], value, rtol=TOL[dtype]["rtol"], err_msg=key)
            np.testing.assert_allclose(got[key], value, rtol=TOL[dtype]["rtol"], err_msg=key)


@pytest.fixture(scope="module")
def cluster_client():
    distributed = pytest.importorskip("distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                           dashboard_address=None, silence_logs=40)
        client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def test_local_cluster_of_two_processes_over_chunked_npy_files(tmp_path, cluster_client):
    x, q, t = _data(rows=4000, v=1271)
    da.to_npy_stack(tmp_path / "logits", da.from_array(x, chunks=(500, -1)))   # 8 files of 500 rows
    da.to_npy_stack(tmp_path / "reference", da.from_array(q, chunks=(1000, -1)))
    da.to_npy_stack(tmp_path / "targets", da.from_array(t, chunks=500))
    assert len(list((tmp_path / "logits").glob("*.npy"))) == 8
    dx = da.from_npy_stack(tmp_path / "logits", mmap_mode="r")      # each worker maps its own chunks
    dq = da.from_npy_stack(tmp_path / "reference", mmap_mode="r")
    dt = da.from_npy_stack(tmp_path / "targets", mmap_mode="r")
    pids = set(cluster_client.run(os.getpid).values())
    assert len(pids) == 2 and os.getpid() not in pids
    ce, kl, ent, lse = cluster_client.compute(
        [fdd.cross_entropy(dx, dt), fdd.kl_div(dq, dx), fdd.entropy(dx, reduction="sum"), fdd.logsumexp(dx)],
        sync=True)
    _close(ce, fastdiv.cross_entropy(x, t))
    _close(kl, fastdiv.kl_div(q, x))
    _close(ent, fastdiv.entropy(x, reduction="sum"))
    np.testing.assert_array_equal(lse, fastdiv.logsumexp(x))
    # the vocabulary split too: (row chunk, vocabulary chunk) states merged across the workers
    ds, dqs = dx.rechunk((500, (400, 400, 471))), dq.rechunk((1000, 300))
    ce, kl, lse = cluster_client.compute([fdd.cross_entropy(ds, dt), fdd.kl_div(dqs, ds), fdd.logsumexp(ds)],
                                         sync=True)
    np.testing.assert_allclose(ce, fastdiv.cross_entropy(x, t), rtol=TOL[np.float32]["rtol"])   # inf: row 9
    np.testing.assert_allclose(kl, fastdiv.kl_div(q, x), rtol=TOL[np.float32]["kl"])
    assert_rows_close(lse, fastdiv.logsumexp(x), np.float32, "lse")
    agg = fdd.evaluate(ds, dt, reference=dqs).aggregates(scheduler=cluster_client)   # on the workers
    want = fastdiv.evaluate(x, t, reference=q)
    for key, value in want.aggregates().items():
        np.testing.assert_allclose(agg[key], value, rtol=TOL[np.float32]["kl"], err_msg=key)


def test_workers_run_fastdiv_on_one_thread_by_default(cluster_client):
    """distributed's nanny sets OMP_NUM_THREADS=1 in workers; fastdiv reads it (documented)."""
    def threads():
        import fastdiv

        return fastdiv.get_num_threads()

    if os.environ.get("FASTDIV_NUM_THREADS") or os.environ.get("NUMBA_NUM_THREADS"):
        pytest.skip("a thread count is set for fastdiv in this environment")
    assert set(cluster_client.run(threads).values()) == {1}
