"""``fastdiv.linear``: lazy logits in place of stored ones, through every row of the case table.

* Exact: each case's logits arguments (edge rows included, with their non-finite entries
  replaced by 0 and whole classes masked through the bias) are handed as
  ``linear(x, I, bias)``: the identity matmul reproduces ``x`` bit for bit, so every option of
  every function must give the same bits as on ``x + bias``, whatever the row blocks.
* Rounding: random hidden states and heads against the function on ``hidden @ W.T + b``,
  at float32 and float64 (the BLAS may sum a block's products in another order than the
  whole matrix's) and bfloat16 through torch.
* compare and the meters; bad input; the extra memory, measured by tracemalloc.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import cases as C
import fastdiv
from fastdiv import reference as R

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

LOGIT_CASES = [c for c in C.CASES if "logits" in c.arrays.values() and c.takes_backend]


def _results(case, got):
    """A call's results as a dict of float64 arrays (per-row values, or a result object's
    ``case.same_bits`` fields)."""
    if case.check is not None:
        return {k: np.asarray(getattr(got, k), dtype=np.float64) for k in case.same_bits}
    if isinstance(got, tuple):
        return {f: np.asarray(getattr(got, f), dtype=np.float64) for f in got._fields}
    return {"value": np.asarray(got, dtype=np.float64)}


def _cells():
    """Every case x host backend x dtype x V; README's command runs one cell per case
    (float32, the backend and V taken in turn), the slow tier the others."""
    for turn, case in enumerate(LOGIT_CASES):
        backends = [b for b in case.backends if b in C.ALL_HOST]
        for backend in backends:
            for dtype in (np.float32, np.float64, np.float16):
                for i, v in enumerate((1, 51, 1271)):
                    fast = dtype == np.float32 and backend == backends[turn % len(backends)] and i == turn % 3
                    yield pytest.param(case, backend, np.dtype(dtype), v, marks=[] if fast else [pytest.mark.slow],
                                       id=f"{case.id}-{backend}-{np.dtype(dtype).name}-V{v}")


def _identity_heads(case, args, v, dtype, rng, put=lambda a: a):
    """``(stored, lazy)``: the case's arguments with each logits argument ``x`` (non-finite
    entries replaced by 0) as ``x + bias`` and as ``linear(put(x), put(I), put(bias))`` in
    row blocks of 1-8 rows, the bias masking a fifth of the classes (a padded vocabulary)."""
    stored, lazy = dict(args), dict(args)
    for name, kind in case.arrays.items():
        if kind != "logits":
            continue
        x = np.where(np.isfinite(args[name]), args[name], 0).astype(dtype)
        bias = np.zeros(v, dtype=dtype)
        if v > 1:
            bias[rng.random(v) < 0.2] = -np.inf
        stored[name] = x + bias
        lazy[name] = fastdiv.linear(put(x), put(np.eye(v, dtype=dtype)), put(bias), block_rows=int(rng.integers(1, 9)))
    return stored, lazy


@pytest.mark.parametrize("case,backend,dtype,v", list(_cells()))
def test_identity_head_gives_the_same_bits(case, backend, dtype, v, rng):
    lead = (3, C.rows_for(v) // 3 + 1)
    stored, lazy = _identity_heads(case, case.args(rng, lead, v, dtype), v, dtype, rng)
    # numba's block path (1 < V <= 128) shares one shift per block of rows, so a row's last
    # bits depend on the rows it is blocked with (docs/guarantees.rst), as for converted input
    same = (lambda g, w, what: C.assert_rows_close(g, w, dtype, what, kind=case.tol)) \
        if backend == "numba" and 1 < v <= 128 else \
        (lambda g, w, what: np.testing.assert_array_equal(g, w, err_msg=what))
    want = _results(case, case.call(stored, backend, **case.per_row))
    got = _results(case, case.call(lazy, backend, **case.per_row))
    for key in want:
        same(got[key].reshape(-1), want[key].reshape(-1), f"{case.id} [{backend}] {key}")
    if case.per_row:                                   # and the reductions
        for red in ("mean", "sum"):
            same(np.asarray(case.call(lazy, backend, reduction=red)).reshape(-1),
                 np.asarray(case.call(stored, backend, reduction=red)).reshape(-1), red)


def _head(rng, lead, d, v, dtype, bias=True):
    h = rng.standard_normal((*lead, d)).astype(dtype)
    w = (rng.standard_normal((v, d)) / np.sqrt(d) * 3).astype(dtype)
    b = rng.standard_normal(v).astype(dtype) if bias else None
    return h, w, b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", C.COMPILED)
def test_random_heads_within_the_matmul_rounding(backend, dtype, rng):
    n, d, v = 50, 24, 1271
    h, w, b = _head(rng, (n,), d, v, dtype)
    h2, w2, _ = _head(rng, (n,), d, v, dtype, bias=False)
    t = rng.integers(0, v, n)
    t[::7] = -100
    x, z = h @ w.T + b, h2 @ w2.T
    lx, lz = fastdiv.linear(h, w, b, block_rows=7), fastdiv.linear(h2, w2, block_rows=16)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    calls = [
        lambda a, c: fastdiv.logsumexp(a, backend=backend),
        lambda a, c: fastdiv.entropy(a, backend=backend, temperature=1.5),
        lambda a, c: fastdiv.cross_entropy(a, t, backend=backend, label_smoothing=0.1, reduction="none"),
        lambda a, c: fastdiv.cross_entropy(a, t, backend=backend, z_loss=1e-4, softcap=10.0).loss,
        lambda a, c: fastdiv.kl_div(a, c, backend=backend, reduction="none"),
        lambda a, c: fastdiv.kl_div(c, a, backend=backend, temperature=2.0),
        lambda a, c: fastdiv.js_div(a, c, backend=backend, beta=0.3, reduction="none"),
        lambda a, c: fastdiv.evaluate(a, t, reference=c, backend=backend).kl_ref_model,
    ]
    for i, call in enumerate(calls):
        np.testing.assert_allclose(call(lx, lz), call(x, z), **tol, err_msg=f"call {i}")


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", C.ALL_HOST)
def test_vocabulary_tiles_merge_to_the_function_on_the_logits(backend, dtype, library, rng, monkeypatch):
    """lse, entropy, KL, hard-label cross-entropy (and its z_loss path) and evaluate by
    vocabulary tiles of 100 classes: every tile's state merged, a tile whose classes are all
    masked, masked classes elsewhere, a masked and an ignored target, a NaN row; label
    smoothing from the head's class sums (with and without weights, eps = 1); temperature, by
    tiles each scaled after its matmul (``LinearLogits.scaled``), and on a soft-capped head,
    which keeps row blocks."""
    if library == "torch":
        torch = pytest.importorskip("torch")
    n, d, v = 40, 16, 1271
    h, w, b = _head(rng, (n,), d, v, dtype)
    h2, w2, _ = _head(rng, (n,), d, v, dtype, bias=False)
    b[200:300] = -np.inf                                  # the third tile, entirely masked
    b[rng.random(v) < 0.1] = -np.inf
    h[3] = np.nan
    t = rng.integers(0, v, n)
    t[::7] = -100
    t[5] = 250                                            # a masked target: an infinite loss
    x, z = h @ w.T + b, h2 @ w2.T
    wt = np.abs(rng.standard_normal(v)).astype(dtype)
    wt[~np.isfinite(b)] = 0        # masked classes without weight: finite smoothed losses (weighted, they are inf)
    lib = (lambda a: torch.from_numpy(a)) if library == "torch" else (lambda a: a)
    lx = fastdiv.linear(lib(h), lib(w), lib(b), vocab_tile=100)
    lz = fastdiv.linear(lib(h2), lib(w2), vocab_tile=100)
    # tiles of 13 rows (a budget of 13 x 100 elements): several row blocks, the last one short
    monkeypatch.setattr(fastdiv._linear, "BLOCK_BYTES", 13 * 100 * np.dtype(dtype).itemsize)
    assert lx.tiles(np.dtype(dtype).itemsize) == (13, 100) and lx.has_class_sums
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    calls = [
        lambda a, c: fastdiv.logsumexp(a, backend=backend),
        lambda a, c: fastdiv.entropy(a, backend=backend),
        lambda a, c: fastdiv.cross_entropy(a, t, backend=backend, reduction="none"),
        lambda a, c: fastdiv.cross_entropy(a, np.where(t < 0, 7, t), weight=wt, ignore_index=7, backend=backend,
                                           reduction="none"),
        lambda a, c: fastdiv.cross_entropy(a, t, backend=backend, z_loss=1e-4, reduction="none", return_lse=True),
        lambda a, c: fastdiv.kl_div(a, c, backend=backend, reduction="none"),
        lambda a, c: fastdiv.kl_div(c, a, backend=backend, reduction="none"),
        lambda a, c: fastdiv.cross_entropy(a, t, backend=backend, label_smoothing=0.1, reduction="none"),
        lambda a, c: fastdiv.cross_entropy(a, np.where(t < 0, 7, t), weight=wt, ignore_index=7, label_smoothing=0.3,
                                           backend=backend, reduction="none"),
        lambda a, c: fastdiv.cross_entropy(a, np.where(t < 0, 7, t), weight=wt, ignore_index=7, label_smoothing=0.3,
                                           backend=backend, reduction="mean"),
        lambda a, c: fastdiv.cross_entropy(a, t, backend=backend, label_smoothing=1.0, reduction="none"),
        lambda a, c: fastdiv.entropy(a, backend=backend, temperature=1.5),
        lambda a, c: fastdiv.entropy(a, backend=backend, temperature=0.5),
        lambda a, c: fastdiv.kl_div(a, c, backend=backend, temperature=3.0, reduction="none"),
        lambda a, c: fastdiv.kl_div(c, a, backend=backend, temperature=2.0, reduction="mean"),
        lambda a, c: fastdiv.entropy(capped if isinstance(a, fastdiv.LinearLogits) else capped.materialize(),
                                     temperature=1.5, backend=backend),
    ]
    capped = fastdiv.linear(lib(h), lib(w), lib(b), softcap=5.0, vocab_tile=100)
    assert capped.scaled(0.5) is None and lx.scaled(1.0) is lx
    assert fastdiv.execute._tiles("entropy_logits", [capped], (0.5,)) is None     # row blocks
    shape, (scaled,) = fastdiv.execute._tiles("entropy_logits", [lx], (0.5,))
    assert shape == (13, 100) and scaled.scale == 0.5 and scaled.hidden is lx.hidden and not scaled.has_class_sums
    for i, call in enumerate(calls):
        got, want = call(lx, lz), call(x, z)
        for g, wv in zip(got if isinstance(got, tuple) else (got,), want if isinstance(want, tuple) else (want,)):
            g = np.asarray(g.numpy() if hasattr(g, "numpy") else g, dtype=np.float64)
            np.testing.assert_allclose(g, np.asarray(wv, dtype=np.float64), **tol, err_msg=f"call {i}")
    # evaluate by tiles, its rank against the target's logit as one dot product outside its tile
    for ref in (None, "z"):
        got = fastdiv.evaluate(lx, t, topk=(1, 5), reference=lz if ref else None, backend=backend)
        want = fastdiv.evaluate(x, t, topk=(1, 5), reference=z if ref else None, backend=backend)
        keys = ("nll", "lse", "entropy", "target_prob") + (("kl_ref_model", "kl_model_ref") if ref else ())
        for key in keys:
            np.testing.assert_allclose(np.asarray(got[key], np.float64), np.asarray(want[key], np.float64), **tol,
                                       err_msg=key)
        np.testing.assert_array_equal(np.asarray(got.argmax), np.asarray(want.argmax))
        # ranks: equal, but for a class within the matmul's rounding of the target's logit
        diff = np.abs(np.asarray(got.rank) - np.asarray(want.rank))
        assert diff.max() <= (0 if dtype == np.float64 else 1) and (diff == 0).mean() >= 0.9, diff


@pytest.mark.parametrize("library", ["numpy", "torch"])
@pytest.mark.parametrize("backend", C.COMPILED)
def test_kl_of_nearby_heads_by_tiles_keeps_its_relative_accuracy(backend, library, rng, monkeypatch):
    """A head against itself slightly moved (a fine-tune against its base): KL ~ 1e-5, which the
    merged tiles' one pass cancels to (float32: 0.3-8 % off before 2026-12-07).  Each tile's
    KLs are the kernel's, merged by the chain rule: kl_div's accuracy, up to the rounding of
    the heads' own products.  A tile's matmul may round a logit differently in the last bit
    from the whole product's (an ulp, u |x|), which moves a KL near 0 by up to about
    ``2 u max|x| sqrt(2 KL)`` (the KL's gradient in the logits is ``p (log p / q - KL)``):
    3.9e-4 of a KL of 1e-5 through torch.  test_kls_by_tiles_merge_by_the_chain_rule_to_the_
    rows_accuracy checks the merge itself on logits the tiles reproduce bit for bit."""
    if library == "torch":
        torch = pytest.importorskip("torch")
    n, d, v = 24, 32, 3001
    h, w, b = _head(rng, (n,), d, v, np.float32)
    w2 = (w + rng.standard_normal(w.shape) * 3e-3 / np.sqrt(d)).astype(np.float32)
    lib = (lambda a: torch.from_numpy(a)) if library == "torch" else (lambda a: a)
    lx = fastdiv.linear(lib(h), lib(w), lib(b), vocab_tile=500)
    lz = fastdiv.linear(lib(h), lib(w2), lib(b), vocab_tile=500)
    monkeypatch.setattr(fastdiv._linear, "BLOCK_BYTES", 7 * 500 * 4)
    assert lx.tiles(4) == (7, 500)
    x, z = (np.asarray(a.materialize(), dtype=np.float64) for a in (lx, lz))
    want_xz, want_zx = R.kl_rows(x, z), R.kl_rows(z, x)
    assert 1e-7 < np.median(want_xz) < 1e-4
    top = np.maximum(np.abs(x).max(axis=1), np.abs(z).max(axis=1))

    def check(got, want):
        slack = 4 * np.finfo(np.float32).eps * top * np.sqrt(2 * want)
        err = np.abs(np.asarray(got) - want)
        assert np.all(err <= 1e-4 * want + slack), (err / want).max()

    check(fastdiv.kl_div(lx, lz, reduction="none", backend=backend), want_xz)
    check(fastdiv.kl_div(lz, lx, reduction="none", backend=backend), want_zx)
    res = fastdiv.evaluate(lx, np.arange(n), reference=lz, backend=backend)
    check(res.kl_model_ref, want_xz)
    check(res.kl_ref_model, want_zx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", C.COMPILED)
def test_kls_by_tiles_merge_by_the_chain_rule_to_the_rows_accuracy(backend, dtype, rng, monkeypatch):
    """By vocabulary tiles each tile's evaluate state carries its own KLs (the kernel sums a
    tile's row pair again while in cache where its one pass cancelled), merged by the chain
    rule (fastdiv._state.chain_columns), and no row is computed again.  Through identity
    heads, which reproduce the logits bit for bit, the tiles' merged KLs of rows N(0, sigma)
    apart (and of rows whose largest class differs, where c from the sums alone was 8e-6 off
    at KL ~1e-4 on numba) keep kl_div's relative accuracy on the whole rows down to KL ~1e-6;
    below, the chain rule's coarse term carries each tile's c = lse(z) - lse(x) to ~1e-8
    (float32: the rounding of the shifted logits in its small part), an absolute ~1e-13 of the
    KL (2e-5 of a KL of 4e-9; a tile's matmul rounding a logit by an ulp moves such a KL by
    1e-2).  The tiles' shape is (7, 500), so every row spans 7 tiles."""
    n, v = 40, 3001
    # float32: the one pass of numba's kl_div is ~1e-5 off on the rows 0.3 apart (KL ~0.04)
    tol = dict(rtol=3e-5, atol=1e-12) if dtype == np.float32 else dict(rtol=1e-12, atol=2e-20)
    x = (rng.standard_normal((n, v)) * 2).astype(dtype)
    sigma = np.repeat([1e-4, 1e-3, 1e-2, 3e-1], n // 4)[:, None]
    z = (x + rng.standard_normal((n, v)) * sigma).astype(dtype)
    x[-4:, 7], z[-4:, 2900] = 12.0, 12.0          # the largest classes apart
    eye = np.eye(v, dtype=dtype)
    monkeypatch.setattr(fastdiv._linear, "BLOCK_BYTES", 7 * 500 * np.dtype(dtype).itemsize)
    lx, lz = fastdiv.linear(x, eye, vocab_tile=500), fastdiv.linear(z, eye, vocab_tile=500)
    assert lx.tiles(np.dtype(dtype).itemsize) == (7, 500)
    x64, z64 = x.astype(np.float64), z.astype(np.float64)
    want_xz, want_zx = R.kl_rows(x64, z64), R.kl_rows(z64, x64)
    assert want_xz.min() < 1e-7 and want_xz.max() > 1e-2
    res = fastdiv.evaluate(lx, np.arange(n), reference=lz, backend=backend)
    np.testing.assert_allclose(res.kl_model_ref, want_xz, **tol)
    np.testing.assert_allclose(res.kl_ref_model, want_zx, **tol)
    np.testing.assert_allclose(fastdiv.kl_div(lx, lz, reduction="none", backend=backend), want_xz, **tol)


@pytest.mark.parametrize("dtypes", [("bfloat16",) * 3, ("float16", "float32", "float32"),
                                    ("float32", "float32", "float16")])
def test_temperature_tiles_of_16_bit_and_mixed_heads(dtypes, rng):
    """Temperature by tiles scales each tile after its matmul, in the compute dtype, as the
    kernels scale stored logits: 16-bit and mixed-dtype numpy heads (a power-of-two T and
    not) give the function on their materialized logits within float32's rounding."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dt = [np.dtype(ml_dtypes.bfloat16) if d == "bfloat16" else np.dtype(d) for d in dtypes]
    h, w, b = _head(rng, (37,), 64, 1000, np.float32)
    h, w, b = h.astype(dt[0]), (w * np.float32(0.3)).astype(dt[1]), b.astype(dt[2])
    h2 = (h.astype(np.float32) + rng.standard_normal(h.shape).astype(np.float32)).astype(dt[0])
    lx, lz = fastdiv.linear(h, w, b, vocab_tile=128), fastdiv.linear(h2, w, vocab_tile=128)
    x, z = lx.materialize(), lz.materialize()
    for temperature in (2.0, 3.0):
        for backend in C.COMPILED:
            for got, want in ((fastdiv.entropy(lx, temperature=temperature, backend=backend),
                               fastdiv.entropy(x, temperature=temperature, backend=backend)),
                              (fastdiv.kl_div(lx, lz, temperature=temperature, reduction="none", backend=backend),
                               fastdiv.kl_div(x, z, temperature=temperature, reduction="none", backend=backend))):
                np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64),
                                           rtol=1e-5, atol=5e-6, err_msg=f"T={temperature} {backend}")


def _blas_threads():
    """The thread count of each BLAS library loaded now, by path."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    return {lib["filepath"]: lib["num_threads"] for lib in threadpoolctl.threadpool_info() if lib["user_api"] == "blas"}


def _restored(before):
    now = _blas_threads()
    return all(now[path] == count for path, count in before.items())


@pytest.mark.parametrize("backend", C.COMPILED)
def test_numpy_heads_by_shares_match_one_block_at_a_time(backend, rng, monkeypatch):
    """numpy heads on two threads: the tiles' rows in one share per thread, each with its own
    single-threaded matmuls (``LinearLogits.shares``), against the same call one row block at
    a time with the BLAS threaded (no threadpoolctl); the BLAS's thread count is restored
    after each call, after a failing one, and after calls from several threads at once."""
    before = _blas_threads()
    n, d, v = 61, 16, 1271
    h, w, b = _head(rng, (n,), d, v, np.float32)
    h2, w2, _ = _head(rng, (n,), d, v, np.float32, bias=False)
    t = rng.integers(0, v, n)
    t[::5] = -100
    monkeypatch.setattr(fastdiv._linear, "BLOCK_BYTES", 16 * 300 * 4)       # tiles of 16 x 300
    lx, lz = fastdiv.linear(h, w, b, vocab_tile=300), fastdiv.linear(h2, w2, vocab_tile=300)
    assert fastdiv.execute._share_shape(lx.tiles(4), n, 2) == (8, 300)      # 8 blocks, 4 per thread
    calls = {
        "lse": lambda: fastdiv.logsumexp(lx, backend=backend),
        "entropy": lambda: fastdiv.entropy(lx, backend=backend),
        "ce": lambda: fastdiv.cross_entropy(lx, t, backend=backend, reduction="none"),
        "smoothed": lambda: fastdiv.cross_entropy(lx, t, label_smoothing=0.2, backend=backend, reduction="none"),
        "kl": lambda: fastdiv.kl_div(lx, lz, backend=backend, reduction="none"),
        "evaluate": lambda: fastdiv.evaluate(lx, t, topk=(1, 5), reference=lz, backend=backend),
    }
    fields = ("nll", "lse", "entropy", "target_prob", "kl_ref_model", "kl_model_ref", "rank", "argmax")
    seen = []
    real = fastdiv.execute.merge_tiles
    with fastdiv.threads(2), monkeypatch.context() as m:
        m.setattr(fastdiv.execute, "merge_tiles", lambda *a, **kw: seen.append(a[5]) or real(*a, **kw))
        shared = {k: f() for k, f in calls.items()}
        assert seen and set(seen) == {2} and _restored(before)
        seen.clear()
        m.setattr(fastdiv._blas, "_controller", [None])                    # as without threadpoolctl
        alone = {k: f() for k, f in calls.items()}
        assert set(seen) == {1}
    # the two ways multiply by differently threaded BLAS calls, which may round a float32 logit
    # differently in the last bit (OpenBLAS on an AMD EPYC Zen 3 on 2026-12-07 did); entropy's
    # lse - sum p x then moves by ~eps |x| (1.8e-6 relative seen), so float32's 1e-5
    for k in calls:
        pairs = [(k, shared[k], alone[k])] if k != "evaluate" else \
            [(f, shared[k][f], alone[k][f]) for f in fields]
        for name, a, b_ in pairs:
            np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b_, np.float64), rtol=1e-5, atol=1e-5,
                                       err_msg=name)

    def fail(*args):
        raise RuntimeError("kernel failed")
    with fastdiv.threads(2):
        with monkeypatch.context() as m:
            m.setattr(fastdiv._registry, "kernel", lambda *a: fail)
            with pytest.raises(RuntimeError, match="kernel failed"):
                fastdiv.cross_entropy(lx, t, backend=backend)
        assert _restored(before)
        # calls from several threads at once share one limit: the last to leave restores it
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as ex:
            got = list(ex.map(lambda _: fastdiv.cross_entropy(lx, t, backend=backend, reduction="none"), range(8)))
        assert _restored(before) and fastdiv._blas._depth == 0
    for g in got:
        np.testing.assert_allclose(g, shared["ce"], rtol=1e-6, atol=1e-6)


