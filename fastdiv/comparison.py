"""``fastdiv.compare`` (module ``fastdiv.comparison``, as ``evaluate`` lives in ``fastdiv.evaluation``): how far a model's output distribution moved from a base model's.

For regression checks of a quantized model against its base, a new kernel or runtime against
the old one, a fine-tune against its parent.  The statistics follow llama.cpp's perplexity
tool in KL-divergence mode (``--kl-divergence``), so numbers can be compared with its output.

Per row, in one read of each input (the ``compare`` kernel of each CPU backend, contract in
``fastdiv._registry``: evaluate's pass of the model with the base as reference, then the JS
pass from cache), with the definitions and the rules for masked classes and NaN of fastdiv's
public functions:

* ``kld`` = D(base ‖ model) and ``reverse_kld`` = D(model ‖ base)
  (:func:`fastdiv.evaluate` with ``reference=base``: its ``kl_ref_model`` / ``kl_model_ref``);
* ``js``: the Jensen–Shannon divergence, beta = 0.5 (:func:`fastdiv.js_div`);
* with targets: ``nll_base`` / ``nll_model`` and ``p_base`` / ``p_model`` of the target
  (:func:`fastdiv.evaluate`'s ``nll`` and ``target_prob``), ``delta_p = p_model - p_base``;
* ``same_top1``: the two argmaxes (:func:`fastdiv.evaluate`'s ``argmax``) are equal;
* ``top{k}`` for each k of ``topk`` above 1: the base's top-1 class is within the model's
  top k, as :func:`fastdiv.evaluate` of the model with the base's argmax as target: ``rank <
  k``, ``rank`` counting the classes with a strictly larger logit (ties in its favour);
* ``base_top1_prob``: the base's probability of its own top-1 class, ``exp(max - lse)``.

Per-row values are float64 from the kernel's float64 state, whatever the input's dtype (KLD,
JS and NLL are accumulated in float64 per chunk, as evaluate's).  KLD, reverse KLD and JS
are summed class by class from terms that do not cancel as the model nears its base, so they
keep their relative accuracy down to 0 (~1e-7 from float32 logits; docs/semantics.rst, "KL
of nearby rows").  Memory: the columns kept
for the exact quantiles, 74 bytes per counted row with targets (as ``meters.Comparator``).

Rows whose target is ``ignore_index`` are left out of everything (per-row arrays hold the
counted rows only; ``row`` gives their flat indices in the input).

Aggregates, over the counted rows (``n`` of them), with llama.cpp's definitions:

* ``mean`` and ``se = sqrt((E[x^2] - mean^2) / (n - 1))`` (the variance is computed from the
  kept values as ``mean((x - mean)^2)``, the same number without the cancellation), NaN for
  ``n < 2``;
* ``quantiles`` by numpy.quantile's default linear interpolation: exact, from the kept
  per-row values (an infinite KLD gives infinite upper quantiles where numpy would give NaN);
* ``delta_p``: ``rms = sqrt(E[dp^2])`` and ``rms_se = se(dp^2) / (2 rms)`` (first-order error
  propagation, as llama.cpp);
* ``same_top1``: ``mean`` = p and the binomial ``se = sqrt(p (1 - p) / (n - 1))``;
* ``ppl``: ``base`` / ``model`` = exp(mean NLL); ``ln_ratio`` = mean(NLL_model - NLL_base)
  and its paired ``ln_ratio_se = sqrt(se_m^2 + se_b^2 - 2 cov)``, ``cov = (E[nll_m nll_b] -
  E[nll_m] E[nll_b]) / (n - 1)`` (equal to the se of the per-row differences, which is how it
  is computed); ``ratio = exp(ln_ratio)``, ``ratio_se = ratio * ln_ratio_se``; ``diff = model
  - base``, ``diff_se = sqrt((model se_m)^2 + (base se_b)^2 - 2 model base cov)``;
  ``nll_correlation``: Pearson's r of the two NLLs;
* ``kld_by_confidence``: the mean KLD over the rows whose ``base_top1_prob`` falls in
  ``[i/10, (i+1)/10)`` for i = 0..9 (1.0 in the last bucket); NaN for an empty bucket.

NaN: a row whose base or model logits hold NaN has NaN KLD, JS and NLL; it stays counted, so
every aggregate it enters is NaN (nothing is dropped silently; ``fastdiv compare --fail-if``
fails a condition whose value is NaN).  A NaN base row has no top-1 class: it agrees with no
model row and falls in no confidence bucket.  Masked classes (``-inf``) follow
:func:`fastdiv.evaluate`: a class the model masks but the base does not makes KLD ``inf``.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

from . import _checks, _interop, _lazy, _state, execute, plan as _plan
from ._typing import ArrayLike, Backend

__all__ = ["compare", "Comparison"]

#: percentiles reported for kld, reverse_kld and js
QUANTILES = (0, 0.1, 1, 5, 10, 50, 90, 95, 99, 99.9, 100)
#: percentiles reported for delta_p
DELTA_P_QUANTILES = (0, 0.1, 1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9, 100)
#: buckets of the base's top-1 probability for kld_by_confidence
CONFIDENCE_BUCKETS = 10
#: the per-row columns that exist only with targets
TARGET_COLUMNS = ("nll_base", "nll_model", "p_base", "p_model")


def per_row(base, logits, target=None, *, ignore_index=-100, topk=(1, 5), backend="auto"):
    """The per-row columns of the counted rows: ``(columns, rows)``, ``rows`` the number of input
    rows.  ``columns`` maps a name of the module docstring (and ``row``, ``same_top1``,
    ``top{k}``) to a 1-D array over the counted rows."""
    plan = _plan.compare(ignore_index=ignore_index, topk=topk, backend=backend, base=base, logits=logits)
    ignore, ks, backend = plan.ignore_index, plan.topk, plan.backend
    b = _checks.float_array("base", base)
    x = _checks.float_array("logits", logits)
    if b.shape != x.shape:
        what = "vocabulary sizes differ" if b.shape[-1] != x.shape[-1] else "row shapes differ"
        raise ValueError(f"base and logits must have the same shape, got base {b.shape} and logits {x.shape} "
                         f"({what})")
    lead, v = x.shape[:-1], x.shape[-1]
    nrows = int(np.prod(lead, dtype=np.int64))
    if _lazy.is_lazy(b) or _lazy.is_lazy(x):
        return _per_row_blocks(b, x, target, ignore_index=ignore, topk=ks, backend=backend)
    if target is None:
        t = np.full(nrows, -1, dtype=np.int64)
        counted = np.ones(nrows, dtype=bool)
    else:
        t = _checks.class_targets(_checks.as_array("target", target), lead, v, ignore)
        counted = t != ignore
    st, ix, _ = execute.run_state(backend, x, np.where(counted, t, -1), b, op="compare")
    cols = _columns(st, ix, counted, ks)
    cols = {"row": np.flatnonzero(counted).astype(np.int64), **cols}
    if target is None:
        for key in TARGET_COLUMNS:
            del cols[key]
    return cols, nrows


def _columns(st, ix, counted, ks):
    """The per-row columns from the compare kernel's state (``fastdiv._registry``), finished
    like evaluate's: the model's columns are its state with the base as reference, the base's
    its own (m, s) and target logit."""
    n = st.shape[0]
    # the kernel's per-class KLs (exact near 0; NaN where a row is not finite, which
    # finish_rows' endings replace)
    rm = _state.finish_rows(st[:, 0], st[:, 1], st[:, 2], st[:, 3], counted, ix[:, 1], ix[:, 0], (),
                            kl=(st[:, 4], st[:, 5], ix[:, 2], st[:, 11], st[:, 10]))
    rb = _state.finish_rows(st[:, 4], st[:, 5], np.zeros(n), st[:, 8], counted, ix[:, 1], ix[:, 3], ())
    arg_b = rb["argmax"]
    has_top1 = arg_b >= 0
    with np.errstate(invalid="ignore", over="ignore"):
        base_top1 = np.where(has_top1, np.exp(st[:, 4] - rb["lse"]), np.nan)
    cols = {"kld": rm["kl_ref_model"], "reverse_kld": rm["kl_model_ref"], "js": st[:, 9],
            "base_top1_prob": base_top1, "same_top1": has_top1 & (rm["argmax"] == arg_b)}
    for k in ks:
        if k > 1:
            cols[f"top{k}"] = (ix[:, 1] >= 0) & (ix[:, 1] < k)
    cols.update(nll_base=rb["nll"], nll_model=rm["nll"], p_base=rb["target_prob"], p_model=rm["target_prob"])
    return {key: np.asarray(a)[counted] for key, a in cols.items()}


def _per_row_blocks(b, x, target, **kwargs):
    """:func:`per_row` with lazy logits (``fastdiv.linear``) on either side: each block of rows
    is computed once per side and compared like stored rows (a row's columns depend on that
    row only), so the rows x V logits never exist and each side's matmul runs once."""
    lead, v = x.shape[:-1], x.shape[-1]
    n = int(np.prod(lead, dtype=np.int64))
    t = None
    if target is not None:
        t = _checks.class_targets(_checks.as_array("target", target), lead, v, kwargs["ignore_index"])
    sides = [s if _lazy.is_lazy(s) else s.reshape(n, v) for s in (b, x)]
    step = min(s.block_rows(np.dtype(s.dtype).itemsize) for s in sides if _lazy.is_lazy(s))
    buffers, parts = ({}, {}), []
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        bb, xb = (_lazy.Rows(s, r0, r1).compute(s.dtype, buf) if _lazy.is_lazy(s) else s[r0:r1]
                  for s, buf in zip(sides, buffers))
        cols, _ = per_row(bb, xb, None if t is None else t[r0:r1], **kwargs)
        cols["row"] = cols["row"] + r0
        parts.append(cols)
    if not parts:                                   # no rows: the columns of an empty stored block
        return per_row(np.zeros((0, v)), np.zeros((0, v)), None if t is None else t, **kwargs)[0], 0
    return {k: np.concatenate([c[k] for c in parts]) for k in parts[0]}, n


