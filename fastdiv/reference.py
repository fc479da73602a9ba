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


def _max_count_rest(x):
    """Per row: the maximum m (NaN-propagating), the number c of entries equal to it and the sum r
    of ``exp(x - m)`` over the others, so that ``sum exp(x - m) = c + r`` with ``c >= 1`` exact.
    (Rows whose maximum is not finite give placeholders: the callers replace their results.)"""
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        m = np.max(x, axis=1)
        m_safe = np.where(np.isfinite(m), m, 0.0)    # never compute -inf - -inf
        top = x == m_safe[:, None]
        c = np.maximum(np.sum(top, axis=1), 1)
        r = np.sum(np.where(top, 0.0, np.exp(x - m_safe[:, None])), axis=1)
    return m, m_safe, c, r


def _log_s(c, r):
    """``log(c + r)`` as ``log c + log1p(r / c)``: a tiny r (a row dominated by its maximum) keeps
    its relative precision, where ``log(1 + r)`` would round it away below 1.1e-16."""
    return np.log(c) + np.log1p(r / c)


def logsumexp_rows(x):
    """``log(sum(exp(x)))`` per row, stable: ``m + log(c + r)`` with ``m = max(x)``, c the number of
    entries equal to m and r the sum of ``exp(x - m)`` over the others (see ``_log_s``)."""
    x = _f64(x)
    m, m_safe, c, r = _max_count_rest(x)
    with np.errstate(invalid="ignore"):
        lse = m_safe + _log_s(c, r)
    lse = np.where(m == -np.inf, -np.inf, lse)
    lse = np.where(m == np.inf, np.inf, lse)
    return np.where(np.isnan(m), np.nan, lse)


def log_softmax_rows(x):
    """``x - lse(x)`` per row; an all ``-inf`` row stays ``-inf``; a row with ``+inf`` or NaN is NaN.

    Formed as ``(x - m) - log(s)``, not ``x - (m + log s)``: with logits near 1e4 the latter
    rounds every log-probability at the scale of 1e4 (1e-12 absolute in float64)."""
    x = _f64(x)
    m, m_safe, c, r = _max_count_rest(x)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        out = (x - m_safe[:, None]) - _log_s(c, r)[:, None]
    out[m == -np.inf] = -np.inf
    out[(m == np.inf) | np.isnan(m)] = np.nan
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
    """``H(P) = -sum p log p`` per row, with ``0 log 0 = 0``.

    Probabilities are taken literally, term by term ``scipy.special.entr``: a negative p (outside
    the domain) makes its row ``-inf``, as does ``p = +inf``; NaN gives NaN."""
    if inputs == "probs":
        p = _f64(p)
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), np.where(p < 0, np.inf, 0.0 * p))
        return -np.sum(plogp, axis=1)
    logp = _to_log_probs(p, inputs)
    return -_sum_where_nonzero(_probs(logp), logp)


def rel_entr(p, q):
    """Elementwise ``p log(p / q)`` with ``scipy.special.rel_entr``'s rules: 0 where ``p = 0 <= q``,
    ``+inf`` where p or q is negative (outside the domain) or ``p > 0 = q``, NaN for NaN.

    The log-ratio is ``log1p((p - q) / q)`` where ``q / 2 <= p <= 2 q`` (there ``p - q`` is exact,
    Sterbenz), so nearly equal p and q keep their relative precision where ``log p - log q``
    would cancel to a few digits; elsewhere it is ``log p - log q`` (``p / q`` may overflow)."""
    p, q = _f64(p), _f64(q)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        near = (q <= 2 * p) & (p <= 2 * q)
        ratio = np.where(near, np.log1p((p - q) / np.where(near, q, 1.0)), np.log(np.abs(p)) - np.log(np.abs(q)))
        t = np.where((p > 0) & (q > 0), p * ratio, np.where((p == 0) & (q >= 0), 0.0, np.inf))
    return np.where(np.isnan(p) | np.isnan(q), np.nan, t)


def _two_diff(a, b):
    """``(s, e)`` with ``s = fl(a - b)`` and ``a - b = s + e`` exactly (Knuth's TwoSum), finite a, b."""
    s = a - b
    bv = s - a
    e = (a - (s - bv)) + (-b - bv)
    return s, e


#: phi(b) = b e^b - e^b + 1 = sum_{k >= 2} (k - 1) b^k / k!  (the series, |b| < 1: 22 terms, below 1e-18)
_PHI = [(k - 1) / float(np.prod(np.arange(1, k + 1, dtype=np.float64))) for k in range(2, 24)]


def _phi(b):
    """``phi(b) = b e^b - expm1(b) >= 0`` for ``|b| < 1`` by its series (no cancellation)."""
    acc = np.zeros_like(b)
    for c in reversed(_PHI):
        acc = acc * b + c
    return acc * b * b