def test_softcap_of_the_head_is_the_softcap_of_its_logits(rng):
    h, w, b = _head(rng, (40,), 16, 300, np.float32)
    t = rng.integers(0, 300, 40)
    lazy = fastdiv.linear(h * 20, w, b, softcap=5.0, block_rows=9)
    x = h * 20 @ w.T + b
    capped = fastdiv.execute.apply_softcap(x, 5.0, np.dtype(np.float32))
    np.testing.assert_array_equal(lazy.materialize(), capped)
    # the loss reads the head in blocks of 9 rows, materialize() in one of 40: OpenBLAS may
    # round the two products differently in the last bit (it picks its kernels by shape and
    # CPU; on an AMD EPYC Zen 3 on 2026-12-07 it did, 1e-7 relative)
    np.testing.assert_allclose(fastdiv.cross_entropy(lazy, t, reduction="none"),
                               fastdiv.cross_entropy(capped, t, reduction="none"), rtol=1e-6, atol=0)
    # the same numbers as cross_entropy's own softcap (another kernel: rounding apart)
    np.testing.assert_allclose(fastdiv.cross_entropy(lazy, t, reduction="none"),
                               fastdiv.cross_entropy(x, t, softcap=5.0, reduction="none"), rtol=1e-6)


def test_torch_bfloat16_head_matches_its_materialized_logits(rng):
    torch = pytest.importorskip("torch")
    pytest.importorskip("ml_dtypes")
    h, w, b = (torch.from_numpy(a).bfloat16() for a in _head(rng, (3, 17), 32, 999, np.float32))
    t = torch.from_numpy(rng.integers(0, 999, (3, 17)))
    x = torch.nn.functional.linear(h, w, b)                # bfloat16 logits, as a model gives them
    lazy = fastdiv.linear(h, w, b, block_rows=5)
    assert lazy.dtype == fastdiv._checks._bfloat16() and lazy.shape == (3, 17, 999)
    for fn in (lambda a: fastdiv.cross_entropy(a, t, reduction="none"), lambda a: fastdiv.entropy(a),
               lambda a: fastdiv.logsumexp(a)):
        got, want = fn(lazy), fn(x)
        assert isinstance(got, torch.Tensor) and got.shape == (3, 17)
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    loss = fastdiv.cross_entropy(lazy, t)
    ref = torch.nn.functional.cross_entropy(x.float().reshape(-1, 999), t.reshape(-1))
    assert abs(float(loss) - float(ref)) < 1e-5 * abs(float(ref))
    # by vocabulary tiles (every row x 300 classes): each tile's bfloat16 logits, merged states
    tiled = fastdiv.linear(h, w, b, vocab_tile=300)
    assert tiled.tiles(4) == (51, 300)
    for fn in (lambda a: fastdiv.cross_entropy(a, t, reduction="none"), lambda a: fastdiv.logsumexp(a),
               lambda a: fastdiv.cross_entropy(a, t, label_smoothing=0.1, reduction="none"),
               lambda a: fastdiv.evaluate(a, t, topk=(1, 5)).nll):
        torch.testing.assert_close(fn(tiled), fn(x), rtol=2e-3, atol=1e-3)
    ranks = [np.asarray(fastdiv.evaluate(a, t, topk=(1, 5)).rank) for a in (tiled, x)]
    assert np.mean(ranks[0] == ranks[1]) > 0.95, ranks


