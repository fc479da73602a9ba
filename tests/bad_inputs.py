"""The bad-input matrix: every case either raises ValueError/TypeError whose message names the
offending argument, or returns the documented result.

Cases are generated from the rows of the case table with ``bad_inputs=True`` (tests/cases.py,
``FUNCTIONS``) -- a new public function gets every generic case by adding its row there --
plus the cases specific to class indices, class weights and ``validate=True``.  tests/test_bad_inputs.py runs all cases of one
backend in one subprocess (this file is its ``__main__``), so a crash (a signal, an abort, a
non-zero exit) fails the case that was running instead of killing the test run:

    python tests/bad_inputs.py BACKEND [CASE_ID ...]   # one JSON line per case on stdout
"""
from __future__ import annotations

import json
import os
import re
import sys
import traceback
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np

import fastdiv
from cases import FUNCTIONS, sim_switch_interval, small_cuda_blocks

N, V = 4, 5


@dataclass(frozen=True)
class Case:
    id: str
    #: ``run(backend)`` makes the call and returns its result.
    run: Callable
    #: ("raises", exception types, argument name, words the message must contain or None)
    #: or ("returns", check(result, backend)).
    expect: tuple
    #: a different documented outcome on the cuda backend (None: the same).
    on_cuda: tuple = None
    #: the dtype the kernels run in (the tier of the case on each backend: cases.fast)
    dtype: str = "float32"

    def expected(self, backend):
        return self.on_cuda if backend == "cuda" and self.on_cuda is not None else self.expect


def _rng(seed=0):
    return np.random.default_rng(seed)


def _good(fn, lead=(N,), v=V, dtype=np.float32, seed=0):
    return fn.good(_rng(seed), lead, v, dtype)


def _with(args, **changes):
    out = dict(args)
    out.update(changes)
    return out


def raises(exc, name, says=None):
    return ("raises", exc, name, says)


#: how each option's invalid value is refused (options are validated once, in fastdiv._checks)
OPTION_ERRORS = {
    "inputs": (ValueError, "inputs must be one of"),
    "reduction": (ValueError, "reduction must be one of"),
    "label_smoothing": (ValueError, "label_smoothing must be a number in [0, 1]"),
    "ignore_index": (TypeError, "ignore_index must be an integer"),
    "beta": (ValueError, "beta must be a number in [0, 1]"),
    "temperature": (ValueError, "temperature must be a positive finite number"),
}

#: how ``np.dtype.kind`` is worded in the "must be a floating-point array" error
_DTYPE_WORDS = {"int": "integer", "bool": "boolean", "complex": "complex", "object": "object",
                "str": "string", "bytes": "bytes", "datetime": "datetime64[s]"}


def returns(check):
    return ("returns", check)


def same_as(fn, args, options=None, *, exact=False):
    """Documented result: bit-identical to the same backend on ``args`` (``exact``: a layout
    or byte order must not change a bit), else the numpy reference backend's result on
    ``args`` (the semantics' definition) within float32 rounding, NaN and inf exactly."""
    options = options or {}

    def check(result, backend):
        want = fn.call(args, backend if exact else "numpy", **options)
        _assert_close(result, want, exact=exact)
    return check


def rows_equal(value, rows=None):
    """Documented per-row value(s) (NaN matches NaN), in ``rows`` or every row."""
    def check(result, backend):
        r = np.asarray(result, np.float64).reshape(-1)
        sel = r if rows is None else r[rows]
        assert np.array_equal(sel, np.full(sel.shape, value), equal_nan=True), (sel, value)
    return check


def _assert_close(got, want, exact=False):
    g = np.asarray(got, np.float64)
    w = np.asarray(want, np.float64)
    assert g.shape == w.shape, (g.shape, w.shape)
    if exact:
        assert np.array_equal(g, w, equal_nan=True), (g, w)
        return
    nan = np.isnan(w)
    assert np.array_equal(np.isnan(g), nan), (g, w)
    inf = np.isinf(w) | np.isinf(g)
    assert np.array_equal(g[inf], w[inf]), (g, w)
    ok = ~(nan | inf)
    assert np.allclose(g[ok], w[ok], rtol=2e-5, atol=2e-6), (g, w)