def _kl_logits_rows(x, z):
    """``D(softmax(x) || softmax(z))`` per row in a form that does not cancel.

    With ``a_j = log p_j - log q_j + c`` (``a_j = (x_j - z_j) - (mx - mz)``, both differences
    formed exactly) and any shift k, ``b = a - k``, ``nu = E_q[expm1(b)]``:
    ``D = (E_q[phi(b)] - psi(nu)) / (1 + nu)``, ``phi(b) = b e^b - e^b + 1 >= 0`` (the terms of
    ``sum_j q_j (r_j log r_j - r_j + 1)``, r = p / q), ``psi(nu) = (1 + nu) log1p(nu) - nu``.
    Every phi term is >= 0, so nearly equal P and Q keep the result's relative precision where
    ``E_p[log p - log q]`` as a sum of signed terms cancels to ~1e-16 absolute.  k is a first
    estimate of ``log E_q[e^a]``, which makes nu and psi(nu) ~ 1e-16 and ~1e-32."""
    x, z = _f64(x), _f64(z)
    logq = log_softmax_rows(z)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        mx = np.max(x, axis=1)
        mz = np.max(z, axis=1)
        fin = np.isfinite(x) & np.isfinite(z) & (np.isfinite(mx) & np.isfinite(mz))[:, None]
        s1, e1 = _two_diff(np.where(fin, x, 0.0), np.where(fin, z, 0.0))
        s2, e2 = _two_diff(np.where(np.isfinite(mx), mx, 0.0), np.where(np.isfinite(mz), mz, 0.0))
        a = np.where(fin, (s1 - s2[:, None]) + (e1 - e2[:, None]), (x - z) - (mx - mz)[:, None])
        has_q = logq > -np.inf
        q = np.exp(logq)
        k = logsumexp_rows(np.where(has_q, a + logq, -np.inf))
        k = np.where(np.isfinite(k), k, 0.0)
        for _ in range(2):
            b = a - k[:, None]
            small = np.abs(b) < 1
            bs = np.where(small, b, 0.0)
            qe = np.exp(logq + b)                       # q e^b = p e^(c - k), without overflow
            nu_terms = np.where(small, q * np.expm1(bs), qe - q)
            phi = np.where(small, q * _phi(bs), np.where(b == -np.inf, q, qe * (b - 1.0) + q))
            nu = np.sum(np.where(has_q, nu_terms, 0.0), axis=1)
            big_phi = np.sum(np.where(has_q, phi, 0.0), axis=1)
            psi = np.where(np.abs(nu) < 1e-5, nu * nu * (0.5 - nu / 6 + nu * nu / 12), (1 + nu) * np.log1p(nu) - nu)
            d = (big_phi - psi) / (1 + nu)
            # E_q[phi(b)] and psi(nu) share ~nu^2 / 2: a D far below nu^2 is redone from k = c
            if not np.any(psi > 1e-3 * d):
                break
            k = k + np.where(psi > 1e-3 * d, np.log1p(nu), 0.0)
        return d


def kl_rows(p, q, inputs="logits"):
    """``D(P||Q) = sum p (log p - log q)`` per row: 0 where p = 0, ``+inf`` where p > 0 = q.

    "p > 0" is decided exactly, not after rounding: a finite logit (or log-probability) has
    positive probability even when exp() underflows (a logit 800 below the row maximum), so
    it meets a masked class of Q with ``+inf``, as the mathematics says.  Probabilities are
    taken literally, term by term ``rel_entr`` (negative values give ``+inf``); logits go
    through ``_kl_logits_rows``, which keeps nearly equal distributions' relative precision."""
    if inputs == "probs":
        return np.sum(rel_entr(p, q), axis=1)
    logp = _to_log_probs(p, inputs)
    logq = _to_log_probs(q, inputs)
    has_mass = logp > -np.inf
    with np.errstate(invalid="ignore", over="ignore"):
        pp = np.where(has_mass, _probs(logp), 0.0)
        out = _sum_where_nonzero(pp, logp - logq)
    if inputs == "logits":
        # The sum of signed terms p (log p - log q) cancels to ~1e-16 L absolute (L: the size
        # of its terms); where that is not far below D, the form without cancellation.  (That
        # one forms a_j - k, which rounds at the scale of |a|: worse for a large D between
        # rows far apart, e.g. 2e-12 relative at D ~ 5e4.)
        with np.errstate(invalid="ignore", over="ignore"):
            size = 1.0 + _sum_where_nonzero(pp, np.abs(logp) + np.abs(np.where(has_mass, logq, 0.0)))
        out = np.where(out < 1e-3 * size, _kl_logits_rows(p, q), out)
        out = np.where(np.all(~has_mass, axis=1), 0.0, out)         # P has empty support
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
    Probabilities are taken literally; a negative one (outside the domain) gives ``+inf``, the
    ``rel_entr`` value of its term, as in ``kl_rows``.
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
        # Where p and q are close (|d| <= 1, d = log q - log p), log p - log m and log q - log m
        # are small differences of values near log beta: formed from d instead,
        # log p - log m = -log1p((1 - beta) expm1(d)), they keep their relative accuracy (a
        # row dominated by one class: JS ~1e-15 came out 2-3 % off, #17 item 7's triage).
        d = logq - logp
        close = np.abs(d) <= 1.0                        # False for NaN (-inf - -inf): logm's form
        p_m = np.where(close, -np.log1p((1.0 - beta) * np.expm1(d)), logp - logm)
        q_m = np.where(close, -np.log1p(beta * np.expm1(-d)), logq - logm)
        out = beta * _sum_where_nonzero(pp, p_m) + (1.0 - beta) * _sum_where_nonzero(pq, q_m)
    if inputs == "probs":
        out = np.where(((pp < 0) | (pq < 0)).any(axis=1), np.inf, out)
        return np.where((np.isnan(pp) | np.isnan(pq) | (pp == np.inf) | (pq == np.inf)).any(axis=1), np.nan, out)
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
