"""Each numeric difference ``tests/equivalence.py --compare`` finds, against mpmath (#17 item 7).

``python tests/equivalence_mpmath.py BEFORE.pkl AFTER.pkl`` takes every case whose bytes differ
and whose difference ``EXPECTED`` explains as ``rounding`` or ``near0`` (or as an empty mean
beside a rounded lse), rebuilds its inputs (equivalence.py seeds each case's generator by its
name) through a stand-in for ``fastdiv`` that records the call, evaluates the definitions of
docs/semantics.rst at 60 digits, and prints, per reason and compute dtype, the number of cases
and the largest error of each side: relative, in ulps of the result dtype, and ``|err| / (1 +
|truth|)`` (the measure of tests/cases.py's TOL).  The table of benchmarks/NOTES.md
(2026-12-05, #17 item 7) is its output.  Covers the row-wise functions, cross_entropy, the
cuda device-array cross_entropy and dask's KL / entropy / lse; other cases print as uncovered.
"""
from __future__ import annotations

import collections
import os
import pickle
import sys

import mpmath as M
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import equivalence as E  # noqa: E402

M.mp.dps = 60
NINF = M.mpf("-inf")
NAN = M.mpf("nan")


def _mrow(r):
    return [M.mpf(float(v)) for v in r]


def _rows(a):
    a = np.asarray(a).astype(np.float64)
    return a.reshape(-1, a.shape[-1]), a.shape[:-1]


def _lse(r):
    if any(M.isnan(v) for v in r):
        return NAN
    if any(v == M.inf for v in r):
        return M.inf
    fin = [v for v in r if v != NINF]
    if not fin:
        return NINF
    m = max(fin)
    return m + M.log(M.fsum(M.exp(v - m) for v in fin))


def _log_softmax(r):
    lse = _lse(r)
    return [v - lse if v != NINF else NINF for v in r], lse


def _log_probs(r, inputs, t):
    if inputs == "logits":
        return _log_softmax([v / M.mpf(t) if v != NINF else NINF for v in r])[0]
    if inputs == "log_probs":
        return r
    return [M.log(v) if v > 0 else NINF for v in r]


def _entropy(r, inputs, t):
    if any(M.isnan(v) for v in r):
        return NAN
    if inputs == "probs":
        return -M.fsum(v * M.log(v) for v in r if v > 0)
    return -M.fsum(M.exp(a) * a for a in _log_probs(r, inputs, t) if a != NINF)


def _kl(pr, qr, inputs, t):
    if any(M.isnan(v) for v in pr + qr):
        return NAN
    if inputs == "probs":
        if any(p > 0 and q == 0 for p, q in zip(pr, qr)):
            return M.inf
        return M.fsum(p * M.log(p / q) for p, q in zip(pr, qr) if p != 0)
    lp, lq = _log_probs(pr, inputs, t), _log_probs(qr, inputs, t)
    if all(a == NINF for a in lp):
        return M.mpf(0)
    if any(a != NINF and b == NINF for a, b in zip(lp, lq)):
        return M.inf
    return M.fsum(M.exp(a) * (a - b) for a, b in zip(lp, lq) if a != NINF)


def _js(pr, qr, inputs, t, beta):
    if beta in (0.0, 1.0):
        return _kl(pr, qr, inputs, t) if beta == 0.0 else _kl(qr, pr, inputs, t)
    if any(M.isnan(v) for v in pr + qr):
        return NAN
    b = M.mpf(beta)
    if inputs == "probs":
        p, q = pr, qr
    else:
        p = [M.exp(a) if a != NINF else M.mpf(0) for a in _log_probs(pr, inputs, t)]
        q = [M.exp(a) if a != NINF else M.mpf(0) for a in _log_probs(qr, inputs, t)]
    terms = []
    for pj, qj in zip(p, q):
        m = b * pj + (1 - b) * qj
        if pj > 0:
            terms.append(b * pj * M.log(pj / m))
        if qj > 0:
            terms.append((1 - b) * qj * M.log(qj / m))
    return M.fsum(terms)


def _reduce(vals, reduction, lead):
    if reduction == "none":
        return np.array([float(v) for v in vals]).reshape(lead)
    s = M.fsum(vals)
    return float(s) if reduction == "sum" else (float(s / len(vals)) if vals else float("nan"))