def _generic_cases(fn):
    """The cases every function gets, for each of its (..., V) float arguments."""
    cases = []
    pr = fn.per_row
    good = _good(fn)
    for name, kind in fn.arrays.items():
        def bad(value, name=name):
            return lambda b: fn.call(_with(good, **{name: value}), b, **pr)

        ragged = [[0.1, 0.2], [0.3]]
        plain = name not in fn.indices_too             # a float argument and nothing else
        # Documented: on the device the float arguments of one call must share a dtype.
        mixed = raises(TypeError, name) if len(fn.arrays) > 1 else None
        wrong_dtype = {
            "int": np.arange(N * V).reshape(N, V), "bool": np.ones((N, V), bool),
            "complex": np.ones((N, V), complex), "object": np.full((N, V), 0.5, dtype=object),
            "str": np.full((N, V), "a"), "bytes": np.full((N, V), b"a"), "float128": np.ones((N, V), np.longdouble),
            "datetime": np.zeros((N, V), "datetime64[s]"),
        }
        for dt, value in wrong_dtype.items():
            if dt == "float128":
                expect = raises(TypeError, name, f"{name} has dtype float128; fastdiv supports float16, bfloat16, float32 and float64")
            elif plain:
                expect = raises(TypeError, name, f"{name} must be a floating-point array, got {_DTYPE_WORDS[dt]} dtype")
            else:
                # (an integer array where probabilities are expected may be read as class
                # indices of the wrong shape: ValueError; any other: TypeError)
                expect = raises((TypeError, ValueError), name)
            cases.append(Case(f"{fn.id}: {name} {dt} dtype", bad(value), expect))
        no_axis = f"{name} must have at least 1 dimension" if plain else None
        cases += [
            Case(f"{fn.id}: {name} 0-d", bad(np.float32(0.25)), raises(ValueError, name, no_axis)),
            Case(f"{fn.id}: {name} python scalar", bad(0.25), raises(ValueError, name, no_axis)),
            Case(f"{fn.id}: {name} V=0", bad(np.zeros((N, 0), np.float32)),
                 raises(ValueError, name, f"{name} has an empty class axis" if plain else None)),
            Case(f"{fn.id}: {name} ragged list", bad(ragged), raises(TypeError, name, f"{name} could not be converted")),
            Case(f"{fn.id}: {name} list of lists", bad(good[name].tolist()),
                 returns(same_as(fn, _with(good, **{name: good[name].astype(np.float64)}), pr, exact=False)),
                 on_cuda=mixed, dtype="float64"),
            Case(f"{fn.id}: {name} big-endian", bad(good[name].astype(">f4")),
                 returns(same_as(fn, good, pr, exact=True))),
            Case(f"{fn.id}: {name} non-contiguous", bad(np.repeat(good[name], 2, axis=-1)[..., ::2]),
                 returns(same_as(fn, good, pr, exact=True))),
            Case(f"{fn.id}: {name} float16", bad(good[name].astype(np.float16)),
                 returns(same_as(fn, _with(good, **{name: good[name].astype(np.float16)}), pr)),
                 on_cuda=mixed, dtype="float32" if len(fn.arrays) > 1 else "float16"),
        ]
        if len(fn.arrays) > 1:                             # shapes must agree with the others
            same = ("float target (probabilities) must have the same shape" if fn.indices_too
                    else f"{' and '.join(fn.arrays)} must have the same shape")
            cases += [
                Case(f"{fn.id}: {name} extra axis", bad(good[name][None]), raises(ValueError, name, same)),
                Case(f"{fn.id}: {name} one row short", bad(good[name][:-1]), raises(ValueError, name, same)),
                Case(f"{fn.id}: {name} one class short", bad(good[name][:, :-1]), raises(ValueError, name, same)),
            ]
        nan_row = good[name].copy()
        nan_row[1, 2] = np.nan
        cases.append(Case(f"{fn.id}: {name} NaN in row 1", bad(nan_row),
                          returns(_all(rows_equal(np.nan, [1]), same_as(fn, _with(good, **{name: nan_row}), pr)))))
        if kind == "logits":
            big = good[name] * 1e4                       # extreme but finite logits
            cases.append(Case(f"{fn.id}: {name} logits x 1e4", bad(big), returns(same_as(fn, _with(good, **{name: big}), pr))))
        if name in fn.pos_inf:
            inf_row = good[name].copy()
            inf_row[2, 0] = np.inf
            cases.append(Case(f"{fn.id}: {name} +inf in row 2", bad(inf_row),
                              returns(_all(rows_equal(fn.pos_inf[name], [2]), same_as(fn, _with(good, **{name: inf_row}), pr)))))
            neg = good[name].copy()
            neg[3, 1] = -np.inf
            cases.append(Case(f"{fn.id}: {name} -inf in row 3", bad(neg),
                              returns(same_as(fn, _with(good, **{name: neg}), pr))))
        if name in fn.all_masked:
            masked = np.full_like(good[name], -np.inf)
            cases.append(Case(f"{fn.id}: {name} -inf everywhere", bad(masked),
                              returns(_all(rows_equal(fn.all_masked[name]), same_as(fn, _with(good, **{name: masked}), pr)))))
    lead0 = {n: (a[:0] if isinstance(a, np.ndarray) and a.ndim >= 1 else a) for n, a in good.items()}
    cases.append(Case(f"{fn.id}: zero rows", lambda b: fn.call(lead0, b, **pr),
                      returns(lambda r, b: _assert_close(r, np.zeros(0)))))
    for opt, value in fn.invalid.items():
        exc, says = OPTION_ERRORS[opt]
        cases.append(Case(f"{fn.id}: {opt}={value!r}", lambda b, o=opt, v=value: fn.call(good, b, **{o: v}),
                          raises(exc, opt, says)))
    cases.append(Case(f"{fn.id}: backend='tpu'", lambda b: fn.call(good, "tpu"),
                      raises(ValueError, "backend", "backend must be one of")))
    if fn.validate:
        cases.append(Case(f"{fn.id}: validate='yes'", lambda b: fn.call(good, b, validate="yes", **pr),
                          raises(TypeError, "validate")))
        cases += _validate_cases(fn, good)
    return cases


