"""Liger-Kernel's cross-entropy and JSD cases, on every backend.

Inputs: linkedin/Liger-Kernel at commit ead96b618e5c67bddc6a6e9bcb99bfe6b5ab661c,
``test/transformers/test_cross_entropy.py`` (CE) and ``test/transformers/test_jsd.py`` (JSD): the
same shapes' class counts, options (reductions, ignore_index, label smoothing, softcap, z-loss,
class weights, beta) and dtypes with Liger's (atol, rtol); values drawn again from a seeded
generator.  Liger's batches are B*T rows of up to 32000 classes; here 16 rows of each class
count run (2 rows of at most 64 classes in the simulated GPU).  Expected values: torch's
semantics (Liger's own reference modules ``CrossEntropyWithZLoss`` and ``JSD``) in float64, and
torch itself when installed.  Gradient checks have no counterpart: fastdiv computes values.
Deliberate differences (z-loss reported apart from the loss, no labels / ignore_index in js_div,
argmax of ignored rows, ...) are in docs/peers.rst and tested in test_differences.py.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastdiv

from _peer import (SIM, backend, close, f64, log_softmax, np_dtype, sample, torch_cross_entropy,  # noqa: F401
                   with_weight)

CE = "Liger-Kernel test/transformers/test_cross_entropy.py @ ead96b618e5c67bddc6a6e9bcb99bfe6b5ab661c"
JSD = "Liger-Kernel test/transformers/test_jsd.py @ ead96b618e5c67bddc6a6e9bcb99bfe6b5ab661c"

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

BIG = [(2, 4096, 32000), (3, 423, 32000)]                     # (B, T, V) of most CE tests
DTYPES = [("bfloat16", 1e-8, 5e-2), ("float32", 1e-8, 1e-6)]   # (dtype, atol, rtol)


def rows_v(backend, b, t, v):
    """Rows and classes actually run (see the module docstring)."""
    if backend == "cuda" and SIM:
        return 2, min(v, 64)
    return min(b * t, 16), v


def draw(rng, backend, shape, dtype, scale=1.0):
    n, v = rows_v(backend, *shape)
    x = (rng.standard_normal((n, v)) * scale).astype(np_dtype(dtype))
    return x, rng.integers(0, v, n)


def ignore_some(rng, t, ignore_index):
    """Liger's "random number of elements as ignore_index": between 1 and rows/2 of them."""
    t = t.copy()
    k = int(rng.integers(1, max(2, t.size // 2)))
    t[rng.permutation(t.size)[:k]] = ignore_index
    return t


def reference(x, t, *, reduction="mean", ignore_index=-100, label_smoothing=0.0, weight=None, softcap=None,
              z=0.0):
    """Liger's CrossEntropyWithZLoss in float64: (total loss, z-loss) with the z-loss
    ``z lse^2`` on the non-ignored rows, "mean" over their number; softcap first."""
    x = f64(x)
    if softcap:
        x = softcap * np.tanh(x / softcap)
    ce = torch_cross_entropy(x, t, reduction=reduction, ignore_index=ignore_index, label_smoothing=label_smoothing,
                             weight=None if weight is None else f64(weight))
    m = x.max(axis=1, keepdims=True)
    lse = (m + np.log(np.sum(np.exp(x - m), axis=1, keepdims=True)))[:, 0]
    keep = t != ignore_index
    zl = np.where(keep, z * lse * lse, 0.0)
    zl = {"none": zl, "sum": np.sum(zl), "mean": np.sum(zl) / max(1, np.sum(keep))}[reduction]
    return ce + zl, zl


def fd_ce(backend, x, t, **kw):
    """fastdiv.cross_entropy; with a z-loss, (loss + z_loss, z_loss) as Liger reports them (D7)."""
    out = fastdiv.cross_entropy(x, t, backend=backend, **kw)
    if kw.get("z_loss", 0.0):
        return out.loss + out.z_loss, out.z_loss
    return out, None


def check(backend, x, t, atol, rtol, what, z_too=False, **kw):
    weight = kw.pop("weight", None)
    cuda_refuses = backend == "cuda" and kw.get("softcap") and kw.get("label_smoothing", 0.0)
    if cuda_refuses:            # README: cuda refuses softcap with label smoothing (D8)
        with pytest.raises(fastdiv.BackendUnavailable):
            fd_ce(backend, x, t, weight=weight, **kw)
        return
    got, gz = with_weight(lambda w: fd_ce(backend, x, t, weight=w, **kw), weight)
    want, wz = reference(x, t, weight=weight, z=kw.pop("z_loss", 0.0), **kw)
    close(got, want, rtol, atol, what=what)
    if z_too:
        close(gz, wz, rtol, atol, what=what + " z-loss")


# --------------------------------------------------------------------------- cross-entropy ({CE})


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_ce_correctness(backend, dtype, atol, rtol):
    """test_correctness (and test_correctness_not_last_layer: the same forward values)."""
    rng = np.random.default_rng(1)
    for shape, reduction in sample(backend, itertools.product(BIG, ("sum", "mean", "none")), 2):
        x, t = draw(rng, backend, shape, dtype)
        check(backend, x, t, atol, rtol, f"{CE} test_correctness {shape} {reduction}", reduction=reduction)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_ce_functional(backend, dtype, atol, rtol):
    """test_correctness_functional: ignore_index=0, z-loss 1e-4, smoothing 0.1, softcap 30, mean."""
    rng = np.random.default_rng(2)
    for shape in ((2, 2, 8), (9, 7, 41)):
        x, t = draw(rng, backend, shape, dtype)
        check(backend, x, t, atol, rtol, f"{CE} test_correctness_functional {shape}", z_too=True, ignore_index=0,
              z_loss=1e-4, label_smoothing=0.1, reduction="mean", softcap=30.0)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_ce_ignore_index(backend, dtype, atol, rtol):
    rng = np.random.default_rng(3)
    for (shape, ign), reduction in sample(backend, itertools.product(zip(BIG, (2, -123)), ("sum", "mean", "none")),
                                          2):
        x, t = draw(rng, backend, shape, dtype)
        check(backend, x, ignore_some(rng, t, ign), atol, rtol, f"{CE} test_correctness_with_ignore_index {ign}",
              ignore_index=ign, reduction=reduction)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_ce_label_smoothing(backend, dtype, atol, rtol):
    """test_correctness_with_label_smoothing_once and ..._with_ignore_index_once."""
    rng = np.random.default_rng(4)
    for shape in sample(backend, BIG, 1):
        x, t = draw(rng, backend, shape, dtype)
        check(backend, x, t, atol, rtol, f"{CE} label_smoothing {shape}", label_smoothing=0.1)
    for shape, ign, ls in sample(backend, [(BIG[0], 1, 0.1), (BIG[1], -300, 0.2)], 1):
        x, t = draw(rng, backend, shape, dtype)
        check(backend, x, ignore_some(rng, t, ign), atol, rtol, f"{CE} label_smoothing+ignore {ign}",
              label_smoothing=ls, ignore_index=ign)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_ce_softcap(backend, dtype, atol, rtol):
    rng = np.random.default_rng(5)
    for shape, reduction in sample(backend, itertools.product(BIG, ("sum", "mean", "none")), 2):
        x, t = draw(rng, backend, shape, dtype)
        check(backend, x, t, atol, rtol, f"{CE} test_correctness_with_softcap_once {reduction}", softcap=30.0,
              reduction=reduction)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_ce_z_loss(backend, dtype, atol, rtol):
    """test_correctness_with_z_loss_once and ..._with_other_params_once."""
    rng = np.random.default_rng(6)
    for shape, ret_z, scale in sample(backend, itertools.product(BIG, (True, False), (1e-4, 1e-5)), 2):
        x, t = draw(rng, backend, shape, dtype)
        check(backend, x, t, atol, rtol, f"{CE} z_loss {scale}", z_too=ret_z, z_loss=scale)
    cases = itertools.product(BIG, ((True, 1e-4), (False, 1e-5)), ((0.1, 42, "mean"), (0.2, -42, "sum")))
    for shape, (ret_z, scale), (ls, ign, reduction) in sample(backend, cases, 2):
        x, t = draw(rng, backend, shape, dtype)
        check(backend, x, ignore_some(rng, t, ign), atol, rtol, f"{CE} z_loss_with_other_params {ign}",
              z_too=ret_z, z_loss=scale, label_smoothing=ls, ignore_index=ign, reduction=reduction)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_ce_weight(backend, dtype, atol, rtol):
    """test_correctness_with_weight_once: torch.rand(V) class weights in the input's dtype."""
    rng = np.random.default_rng(7)
    for shape, reduction in sample(backend, itertools.product(BIG, ("sum", "mean", "none")), 2):
        x, t = draw(rng, backend, shape, dtype)
        weight = rng.random(x.shape[1]).astype(np_dtype(dtype))
        check(backend, x, t, atol, rtol, f"{CE} test_correctness_with_weight_once {reduction}", weight=weight,
              reduction=reduction)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_ce_weight_and_everything(backend, dtype, atol, rtol):
    """test_correctness_with_weight_with_other_params_once (float32 weights) and
    test_correctness_not_last_layer_with_other_params (the same without weights)."""
    rng = np.random.default_rng(8)
    opts = ((-100, 1e-4, 0.1, 30.0), (42, 1e-5, 0.2, 40.0))
    for shape, reduction, (ign, z, ls, cap), weighted in sample(
            backend, itertools.product(BIG, ("sum", "mean", "none"), opts, (True, False)), 2):
        if reduction == "none" and not weighted:
            continue                    # (not_last_layer_with_other_params: sum and mean only)
        x, t = draw(rng, backend, shape, dtype)
        weight = rng.random(x.shape[1]).astype(np.float32) if weighted else None
        check(backend, x, ignore_some(rng, t, ign), atol, rtol, f"{CE} weight_with_other_params {ign} {reduction}",
              weight=weight, reduction=reduction, ignore_index=ign, z_loss=z, label_smoothing=ls, softcap=cap)


@pytest.mark.parametrize("dtype, atol, rtol", [("float32", 1e-4, 1e-4), ("float16", 1e-2, 1e-2),
                                               ("bfloat16", 1e-2, 1e-2)])
def test_ce_forward_only(backend, dtype, atol, rtol):
    rng = np.random.default_rng(9)
    for (shape, ign), reduction in sample(backend, itertools.product(zip(BIG, (-100, 2)), ("mean", "sum", "none")),
                                          2):
        x, t = draw(rng, backend, shape, dtype)
        check(backend, x, t, atol, rtol, f"{CE} test_correctness_with_forward_only {ign}", ignore_index=ign,
              reduction=reduction)


def test_ce_float32_internal(backend):
    """test_float32_internal: bfloat16 logits are computed in float32 (4 rows of 128256)."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rng = np.random.default_rng(10)
    n, v = (2, 64) if backend == "cuda" and SIM else (4, 128256)
    x = rng.standard_normal((n, v)).astype(ml_dtypes.bfloat16)
    t = rng.integers(0, v, n)
    a = fastdiv.cross_entropy(x, t, reduction="none", backend=backend)
    b = fastdiv.cross_entropy(x.astype(np.float32), t, reduction="none", backend=backend)
    assert a.dtype == np.float32
    close(a, b, 1e-6, 0.0, what=f"{CE} test_float32_internal")


def test_ce_out_of_bounds_target(backend):
    """test_correctness_with_out_of_bounds_target_once: targets in [V, 2V) are refused, naming
    target (Liger: an assertion "out of bounds")."""
    rng = np.random.default_rng(11)
    for shape, ign in ((BIG[0], 2), (BIG[1], -123)):
        n, v = rows_v("numpy", *shape)
        x = rng.standard_normal((n, v)).astype(np.float32)
        t = ignore_some(rng, rng.integers(0, v, n), ign)
        t[rng.permutation(n)[:int(rng.integers(1, n // 2))]] = rng.integers(v, 2 * v)
        with pytest.raises(ValueError, match="target"):
            fastdiv.cross_entropy(x, t, ignore_index=ign, backend=backend)


def test_ce_structured_output(backend):
    """test_liger_cross_entropy_structured_output: the loss, the (zero) z-loss, token accuracy and
    predicted tokens of fixed logits -- fastdiv's return_lse output and fastdiv.evaluate."""
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 1.5, 0.3], [0.7, -0.2, 0.9]], np.float32)
    targets = np.array([0, 1, 2])
    loss = fastdiv.cross_entropy(logits, targets, backend=backend)
    close(loss, torch_cross_entropy(f64(logits), targets), 1e-6, 1e-8)
    out = fastdiv.cross_entropy(logits, targets, return_lse=True, backend=backend)
    assert np.shape(out.loss) == () and out.z_loss == 0.0
    close(out.loss, loss, 1e-6, 0.0)            # (that path sums in another order: float32 ulps)
    res = fastdiv.evaluate(logits, targets, topk=(1,), backend=backend)
    np.testing.assert_array_equal(res.argmax, np.argmax(logits, axis=-1))
    close(res.accuracy[1], np.mean(np.argmax(logits, axis=-1) == targets), 0.0, 1e-6)