class Truth:
    """Stands in for ``fastdiv``: each public function returns its mpmath value."""

    def logsumexp(self, x, backend=None):
        x2, lead = _rows(x)
        return _reduce([_lse(_mrow(r)) for r in x2], "none", lead)

    def entropy(self, p, inputs="logits", reduction="none", temperature=1.0, backend=None):
        x2, lead = _rows(p)
        return _reduce([_entropy(_mrow(r), inputs, temperature) for r in x2], reduction, lead)

    def kl_div(self, p, q, inputs="logits", reduction="mean", temperature=1.0, backend=None):
        (p2, lead), (q2, _) = _rows(p), _rows(q)
        return _reduce([_kl(_mrow(a), _mrow(b), inputs, temperature) for a, b in zip(p2, q2)], reduction, lead)

    def js_div(self, p, q, beta=0.5, inputs="logits", reduction="mean", temperature=1.0, backend=None):
        (p2, lead), (q2, _) = _rows(p), _rows(q)
        return _reduce([_js(_mrow(a), _mrow(b), inputs, temperature, beta) for a, b in zip(p2, q2)],
                       reduction, lead)

    def topk_kl_div(self, idx, top, z, tail="renormalize", reduction="mean", backend=None):
        (z2, lead), (t2, _) = _rows(z), _rows(top)
        out = []
        for zi, ti, ii in zip(z2, t2, np.asarray(idx).reshape(t2.shape)):
            lq = _log_softmax(_mrow(zi))[0]
            t = _mrow(ti)
            lp = _log_softmax(t)[0] if tail == "renormalize" else t
            val = M.fsum(M.exp(a) * (a - lq[j]) for a, j in zip(lp, ii) if a != NINF)
            if tail == "bucket" and len(ii) < len(zi):
                r = max(1 - M.fsum(M.exp(a) for a in t), 0)
                rest = M.fsum(M.exp(lq[j]) for j in range(len(zi)) if j not in set(ii.tolist()))
                val += r * M.log(r / rest) if r > 0 else 0
            out.append(val)
        return _reduce(out, reduction, lead)

    def cross_entropy(self, logits, target, reduction="mean", weight=None, label_smoothing=0.0, backend=None,
                      z_loss=0.0, softcap=None, temperature=1.0, return_lse=False, ignore_index=-100):
        x2, lead = _rows(logits)
        v = x2.shape[1]
        w = [M.mpf(1)] * v if weight is None else _mrow(np.asarray(weight).astype(np.float64))
        eps = M.mpf(label_smoothing)
        hard = np.asarray(target).dtype.kind in "iu"
        t = np.asarray(target).reshape(-1) if hard else _rows(target)[0]
        loss, zl, lses, den = [], [], [], []
        for i, r in enumerate(x2):
            r = _mrow(r)
            if softcap:
                r = [M.mpf(softcap) * M.tanh(a / softcap) if a != NINF else NINF for a in r]
            if temperature != 1.0:
                r = [a / M.mpf(temperature) if a != NINF else NINF for a in r]
            lq, lse = _log_softmax(r)
            lses.append(lse)
            if hard:
                ti = int(t[i])
                if ti == ignore_index:
                    loss.append(M.mpf(0))
                    zl.append(M.mpf(0))
                    continue
                den.append(w[ti])
                row = (1 - eps) * w[ti] * -lq[ti] if w[ti] != 0 else M.mpf(0)
                if eps:
                    row += eps / v * M.fsum(-wj * a for wj, a in zip(w, lq) if wj != 0)
            else:
                pp = [(1 - eps) * M.mpf(float(a)) + eps / v for a in t[i]]
                row = M.fsum(-pj * wj * a for pj, wj, a in zip(pp, w, lq) if pj * wj != 0)
                den.append(M.mpf(1))
            loss.append(row)
            zl.append(M.mpf(z_loss) * lse * lse)
        if reduction == "none":
            lo, zo = _reduce(loss, "none", lead), _reduce(zl, "none", lead)
        elif reduction == "sum":
            lo, zo = float(M.fsum(loss)), float(M.fsum(zl))
        else:   # the weighted mean of hard labels, z_loss over the counted rows; an empty mean is NaN
            d = M.fsum(den)
            lo = float(M.fsum(loss) / d) if d != 0 else float("nan")
            zo = float(M.fsum(zl) / len(den)) if den else float("nan")
        if z_loss or return_lse:
            return {"loss": lo, "z_loss": zo, "lse": _reduce(lses, "none", lead)}
        return lo


TRUTH = Truth()