def _all(*checks):
    def check(result, backend):
        for c in checks:
            c(result, backend)
    return check


def _validate_cases(fn, good):
    """``validate=True``: arrays given as probabilities or log-probabilities are checked."""
    pr = fn.per_row
    cases = [Case(f"{fn.id}: validate=True on good input", lambda b: fn.call(good, b, validate=True, **pr),
                  returns(same_as(fn, good, pr, exact=True)))]
    for name, kind in fn.arrays.items():
        a = good[name]
        if kind == "probs":
            broken = {"negative": np.where(a == a.max(axis=-1, keepdims=True), a - 2 * a, a),
                      "sums to 0.5": a * 0.5, "sums to 2": a * 2.0, "NaN": np.where(a == a.max(), np.nan, a)}
        elif kind == "log_probs":
            broken = {"exp sums to 0.5": a + np.log(0.5), "+inf": np.where(a == a.max(), np.inf, a),
                      "NaN": np.where(a == a.max(), np.nan, a)}
        else:
            continue
        for what, value in broken.items():
            cases.append(Case(f"{fn.id}: validate=True, {name} {what}",
                              lambda b, n=name, v=value: fn.call(_with(good, **{n: v}), b, validate=True, **pr),
                              raises(ValueError, name)))
        # Within the stated tolerance (1e-4 on row sums; 1e-2 for 16-bit inputs): accepted.
        fine = {"row sums 1 + 5e-5": a * np.float32(1 + 5e-5) if kind == "probs" else a + np.float32(5e-5),
                "float16": a.astype(np.float16)}
        for what, value in fine.items():
            args = _with(good, **{name: value})
            mixed = raises(TypeError, name) if what == "float16" and len(fn.arrays) > 1 else None
            cases.append(Case(f"{fn.id}: validate=True, {name} {what} (within tolerance)",
                              lambda b, args=args: fn.call(args, b, validate=True, **pr),
                              returns(same_as(fn, args, pr, exact=True)), on_cuda=mixed,
                              dtype="float16" if what == "float16" and len(fn.arrays) == 1 else "float32"))
    return cases


