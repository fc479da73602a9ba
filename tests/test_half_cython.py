"""Cython kernels reading float16 / bfloat16 bits in their own loops (_inst.h: h16 / b16).

Widening a half to float32 is exact and the 16-bit instantiations run the float32 arithmetic,
so every kernel must give the float32 kernel's bits on the upcast input, over the shapes that
take different code paths: short rows in blocks of 16 (gathered tail columns, column 0 read
lane by lane), V = 2048 / 2049 (block driver / chunked long rows), several chunks with a
partial last one, and the edge rows of conftest.make_logits (masked rows, NaN, +inf, 1e4
logits, a jump in the last chunk).  The one exception, logsumexp on rows of up to 2048
classes, agrees to float32 rounding only (its vectorised finish m + log(k) + log1p(r / k) is
reassociated differently where it is inlined, -fassociative-math).
"""
import numpy as np
import pytest

from conftest import make_logits, make_probs

K = pytest.importorskip("fastdiv._cython._kernels")
ml_dtypes = pytest.importorskip("ml_dtypes")

HALVES = {"float16": (np.float16, np.uint16), "bfloat16": (ml_dtypes.bfloat16, np.int16)}


def _run(fn, rows):
    out = np.empty(rows, np.float32)
    fn(out)
    return out


@pytest.mark.parametrize("half", list(HALVES))
@pytest.mark.parametrize("v", [1, 3, 17, 51, 2048, 2049, 4100])
def test_half_bits_equal_the_float32_kernel_on_the_upcast_input(half, v, rng):
    dt, bits = HALVES[half]
    n = 37  # two blocks of 16 and a partial one
    x = make_logits(rng, n, v, np.float32).astype(dt)
    z = make_logits(rng, n, v, np.float32)[::-1].copy().astype(dt)
    p = make_probs(rng, n, v, np.float32).astype(dt)
    lp = np.log(make_probs(rng, n, v, np.float64, zeros=False)).astype(dt)
    t = rng.integers(0, v, n)
    t[5] = -100  # ignored row
    w = rng.random(v).astype(np.float32)
    w[0] = 0.0
    k = min(v, 4)
    idx = np.sort(np.argsort(-x.astype(np.float32), axis=1, kind="stable")[:, :k], axis=1).astype(np.int64)
    tk = np.full((n, k), -1.5, np.float32).astype(dt)

    def h(a):  # the raw bits the kernels take
        return np.ascontiguousarray(a).view(bits)

    def f(a):  # the exact float32 upcast
        return np.ascontiguousarray(a.astype(np.float32))

    cases = {
        "lse": lambda c, o: K.lse(c(x), o, 2),
        "entropy": lambda c, o: K.entropy_logits(c(x), 1.0, o, 2),
        "entropy_log_probs": lambda c, o: K.entropy_log_probs(c(lp), o, 2),
        "entropy_probs": lambda c, o: K.entropy_probs(c(p), o, 2),
        "kl": lambda c, o: K.kl_logits(c(x), c(z), 1.0, o, 2),
        "kl_log_probs": lambda c, o: K.kl_log_probs(c(lp), c(lp[::-1]), o, 2),
        "kl_probs": lambda c, o: K.kl_probs(c(p), c(p[::-1]), o, 2),
        "ce": lambda c, o: K.ce_hard(c(x), t, -100, w, 0.0, o, 2),
        "ce_smoothed": lambda c, o: K.ce_hard(c(x), t, -100, w, 0.1, o, 2),
        "ce_soft": lambda c, o: K.ce_soft(c(x), c(p), w, 0.9, 0.01, 1.0, o, 2),
        "js": lambda c, o: K.js_logits(c(x), c(z), 0.3, 1.0, o, 2),
        "js_log_probs": lambda c, o: K.js_log_probs(c(lp), c(lp[::-1]), 0.5, o, 2),
        "js_probs": lambda c, o: K.js_probs(c(p), c(p[::-1]), 0.5, o, 2),
        "topk": lambda c, o: K.topk_kl(idx, c(tk), c(x), 1, o, 2),
    }
    for name, fn in cases.items():
        got = _run(lambda o: fn(h, o), n)
        want = _run(lambda o: fn(f, o), n)
        if name == "lse" and v <= 2048:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, err_msg=f"{half} V={v} {name}")
        else:
            np.testing.assert_array_equal(got, want, err_msg=f"{half} V={v} {name}")


@pytest.mark.parametrize("half", list(HALVES))
def test_half_rows_do_not_depend_on_threads_or_batch(half, rng):
    dt, bits = HALVES[half]
    x = make_logits(rng, 40, 3000, np.float32).astype(dt).view(bits)
    z = make_logits(rng, 40, 3000, np.float32).astype(dt).view(bits)
    one = _run(lambda o: K.kl_logits(x, z, 1.0, o, 1), 40)
    two = _run(lambda o: K.kl_logits(x, z, 1.0, o, 2), 40)
    tail = _run(lambda o: K.kl_logits(x[17:], z[17:], 1.0, o, 2), 23)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one[17:], tail)