def test_compare_and_meters_take_heads(rng):
    n, d, v = 45, 16, 500
    h, w, b = _head(rng, (n,), d, v, np.float64)
    h2 = h + 0.05 * rng.standard_normal(h.shape)
    t = rng.integers(0, v, n)
    t[5] = -100
    base, model = fastdiv.linear(h, w, b, block_rows=8), fastdiv.linear(h2, w, b, block_rows=8)
    x, z = h @ w.T + b, h2 @ w.T + b
    got, want = fastdiv.compare(base, model, t).to_dict(), fastdiv.compare(x, z, t).to_dict()

    def close(a, r, path=""):
        if isinstance(a, dict):
            for k in a:
                close(a[k], r[k], f"{path}.{k}")
        elif isinstance(a, list):
            for i, (p, q) in enumerate(zip(a, r)):
                close(p, q, f"{path}[{i}]")
        elif a is not None:
            np.testing.assert_allclose(a, r, rtol=1e-10, atol=1e-13, err_msg=path)

    close(got, want)
    assert fastdiv.compare(base, z).to_dict()["rows"] == n
    comp = fastdiv.meters.Comparator()
    for r0 in range(0, n, 20):
        comp.update(fastdiv.linear(h[r0:r0 + 20], w, b), fastdiv.linear(h2[r0:r0 + 20], w, b), t[r0:r0 + 20])
    close(comp.compute().to_dict(), want)
    meter = fastdiv.meters.Evaluator(topk=(1, 5))
    meter.update(base, t, reference=model)
    ev = fastdiv.evaluate(x, t, topk=(1, 5), reference=z)
    for key, value in meter.compute().items():
        np.testing.assert_allclose(value, ev[key], rtol=1e-12, err_msg=key)
    ce = fastdiv.meters.CrossEntropyMeter(label_smoothing=0.1)
    ce.update(base, t)
    np.testing.assert_allclose(ce.compute(), fastdiv.cross_entropy(x, t, label_smoothing=0.1), rtol=1e-12)