def _class_index_cases():
    """Cross-entropy with class indices: targets, ignore_index, weights."""
    x = _good(FUNCTIONS[0])["x"]
    t = np.array([0, 1, 2, 3])

    def ce(target=t, **kw):
        return lambda b: fastdiv.cross_entropy(x, target, backend=b, **kw)

    def ce_rows(target=t, **kw):
        return lambda b: fastdiv.cross_entropy(x, target, backend=b, reduction="none", **kw)

    from fastdiv import reference as R
    w = np.array([1.0, 0.5, 2.0, 0.0, 1.0])

    def ref_rows(target, ignore=-100, weight=None, eps=0.0):
        return lambda r, b: _assert_close(r, R.cross_entropy_hard_rows(x, target, ignore, weight, eps))

    cases = [
        Case("ce: target = V (one past the end)", ce(np.array([0, 1, 2, V])), raises(ValueError, "target", "target[3] = 5")),
        Case("ce: target = -1 (one before the start)", ce(np.array([-1, 1, 2, 3])), raises(ValueError, "target", "target must be in [0, 5)")),
        Case("ce: target = -7 (negative, not ignore_index)", ce(np.array([0, -7, 2, 3])), raises(ValueError, "target")),
        Case("ce: target = -100 with ignore_index=-1", ce(np.array([0, -100, 2, 3]), ignore_index=-1), raises(ValueError, "target")),
        Case("ce: target 2**40", ce(np.array([0, 1, 2, 2**40])), raises(ValueError, "target")),
        Case("ce: target uint64 max", ce(np.array([0, 1, 2, 2**64 - 1], np.uint64)), raises(ValueError, "target")),
        Case("ce: target int8", ce_rows(t.astype(np.int8)), returns(ref_rows(t))),
        Case("ce: target uint16", ce_rows(t.astype(np.uint16)), returns(ref_rows(t))),
        Case("ce: target big-endian int64", ce_rows(t.astype(">i8")), returns(ref_rows(t))),
        Case("ce: target float indices (probabilities expected)", ce(t.astype(np.float32)),
             raises(ValueError, "target", "float target (probabilities) must have the same shape")),
        Case("ce: target integer array of logits' shape", ce(np.ones((N, V), np.int64)), raises(ValueError, "target")),
        Case("ce: target bool", ce(np.ones(N, bool)), raises(TypeError, "target", "boolean")),
        Case("ce: target complex", ce(t.astype(complex)), raises(TypeError, "target")),
        Case("ce: target str", ce(np.array(list("abcd"))), raises(TypeError, "target", "target must hold integer class indices")),
        Case("ce: target object", ce(np.array([0, 1, None, 3], dtype=object)), raises(TypeError, "target")),
        Case("ce: target one short", ce(t[:3]), raises(ValueError, "target", "target of class indices must have shape")),
        Case("ce: target 2-D for 2-D logits", ce(t[:, None]), raises(ValueError, "target")),
        Case("ce: target python int for 2-D logits", ce(1), raises(ValueError, "target")),
        Case("ce: target python list", ce_rows([0, 1, 2, 3]), returns(ref_rows(t))),
        Case("ce: target python int for 1-D logits", lambda b: fastdiv.cross_entropy(x[0], 2, backend=b),
             returns(lambda r, b: _assert_close(r, R.cross_entropy_hard_rows(x[:1], [2])[0]))),
        Case("ce: target == ignore_index=-1", ce_rows(np.array([0, -1, 2, 3]), ignore_index=-1),
             returns(ref_rows(np.array([0, -1, 2, 3]), ignore=-1))),
        Case("ce: ignore_index inside [0, V)", ce_rows(t, ignore_index=2), returns(ref_rows(t, ignore=2))),
        Case("ce: every target ignored, mean", ce(np.full(N, -100)), returns(rows_equal(np.nan))),   # torch: NaN
        Case("ce: every target ignored, sum", ce(np.full(N, -100), reduction="sum"), returns(rows_equal(0.0))),
        Case("ce: ignore_index 1.5", ce(ignore_index=1.5), raises(TypeError, "ignore_index", "ignore_index must be an integer")),
        Case("ce: ignore_index '1'", ce(ignore_index="1"), raises(TypeError, "ignore_index")),
        Case("ce: ignore_index True", ce(ignore_index=True), raises(TypeError, "ignore_index")),
        Case("ce: ignore_index past int64", ce(ignore_index=2**70),
             raises(ValueError, "ignore_index", "ignore_index must fit in int64")),
        Case("ce: reduction an array", ce(reduction=np.array(["mean", "sum"])),
             raises(ValueError, "reduction", "reduction must be one of")),
        # the mean divides by the rows not ignored (counted only when ignore_index lies in the targets' range)
        Case("ce: ignore_index inside [0, V), mean", ce(t, ignore_index=2),
             returns(lambda r, b: _assert_close(r, np.mean(R.cross_entropy_hard_rows(x, t, 2)[t != 2])))),
        Case("ce: ignore_index inside [0, V), weighted mean", ce(t, ignore_index=1, weight=w),
             returns(lambda r, b: _assert_close(
                 r, np.sum(R.cross_entropy_hard_rows(x, t, 1, w)) / np.sum(w[t[t != 1]])))),
        Case("ce: weight too short", ce(weight=np.ones(V - 1)), raises(ValueError, "weight", "weight must be a 1-D array of length V = 5")),
        Case("ce: weight too long", ce(weight=np.ones(V + 1)), raises(ValueError, "weight")),
        Case("ce: weight 2-D", ce(weight=np.ones((V, 1))), raises(ValueError, "weight", "weight must be a 1-D array")),
        Case("ce: weight scalar", ce(weight=1.0), raises(ValueError, "weight")),
        Case("ce: weight negative", ce(weight=np.array([1, 1, -1e-9, 1, 1.0])), raises(ValueError, "weight", "weight must be non-negative")),
        Case("ce: weight NaN", ce(weight=np.array([1, 1, np.nan, 1, 1.0])), raises(ValueError, "weight", "weight must be finite")),
        Case("ce: weight inf", ce(weight=np.array([1, 1, np.inf, 1, 1.0])), raises(ValueError, "weight")),
        Case("ce: weight str", ce(weight=np.array(list("abcde"))), raises(TypeError, "weight", "weight must be a real numeric array")),
        Case("ce: weight bool", ce(weight=np.ones(V, bool)), raises(TypeError, "weight")),
        Case("ce: weight complex", ce(weight=np.ones(V, complex)), raises(TypeError, "weight")),
        Case("ce: weight ragged", ce(weight=[[1.0], [1.0, 2.0]]), raises(TypeError, "weight")),
        Case("ce: weight with zeros", ce_rows(weight=w), returns(ref_rows(t, weight=w))),
        Case("ce: weight all zero, mean", ce(weight=np.zeros(V)), returns(rows_equal(np.nan))),       # torch: NaN
        Case("ce: weight int list", ce_rows(weight=[1, 2, 1, 1, 3]),
             returns(ref_rows(t, weight=np.array([1, 2, 1, 1, 3.0])))),
        Case("ce: label_smoothing nan", ce(label_smoothing=float("nan")), raises(ValueError, "label_smoothing")),
        Case("ce: label_smoothing '0.1'", ce(label_smoothing="0.1"), raises(ValueError, "label_smoothing")),
        Case("ce: label_smoothing True", ce(label_smoothing=True), raises(ValueError, "label_smoothing")),
        Case("ce: label_smoothing 1.0", ce_rows(label_smoothing=1.0), returns(ref_rows(t, eps=1.0))),
    ]
    xm = x.copy()
    xm[0, 0] = -np.inf                                  # row 0's target class is masked: +inf
    cases.append(Case("ce: target class masked -> +inf",
                      lambda b: fastdiv.cross_entropy(xm, t, reduction="none", backend=b),
                      returns(rows_equal(np.inf, [0]))))
    return cases