# --------------------------------------------------------------------------- statistics


def _mean(x):
    return float(np.mean(x)) if x.size else math.nan


def _se(x):
    """sqrt((E[x^2] - mean^2) / (n - 1)), the variance taken about the mean (no cancellation)."""
    n = x.size
    if n < 2:
        return math.nan
    with np.errstate(invalid="ignore", over="ignore"):
        return float(np.sqrt(np.mean((x - np.mean(x)) ** 2) / (n - 1)))


def _quantiles(x, qs):
    """numpy.quantile's default (linear between the order statistics at ``h = (n - 1) q``, with
    its rounding), except that an order statistic hit exactly, or two equal ones, is returned
    as is: numpy gives NaN there when the values are infinite (``inf * 0``), where the median
    of ``[1, 2, inf]`` is 2 and the maximum is ``inf``.  Any NaN makes every quantile NaN."""
    if not x.size or np.isnan(x).any():
        return {f"{q:g}": math.nan for q in qs}
    s = np.sort(x)
    h = (s.size - 1) * (np.asarray(qs, dtype=np.float64) / 100.0)
    lo = np.floor(h).astype(np.int64)
    hi = np.minimum(lo + 1, s.size - 1)
    t = h - lo
    a, b = s[lo], s[hi]
    with np.errstate(invalid="ignore"):
        diff = b - a
        values = np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)
    values = np.where(b == np.inf, np.inf, np.where(a == -np.inf, -np.inf, values))   # between x and +-inf
    values = np.where((t == 0) | (a == b), a, values)
    return {f"{q:g}": float(val) for q, val in zip(qs, values)}


