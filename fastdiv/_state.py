"""The ``evaluate`` kernel's per-row state and how it becomes per-row results.

The kernel (registry op ``evaluate``, contract in ``fastdiv/_registry.py``) writes per row a
float64 state ``st[:, 8]`` (``st[:, 10]`` with the two KLs the kernel finished itself) and an
int64 companion ``ix[:, 3]`` (columns below);
:func:`finish_rows` turns states into per-row results with the row endings of
``fastdiv.reference``, once for every backend, for ``cross_entropy``'s options, for
``evaluate`` and for merged vocabulary shards (``fastdiv.states``).

Top-k and ties: ``rank`` is the number of classes whose logit is *strictly* greater than the
target's, and the target is within the top k iff ``rank < k``: a class tied with the target
never pushes it out.  A masked target (``-inf``) is never within the top k, and a row whose
softmax is undefined (NaN or ``+inf`` logits) counts as a miss.
"""
from __future__ import annotations

import numpy as np

from . import _registry

#: columns of the float64 state the evaluate kernel writes; KL_MR, KL_RM (a state of 10
#: columns, with a reference): D(model || ref), D(ref || model) as ``kl_logits`` finishes them
M, S, W, XT, MZ, SZ, WXZ, WZX, KL_MR, KL_RM = range(10)
#: columns of its int64 companion
ARGMAX, COUNT, FLAGS = range(3)


def finish_rows(m, s, w, xt, counted, rank, argmax, topk, kl=None):
    """Per-row float64 results from state columns, with the row endings of fastdiv.reference.

    ``kl``: ``(mz, sz, flags, d_mr, d_rm)`` when there is a reference: the reference's
    maximum and sum, the kernel's flags and the two KLs where both rows are finite
    (:func:`sum_kls` of a kernel state, or the chain rule's of merged slices)."""
    out = {}
    with np.errstate(all="ignore"):
        bad = np.isnan(m) | (m == np.inf)         # softmax undefined
        masked = m == -np.inf                     # every class masked
        fin = ~bad & ~masked
        logs = np.log(np.where(fin, s, 1.0))
        out["lse"] = np.where(fin, m + logs, m)
        out["entropy"] = np.where(bad, np.nan, np.where(masked, 0.0, logs - w / np.where(fin, s, 1.0)))
        nll = np.where(bad, np.nan, np.where(masked, np.inf, (m - xt) + logs))
        out["nll"] = np.where(counted, nll, 0.0)
        out["target_prob"] = np.where(counted, np.exp(-out["nll"]), 0.0)
        out["argmax"] = np.where(fin | (m == np.inf), argmax, -1)
        out["rank"] = np.where(counted, np.where(bad, -1, rank), 0)
        valid = counted & fin & (xt > -np.inf)
        for k in topk:
            out[f"correct@{k}"] = valid & (rank < k)
    if kl is not None:
        mz, sz, flags, d_mr, d_rm = kl
        out["kl_model_ref"], out["kl_ref_model"] = kl_endings(m, mz, flags, d_mr, d_rm)
    return out


def kl_endings(m, mz, flags, d_mr, d_rm):
    """``(D(model || ref), D(ref || model))`` per row with the row endings of
    fastdiv.reference, from the maxima ``m``, ``mz``, the kernel's ``flags`` and the two KLs
    ``d_mr``, ``d_rm`` where both rows are finite."""
    with np.errstate(invalid="ignore"):
        bad_any = np.isnan(m) | (m == np.inf) | np.isnan(mz) | (mz == np.inf)
        masked, masked_z = m == -np.inf, mz == -np.inf
        d_mr = np.where(masked, 0.0, np.where(masked_z | (flags & 1 > 0), np.inf, d_mr))   # D(model || ref)
        d_rm = np.where(masked_z, 0.0, np.where(masked | (flags & 2 > 0), np.inf, d_rm))   # D(ref || model)
        return np.where(bad_any, np.nan, d_mr), np.where(bad_any, np.nan, d_rm)