def _misc_cases():
    x = _good(FUNCTIONS[0])["x"]
    return [
        Case("logsumexp: 3-D input", lambda b: fastdiv.logsumexp(x.reshape(2, 2, V), backend=b),
             returns(lambda r, b: _assert_close(r, fastdiv.logsumexp(x, backend="numpy").reshape(2, 2)))),
        Case("logsumexp: zero-size middle axis", lambda b: fastdiv.logsumexp(np.ones((2, 0, V), np.float32), backend=b),
             returns(lambda r, b: _assert_close(r, np.zeros((2, 0))))),
        Case("kl_div: zero-size middle axis, mean", lambda b: fastdiv.kl_div(np.ones((2, 0, V)), np.ones((2, 0, V)), backend=b),
             returns(rows_equal(np.nan))),
        Case("cross_entropy: zero-size middle axis, mean",
             lambda b: fastdiv.cross_entropy(np.ones((2, 0, V)), np.zeros((2, 0), np.int64), backend=b),
             returns(rows_equal(np.nan))),                  # an empty mean (fastdiv.reduce)
        Case("logsumexp: V=1", lambda b: fastdiv.logsumexp(x[:, :1], backend=b),
             returns(lambda r, b: _assert_close(r, x[:, 0]))),
        Case("logsumexp: torch tensor", lambda b: fastdiv.logsumexp(_torch(x), backend=b),
             returns(lambda r, b: _assert_close(r, fastdiv.logsumexp(x, backend="numpy")))),
        Case("logsumexp: Fortran order", lambda b: fastdiv.logsumexp(np.asfortranarray(x), backend=b),
             returns(lambda r, b: _assert_close(r, fastdiv.logsumexp(x, backend=b), exact=True))),
        Case("logsumexp: read-only", lambda b: fastdiv.logsumexp(_read_only(x), backend=b),
             returns(lambda r, b: _assert_close(r, fastdiv.logsumexp(x, backend=b), exact=True))),
        Case("logsumexp: structured dtype", lambda b: fastdiv.logsumexp(np.zeros((2, 3), "f4,f4"), backend=b),
             raises(TypeError, "x")),
        Case("logsumexp: None", lambda b: fastdiv.logsumexp(None, backend=b), raises(TypeError, "x")),
        Case("logsumexp: backend=None", lambda b: fastdiv.logsumexp(x, backend=None), raises(ValueError, "backend")),
    ]