def _summary(x, qs=QUANTILES):
    return {"mean": _mean(x), "se": _se(x), "quantiles": _quantiles(x, qs)}


def _exp(a):
    return math.exp(a) if a < 709.78 or a != a else math.inf


def _ppl(nll_b, nll_m):
    n = nll_b.size
    nan = math.nan
    mb, mm = _mean(nll_b), _mean(nll_m)
    se_b, se_m = _se(nll_b), _se(nll_m)
    out = {"base": _exp(mb), "model": _exp(mm)}
    d = nll_m - nll_b
    ln_ratio = _mean(d)
    ln_ratio_se = _se(d)                                  # = sqrt(se_m^2 + se_b^2 - 2 cov)
    with np.errstate(invalid="ignore", over="ignore"):
        cov = (float(np.mean((nll_m - mm) * (nll_b - mb))) / (n - 1)) if n >= 2 else nan
        corr = cov / (se_m * se_b) if n >= 2 and se_m * se_b > 0 else nan
        var_diff = (out["model"] * se_m) ** 2 + (out["base"] * se_b) ** 2 - 2 * out["model"] * out["base"] * cov
    out.update(ln_ratio=ln_ratio, ln_ratio_se=ln_ratio_se, ratio=_exp(ln_ratio),
               ratio_se=_exp(ln_ratio) * ln_ratio_se, diff=out["model"] - out["base"],
               diff_se=math.sqrt(max(var_diff, 0.0)) if var_diff == var_diff else nan, nll_correlation=corr)
    return out