def sum_kls(s, sz, wxz, wzx):
    """The one pass's KLs, ``D(model || ref) = wxz / s - log s + log sz`` and ``D(ref ||
    model) = wzx / sz - log sz + log s``, for rows where both are finite (the others take
    :func:`finish_rows`' endings).  They cancel as the rows near each other: see
    :func:`near_kl_rows`."""
    with np.errstate(all="ignore"):
        logs, logsz = np.log(s), np.log(sz)
        return wxz / s - logs + logsz, wzx / sz - logsz + logs


def near_kl_rows(st, rows, dtype):
    """The rows whose one-pass KL (``rows``: :func:`finish_rows`' dict of the evaluate state
    ``st``), in either direction, has cancelled toward its rounding error: ``D(model || ref) =
    wxz / s - log s + log sz`` subtracts terms of order ``L = 1 + |wxz / s| + 2 (|log s| +
    |log sz|)`` (``D(ref || model)`` likewise), so a row with ``D < KL32_NEAR_BELOW L``
    (float32 sums) or ``KL_EXACT_BELOW L`` (float64) has lost the KL's relative accuracy --
    for rows that are nearly equal, ``D ~ |P - Q|^2``.  These are ``kl_logits``' own
    thresholds (``fastdiv._registry``); only rows where both maxima are finite (the others
    end by ``finish_rows``' rules).  Flat row indices, int64."""
    thr = _registry.KL32_NEAR_BELOW if np.dtype(dtype).itemsize <= 4 else _registry.KL_EXACT_BELOW
    with np.errstate(all="ignore"):
        logs = 2.0 * (np.abs(np.log(st[:, S])) + np.abs(np.log(st[:, SZ])))
        near = rows["kl_model_ref"] < thr * (1.0 + np.abs(st[:, WXZ] / st[:, S]) + logs)
        near |= rows["kl_ref_model"] < thr * (1.0 + np.abs(st[:, WZX] / st[:, SZ]) + logs)
        near &= np.isfinite(st[:, M]) & np.isfinite(st[:, MZ])
    return np.flatnonzero(near)


def _factor(m_part, m_all):
    """e^(m_part - m_all), exactly 0 for an all-masked part (m_part = -inf)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(m_part == -np.inf, 0.0, np.exp(m_part - m_all))


def _delta(m_part, m_all):
    with np.errstate(invalid="ignore"):
        return np.where(m_part == -np.inf, 0.0, m_part - m_all)


def _combine(fa, fb, a, b):
    with np.errstate(invalid="ignore", over="ignore"):
        return np.where(fa == 0, 0.0, fa * a) + np.where(fb == 0, 0.0, fb * b)


def _log_share(m_part, s_part, m_all, s_all):
    """log of a part's mass in the union, ``(m_part - m) + log s_part - log s`` (logs: the
    masses of far rows underflow); -inf for a part without mass."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(m_part == -np.inf, -np.inf, (m_part - m_all) + np.log(s_part) - np.log(s_all))