@pytest.mark.parametrize("ignore_index", [-100, 2])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_ce_predicted_tokens(backend, dtype, ignore_index):
    """test_correctness_with_predicted_tokens: fastdiv.evaluate's argmax is the row argmax (of the
    float32-widened logits) on the non-ignored rows.  (Liger gives -1 on ignored rows; fastdiv's
    argmax does not depend on the target: D9.)"""
    rng = np.random.default_rng(12)
    for b, t_, v in sample(backend, ((2, 128, 512), (3, 47, 31)), 1):
        n, v = rows_v(backend, b, t_, v)
        x = rng.standard_normal((n, v)).astype(np_dtype(dtype))
        t = rng.integers(0, v, n)
        t[rng.permutation(n)[:n // 4]] = ignore_index
        res = fastdiv.evaluate(x, t, ignore_index=ignore_index, backend=backend)
        arg = np.asarray(res.argmax)
        keep = t != ignore_index
        np.testing.assert_array_equal(arg[keep], np.argmax(x.astype(np.float32), axis=-1)[keep])


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_ce_confident_predictions(backend, dtype):
    """test_correctness_true_class_grad_confident_predictions, forward: the target logit sits 10
    above the row's maximum (B, T, V = 2, 64, 4096); the loss of such rows to torch's tolerance
    for the dtype (its gradient check has no counterpart)."""
    from _peer import TORCH_TOL
    rng = np.random.default_rng(13)
    n, v = (2, 64) if backend == "cuda" and SIM else (16, 4096)
    x = rng.standard_normal((n, v)).astype(np.float32)
    t = rng.integers(0, v, n)
    x[np.arange(n), t] = x.max(axis=-1) + 10.0
    x = x.astype(np_dtype(dtype))
    for ls, reduction in itertools.product((0.0, 0.1), ("sum", "mean")):
        check(backend, x, t, TORCH_TOL[dtype][1], TORCH_TOL[dtype][0], f"{CE} confident {ls} {reduction}",
              label_smoothing=ls, reduction=reduction)


# --------------------------------------------------------------------------- JSD ({JSD})

JSD_SHAPES = [(2, 1024, 3200), (41, 401, 1271)]
JSD_DTYPES = [("bfloat16", 1e-7, 5e-2), ("float32", 1e-7, 1e-6), ("float16", 1e-3, 1e-3)]


def jsd_reference(log_q, log_p, beta):
    """Liger's JSD(input=log_q, target=log_p) per row in float64: beta KL(P||M) + (1 - beta)
    KL(Q||M), M = beta P + (1 - beta) Q; beta = 0: KL(P||Q); beta = 1: KL(Q||P)."""
    lq, lp = f64(log_q), f64(log_p)
    p, q = np.exp(lp), np.exp(lq)
    if beta == 0.0:
        return np.sum(p * (lp - lq), axis=-1)
    if beta == 1.0:
        return np.sum(q * (lq - lp), axis=-1)
    lm = np.log(beta * p + (1 - beta) * q)
    return beta * np.sum(p * (lp - lm), axis=-1) + (1 - beta) * np.sum(q * (lq - lm), axis=-1)


def jsd_inputs(rng, backend, shape, dtype):
    n, v = rows_v(backend, *shape)
    dt = np_dtype(dtype)

    def lsm():   # torch's log_softmax of a randn draw in the dtype, rounded to the dtype
        return log_softmax(rng.standard_normal((n, v)).astype(dt).astype(np.float32)).astype(dt)

    return lsm(), lsm()


def js(backend, log_q, log_p, beta, reduction="mean"):
    """Liger's JSD(input=log_q, target=log_p) is fastdiv.js_div(p=target, q=input)."""
    return fastdiv.js_div(log_p, log_q, beta=beta, inputs="log_probs", reduction=reduction, backend=backend)


@pytest.mark.parametrize("dtype, atol, rtol", JSD_DTYPES)
def test_jsd_correctness(backend, dtype, atol, rtol):
    """test_correctness / test_correctness_not_last (beta 0.5, and its symmetry)."""
    rng = np.random.default_rng(21)
    for shape in sample(backend, JSD_SHAPES, 1):
        x, target = jsd_inputs(rng, backend, shape, dtype)
        got = js(backend, x, target, 0.5)
        close(got, np.mean(jsd_reference(x, target, 0.5)), rtol, atol, what=f"{JSD} test_correctness {shape}")
        close(js(backend, target, x, 0.5), got, rtol, atol, what=f"{JSD} symmetry")


@pytest.mark.parametrize("dtype, atol, rtol", JSD_DTYPES)
def test_jsd_beta(backend, dtype, atol, rtol):
    rng = np.random.default_rng(22)
    for shape, beta in sample(backend, itertools.product(JSD_SHAPES, (0.0, 0.1, 0.5, 0.9, 1.0)), 3):
        x, target = jsd_inputs(rng, backend, shape, dtype)
        close(js(backend, x, target, beta), np.mean(jsd_reference(x, target, beta)), rtol, atol,
              what=f"{JSD} test_correctness_with_beta {beta}")


@pytest.mark.parametrize("dtype, atol, rtol", JSD_DTYPES)
def test_jsd_ignore_index(backend, dtype, atol, rtol):
    """test_correctness_with_ignore_index and test_correctness_functional: Liger's JSD takes the
    token labels and averages over the non-ignored rows; fastdiv.js_div has no labels (D10): the
    rows whose label is not ignore_index are selected first."""
    rng = np.random.default_rng(23)
    cases = [(s, 0.5, ign) for s, ign in itertools.product(JSD_SHAPES, (2, 42))] + \
        [(s, beta, ign) for s, (beta, ign) in itertools.product(JSD_SHAPES, ((0.5, 2), (0.1, 42)))]
    for shape, beta, ign in sample(backend, cases, 2):
        x, target = jsd_inputs(rng, backend, shape, dtype)
        label = ignore_some(rng, rng.integers(0, x.shape[1], x.shape[0]), ign)
        keep = label != ign
        got = js(backend, x[keep], target[keep], beta)
        want = np.sum(np.where(keep, jsd_reference(x, target, beta), 0.0)) / np.sum(keep)
        close(got, want, rtol, atol, what=f"{JSD} ignore_index {ign} beta {beta}")


def test_jsd_all_indices_ignored(backend):
    """test_correctness_with_all_indices_ignored: Liger's loss over no rows is 0; fastdiv's "sum"
    over no rows is 0 and its "mean" NaN with a RuntimeWarning (D10)."""
    rng = np.random.default_rng(24)
    x, target = jsd_inputs(rng, backend, (2, 10, 32), "bfloat16")
    none = np.zeros(x.shape[0], bool)
    assert js(backend, x[none], target[none], 0.5, reduction="sum") == 0.0
    if backend == "cuda":               # (the device reduction gives the NaN without the warning)
        assert np.isnan(js(backend, x[none], target[none], 0.5))
        return
    with pytest.warns(RuntimeWarning):
        assert np.isnan(js(backend, x[none], target[none], 0.5))