def _by_confidence(kld, p_top1):
    """Mean KLD per bucket [i/10, (i+1)/10) of the base's top-1 probability (1.0 in the last)."""
    ok = ~np.isnan(p_top1)
    bucket = np.minimum((p_top1[ok] * CONFIDENCE_BUCKETS).astype(np.int64), CONFIDENCE_BUCKETS - 1)
    sums = np.bincount(bucket, weights=kld[ok], minlength=CONFIDENCE_BUCKETS)
    counts = np.bincount(bucket, minlength=CONFIDENCE_BUCKETS)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return [float(m) for m in means], counts


# --------------------------------------------------------------------------- the result


class Comparison:
    """Per-row values and aggregates of :func:`compare` (and of ``meters.Comparator``).

    Per-row arrays (1-D, float64 or bool, over the counted rows): ``row`` (flat index in the
    input), ``kld``, ``reverse_kld``, ``js``, ``base_top1_prob``, ``same_top1``, ``topk[k]``
    for each k > 1 and, with targets, ``nll_base``, ``nll_model``, ``p_base``, ``p_model``,
    ``delta_p`` (None without targets).  Aggregates: :meth:`to_dict` (and ``rows``,
    ``count``).
    """

    def __init__(self, columns, rows, topk, with_target):
        self.columns = columns
        self.rows = int(rows)
        self.count = int(columns["row"].size)
        self.topk_values = tuple(k for k in topk if k > 1)
        self.with_target = bool(with_target)
        self.topk = {k: columns[f"top{k}"] for k in self.topk_values}
        self.delta_p = columns["p_model"] - columns["p_base"] if with_target else None
        self._dict = None

    def __getattr__(self, name):
        if name.startswith("_") or name == "columns":
            raise AttributeError(name)
        if name in self.columns:
            return self.columns[name]
        if name in TARGET_COLUMNS:
            return None
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def to_dict(self):
        """The aggregates as a JSON-ready dict (keys in the module docstring; floats may be NaN;
        ``ppl`` and ``delta_p`` are None without targets)."""
        if self._dict is None:
            self._dict = self._aggregates()
        return self._dict

    def _aggregates(self):
        c = self.columns
        if self.count == 0:
            warnings.warn("compare: no counted row (every target is ignore_index, or no rows); the statistics are NaN",
                          RuntimeWarning, stacklevel=3)
        out = {"rows": self.rows, "count": self.count}
        for key in ("kld", "reverse_kld", "js"):
            out[key] = _summary(c[key])
        if self.with_target:
            dp = self.delta_p
            summary = _summary(dp, DELTA_P_QUANTILES)
            sq = dp * dp
            rms = math.sqrt(_mean(sq)) if sq.size else math.nan
            with np.errstate(divide="ignore", invalid="ignore"):
                rms_se = _se(sq) / (2 * rms) if rms > 0 else math.nan
            out["delta_p"] = {"mean": summary["mean"], "se": summary["se"], "rms": rms, "rms_se": rms_se,
                              "quantiles": summary["quantiles"]}
        else:
            out["delta_p"] = None
        p = _mean(c["same_top1"].astype(np.float64))
        n = self.count
        out["same_top1"] = {"mean": p, "se": math.sqrt(p * (1 - p) / (n - 1)) if n >= 2 else math.nan}
        out["topk_agreement"] = {str(k): _mean(c[f"top{k}"].astype(np.float64)) for k in self.topk_values}
        out["ppl"] = _ppl(c["nll_base"], c["nll_model"]) if self.with_target else None
        out["kld_by_confidence"] = _by_confidence(c["kld"], c["base_top1_prob"])[0]
        return out

    def kld_by_confidence_counts(self):
        """The number of rows in each bucket of ``kld_by_confidence``."""
        return [int(k) for k in _by_confidence(self.columns["kld"], self.columns["base_top1_prob"])[1]]

    def worst(self, n):
        """Indices into the per-row arrays of the ``n`` rows with the largest KLD, largest first
        (NaN first: a NaN row is the worst).

        Parameters
        ----------
        n : int
            How many rows (all of them when ``n`` exceeds the count).
        """
        kld = self.columns["kld"]
        key = np.where(np.isnan(kld), np.inf, kld)
        order = np.argsort(-key, kind="stable")
        return order[:max(0, int(n))]

    def __repr__(self):
        d = self.to_dict()
        ppl = "" if d["ppl"] is None else f", ppl_ratio={d['ppl']['ratio']:.6g}"
        return (f"Comparison(rows={self.rows}, count={self.count}, kld={d['kld']['mean']:.6g}"
                f"±{d['kld']['se']:.2g}, same_top1={d['same_top1']['mean']:.6g}{ppl})")