def merge_sums(a, b):
    """The state columns of the union of two disjoint class ranges of the same rows.

    ``a``, ``b``: dicts of per-row arrays ``m, s, w, argmax`` (global class indices) and, with a
    reference, ``mz, sz, flags`` and either the one pass's KL sums ``wxz, wzx`` (kernel states:
    ``fastdiv.execute``'s tiles, whose near rows are then summed again) or each slice's own
    KLs and log mass ratio ``kl_model_ref, kl_ref_model, log_ratio`` (``fastdiv.states``,
    merged by :func:`_chain_kls`); returns the same dict for the union.  With
    ``M = max(m_a, m_b)`` and ``f_a = e^(m_a - M)``: ``s = f_a s_a + f_b s_b``,
    ``w = f_a (w_a + (m_a - M) s_a) + f_b (w_b + (m_b - M) s_b)``, the KL sums likewise (every
    ``x - m`` moves by ``m_a - M``, every ``z - mz`` by ``mz_a - Mz``); a part that is entirely
    ``-inf`` has ``f = 0`` and adds exactly nothing (never ``-inf - -inf``); the argmax is the
    larger maximum's (the smaller index on ties: the first maximum, like numpy).  Used by
    ``fastdiv.states.merge`` and by ``fastdiv.execute``'s vocabulary tiles."""
    with np.errstate(invalid="ignore"):
        m = np.maximum(a["m"], b["m"])               # NaN-propagating
        fa, fb = _factor(a["m"], m), _factor(b["m"], m)
        da, db = _delta(a["m"], m), _delta(b["m"], m)
        out = dict(m=m, s=_combine(fa, fb, a["s"], b["s"]),
                   w=_combine(fa, fb, a["w"] + da * a["s"], b["w"] + db * b["s"]),
                   argmax=np.where(b["m"] > a["m"], b["argmax"],
                                   np.where(a["m"] > b["m"], a["argmax"], np.minimum(a["argmax"], b["argmax"]))))
        if a.get("mz") is not None:
            mz = np.maximum(a["mz"], b["mz"])
            ga, gb = _factor(a["mz"], mz), _factor(b["mz"], mz)
            ea, eb = _delta(a["mz"], mz), _delta(b["mz"], mz)
            out.update(mz=mz, sz=_combine(ga, gb, a["sz"], b["sz"]), flags=a["flags"] | b["flags"])
            if a.get("wxz") is not None:
                out.update(wxz=_combine(fa, fb, a["wxz"] + (da - ea) * a["s"], b["wxz"] + (db - eb) * b["s"]),
                           wzx=_combine(ga, gb, a["wzx"] + (ea - da) * a["sz"], b["wzx"] + (eb - db) * b["sz"]))
            if a.get("kl_model_ref") is not None:
                out.update(_chain_kls(a, b, _log_share(a["m"], a["s"], m, out["s"]),
                                      _log_share(b["m"], b["s"], m, out["s"]),
                                      _log_share(a["mz"], a["sz"], mz, out["sz"]),
                                      _log_share(b["mz"], b["sz"], mz, out["sz"])))
    return out


def _excess(u):
    """e^u - 1 - u >= 0, to a few ulps relative also where it is ~u^2 / 2 (series below
    |u| = 1e-3: ``expm1(u) - u`` loses ~eps / |u| there)."""
    with np.errstate(over="ignore", invalid="ignore"):
        series = u * u * 0.5 * (1.0 + u / 3.0 * (1.0 + u * 0.25 * (1.0 + u * 0.2)))
        return np.where(np.abs(u) < 1e-3, series, np.expm1(u) - u)