def test_no_rows_and_one_class(rng):
    h, w, b = _head(rng, (0,), 8, 30, np.float32)
    assert fastdiv.logsumexp(fastdiv.linear(h, w, b)).shape == (0,)
    with pytest.warns(RuntimeWarning, match="empty batch"):
        assert np.isnan(fastdiv.cross_entropy(fastdiv.linear(h, w, b), np.zeros(0, dtype=np.int64)))
    h, w, b = _head(rng, (5,), 8, 1, np.float64)
    np.testing.assert_array_equal(fastdiv.entropy(fastdiv.linear(h, w, b)), np.zeros(5))


BAD = [
    (lambda h, w, b: fastdiv.linear(h, w[None]), ValueError, "weight must be 2-D"),
    (lambda h, w, b: fastdiv.linear(h[:, :-1], w), ValueError, "hidden must have D = 8"),
    (lambda h, w, b: fastdiv.linear(h, w, b[:-1]), ValueError, r"bias must have shape \(V,\) = \(30,\)"),
    (lambda h, w, b: fastdiv.linear(h, w[:0]), ValueError, "weight has no rows"),
    (lambda h, w, b: fastdiv.linear(h.astype(np.int32), w), TypeError, "hidden must be a floating-point"),
    (lambda h, w, b: fastdiv.linear(h, w, softcap=-1.0), ValueError, "softcap"),
    (lambda h, w, b: fastdiv.linear(h, w, block_rows=0), ValueError, "block_rows"),
    (lambda h, w, b: fastdiv.linear(h, w, vocab_tile=0), ValueError, "vocab_tile must be None or a positive integer, got 0"),
    (lambda h, w, b: fastdiv.linear(h, w, vocab_tile=True), ValueError, "vocab_tile must be None .*got True"),
    (lambda h, w, b: fastdiv.linear(h, w, vocab_tile=2.5), ValueError, "vocab_tile must be None .*got 2.5"),
    (lambda h, w, b: fastdiv.entropy(fastdiv.linear(h, w), inputs="probs"), ValueError, "p is fastdiv.linear"),
    (lambda h, w, b: fastdiv.logsumexp(fastdiv.linear(h, w), backend="cuda"), fastdiv.BackendUnavailable,
     "x is fastdiv.linear logits"),
    (lambda h, w, b: fastdiv.kl_div(fastdiv.linear(h, w), np.zeros((6, 31))), ValueError, "same shape"),
    (lambda h, w, b: fastdiv.cross_entropy(fastdiv.linear(h, w), np.full(6, 30)), ValueError, "target"),
]