def truth(name):
    """The mpmath value of case ``name`` (an array, a dict or a tuple of them), or None."""
    parts = name.split("|")
    op, b = parts[0], parts[1]
    rng = E.rng_for(name)
    if op in ("logsumexp", "entropy", "kl_div", "js_div", "topk_kl_div", "cross_entropy"):
        tiny = b == "cuda"
        sname, dt = parts[2], parts[3]
        shape = (E.CUDA_SHAPES if tiny else E.SHAPES)[sname]
        for gen in (E._rowwise_cases, E._ce_cases):
            for n, thunk in gen(TRUTH, b, sname, shape, dt, tiny):
                if n == name:
                    return thunk(name)
    if op == "dask_kl_entropy_lse":
        n = 0 if parts[3] == "empty" else 10
        red = parts[4].split("=")[1]
        x, z = E.logits(rng, (n, 33), "float64"), E.logits(rng, (n, 33), "float64")
        return (TRUTH.kl_div(x, z, reduction=red), TRUTH.entropy(x, reduction=red), TRUTH.logsumexp(x))
    if op == "cuda_device" and b == "cross_entropy":
        x = E.logits(rng, (5, 9), "float32", edges=False)
        t = E.targets(rng, (5,), 9, parts[2])
        w = rng.uniform(0.2, 2, 9).astype(np.float32) if parts[4] == "w=1" else None
        return TRUTH.cross_entropy(x, t, reduction=parts[3].split("=")[1], weight=w)
    return None


def _flat(t):
    if isinstance(t, tuple):
        return {f"r.{i}": np.asarray(v, dtype=np.float64) for i, v in enumerate(t)}
    if isinstance(t, dict):
        return {f"r.{k}": np.asarray(v, dtype=np.float64) for k, v in t.items()}
    return {"r": np.asarray(t, dtype=np.float64)}


def errors(value, want, dtype):
    """(relative, ulps of ``dtype``, |err| / (1 + |want|)): the largest over the finite values."""
    v, w = np.atleast_1d(value).astype(np.float64), np.atleast_1d(want).astype(np.float64)
    ok = np.isfinite(v) & np.isfinite(w)
    if not ok.any():
        return 0.0, 0.0, 0.0
    d, w = np.abs(v[ok] - w[ok]), np.abs(w[ok])
    ulp = np.spacing(w.astype(dtype)).astype(np.float64)
    return float(np.max(d / np.maximum(w, 1e-300))), float(np.max(d / ulp)), float(np.max(d / (1 + w)))


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    a, b = (pickle.load(open(p, "rb")) for p in sys.argv[1:])
    groups = collections.defaultdict(lambda: collections.defaultdict(float))
    uncovered = []
    for name in sorted(set(a) & set(b)):
        ra, rb = a[name], b[name]
        if ra.get("values") == rb.get("values") or "values" not in ra or "values" not in rb:
            continue
        why = next(((w, k) for w, k in E.expected(name) if E._difference_is(k, ra, rb, name)), None)
        if why is None or why[1] not in ("rounding", "near0", "empty_nan"):
            continue
        try:
            want = truth(name)
        except Exception as exc:   # an oracle that cannot take a case says so
            want = None
            uncovered.append(f"{name}: {exc!r}")
        if want is None:
            if why[1] != "empty_nan" and not any(u.startswith(name + ":") for u in uncovered):
                uncovered.append(name)      # (an empty mean alone is 0 -> NaN: nothing to measure)
            continue
        want = _flat(want)
        dt = "float64" if "float64" in name or name.startswith("dask") else "32/16-bit"
        g = groups[(why[0], dt)]
        g["cases"] += 1
        for k, (vdt, shape, raw) in ra["values"].items():
            if rb["values"][k] == (vdt, shape, raw) or k.split("@")[0] not in want:
                continue
            x, y = E._array(ra["values"][k]), E._array(rb["values"][k])
            w = np.broadcast_to(want[k.split("@")[0]], x.shape)
            moved = (x != y) & ~(np.isnan(x) & np.isnan(y))
            odt = np.dtype(vdt) if np.dtype(vdt).kind == "f" else np.dtype(np.float64)
            eb, ea = errors(x[moved], w[moved], odt), errors(y[moved], w[moved], odt)
            for i, tag in enumerate(("rel", "ulp", "tol")):
                g[tag + "_b"] = max(g[tag + "_b"], eb[i])
                g[tag + "_a"] = max(g[tag + "_a"], ea[i])
            g["worse"] += ea[1] > max(eb[1], 1.0)
    print("| reason | dtype | cases | rel. err. before -> after | ulp before -> after | err/(1+|t|) after |")
    print("| --- | --- | ---: | --- | --- | --- |")
    for (why, dt), g in sorted(groups.items()):
        print(f"| {why} | {dt} | {int(g['cases'])} | {g['rel_b']:.1e} -> {g['rel_a']:.1e} | "
              f"{g['ulp_b']:.3g} -> {g['ulp_a']:.3g} | {g['tol_a']:.1e} |")
    for line in uncovered:
        print("uncovered:", line)


if __name__ == "__main__":
    main()
