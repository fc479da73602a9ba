"""Float64 numpy reference: the oracle every compiled backend is tested against.

Each ``*_rows`` function takes 2-D arrays ``(rows, V)`` and returns one float64 value per
row.  They are written for clarity, not speed: they materialise ``log_softmax`` and use
several passes.  The API layer (``fastdiv.api``) owns validation, reshaping, reductions
and options; these functions only define the per-row mathematics and its edge cases.

Edge-case semantics (shared by every backend, documented in docs/semantics.rst):

* ``-inf`` logit: a masked class, probability exactly 0.  Terms with zero probability
  (or zero weight) contribute exactly 0 -- never ``0 * inf = NaN``.
* A row whose logits are all ``-inf``: ``lse = -inf``; its distribution has empty support,
  so entropy is 0, ``D(P||Q) = 0`` when P is all-masked, and the hard-label CE is ``+inf``
  (the target has probability 0).
* A row containing ``+inf`` (and no NaN): ``lse = +inf``; the softmax is undefined
  (inf/inf), so every softmax-derived quantity of that row is NaN.
* NaN anywhere in a row makes that row's result NaN, and no other row's.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "logsumexp_rows",
    "log_softmax_rows",
    "entropy_rows",
    "cross_entropy_hard_rows",
    "cross_entropy_soft_rows",
    "kl_rows",
    "js_rows",
    "topk_kl_rows",
    "gaussian_kl_elements",
]


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def logsumexp_rows(x):
    """``log(sum(exp(x)))`` per row, stable: ``m + log(sum(exp(x - m)))`` with ``m = max(x)``."""
    x = _f64(x)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = np.max(x, axis=1)                        # NaN-propagating
        m_safe = np.where(np.isfinite(m), m, 0.0)    # never compute -inf - -inf
        s = np.sum(np.exp(x - m_safe[:, None]), axis=1)
        lse = m_safe + np.log(s)
    lse = np.where(m == -np.inf, -np.inf, lse)
    lse = np.where(m == np.inf, np.inf, lse)
    return np.where(np.isnan(m), np.nan, lse)


def log_softmax_rows(x):
    """``x - lse(x)`` per row; an all ``-inf`` row stays ``-inf``; a row with ``+inf`` or NaN is NaN.

    Formed as ``(x - m) - log(s)``, not ``x - (m + log s)``: with logits near 1e4 the latter
    rounds every log-probability at the scale of 1e4 (1e-12 absolute in float64)."""
    x = _f64(x)
    lse = logsumexp_rows(x)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        m = np.max(x, axis=1)
        m_safe = np.where(np.isfinite(m), m, 0.0)
        log_s = np.log(np.sum(np.exp(x - m_safe[:, None]), axis=1))
        out = (x - m_safe[:, None]) - log_s[:, None]
    out[lse == -np.inf] = -np.inf
    out[~np.isfinite(lse) & (lse != -np.inf)] = np.nan
    return out


def _sum_where_nonzero(weight, value):
    """``sum(weight * value)`` per row where terms with ``weight == 0`` are exactly 0."""
    with np.errstate(invalid="ignore", over="ignore"):
        terms = np.where(weight == 0, 0.0, weight * value)
    return np.sum(terms, axis=1)


def _log(p):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(_f64(p))


def _to_log_probs(a, inputs):
    """The row-wise log-probabilities of ``a`` given as logits, log-probabilities or probabilities.

    ``log_probs`` and ``probs`` are taken literally (no renormalisation), like scipy's
    ``rel_entr``/``entr`` and torch's ``kl_div``; ``logits`` go through ``log_softmax``.
    """
    if inputs == "logits":
        return log_softmax_rows(a)
    if inputs == "log_probs":
        return _f64(a)
    if inputs == "probs":
        return _log(a)
    raise ValueError(f"inputs must be 'logits', 'log_probs' or 'probs', got {inputs!r}")


def _probs(logp):
    with np.errstate(over="ignore"):
        return np.exp(logp)


def entropy_rows(p, inputs="logits"):
    """``H(P) = -sum p log p`` per row, with ``0 log 0 = 0``."""
    logp = _to_log_probs(p, inputs)
    probs = _f64(p) if inputs == "probs" else _probs(logp)
    return -_sum_where_nonzero(probs, logp)


def kl_rows(p, q, inputs="logits"):
    """``D(P||Q) = sum p (log p - log q)`` per row: 0 where p = 0, ``+inf`` where p > 0 = q.

    "p > 0" is decided exactly, not after rounding: a finite logit (or log-probability) has
    positive probability even when exp() underflows (a logit 800 below the row maximum), so
    it meets a masked class of Q with ``+inf``, as the mathematics says."""
    logp = _to_log_probs(p, inputs)
    logq = _to_log_probs(q, inputs)
    probs = _f64(p) if inputs == "probs" else _probs(logp)
    has_mass = probs > 0 if inputs == "probs" else logp > -np.inf
    with np.errstate(invalid="ignore"):
        out = _sum_where_nonzero(np.where(has_mass, probs, 0.0), logp - logq)
    out = np.where((has_mass & (logq == -np.inf)).any(axis=1), np.inf, out)
    # NaN in P or Q poisons the row (in Q even where P has no mass on it).
    return np.where(np.isnan(logq).any(axis=1) | np.isnan(logp).any(axis=1), np.nan, out)


def cross_entropy_hard_rows(logits, target, ignore_index=-100, weight=None, label_smoothing=0.0):
    """Per-row loss of ``torch.nn.functional.cross_entropy(..., reduction='none')``.

    ``loss = (1 - eps) * w[t] * (-log q_t) + eps / V * sum_j w_j (-log q_j)``; ignored rows are 0
    (never read).  A zero-weight term is exactly 0 (torch would give ``0 * inf = NaN`` on a
    masked class), but a row with NaN or ``+inf`` logits is NaN whatever its weights.
    """
    logq = log_softmax_rows(logits)
    n, v = logq.shape
    target = np.asarray(target, dtype=np.int64)
    w = np.ones(v) if weight is None else _f64(weight)
    ignored = target == ignore_index
    t = np.where(ignored, 0, target)
    lse = logsumexp_rows(logits)
    invalid = np.isnan(lse) | (lse == np.inf)       # NaN or +inf in the row
    nll = -logq[np.arange(n), t]
    w_t = w[t]
    with np.errstate(invalid="ignore"):
        keep = (w_t != 0) & (label_smoothing < 1.0)        # a zero-weight term is exactly 0
        loss = np.where(keep, w_t * nll * (1.0 - label_smoothing), 0.0)
        if label_smoothing > 0:
            smooth = -_sum_where_nonzero(np.broadcast_to(w, logq.shape), logq)
            loss = loss + label_smoothing / v * smooth
    loss = np.where(invalid, np.nan, loss)             # even with zero weights
    return np.where(ignored, 0.0, loss)


def cross_entropy_soft_rows(logits, target_probs, weight=None, label_smoothing=0.0):
    """``H(P, Q) = -sum_j w_j p'_j log q_j`` with ``p' = (1 - eps) p + eps / V`` (torch's rule)."""
    logq = log_softmax_rows(logits)
    v = logq.shape[1]
    p = _f64(target_probs) * (1.0 - label_smoothing) + label_smoothing / v
    w = np.ones(v) if weight is None else _f64(weight)
    loss = -_sum_where_nonzero(p * w, logq)
    lse = logsumexp_rows(logits)
    return np.where(np.isnan(lse) | (lse == np.inf), np.nan, loss)


def softcap_rows(x, cap):
    """Gemma-style logit soft-capping ``cap * tanh(x / cap)``; a masked class (``-inf``) stays
    masked (it is not moved to ``-cap``), NaN stays NaN, ``+inf`` becomes ``cap``."""
    x = _f64(x)
    with np.errstate(invalid="ignore"):
        return np.where(x == -np.inf, -np.inf, cap * np.tanh(x / cap))


def evaluate_rows(logits, target, reference=None, ignore_index=-100, topk=(1,)):
    """The per-row quantities of ``fastdiv.evaluate``, in float64, several passes.

    Returns a dict of per-row arrays:

    ``lse``, ``entropy``: as ``logsumexp_rows`` / ``entropy_rows`` (target-independent);
    ``argmax``: the first index of the row maximum, ``-1`` for a row with NaN or all ``-inf``;
    ``counted``: the target is not ``ignore_index``;
    ``nll``: ``-log q_t`` (the hard-label cross-entropy), 0 for ignored rows;
    ``target_prob``: ``exp(-nll)``, 0 for ignored rows;
    ``rank``: the number of classes whose logit is strictly greater than the target's (ties
    with the target count in its favour), 0 for ignored rows, -1 for rows with NaN or ``+inf``;
    ``correct@k``: ``rank < k`` for a counted row whose target is not masked (``x_t > -inf``)
    and whose softmax is defined (no NaN, no ``+inf``); NaN rows count as misses;
    with ``reference``: ``kl_ref_model = D(softmax(reference) || softmax(logits))`` and
    ``kl_model_ref = D(softmax(logits) || softmax(reference))`` (see ``kl_rows``).
    """
    x = _f64(logits)
    n = x.shape[0]
    target = np.asarray(target, dtype=np.int64).reshape(n)
    counted = target != ignore_index
    t = np.where(counted, target, 0)
    rows = np.arange(n)
    lse = logsumexp_rows(x)
    with np.errstate(invalid="ignore"):
        m = np.max(x, axis=1) if x.shape[1] else np.full(n, -np.inf)
    argmax = np.where(np.isnan(m) | (m == -np.inf), -1, np.argmax(x, axis=1))
    logq = log_softmax_rows(x)
    xt = x[rows, t]
    nll = np.where(counted, -logq[rows, t], 0.0)
    with np.errstate(over="ignore"):
        target_prob = np.where(counted, np.exp(-nll), 0.0)
    with np.errstate(invalid="ignore"):
        rank = np.where(counted, np.sum(x > xt[:, None], axis=1), 0)
    rank = np.where(counted & (np.isnan(lse) | (lse == np.inf)), -1, rank)
    valid = counted & ~np.isnan(lse) & (lse != np.inf) & (xt > -np.inf)
    out = dict(lse=lse, entropy=entropy_rows(x), argmax=argmax, counted=counted, nll=nll,
               target_prob=target_prob, rank=rank)
    for k in topk:
        out[f"correct@{k}"] = valid & (rank < k)
    if reference is not None:
        out["kl_ref_model"] = kl_rows(reference, x)
        out["kl_model_ref"] = kl_rows(x, reference)
    return out

# --------------------------------------------------------------------------- divergence family (issue 5)


def js_rows(p, q, beta=0.5, inputs="logits"):
    """Generalized Jensen-Shannon divergence per row, with the endpoints as limits.

    For ``0 < beta < 1``: ``beta D(P||M) + (1 - beta) D(Q||M)`` with ``M = beta P + (1 - beta) Q``,
    i.e. ``sum beta p (log p - log m) + (1 - beta) q (log q - log m)``; a term with zero
    probability is 0, and ``m >= beta p > 0`` wherever ``p > 0`` (so the result is finite).
    ``beta = 0`` gives ``D(P||Q)`` and ``beta = 1`` gives ``D(Q||P)``: the limits of the
    divergence divided by ``beta (1 - beta)`` (Liger's convention).  NaN in either row: NaN.
    """
    if beta == 0.0:
        return kl_rows(p, q, inputs)
    if beta == 1.0:
        return kl_rows(q, p, inputs)
    logp = _to_log_probs(p, inputs)
    logq = _to_log_probs(q, inputs)
    pp = _f64(p) if inputs == "probs" else _probs(logp)
    pq = _f64(q) if inputs == "probs" else _probs(logq)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # log m in log space: beta * p underflows to 0 for a subnormal p > 0, and log m = -inf
        # would turn that term into +inf.
        logm = np.logaddexp(np.log(beta) + logp, np.log1p(-beta) + logq)
        out = beta * _sum_where_nonzero(pp, logp - logm) + (1.0 - beta) * _sum_where_nonzero(pq, logq - logm)
    return np.where(np.isnan(logq).any(axis=1) | np.isnan(logp).any(axis=1), np.nan, out)


def topk_kl_rows(indices, teacher_logprobs, student_logits, tail="renormalize"):
    """``D(P_teacher || Q_student)`` per row from the teacher's top-k classes, written densely.

    ``indices`` (rows, k): distinct classes; ``teacher_logprobs`` (rows, k): their log-probabilities;
    ``Q = softmax(student_logits)`` over all V classes.  The teacher's missing mass
    ``r = 1 - sum_i p_i`` (the classes it did not store) is handled by ``tail``:

    * ``"renormalize"``: the teacher is ``p_i / sum p`` on its k classes and 0 elsewhere:
      ``sum_i p~_i (log p~_i - log q_i)``.  A row whose log-probabilities are all ``-inf`` is
      an empty teacher: 0.
    * ``"bucket"``: the other ``V - k`` classes are merged into one class on both sides:
      ``sum_i p_i (log p_i - log q_i) + r log(r / s)`` with ``s`` the student's probability of
      those classes and ``r = max(0, 1 - sum_i p_i)``; no tail term when ``k = V``.

    ``p > 0`` where ``q = 0`` (and ``r > 0`` with ``s = 0``) gives ``+inf``; NaN in either row: NaN.
    """
    logq = log_softmax_rows(student_logits)
    n, v = logq.shape
    idx = np.asarray(indices, dtype=np.int64)
    t = _f64(teacher_logprobs)
    logq_i = np.take_along_axis(logq, idx, axis=1)
    logp = log_softmax_rows(t) if tail == "renormalize" else t
    pp = _probs(logp)
    has_mass = logp > -np.inf
    with np.errstate(invalid="ignore"):
        out = _sum_where_nonzero(np.where(has_mass, pp, 0.0), logp - logq_i)
    out = np.where((has_mass & (logq_i == -np.inf)).any(axis=1), np.inf, out)
    if tail == "bucket" and idx.shape[1] < v:
        r = np.maximum(0.0, 1.0 - np.sum(pp, axis=1))
        rest = logq.copy()
        np.put_along_axis(rest, idx, -np.inf, axis=1)
        log_s = logsumexp_rows(rest)          # the student's log-probability of the tail classes
        with np.errstate(invalid="ignore", divide="ignore"):
            extra = np.where(r > 0, r * (np.log(r) - log_s), 0.0)
        out = out + extra
    bad = np.isnan(logq).any(axis=1) | np.isnan(logp).any(axis=1)
    return np.where(bad, np.nan, out)


def _expm1_minus_x(d):
    """``exp(d) - 1 - d`` without cancellation: its Taylor series for ``|d| < 0.5`` (16 terms,
    below 1e-18 relative), ``expm1(d) - d`` elsewhere (the subtraction then loses < 3 bits)."""
    d = _f64(d)
    small = np.abs(d) < 0.5
    ds = np.where(small, d, 0.0)
    acc = np.zeros_like(ds)
    for n in range(17, 1, -1):              # Horner: acc = sum_{n>=2} d^(n-1) / n!
        acc = (acc + 1.0) * ds / n
    acc = acc * ds
    with np.errstate(over="ignore", invalid="ignore"):
        big = np.where(d == np.inf, np.inf, np.expm1(d) - d)     # not inf - inf
    return np.where(small, acc, big)


def gaussian_kl_elements(mu, logvar, mu_prior, logvar_prior):
    """``KL(N(mu, exp(logvar)) || N(mu_prior, exp(logvar_prior)))`` per element, in float64:
    ``(exp(d) - 1 - d + ((mu - mu_prior) exp(-logvar_prior / 2))^2) / 2`` with
    ``d = logvar - logvar_prior``; formed from differences of log-variances, so that
    ``|logvar|`` in the hundreds neither overflows nor cancels."""
    d = _f64(logvar) - _f64(logvar_prior)
    with np.errstate(over="ignore", invalid="ignore"):
        z = (_f64(mu) - _f64(mu_prior)) * np.exp(-0.5 * _f64(logvar_prior))
        return 0.5 * (_expm1_minus_x(d) + z * z)