@pytest.mark.parametrize("call,exc,match", BAD, ids=[m for _, _, m in BAD])
def test_bad_input_names_the_argument(call, exc, match, rng):
    h, w, b = _head(rng, (6,), 8, 30, np.float32)
    with pytest.raises(exc, match=match):
        call(h, w, b)


def test_mixed_libraries_are_refused(rng):
    torch = pytest.importorskip("torch")
    h, w, b = _head(rng, (6,), 8, 30, np.float32)
    with pytest.raises(TypeError, match="hidden is a numpy array but weight is a torch"):
        fastdiv.linear(h, torch.from_numpy(w))
    with pytest.raises(TypeError, match="same library"):
        fastdiv.linear(torch.from_numpy(h), torch.from_numpy(w), b)
    with pytest.raises(TypeError, match="weight is torch.bfloat16 but hidden is torch.float32"):
        fastdiv.linear(torch.from_numpy(h), torch.from_numpy(w).bfloat16())


def test_extra_memory_is_a_tenth_of_the_logits(rng):
    """The issue's shape, N = 2048, D = 256, V = 50257 in float32: logits of 412 MB; the
    allocations while cross-entropy runs on the head stay <= 10 % of that."""
    n, d, v = 2048, 256, 50257
    h, w, b = _head(rng, (n,), d, v, np.float32)
    t = rng.integers(0, v, n)
    lazy = fastdiv.linear(h, w, b)
    fastdiv.cross_entropy(lazy, t)                      # compiles the kernels outside the trace
    tracemalloc.start()
    try:
        fastdiv.cross_entropy(lazy, t)                  # by vocabulary tiles
        fastdiv.cross_entropy(lazy, t, label_smoothing=0.1)
        fastdiv.evaluate(lazy, t, topk=(1, 5))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 0.10 * n * v * 4, peak