def _chain_kls(a, b, lpa, lpb, lqa, lqb):
    """The two KLs and the log mass ratio of the union of two slices, by the chain rule.

    With ``P_a, Q_a`` the model's and the reference's mass in slice a within the union (their
    logs ``lpa``, ... given) and ``c_a = log(sum_a e^z / sum_a e^x)`` (``log_ratio``),
    ``Q_a / P_a = e^(c_a - c)`` where ``c = log(P_a e^(c_a) + P_b e^(c_b))`` is the union's,
    and::

        D(model || ref) = P_a D_a + P_b D_b + P_a J(c_a - c) + P_b J(c_b - c)
        D(ref || model) = Q_a D'_a + Q_b D'_b + Q_a J(c - c_a) + Q_b J(c - c_b)

    with ``J(u) = e^u - 1 - u``: the coarse KL between the two slices' masses, ``sum P_a (c -
    c_a)``, in a form whose terms are all >= 0 (``sum P_a e^(c_a - c) = 1``), so nothing
    cancels as the rows near each other (the one-pass sums do, to the KL's rounding error).
    The slices' KLs carry their own accuracy; c's accuracy enters the coarse term at first
    order (its error times ``c_a - c``), the masses' at second order.  Where one row has no
    mass in a part, that part adds the other row's mass there (the identity ``sum Q_a = 1``
    misses it; the KL of the other direction is +inf by the flags) and ``c`` is formed from
    the side that has mass everywhere; the row's infinite or undefined KLs come from
    ``finish_rows``' endings."""
    with np.errstate(all="ignore"):
        ca, cb = a["log_ratio"], b["log_ratio"]

        def log_sum(la, ua, lb, ub):        # log(e^(la + ua) + e^(lb + ub)), a part without mass left out
            return np.logaddexp(np.where(la > -np.inf, la + ua, -np.inf), np.where(lb > -np.inf, lb + ub, -np.inf))

        # c = log sum P_a e^(c_a), or -log sum Q_a e^(-c_a) where the reference has mass in a
        # part where the model has none
        one_sided = (lpa == -np.inf) & (lqa > -np.inf) | (lpb == -np.inf) & (lqb > -np.inf)
        c = np.where(one_sided, -log_sum(lqa, -ca, lqb, -cb), log_sum(lpa, ca, lpb, cb))
        c = np.where(ca == cb, ca, c)       # equal rows: exactly 0 (log(P_a + P_b) is not)

        def part(lw, lother, d, u):
            # w (d + J(u)); w e^u is the other row's mass there, so w J(u) is formed as
            # e^(lw + u) - w (1 + u) where |u| >= 1 (no overflow), and where w = 0 it is
            # that mass (so that sum w J(u) = sum other - 1 + D when one row has mass where
            # the other has none: the D that is finite then)
            w = np.exp(lw)
            excess = np.where(np.abs(u) < 1.0, w * _excess(u), np.exp(lw + u) - w * (1.0 + u))
            return np.where(lw == -np.inf, np.exp(lother), w * d + excess)

        mr = part(lpa, lqa, a["kl_model_ref"], ca - c) + part(lpb, lqb, b["kl_model_ref"], cb - c)
        rm = part(lqa, lpa, a["kl_ref_model"], c - ca) + part(lqb, lpb, b["kl_ref_model"], c - cb)
    return dict(kl_model_ref=mr, kl_ref_model=rm, log_ratio=c)


def chain_columns(st, ix):
    """What :func:`_chain_kls` needs of a slice of the classes, from the kernel state ``(st,
    ix)`` of that slice with its own KLs (10 columns, :func:`has_kls`): both KLs with
    :func:`finish_rows`' endings, and the log mass ratio ``c = log(sum e^z / sum e^x)``.

    c is formed from the kernel's KL, ``(mz - m) - wxz / s + D(x || z)``: the identity ``D =
    wxz / s - log s + log sz`` turned around, with D as accurate as the kernel made it (it sums
    a row pair again where its one pass cancelled, by its own threshold, which also counts how
    far its references moved).  ``wxz``'s terms are ``(x - m) - (z - mz)``, small where the rows
    are near, so its rounding is a share of c's small part, where the sums' in
    ``(mz + log sz) - (m + log s)`` is not: float32 sums carry ~1e-7 (numba's up to 5e-7) of
    themselves, and the chain rule multiplies c's error by ``c_a - c`` (that form left float32
    shards' KLs 1e-3 off at 51 classes, ``N(0, 1e-4)``, and a linear head's tiles 8e-6 off at
    KL ~1e-4).  Where the kernel's one pass stood, both forms agree to float64's rounding.
    Used by ``fastdiv.states``' slices and by ``fastdiv.execute``'s vocabulary tiles."""
    mr, rm = kl_endings(st[:, M], st[:, MZ], ix[:, FLAGS], st[:, KL_MR], st[:, KL_RM])
    with np.errstate(all="ignore"):
        dm = st[:, MZ] - st[:, M]
        both = np.isfinite(dm)              # the kernel's KLs: where both maxima are finite
        # D(z || x) = wzx / sz - log sz + log s likewise, where D(x || z) is +inf (x has mass
        # where z has none); where both are, or a row is empty or undefined, the sums' own c
        c = np.where(both & np.isfinite(mr), dm - st[:, WXZ] / st[:, S] + mr,
                     np.where(both & np.isfinite(rm), dm + st[:, WZX] / st[:, SZ] - rm,
                              (st[:, MZ] + np.log(st[:, SZ])) - (st[:, M] + np.log(st[:, S]))))
    return dict(kl_model_ref=mr, kl_ref_model=rm, log_ratio=c)


