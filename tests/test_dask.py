"""fastdiv.dask: lazy results over row-chunked dask arrays equal the in-memory functions.

Per-row values are computed by the same kernels on each chunk, so they are bit-identical;
reductions add float64 partial sums across chunks, so they agree to float64 rounding (then
rounded to the output dtype).  One test runs on a dask.distributed LocalCluster of two worker
processes over arrays stored as chunked .npy files.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

da = pytest.importorskip("dask.array")

import fastdiv  # noqa: E402
import fastdiv.dask as fdd  # noqa: E402


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
    assert float(got.compute()) == 0.0


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
    with pytest.raises(ValueError, match=r"logits has its class \(last\) axis split into 3 chunks.*rechunk"):
        fdd.cross_entropy(split, da.from_array(t))
    with pytest.raises(ValueError, match="q has its class"):
        fdd.kl_div(da.from_array(x), da.from_array(q, chunks=(16, 25)))
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


def test_workers_run_fastdiv_on_one_thread_by_default(cluster_client):
    """distributed's nanny sets OMP_NUM_THREADS=1 in workers; fastdiv reads it (documented)."""
    def threads():
        import fastdiv

        return fastdiv.get_num_threads()

    if os.environ.get("FASTDIV_NUM_THREADS") or os.environ.get("NUMBA_NUM_THREADS"):
        pytest.skip("a thread count is set for fastdiv in this environment")
    assert set(cluster_client.run(threads).values()) == {1}