def test_cli_eval_and_compare_take_a_head(tmp_path, capsys, rng):
    import json

    from fastdiv import cli

    h, w, b = _head(rng, (3, 40), 16, 300, np.float32)
    t = rng.integers(0, 300, (3, 40))
    x = h @ w.T + b
    base = x + rng.standard_normal(x.shape).astype(np.float32) * 0.1
    files = {}
    for name, a in dict(h=h, w=w, b=b, t=t, x=x, base=base).items():
        files[name] = str(tmp_path / f"{name}.npy")
        np.save(files[name], a)
    head = ["--hidden", files["h"], "--lm-head", files["w"], "--lm-head-bias", files["b"]]

    def run(*argv):
        out = tmp_path / "out.json"
        assert cli.main([*argv, "--json", str(out), "--chunk-mb", "0.05"]) == 0, capsys.readouterr().err
        return json.loads(out.read_text())

    got = run("eval", *head, "--targets", files["t"], "--reference", files["base"])["metrics"]
    want = run("eval", "--logits", files["x"], "--targets", files["t"], "--reference", files["base"])["metrics"]
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, err_msg=k)
    got = run("compare", "--base", files["base"], *head, "--targets", files["t"])
    want = run("compare", "--base", files["base"], "--logits", files["x"], "--targets", files["t"])
    np.testing.assert_allclose(got["kld"]["mean"], want["kld"]["mean"], rtol=1e-5)
    np.testing.assert_allclose(got["ppl"]["ratio"], want["ppl"]["ratio"], rtol=1e-5)
    ref = str(tmp_path / "ref.safetensors")
    assert cli.main(["reference", "--logits", files["base"], "--targets", files["t"], "--topk", "8", "--out", ref]) == 0
    got = run("compare", "--base", ref, *head)
    want = run("compare", "--base", ref, "--logits", files["x"])
    np.testing.assert_allclose(got["kld"]["mean"], want["kld"]["mean"], rtol=1e-5)
    capsys.readouterr()

    assert cli.main(["eval", "--logits", files["x"], *head, "--targets", files["t"]]) == 2
    assert "either --logits or --hidden" in capsys.readouterr().err
    assert cli.main(["compare", "--base", files["base"], "--hidden", files["h"]]) == 2
    assert "--hidden and --lm-head go together" in capsys.readouterr().err
    np.save(files["w"], w[:, :-1])
    assert cli.main(["eval", *head, "--targets", files["t"]]) == 1
    assert "hidden must have D = 15" in capsys.readouterr().err


# --------------------------------------------------------------------------- device heads (cuda backend)

DEVICE_CASES = [c for c in LOGIT_CASES if "cuda" in c.backends]
needs_cuda = [pytest.mark.cuda, pytest.mark.skipif(not C.CUDA, reason=str(C._registry.unavailable_reason("cuda")))]


def _host(a):
    """A device result (numba device array) as numpy; anything else unchanged."""
    return a.copy_to_host() if hasattr(a, "copy_to_host") else a


def _device_cells():
    """Every cuda case of the table once, in float32 at V = 51 (the simulator's tile kernel;
    ~5-10 s a cell there): every fourth in README's tier, the others in the slow tier."""
    for turn, case in enumerate(DEVICE_CASES):
        yield pytest.param(case, marks=needs_cuda + ([] if turn % 4 == 0 else [pytest.mark.slow]), id=case.id)


