"""PyTorch's cross_entropy / nll_loss / kl_div cases, on every backend.

Groups and where their inputs come from (the shapes, value ranges, options and dtypes are
torch's; the values are drawn again with a seeded numpy generator, as torch's own tests draw
them at random):

* OPINFO: torch 2.13.0, ``torch/testing/_internal/common_methods_invocations.py`` (as installed
  with torch 2.13.0): ``sample_inputs_cross_entropy``, ``sample_inputs_nll_loss``,
  ``sample_inputs_kl_div`` (the OpInfos of ``nn.functional.cross_entropy`` / ``nll_loss`` /
  ``kl_div`` have no error-inputs function; their error cases are the module's and test_nn's).
* MODULES: torch 2.13.0, ``torch/testing/_internal/common_modules.py``:
  ``module_inputs_torch_nn_CrossEntropyLoss`` and ``module_error_inputs_torch_nn_CrossEntropyLoss``.
* TEST_NN: pytorch/pytorch ``test/test_nn.py`` at commit 74f2fa66feec00335f72813782f4802e80bff4cb:
  the cross-entropy tests of ``TestNNDeviceType`` (``test_cross_entropy_loss_prob_target_*``,
  ``..._index_target_unit_weights``, ``..._one_hot_target``, ``test_cross_entropy_label_smoothing_*``)
  and the nll / kl_div error and value tests next to them.

Expected values: torch's documented formulas in float64 (``_peer.torch_cross_entropy``,
``torch_kl_div``) on the same (dtype-rounded) inputs, and torch itself when installed; the
tolerance is torch.testing's default for the input dtype.  torch's class axis is 1; fastdiv's is
the last (``_peer.class_last``).  Deliberate differences (negative class weights refused, kl_div's
reductions, no nll_loss, errors as ValueError/TypeError, ...) are in docs/peers.rst and
tested in test_differences.py; here such cases check the refusal and then the rest of the case.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import fastdiv

from _peer import (FLOAT_DTYPES, TORCH_TOL, backend, class_last, close, f64, log_softmax, make_tensor, np_dtype,  # noqa: F401
                   sample, torch_cross_entropy, torch_kl_div, torch_or_none, to_torch, with_weight)

OPINFO = "torch 2.13.0: torch/testing/_internal/common_methods_invocations.py"
MODULES = "torch 2.13.0: torch/testing/_internal/common_modules.py"
TEST_NN = "pytorch test/test_nn.py @ 74f2fa66feec00335f72813782f4802e80bff4cb"

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

REFUSED = (ValueError, TypeError)


def torch_value(fn, *args, **kwargs):
    """torch's own answer (float64 numpy) when torch is installed, else None."""
    torch = torch_or_none()
    if torch is None:
        return None
    conv = [to_torch(torch, a) if isinstance(a, np.ndarray) else a for a in args]
    kw = {k: (to_torch(torch, v) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    with torch.no_grad():
        out = getattr(torch.nn.functional, fn)(*conv, **kw)
    return out.double().numpy()


def check_ce(backend, x, target, dtype, what, weight=None, **opts):
    """fastdiv.cross_entropy on torch's (N, C, ...) input against torch's value (formula + torch)."""
    rtol, atol = TORCH_TOL[dtype]
    probs = not np.issubdtype(np.asarray(target).dtype, np.integer)
    xt = class_last(x)
    tt = class_last(target) if probs else np.asarray(target)
    if weight is not None and np.any(np.asarray(weight, dtype=np.float64) < 0):
        # torch takes negative class weights; fastdiv refuses them (docs/peers.rst, D3)
        with pytest.raises(REFUSED, match="weight"):
            fastdiv.cross_entropy(xt, tt, weight=weight, backend=backend, **opts)
        weight = np.abs(weight)
    got = with_weight(lambda w: fastdiv.cross_entropy(xt, tt, weight=w, backend=backend, **opts), weight)
    want = torch_cross_entropy(f64(xt), tt if not probs else f64(tt),
                               weight=None if weight is None else f64(weight), **opts)
    if not probs and opts.get("reduction", "mean") == "mean" and np.isnan(want):
        # every target ignored: a mean of nothing is NaN in torch and in fastdiv (fastdiv.reduce)
        assert np.isnan(got) and np.all(tt == opts.get("ignore_index", -100)), what
        return
    close(got, want, rtol, atol, what=what)
    tv = torch_value("cross_entropy", x, target, weight=weight, **opts)
    if tv is not None:
        close(got, tv, rtol, atol, what=f"{what} (torch)")


# --------------------------------------------------------------------------- OPINFO: cross_entropy


def cross_entropy_samples(rng, dtype):
    """sample_inputs_cross_entropy: (input_shape, kwargs) x {class indices, probabilities}."""
    shape = (2, 3)
    cases = [(shape, {}), ((*shape, 1), {}), ((*shape, 1, 2), {}), ((*shape, 1, 2, 3), {})]
    cases += [(shape, dict(reduction=r)) for r in ("mean", "sum", "none")]
    cases += [(shape, dict(weight=make_tensor(rng, (3,), dtype), reduction=r)) for r in ("mean", "sum", "none")]
    cases += [(shape, dict(ignore_index=1))]
    for (in_shape, kw), probs in itertools.product(cases, (False, True)):
        x = make_tensor(rng, in_shape, dtype)
        if probs:
            if "ignore_index" in kw:                 # not supported for probabilities (torch skips it)
                continue
            target = make_tensor(rng, in_shape, dtype, low=0, high=1)
        else:
            target = make_tensor(rng, (2, *in_shape[2:]), "long", low=0, high=3)
            if "ignore_index" in kw and np.all(target == kw["ignore_index"]):
                target.flat[0] = 0
        yield x, target, kw


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_opinfo_cross_entropy(backend, dtype):
    rng = np.random.default_rng(6911)
    for k, (x, target, kw) in sample(backend, enumerate(cross_entropy_samples(rng, dtype)), 6):
        check_ce(backend, x, target, dtype, f"{OPINFO} sample_inputs_cross_entropy #{k} {kw}", **kw)


# --------------------------------------------------------------------------- OPINFO: nll_loss


def torch_nll(lp, target, *, weight=None, ignore_index=-100, reduction="mean"):
    """torch.nn.functional.nll_loss in float64, class axis LAST: -w_t lp_t, 0 where ignored;
    "mean" divides by the sum of w_t over the non-ignored targets."""
    lp = f64(lp)
    c = lp.shape[-1]
    w = np.ones(c) if weight is None else f64(weight)
    t = np.asarray(target)
    keep = t != ignore_index
    ts = np.where(keep, t, 0)
    loss = np.where(keep, -np.take_along_axis(lp, ts[..., None], axis=-1)[..., 0] * w[ts], 0.0)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return np.sum(loss)
    return np.sum(loss) / np.sum(np.where(keep, w[ts], 0.0))


def nll_samples(rng, dtype):
    """sample_inputs_nll_loss: batched, unbatched and 2-d inputs x reductions x weights / ignore_index."""
    shape, c = (2, 3), 3

    def target(s, zeros=False):
        ts = (s[0], *s[2:]) if len(s) > 1 else ()
        if zeros:
            return np.zeros(ts, dtype=np.int64)
        return make_tensor(rng, ts, "long", low=0, high=s[1] if len(s) > 1 else s[0])

    for reduction, s in itertools.product(("none", "mean", "sum"), (shape, (c,), shape + (2, 2))):
        yield make_tensor(rng, s, dtype), target(s), dict(reduction=reduction)
        yield make_tensor(rng, s, dtype), target(s), dict(weight=make_tensor(rng, (c,), dtype), reduction=reduction)
        yield make_tensor(rng, s, dtype), target(s), dict(weight=make_tensor(rng, (c,), dtype, low=0),
                                                          reduction=reduction)
        yield make_tensor(rng, s, dtype), target(s), dict(weight=make_tensor(rng, (c,), dtype, high=0),
                                                          reduction=reduction)
        t = target(s)
        if np.all(t == c // 2) and reduction == "mean":
            t[...] = 0
        yield make_tensor(rng, s, dtype), t, dict(ignore_index=c // 2, reduction=reduction)
        yield make_tensor(rng, s, dtype), t, dict(ignore_index=c // 2, reduction=reduction,
                                                  weight=make_tensor(rng, (c,), dtype))
        if reduction != "mean":                      # every target ignored
            yield make_tensor(rng, s, dtype), target(s, zeros=True), dict(ignore_index=0, reduction=reduction)
    yield make_tensor(rng, shape, dtype), np.array([-1, 2]), dict(ignore_index=-1)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_opinfo_nll_loss(backend, dtype):
    """fastdiv has no nll_loss (docs/peers.rst, D5): its cross_entropy of log-probabilities
    is nll_loss of them.  torch's samples draw arbitrary values as the 'log-probabilities'; they are
    normalised with log_softmax first, and nll_loss is evaluated on the same normalised values."""
    rng = np.random.default_rng(8860)
    rtol, atol = TORCH_TOL[dtype]
    for k, (x, t, kw) in sample(backend, enumerate(nll_samples(rng, dtype)), 6):
        lp = log_softmax(np.asarray(x, dtype=np.float64), axis=1 if x.ndim > 1 else 0).astype(np.float64)
        lpt = class_last(lp)
        weight = kw.pop("weight", None)
        if weight is not None and np.any(f64(weight) < 0):
            with pytest.raises(REFUSED, match="weight"):
                fastdiv.cross_entropy(lpt, t, weight=weight, backend=backend, **kw)
            weight = np.abs(weight)
        got = with_weight(lambda w: fastdiv.cross_entropy(lpt, t, weight=w, backend=backend, **kw), weight)
        want = torch_nll(lpt, t, weight=None if weight is None else f64(weight), **kw)
        close(got, want, 1e-12, 1e-12, what=f"{OPINFO} sample_inputs_nll_loss #{k} {kw}")
        tv = torch_value("nll_loss", lp, t, weight=None if weight is None else f64(weight), **kw)
        if tv is not None:
            close(got, tv, rtol, atol, what=f"nll #{k} (torch)")


# --------------------------------------------------------------------------- OPINFO: kl_div


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_opinfo_kl_div(backend, dtype):
    """sample_inputs_kl_div: input = log_softmax(U[0, 9)), target = log_softmax or softmax of
    another draw, shapes (2,) and (2, 3), every reduction, log_target both ways.

    kl_div(input=log q, target=p) is fastdiv.kl_div(p, q) (mathematical order); fastdiv's
    ``inputs`` applies to both, so a probability target enters as its log.  Reductions map as
    docs/peers.rst D6 says: torch's "batchmean" is fastdiv's "mean" for 2-D input (and
    sum / V for 1-D input), torch's "mean" is fastdiv's sum over the number of elements, torch's
    elementwise "none" sums over the class axis to fastdiv's per-row "none"."""
    rng = np.random.default_rng(9813)
    rtol, atol = TORCH_TOL[dtype]
    cases = [(shape, reduction, log_target,
              log_softmax(make_tensor(rng, shape, dtype, low=0.0).astype(np.float64)).astype(np_dtype(dtype)),
              log_softmax(make_tensor(rng, shape, dtype, low=0.0).astype(np.float64)))
             for shape, reduction, log_target in itertools.product(((2,), (2, 3)), ("none", "mean", "batchmean", "sum"),
                                                                   (True, False))]
    for shape, reduction, log_target, inp, tgt in sample(backend, cases, 6):
        tgt = (tgt if log_target else np.exp(tgt)).astype(np_dtype(dtype))
        p_lp = f64(tgt) if log_target else np.log(f64(tgt))
        per_row = fastdiv.kl_div(p_lp, f64(inp), inputs="log_probs", reduction="none", backend=backend)
        want = torch_kl_div(inp, tgt, reduction=reduction, log_target=log_target)
        if reduction == "none":
            got = per_row
            want = np.sum(want, axis=-1)
        elif reduction == "sum":
            got = fastdiv.kl_div(p_lp, f64(inp), inputs="log_probs", reduction="sum", backend=backend)
        elif reduction == "batchmean":
            got = fastdiv.kl_div(p_lp, f64(inp), inputs="log_probs", reduction="mean", backend=backend)
            if len(shape) == 1:
                got = got / shape[0]
        else:
            got = fastdiv.kl_div(p_lp, f64(inp), inputs="log_probs", reduction="sum", backend=backend) / np.prod(shape)
        what = f"{OPINFO} sample_inputs_kl_div {shape} {reduction} log_target={log_target}"
        close(got, want, rtol, atol, what=what)
        tv = torch_value("kl_div", inp, tgt, reduction=reduction, log_target=log_target)
        if tv is not None:
            close(got, np.sum(tv, axis=-1) if reduction == "none" else tv, rtol, atol, what=what + " (torch)")


# --------------------------------------------------------------------------- MODULES: CrossEntropyLoss


def module_samples(rng, dtype):
    """module_inputs_torch_nn_CrossEntropyLoss: reductions x (plain, weights, ignore_index,
    label_smoothing, both) x (4d, 3d, 2d, higher-dim class-index inputs; 4d, 3d, 2d, higher-dim
    probability inputs and an unbatched one when there is no ignore_index)."""
    cases = [("", {}), ("weights", {"weight": make_tensor(rng, (3,), dtype)}), ("ignore_index", {"ignore_index": 1}),
             ("label_smoothing", {"label_smoothing": 0.15}),
             ("ignore_index_label_smoothing", {"ignore_index": 1, "label_smoothing": 0.15})]
    for reduction, (desc, kw) in itertools.product(("mean", "sum", "none"), cases):
        kw = dict(kw, reduction=reduction)
        for name, s in (("4d", (2, 3, 5, 5)), ("3d", (2, 3, 5)), ("2d", (2, 3)), ("higher_dim", (2, 3, 5, 5, 2, 2))):
            yield f"{name}_{desc}_{reduction}", make_tensor(rng, s, dtype), \
                make_tensor(rng, (s[0], *s[2:]), "long", low=0, high=3), kw
        if "ignore_index" not in kw:
            for name, s in (("4d_prob_target", (5, 3, 4, 2)), ("3d_prob_target", (5, 3, 4)),
                            ("2d_prob_target", (5, 3)), ("higher_dim_prob_target", (2, 3, 5, 5, 2, 2))):
                probs = np.exp(log_softmax(make_tensor(rng, s, dtype).astype(np.float64), axis=1))
                yield f"{name}_{desc}_{reduction}", make_tensor(rng, s, dtype), probs.astype(np_dtype(dtype)), kw
            yield f"no_batch_dim_{desc}_{reduction}", make_tensor(rng, (3,), dtype), \
                make_tensor(rng, (), "long", low=0, high=3), kw


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_module_cross_entropy_loss(backend, dtype):
    rng = np.random.default_rng(1597)
    for desc, x, target, kw in sample(backend, module_samples(rng, dtype), 8):
        check_ce(backend, x, target, dtype, f"{MODULES} CrossEntropyLoss {desc}", **kw)


def test_module_cross_entropy_loss_errors(backend):
    """module_error_inputs_torch_nn_CrossEntropyLoss: every case torch refuses is refused, with a
    ValueError / TypeError naming the argument (torch: RuntimeError / ValueError; D1)."""
    rng = np.random.default_rng(1685)
    x = make_tensor(rng, (2, 3), "float32")
    with pytest.raises(REFUSED, match="target"):           # integer target of the input's shape
        fastdiv.cross_entropy(x, np.zeros((2, 3), dtype=np.int64), backend=backend)
    with pytest.raises(REFUSED, match="target"):           # float target of the batch's shape
        fastdiv.cross_entropy(x, make_tensor(rng, (2,), "float32"), backend=backend)
    with pytest.raises(REFUSED, match="target"):           # batch size mismatch
        fastdiv.cross_entropy(x, np.array([0, 1, 2]), backend=backend)
    with pytest.raises(REFUSED, match="weight"):           # weight of the wrong length
        fastdiv.cross_entropy(x, np.array([0, 1]), weight=np.ones(2, np.float32), backend=backend)
    with pytest.raises(REFUSED, match="label_smoothing"):
        fastdiv.cross_entropy(x, np.array([0, 1]), label_smoothing=1.5, backend=backend)
    with pytest.raises(REFUSED, match="target"):           # spatial size mismatch
        fastdiv.cross_entropy(class_last(make_tensor(rng, (2, 3, 5), "float32")), np.zeros((2, 4), np.int64),
                              backend=backend)


def test_module_cross_entropy_loss_ignore_index_with_probabilities(backend):
    """module_error_inputs: probability targets with ignore_index=1 -- torch refuses them."""
    rng = np.random.default_rng(1686)
    x = make_tensor(rng, (2, 3), "float32")
    probs = np.exp(log_softmax(make_tensor(rng, (2, 3), "float32"))).astype(np.float32)
    with pytest.raises(REFUSED, match="ignore_index"):
        fastdiv.cross_entropy(x, probs, ignore_index=1, backend=backend)


# --------------------------------------------------------------------------- TEST_NN


def _other_dims(rng, k):
    return [int(rng.integers(2, 5)) for _ in range(k)]


def test_nn_cross_entropy_prob_target_all_reductions(backend):
    rng = np.random.default_rng(561)
    cases = []
    for k in range(5):
        dims = _other_dims(rng, k)
        x = rng.standard_normal((5, 4, *dims)).astype(np.float32)
        target = rng.standard_normal((5, 4, *dims)).astype(np.float32)       # not probabilities: literal
        w = np.abs(rng.standard_normal(4)).astype(np.float32)
        cases += [(k, x, target, r, weight) for r, weight in itertools.product(("none", "mean", "sum"), (None, w))]
    for k, x, target, reduction, weight in sample(backend, cases, 3, small=lambda c: c[0] <= 1):
        check_ce(backend, x, target, "float32", f"{TEST_NN} prob_target_all_reductions k={k}", weight=weight,
                 reduction=reduction)


def test_nn_cross_entropy_unit_weights(backend):
    """prob_target_unit_weights and index_target_unit_weights: unit weights change nothing."""
    rng = np.random.default_rng(562)
    rtol, atol = TORCH_TOL["float32"]
    cases = []
    for k in range(5):
        dims = _other_dims(rng, k)
        x = class_last(rng.standard_normal((5, 4, *dims)).astype(np.float32))
        for target in (class_last(rng.standard_normal((5, 4, *dims)).astype(np.float32)),
                       rng.integers(0, 4, (5, *dims))):
            cases += [(k, x, target, r) for r in ("none", "mean", "sum")]
    for k, x, target, reduction in sample(backend, cases, 3, small=lambda c: c[0] <= 1):
        plain = fastdiv.cross_entropy(x, target, reduction=reduction, backend=backend)
        unit = fastdiv.cross_entropy(x, target, reduction=reduction, weight=np.ones(4, np.float32), backend=backend)
        close(unit, plain, rtol, atol, what=f"{TEST_NN} unit_weights k={k}")


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_nn_cross_entropy_prob_target_no_batch_dim(backend, reduction, weighted):
    rng = np.random.default_rng(563)
    x = log_softmax(rng.standard_normal(5)).astype(np.float32)
    target = np.exp(log_softmax(rng.standard_normal(5))).astype(np.float32)
    weight = rng.standard_normal(5).astype(np.float32) if weighted else None
    if weighted and np.any(weight < 0):
        with pytest.raises(REFUSED, match="weight"):
            fastdiv.cross_entropy(x, target, weight=weight, reduction=reduction, backend=backend)
        weight = np.abs(weight)
    single = fastdiv.cross_entropy(x, target, weight=weight, reduction=reduction, backend=backend)
    batch = fastdiv.cross_entropy(x[None], target[None], weight=weight, reduction=reduction, backend=backend)
    close(single, batch[0] if reduction == "none" else batch, *TORCH_TOL["float32"])
    check_ce(backend, x, target, "float32", f"{TEST_NN} prob_target_no_batch_dim", weight=weight, reduction=reduction)


def test_nn_cross_entropy_one_hot_target(backend):
    """Class indices and their one-hot probabilities give the same loss (torch skips "mean" with
    weights: its two means differ, issue #61309 -- fastdiv follows torch on both sides)."""
    rng = np.random.default_rng(564)
    rtol, atol = TORCH_TOL["float32"]
    cases = []
    for k in range(5):
        dims = _other_dims(rng, k)
        x = class_last(rng.standard_normal((5, 4, *dims)).astype(np.float32))
        t = rng.integers(0, 4, (5, *dims))
        w = np.abs(rng.standard_normal(4)).astype(np.float32)
        cases += [(k, x, t, r, weight) for r, weight in itertools.product(("none", "mean", "sum"), (None, w))
                  if not (r == "mean" and weight is not None)]
    for k, x, t, reduction, weight in sample(backend, cases, 3, small=lambda c: c[0] <= 1):
        a = fastdiv.cross_entropy(x, t, weight=weight, reduction=reduction, backend=backend)
        b = fastdiv.cross_entropy(x, np.eye(4, dtype=np.float32)[t], weight=weight, reduction=reduction,
                                  backend=backend)
        close(a, b, rtol, atol, what=f"{TEST_NN} one_hot_target k={k} {reduction}")


def test_nn_cross_entropy_label_smoothing_consistent_index_target_and_probs(backend):
    """float64: class indices with smoothing equal the smoothed one-hot probabilities (torch's
    rtol=1e-7, atol=1e-5)."""
    rng = np.random.default_rng(565)
    cases = []
    for k, reduction, ls in itertools.product(range(5), ("none", "mean", "sum"), (0.05, 0.15)):
        dims = _other_dims(rng, k)
        cases.append((k, reduction, ls, class_last(rng.standard_normal((10, 4, *dims))),
                      rng.integers(0, 4, (10, *dims))))
    for k, reduction, ls, x, t in sample(backend, cases, 3, small=lambda c: c[0] <= 1):
        probs = np.where(np.eye(4, dtype=bool)[t], 1 - ls + ls / 4, ls / 4)
        a = fastdiv.cross_entropy(x, probs, reduction=reduction, backend=backend)
        b = fastdiv.cross_entropy(x, t, reduction=reduction, label_smoothing=ls, backend=backend)
        close(a, b, 1e-7, 1e-5, what=f"{TEST_NN} label_smoothing_consistent k={k}")


def test_nn_cross_entropy_label_smoothing_with_probs(backend):
    """Smoothing the target inside or by hand gives the same loss; the 'probabilities' are a
    log_softmax here (negative values), taken literally as torch does."""
    rng = np.random.default_rng(566)
    rtol, atol = TORCH_TOL["float32"]
    cases = []
    for k, ls in itertools.product(range(5), (0.05, 0.15)):
        dims = _other_dims(rng, k)
        x = class_last(rng.standard_normal((10, 4, *dims)).astype(np.float32))
        target = class_last(log_softmax(rng.standard_normal((10, 4, *dims)), axis=1)).astype(np.float32)
        cases += [(k, ls, x, target, r) for r in ("none", "mean", "sum")]
    for k, ls, x, target, reduction in sample(backend, cases, 3, small=lambda c: c[0] <= 1):
        a = fastdiv.cross_entropy(x, target, reduction=reduction, label_smoothing=ls, backend=backend)
        b = fastdiv.cross_entropy(x, target * (1 - ls) + ls / 4, reduction=reduction, backend=backend)
        close(a, b, rtol, atol, what=f"{TEST_NN} label_smoothing_with_probs k={k}")
        want = torch_cross_entropy(f64(x), f64(target), label_smoothing=ls, reduction=reduction)
        close(a, want, rtol, atol)


def test_nn_cross_entropy_label_smoothing_weight_ignore_indices(backend):
    """Ignored rows change nothing, and the mean's denominator leaves them out (ignore_index
    -100, -2 and 2 = C)."""
    wgt = np.array([0.3, 0.6], np.float32)
    inp1 = np.array([[0.3, 0.4], [1, 2]], np.float32)
    inp2 = np.array([[0.3, 0.6], [1, 2]], np.float32)
    rtol, atol = TORCH_TOL["float32"]
    cases = list(itertools.product(("none", "sum", "mean"), (0.05, 0.15), (None, wgt),
                                   ((-100, [-100, 1]), (-2, [-2, 1]), (2, [2, 1]))))
    for reduction, ls, weight, (ignore, targ) in sample(backend, cases, 3):
        if True:
            targ = np.array(targ)

            def loss(x, t):
                return fastdiv.cross_entropy(x, t, reduction=reduction, label_smoothing=ls, weight=weight,
                                             ignore_index=ignore, backend=backend)

            close(loss(inp1, targ), loss(inp2, targ), rtol, atol, what=f"{TEST_NN} weight_ignore_indices")
            if reduction != "none":
                close(loss(inp1, targ), loss(inp2[1:], targ[1:]), rtol, atol)
            want = torch_cross_entropy(f64(inp1), targ, weight=None if weight is None else f64(weight),
                                       ignore_index=ignore, label_smoothing=ls, reduction=reduction)
            close(loss(inp1, targ), want, rtol, atol)


def test_nn_errors(backend):
    """test_cross_entropy_label_smoothing_errors and the nll_loss error tests next to them."""
    rng = np.random.default_rng(567)
    for target in (np.arange(4), rng.standard_normal((3, 4)).astype(np.float32)):
        with pytest.raises(REFUSED, match="label_smoothing|target"):     # (the first: 4 targets, 3 rows)
            fastdiv.cross_entropy(rng.standard_normal((3, 4)).astype(np.float32), target, label_smoothing=1.2,
                                  backend=backend)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    with pytest.raises(REFUSED, match="target"):            # test_nll_loss_mismatched_batch
        fastdiv.cross_entropy(x, np.zeros(3, np.int64), backend=backend)
    with pytest.raises(REFUSED, match="target"):            # test_nll_loss_invalid_target_dim
        fastdiv.cross_entropy(x, np.zeros((10, 2), np.int64), backend=backend)
    for weight in (rng.standard_normal(4), rng.standard_normal((1, 3))):   # test_nll_loss_invalid_weights
        with pytest.raises(REFUSED, match="weight"):
            fastdiv.cross_entropy(x, rng.integers(0, 3, 10), weight=np.abs(weight), backend=backend)


def test_nn_kl_div_values(backend):
    """test_kl_div_with_diff_type(_log_target) and test_kl_div_log_softmax_target (TestNN):
    'log-probabilities' and 'probabilities' outside their ranges are taken literally."""
    inp = np.array([[2, 3, 5], [3, 2, 1]], np.float64)
    tgt = np.array([[1, 2, 3], [4, 5, 6]], np.float64)
    for log_target in (False, True):
        t = np.log(tgt) if log_target else tgt
        want = torch_kl_div(inp, t, reduction="mean", log_target=log_target)
        for dt in ("float32", "float64", "float16"):
            got = fastdiv.kl_div(np.log(tgt).astype(dt), inp.astype(dt), inputs="log_probs", reduction="sum",
                                 backend=backend) / inp.size
            close(got, want, 0.0, 1e-3, what=f"{TEST_NN} test_kl_div_with_diff_type log_target={log_target} {dt}")
    a = np.array([[1.0, 2, 3], [5.0, 5, 5]], np.float32)
    got = fastdiv.kl_div(a, a, reduction="none", backend=backend)                  # log_softmax targets: 0
    np.testing.assert_array_equal(got, [0.0, 0.0])