@_interop.native_arrays
def compare(base: ArrayLike, logits: ArrayLike, target: ArrayLike | None = None, *, ignore_index: int = -100,
            topk: int | Sequence[int] = (1, 5), backend: Backend = "auto") -> Comparison:
    """How far ``logits``' distributions are from ``base``'s: KL both ways, JS, top-1 agreement,
    top-k agreement, and with targets the perplexity ratio and the target's probability shift,
    with llama.cpp's standard errors and exact quantiles (see ``fastdiv.compare``'s module
    docstring for every definition).

    Parameters
    ----------
    base : array_like, shape (..., V)
        The base (reference) model's logits: float16, bfloat16, float32 or float64.
    logits : array_like, shape of ``base``
        The compared model's logits.
    target : array_like of int, shape ``base.shape[:-1]``, optional
        Class indices in ``[0, V)`` or ``ignore_index``; without it, every row is counted and
        ``ppl`` and ``delta_p`` are None.
    ignore_index : int
        Rows with this target are left out of everything.
    topk : int or sequence of int
        For each k > 1, ``topk_agreement[k]``: the share of rows whose base top-1 class is
        within the model's top k (k = 1 is ``same_top1``).
    backend : {"auto", "numba", "cython", "numpy"}
        As in :func:`fastdiv.evaluate`, host arrays only (numpy, memory maps, torch and JAX CPU
        arrays); device arrays and ``"cuda"`` raise ``BackendUnavailable`` in this version.

    Returns
    -------
    Comparison
        Per-row arrays over the counted rows and, from ``to_dict()``, the aggregates.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> rng = np.random.default_rng(0)
    >>> base = rng.standard_normal((64, 100)); model = base + 0.1 * rng.standard_normal((64, 100))
    >>> res = fastdiv.compare(base, model, rng.integers(0, 100, 64))
    >>> stats = res.to_dict()
    >>> 0 < stats["kld"]["mean"] < 0.01 and stats["ppl"]["ratio"] > 0
    True
    """
    plan = _plan.compare(ignore_index=ignore_index, topk=topk, backend=backend, base=base, logits=logits)
    cols, rows = per_row(base, logits, target, ignore_index=plan.ignore_index, topk=plan.topk, backend=plan.backend)
    return Comparison(cols, rows, plan.topk, target is not None)