@pytest.mark.parametrize("case", list(_device_cells()))
def test_device_identity_head_gives_the_same_bits(case, rng, monkeypatch):
    """As on the host: ``linear(x, I, bias)`` of numba device arrays (row blocks of 1-8 rows,
    the cuda kernels reading each block from the device buffer) gives the cuda backend's
    values on ``x + bias``, per row and reduced."""
    from numba import cuda

    C.small_cuda_blocks(monkeypatch.setattr)
    v, dtype = 51, np.dtype(np.float32)
    stored, lazy = _identity_heads(case, case.args(rng, (C.CUDA_ROWS,), v, dtype), v, dtype, rng, cuda.to_device)
    want = _results(case, case.call(stored, "cuda", **case.per_row))
    got = case.call(lazy, "cuda", **case.per_row)
    got = _results(case, type(got)(*map(_host, got)) if isinstance(got, tuple) else _host(got)) \
        if case.check is None else {k: np.asarray(_host(getattr(got, k)), dtype=np.float64) for k in case.same_bits}
    # a block of fewer rows may share a tile's lanes differently (the sums' order): the same
    # values within the case's tolerance, as numba's block path on the host
    for key in want:
        C.assert_rows_close(got[key].reshape(-1), want[key].reshape(-1), dtype, f"{case.id} [cuda] {key}",
                            kind=case.tol)
    if case.per_row:
        for red in ("mean", "sum"):
            C.assert_rows_close(np.asarray(_host(case.call(lazy, "cuda", reduction=red)), dtype=np.float64).reshape(-1),
                                np.asarray(case.call(stored, "cuda", reduction=red), dtype=np.float64).reshape(-1),
                                dtype, red, kind=case.tol)