#: :func:`merge_sums`' keys and their columns in the kernel state: (float64 ones, int64 ones),
#: without and with a reference
_MERGED = ((("m", M), ("s", S), ("w", W)), (("argmax", ARGMAX),))
_MERGED_REF = ((("mz", MZ), ("sz", SZ), ("wxz", WXZ), ("wzx", WZX)), (("flags", FLAGS),))


def state_columns(st, ix, reference, offset=0):
    """:func:`merge_sums`' dict of a kernel state ``(st, ix)`` (argmax moved by ``offset``);
    with a reference and the kernel's own KLs (:func:`has_kls`), :func:`chain_columns` too,
    so that the KLs merge by the chain rule."""
    out = {}
    for floats, ints in (_MERGED, _MERGED_REF) if reference else (_MERGED,):
        out.update({key: st[:, col] for key, col in floats})
        out.update({key: ix[:, col] for key, col in ints})
    out["argmax"] = out["argmax"] + offset
    if reference and has_kls(st):
        out.update(chain_columns(st, ix))
    return out


def store_columns(st, ix, merged):
    """Write :func:`merge_sums`' dict back into a kernel state ``(st, ix)`` (its KL columns
    too, where both have them)."""
    for floats, ints in (_MERGED, _MERGED_REF) if "mz" in merged else (_MERGED,):
        for key, col in floats:
            st[:, col] = merged[key]
        for key, col in ints:
            ix[:, col] = merged[key]
    if has_kls(st) and "kl_model_ref" in merged:
        st[:, KL_MR] = merged["kl_model_ref"]
        st[:, KL_RM] = merged["kl_ref_model"]


def width(kls):
    """Float64 columns of an evaluate state: 8, or 10 with the KLs the kernel finished itself
    (with a reference, :func:`has_kls`)."""
    return KL_RM + 1 if kls else KL_MR


def has_kls(st):
    """Whether the state ``st`` holds the KLs the kernel finished itself (KL_MR, KL_RM)."""
    return st.shape[1] > KL_RM


def finish_state(st, ix, counted, topk, reference):
    """:func:`finish_rows` of the kernel's whole ``(st, ix)`` (``reference``: whether it
    computed the KL columns): the kernel's own KLs where the state has them, else the one
    pass's (:func:`sum_kls`)."""
    kl = None
    if reference:
        kls = (st[:, KL_MR], st[:, KL_RM]) if has_kls(st) else sum_kls(st[:, S], st[:, SZ], st[:, WXZ], st[:, WZX])
        kl = (st[:, MZ], st[:, SZ], ix[:, FLAGS]) + kls
    return finish_rows(st[:, M], st[:, S], st[:, W], st[:, XT], counted, ix[:, COUNT], ix[:, ARGMAX], topk, kl)


def hard_loss(nll, counted, t, w):
    """``w[t] * nll`` per row as ``ce_hard`` forms it: a zero-weight term is exactly 0, but NaN
    wins over a zero weight; ignored rows 0."""
    wt = w[np.where(counted, t, 0)].astype(np.float64)
    with np.errstate(invalid="ignore"):             # 0 * inf where a masked target has no weight
        loss = np.where(np.isnan(nll), np.nan, np.where(wt == 0, 0.0, wt * nll))
    loss[~counted] = 0.0
    return loss