def _torch(a):
    try:
        import torch
    except ImportError:
        return a
    return torch.from_numpy(a.copy())


def _read_only(a):
    a = a.copy()
    a.flags.writeable = False
    return a


def all_cases():
    cases = [c for fn in FUNCTIONS for c in _generic_cases(fn)] + _class_index_cases() + _misc_cases()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    return cases


def run_case(case, backend):
    """``(ok, message)`` for one case on one backend."""
    expect = case.expected(backend)
    kind = expect[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = case.run(backend)
    except Exception as exc:                       # the outcome is judged below, whatever it is
        if kind == "raises" and isinstance(exc, expect[1]):
            name, says = expect[2], expect[3]
            if not re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", str(exc)):
                return False, f"{type(exc).__name__} does not name {name!r}: {exc}"
            if says is not None and says not in str(exc):
                return False, f"{type(exc).__name__} does not say {says!r}: {exc}"
            return True, f"{type(exc).__name__}: {exc}"
        return False, f"unexpected {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-3)}"
    if kind == "raises":
        return False, f"returned {result!r} instead of raising {expect[1]} naming {expect[2]!r}"
    try:
        expect[1](result, backend)
    except AssertionError as exc:
        return False, f"wrong result {result!r}: {exc}"
    return True, "returned the documented result"


def main(argv):
    backend, wanted = argv[0], set(argv[1:])
    if backend == "cuda":
        small_cuda_blocks(setattr)          # the simulator: a few Python threads per block
        sim_switch_interval()               # and its busy-polling block manager: tests/conftest.py
    crash_at = os.environ.get("FASTDIV_SELFTEST_CRASH_AT")     # the harness's own test
    for case in all_cases():
        if wanted and case.id not in wanted:
            continue
        print(json.dumps({"start": case.id}), flush=True)
        if case.id == crash_at:
            os.abort()
        ok, msg = run_case(case, backend)
        print(json.dumps({"id": case.id, "ok": ok, "msg": msg}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