@pytest.mark.cuda
@pytest.mark.skipif(not C.CUDA, reason=str(C._registry.unavailable_reason("cuda")))
def test_device_heads_match_their_materialized_logits(rng, monkeypatch):
    """Random numba device heads: results stay on the device and equal the cuda backend on
    the materialized logits (the same kernels on the same values, in other blocks); the numba matmul
    against numpy's within float32 rounding; a soft-capped head, a reference head, a
    top-k student, no rows."""
    from numba import cuda

    C.small_cuda_blocks(monkeypatch.setattr)
    n, d, v = 10, 12, 40
    h, w, b = _head(rng, (2, n // 2), d, v, np.float32)
    h2, w2, _ = _head(rng, (2, n // 2), d, v, np.float32, bias=False)
    t = rng.integers(0, v, (2, n // 2))
    t[0, 1] = -100
    dev = [cuda.to_device(a) for a in (h, w, b, h2, w2)]
    lx = fastdiv.linear(dev[0], dev[1], dev[2], block_rows=3)
    lz = fastdiv.linear(dev[3], dev[4], block_rows=4)
    x, z = _host(lx.materialize()), _host(lz.materialize())
    assert x.shape == (2, n // 2, v) and lx.shape == x.shape
    np.testing.assert_allclose(x, h @ w.T + b, rtol=1e-5, atol=1e-5)
    calls = [
        lambda a, c: fastdiv.logsumexp(a),
        lambda a, c: fastdiv.entropy(a, temperature=1.5, reduction="none"),
        lambda a, c: fastdiv.cross_entropy(a, t, label_smoothing=0.1, reduction="none"),
        lambda a, c: fastdiv.cross_entropy(a, t, z_loss=1e-4, softcap=10.0, return_lse=True).lse,
        lambda a, c: fastdiv.kl_div(a, c, reduction="none"),
        lambda a, c: fastdiv.js_div(a, c, beta=0.3, reduction="none"),
        lambda a, c: fastdiv.evaluate(a, t, reference=c, topk=(1, 5)).kl_ref_model,
        lambda a, c: fastdiv.topk_kl_div(np.tile(np.arange(3), (2, n // 2, 1)), np.full((2, n // 2, 3), -1.5), a,
                                         reduction="none"),
    ]
    for i, call in enumerate(calls):
        got = call(lx, lz)
        assert hasattr(got, "copy_to_host"), f"call {i}: the result should stay on the device"
        np.testing.assert_allclose(got.copy_to_host(), _host(call(cuda.to_device(x), cuda.to_device(z))),
                                   rtol=2e-6, atol=1e-6, err_msg=f"call {i}")
    capped = fastdiv.linear(dev[0], dev[1], dev[2], softcap=3.0, block_rows=4)
    np.testing.assert_allclose(_host(capped.materialize()), 3.0 * np.tanh(x / 3.0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_host(fastdiv.entropy(capped, reduction="none")),
                               _host(fastdiv.entropy(cuda.to_device(3.0 * np.tanh(x.astype(np.float64) / 3.0)
                                                                    .astype(np.float32)), reduction="none")),
                               rtol=2e-6, atol=1e-6)
    empty = fastdiv.linear(cuda.to_device(h[:0]), dev[1])
    assert _host(fastdiv.logsumexp(empty)).shape == (0, n // 2)


@pytest.mark.cuda
@pytest.mark.skipif(not C.CUDA, reason=str(C._registry.unavailable_reason("cuda")))
def test_device_heads_refuse_what_they_cannot_do(rng):
    from numba import cuda

    h, w, b = _head(rng, (6,), 8, 30, np.float32)
    dh, dw = cuda.to_device(h), cuda.to_device(w)
    with pytest.raises(TypeError, match="hidden is a CUDA numba array but weight is a numpy.ndarray"):
        fastdiv.linear(dh, w)
    with pytest.raises(TypeError, match="hidden is a numpy array but bias is a .* on the device"):
        fastdiv.linear(h, w, cuda.to_device(b))
    with pytest.raises(TypeError, match="weight is float64 but hidden is float32"):
        fastdiv.linear(dh, cuda.to_device(w.astype(np.float64)))
    with pytest.raises(TypeError, match="numba heads compute float32 or float64"):
        fastdiv.linear(cuda.to_device(h.astype(np.float16)), cuda.to_device(w.astype(np.float16)))
    with pytest.raises(ValueError, match="hidden must be C-contiguous"):
        fastdiv.linear(cuda.to_device(np.asfortranarray(np.stack([h, h], axis=1))), dw)
    head = fastdiv.linear(dh, dw)
    with pytest.raises(TypeError, match="x is a CUDA array; use backend='cuda'"):
        fastdiv.logsumexp(head, backend="numba")
    with pytest.raises(fastdiv.BackendUnavailable, match="p is fastdiv.linear logits of host arrays"):
        fastdiv.kl_div(fastdiv.linear(h, w), head)
    with pytest.raises(TypeError, match="live on the device"):
        head.compute(0, 6, np.float32)


@pytest.mark.cuda
@pytest.mark.skipif(not C.CUDA, reason=str(C._registry.unavailable_reason("cuda")))
def test_device_vocabulary_tiles_merge_to_the_function_on_the_logits(rng, monkeypatch):
    """Device heads by vocabulary tiles (lse, entropy, KL both ways, hard-label cross-entropy
    with weights): tiles of 5 rows x 64 classes, a tile whose classes are all masked, a NaN
    row, a masked and an ignored target; the options that keep row blocks (smoothing,
    temperature, z_loss) beside them.  Against the cuda backend on the materialized logits."""
    from numba import cuda

    from fastdiv import execute

    C.small_cuda_blocks(monkeypatch.setattr)
    n, d, v = 12, 8, 300
    h, w, b = _head(rng, (n,), d, v, np.float32)
    h2, w2, _ = _head(rng, (n,), d, v, np.float32, bias=False)
    b[64:128] = -np.inf                                   # the second tile, entirely masked
    h[4] = np.nan
    t = rng.integers(0, v, n)
    t[::5] = -100
    t[3] = 100                                            # a masked target: an infinite loss
    wt = np.abs(rng.standard_normal(v)).astype(np.float32)
    lx = fastdiv.linear(*(cuda.to_device(a) for a in (h, w, b)), vocab_tile=64)
    lz = fastdiv.linear(*(cuda.to_device(a) for a in (h2, w2)), vocab_tile=64)
    monkeypatch.setattr(fastdiv._linear, "BLOCK_BYTES", 5 * 64 * 4)
    assert lx.tiles(4) == (5, 64)
    x, z = (cuda.to_device(_host(a.materialize())) for a in (lx, lz))
    merges = []
    monkeypatch.setattr(execute, "merge_tiles", lambda *a, _m=execute.merge_tiles: merges.append(1) or _m(*a))
    tiled = [
        lambda a, c: fastdiv.logsumexp(a),
        lambda a, c: fastdiv.entropy(a, reduction="none"),
        lambda a, c: fastdiv.cross_entropy(a, t, reduction="none"),
        lambda a, c: fastdiv.cross_entropy(a, np.where(t < 0, 7, t), weight=wt, ignore_index=7),
        lambda a, c: fastdiv.kl_div(a, c, reduction="none"),
        lambda a, c: fastdiv.kl_div(c, a),
    ]
    blocks = [
        lambda a, c: fastdiv.cross_entropy(a, t, label_smoothing=0.1, reduction="none"),
        lambda a, c: fastdiv.entropy(a, temperature=1.5, reduction="none"),
        lambda a, c: fastdiv.cross_entropy(a, t, z_loss=1e-4, reduction="none").loss,
    ]
    for i, call in enumerate(tiled + blocks):
        before = len(merges)
        got, want = _host(call(lx, lz)), _host(call(x, z))
        np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=2e-6, atol=1e-6,
                                   err_msg=f"call {i}")
        assert (len(merges) > before) == (i < len(tiled)), f"call {i}: tiles {'not ' if i < len(tiled) else ''}used"


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available() or not C.CUDA or C.SIM:
        pytest.skip("needs torch with a CUDA device (the GPU issue's run)")
    return torch


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_cuda_heads_match_their_materialized_logits(dtype, rng):
    """On a GPU: torch CUDA heads (float32 and bfloat16, tiles and row blocks) against the cuda
    backend on ``F.linear``'s logits; results stay torch CUDA tensors."""
    torch = _torch_cuda()
    tdt = getattr(torch, dtype)
    h, w, b = (torch.from_numpy(a).to("cuda", tdt) for a in _head(rng, (3, 70), 64, 5000, np.float32))
    w2 = (w.float() + 0.1 * torch.randn_like(w.float())).to(tdt)
    t = torch.from_numpy(rng.integers(0, 5000, (3, 70))).cuda()
    x, z = torch.nn.functional.linear(h, w, b), torch.nn.functional.linear(h, w2)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=2e-3, atol=1e-3)
    for kw in (dict(vocab_tile=1000), dict(block_rows=50)):
        lx, lz = fastdiv.linear(h, w, b, **kw), fastdiv.linear(h, w2, **kw)
        for i, fn in enumerate((lambda a, c: fastdiv.cross_entropy(a, t, reduction="none"),
                                lambda a, c: fastdiv.logsumexp(a),
                                lambda a, c: fastdiv.entropy(a, reduction="none"),
                                lambda a, c: fastdiv.kl_div(a, c, reduction="none"),
                                lambda a, c: fastdiv.js_div(a, c, reduction="none"),
                                lambda a, c: fastdiv.cross_entropy(a, t, label_smoothing=0.1),
                                # temperature: row blocks on the device, each scaled by the kernel
                                lambda a, c: fastdiv.kl_div(a, c, temperature=2.0, reduction="none"),
                                lambda a, c: fastdiv.entropy(a, temperature=1.5, reduction="none"))):
            got, want = fn(lx, lz), fn(x, z)
            assert isinstance(got, torch.Tensor) and got.is_cuda, (kw, i)
            torch.testing.assert_close(got.double(), want.double(), **tol, msg=f"{kw} call {i}")
        # evaluate and the with-options path: a bfloat16 head's blocks widened to float32 (the
        # cuda evaluate kernel reads no bfloat16), against the float32 copy of its logits
        for key in ("nll", "entropy", "kl_ref_model"):
            got = fastdiv.evaluate(lx, t, topk=(1, 5), reference=lz)[key]
            want = fastdiv.evaluate(x.float(), t, topk=(1, 5), reference=z.float())[key]
            torch.testing.assert_close(got.double(), want.double(), **tol, msg=f"{kw} evaluate {key}")
        got = fastdiv.cross_entropy(lx, t, z_loss=1e-4, return_lse=True)
        want = fastdiv.cross_entropy(x.float(), t, z_loss=1e-4, return_lse=True)
        torch.testing.assert_close(got.lse.double(), want.lse.double(), **tol, msg=f"{kw} return_lse")
