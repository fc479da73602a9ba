"""Mergeable per-row states over slices of the vocabulary (``fastdiv.states``).

A :class:`RowState` holds, per row, what a slice ``[offset, offset + V_shard)`` of the class
axis contributes: the maximum ``m``, ``s = sum e^(x - m)``, ``w = sum e^(x - m) (x - m)``, the
target's logit when the target lies in the slice, the argmax, the ``K = max(topk)`` largest
logits (top-k candidates) and, with reference logits, the reference's maximum and sum, the
two KLs between the slice's own softmaxes and its log mass ratio ``c = log(sum e^z / sum
e^x)``.  :func:`merge` combines two states of disjoint slices exactly (up to rounding):
with ``M = max(m_a, m_b)`` and ``f_a = e^(m_a - M)``::

    s = f_a s_a + f_b s_b,    w = f_a (w_a + (m_a - M) s_a) + f_b (w_b + (m_b - M) s_b)

(a slice that is entirely ``-inf`` has ``f = 0`` and contributes exactly nothing, never
``-inf - -inf``), top-k candidates by keeping the K largest of both, the argmax by the
larger maximum (the smaller index on ties: the first maximum, like numpy), and the KLs by
the chain rule: with ``P_a``, ``Q_a`` the slices' masses in the union,

    D(P || Q) = P_a D_a + P_b D_b + sum_i P_i (e^(c_i - c) - 1 - (c_i - c)),

every term >= 0, so nothing cancels as the two rows near each other (the one-pass sums
``sum p (x - z)`` did, to the KL's rounding error: float32 KLs near 5e-9 came out up to 16x
off, before 2026-12-07).  Where a slice's one pass cancelled, its KLs are summed again as
``kl_div``'s kernel sums them (the evaluate kernel's KL columns) and its ``c`` is formed from
them (``fastdiv._state.chain_columns``).
:func:`finalize` turns a state covering the whole vocabulary into the :class:`Evaluation` of
``fastdiv.evaluate`` (``lse``, ``entropy``, ``nll``, ``kl_model_ref`` / ``kl_ref_model``,
accuracies), so ``cross_entropy``, ``logsumexp``, ``entropy``, ``kl_div`` and ``evaluate``
can be computed on vocabulary shards held by different workers.  Top-k from candidates:
``rank = #(candidates > x_t)``, which equals the true rank whenever it is below K, the only
case where ``rank < k <= K`` can hold.

A state is a plain object of numpy arrays (picklable; ``state.arrays`` lists them); its
extra memory is O(rows * K) and computing it reads the slice once through the evaluate
kernel, plus once more per block for the candidates (``np.argpartition``, O(block) memory).
"""
from __future__ import annotations

import numpy as np

from . import _checks, execute, plan as _plan
from ._state import ARGMAX, FLAGS, M, MZ, S, SZ, W, XT, chain_columns, finish_rows, merge_sums
from .evaluation import row_results

__all__ = ["RowState", "row_state", "merge", "finalize"]

_FIELDS = ("m", "s", "w", "xt", "has_target", "counted", "argmax", "top_values", "mz", "sz", "kl_model_ref",
           "kl_ref_model", "log_ratio", "flags")
#: the fields of a state with a reference, beside the model's
_REF_FIELDS = ("mz", "sz", "kl_model_ref", "kl_ref_model", "log_ratio", "flags")


class RowState:
    """Partial per-row statistics of a slice of the class axis (see the module docstring).

    Attributes: ``m, s, w, xt`` (float64[rows]), ``has_target`` (bool: the target lies in
    the covered classes), ``counted`` (bool: the target is not ``ignore_index``), ``argmax``
    (int64, global class index), ``top_values`` (float64[rows, K], descending, padded with
    ``-inf``), with a reference ``mz, sz`` (its maximum and sum), ``kl_model_ref,
    kl_ref_model`` (the two KLs between the covered classes' own softmaxes), ``log_ratio``
    (``log(sum e^z / sum e^x)`` over the covered classes; float64) and ``flags`` (int64), else
    None; ``lead`` (the leading shape), ``dtype`` (the compute dtype name), ``ranges`` (the
    covered ``[start, stop)`` class ranges).
    """

    def __init__(self, **fields):
        for name in _FIELDS:
            setattr(self, name, fields.get(name))
        self.lead = tuple(fields["lead"])
        self.dtype = str(fields["dtype"])
        self.ranges = sorted(tuple(map(int, r)) for r in fields["ranges"])

    @property
    def arrays(self):
        return {k: getattr(self, k) for k in _FIELDS if getattr(self, k) is not None}

    @property
    def has_reference(self):
        return self.mz is not None

    def __repr__(self):
        return (f"RowState(rows={self.m.size}, classes={self.ranges}, K={self.top_values.shape[1]}, "
                f"reference={self.has_reference})")


def row_state(logits_shard, *, offset=0, target=None, topk=(1, 5), reference_shard=None, ignore_index=-100,
              softcap=None, backend="auto"):
    """The :class:`RowState` of the classes ``[offset, offset + V_shard)``.

    Parameters
    ----------
    logits_shard : array_like, shape (..., V_shard)
        Columns ``offset .. offset + V_shard - 1`` of the logits.
    offset : int
        Global index of the shard's first class.
    target : array_like of int, shape ``logits_shard.shape[:-1]``, optional
        Global class indices (or ``ignore_index``); each shard is given the same targets.
    topk : int or sequence of int
        Candidates kept per row: ``max(topk)``; ``()`` keeps none (and skips their extra
        pass over the block) when only lse, entropy, NLL and KL are wanted.
    reference_shard : array_like, shape of ``logits_shard``, optional
        The same columns of the reference logits.
    ignore_index : int
        Rows with this target are not counted (as in :func:`fastdiv.evaluate`).
    softcap : float > 0, optional
        As in :func:`fastdiv.evaluate` (applied to ``logits_shard`` only).
    backend : {"auto", "numba", "cython", "numpy"}
        A CPU backend (``"cuda"`` raises :class:`fastdiv.BackendUnavailable`).

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> from fastdiv import states
    >>> x = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]]); t = np.array([3])
    >>> a = states.row_state(x[:, :2], offset=0, target=t, topk=(1, 2))
    >>> b = states.row_state(x[:, 2:], offset=2, target=t, topk=(1, 2))
    >>> res = states.finalize(states.merge(a, b), topk=(1, 2))
    >>> bool(np.isclose(res.lse[0], fastdiv.logsumexp(x)[0])), res["accuracy@2"]
    (True, 1.0)
    """
    plan = _plan.row_state(topk=topk, ignore_index=ignore_index, softcap=softcap, offset=offset, backend=backend,
                           logits_shard=logits_shard, reference_shard=reference_shard)
    ks, ignore, offset = plan.topk, plan.ignore_index, plan.offset
    big_k = max(ks, default=0)
    x = _checks.float_array("logits_shard", logits_shard)
    z = None
    if reference_shard is not None:
        z = _checks.float_array("reference_shard", reference_shard)
        _checks.same_shape("logits_shard", x, "reference_shard", z)
    lead, v = x.shape[:-1], x.shape[-1]
    n = int(np.prod(lead, dtype=np.int64))
    if target is None:
        counted = np.zeros(n, dtype=bool)
        local = np.full(n, -1, dtype=np.int64)
    else:
        t = _checks.as_array("target", target)
        # validated against "any class at or after this shard's start"; finalize checks coverage
        t = _checks.class_targets(t, lead, np.iinfo(np.int64).max, ignore)
        counted = t != ignore
        local = np.where(counted & (t >= offset) & (t < offset + v), t - offset, -1)
    kk = min(big_k, v)
    top = np.full((n, big_k), -np.inf)

    def candidates(r0, r1, xb):
        if kk == v:
            vals = xb
        else:
            idx = np.argpartition(xb, v - kk, axis=1)[:, v - kk:]
            vals = np.take_along_axis(xb, idx, axis=1)
        top[r0:r1, :kk] = -np.sort(-vals.astype(np.float64), axis=1)

    st, ix, dtype = execute.run_state(plan.backend, x, local, z, plan.softcap,
                                      per_block=candidates if big_k else None)
    has_t = local >= 0
    fields = dict(m=st[:, M].copy(), s=st[:, S].copy(), w=st[:, W].copy(),
                  xt=np.where(has_t, st[:, XT], np.nan), has_target=has_t, counted=counted,
                  argmax=ix[:, ARGMAX] + offset, top_values=top, lead=lead, dtype=dtype,
                  ranges=[(offset, offset + v)])
    if z is not None:
        # the slice's own KLs, kl_div's where the one pass cancelled (as evaluate's), and its
        # log mass ratio: what the chain rule of merge needs
        fields.update(mz=st[:, MZ].copy(), sz=st[:, SZ].copy(), flags=ix[:, FLAGS].copy(),
                      **chain_columns(st, ix))
    return RowState(**fields)


def merge(a, b):
    """The state of the union of two disjoint class ranges (see the module docstring).

    Parameters
    ----------
    a, b : RowState
        States of the same rows, targets and ``topk``, over class ranges that do not overlap
        (``ValueError`` otherwise).

    Examples
    --------
    >>> import numpy as np
    >>> from fastdiv import states
    >>> x = np.array([[0.0, -np.inf, 3.0]])
    >>> a = states.row_state(x[:, :2], offset=0)          # holds a masked class
    >>> b = states.row_state(x[:, 2:], offset=2)
    >>> ab = states.merge(a, b)
    >>> ab.ranges, float(ab.m[0]), round(float(ab.s[0]), 6)  # s = e^-3 + 0 + 1
    ([(0, 2), (2, 3)], 3.0, 1.049787)
    """
    if not isinstance(a, RowState) or not isinstance(b, RowState):
        raise TypeError("merge takes two RowState objects")
    if a.lead != b.lead:
        raise ValueError(f"states of different rows: leading shapes {a.lead} and {b.lead}")
    if a.has_reference != b.has_reference:
        raise ValueError("one state has a reference and the other has not")
    if a.top_values.shape[1] != b.top_values.shape[1]:
        raise ValueError("states kept different numbers of top-k candidates (topk differs)")
    if not np.array_equal(a.counted, b.counted):
        raise ValueError("states were computed with different targets (ignored rows differ)")
    for r in a.ranges:
        for q in b.ranges:
            if r[0] < q[1] and q[0] < r[1]:
                raise ValueError(f"class ranges overlap: {r} and {q}")
    keys = ("m", "s", "w", "argmax") + (_REF_FIELDS if a.has_reference else ())
    fields = merge_sums({k: getattr(a, k) for k in keys}, {k: getattr(b, k) for k in keys})
    fields.update(
        xt=np.where(a.has_target, a.xt, b.xt), has_target=a.has_target | b.has_target, counted=a.counted,
        top_values=-np.sort(-np.concatenate([a.top_values, b.top_values], axis=1), axis=1)[:, :a.top_values.shape[1]],
        lead=a.lead, dtype=a.dtype, ranges=a.ranges + b.ranges)
    return RowState(**fields)


def finalize(state, *, topk=(1, 5), kl_direction="ref||model", z_loss=0.0, n_classes=None):
    """The :class:`fastdiv.Evaluation` of a state covering every class ``[0, V)``.

    Raises ValueError when the merged ranges leave a gap (or do not start at 0, or do not
    end at ``n_classes`` when given), or when a counted row's target lies in no range.
    ``rank`` of the result is capped at ``K = max(topk)`` of the states.

    Parameters
    ----------
    state : RowState
        Merged states covering ``[0, V)``.
    topk, kl_direction, z_loss
        As in :func:`fastdiv.evaluate`; ``max(topk)`` must not exceed the candidates the
        states kept.
    n_classes : int, optional
        ``V``: checks that the states cover exactly ``[0, n_classes)``.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> from fastdiv import states
    >>> x = np.random.default_rng(0).standard_normal((3, 10)); t = np.array([1, 5, 9])
    >>> parts = [states.row_state(x[:, a:b], offset=a, target=t) for a, b in ((0, 4), (4, 7), (7, 10))]
    >>> res = states.finalize(states.merge(states.merge(parts[0], parts[1]), parts[2]), n_classes=10)
    >>> bool(np.allclose(res.nll, fastdiv.cross_entropy(x, t, reduction="none")))
    True
    """
    plan = _plan.finalize(topk=topk, kl_direction=kl_direction, z_loss=z_loss)
    ks = plan.topk
    if max(ks, default=0) > state.top_values.shape[1]:
        raise ValueError(f"topk={ks} needs {max(ks)} candidates; the states kept {state.top_values.shape[1]}")
    pos = 0
    for start, stop in state.ranges:
        if start != pos:
            raise ValueError(f"the merged states do not cover the classes [{pos}, {start}) (ranges {state.ranges})")
        pos = stop
    if n_classes is not None and pos != n_classes:
        raise ValueError(f"the merged states cover [0, {pos}), not [0, {n_classes})")
    missing = state.counted & ~state.has_target
    if missing.any():
        raise ValueError(f"the target of row {int(np.flatnonzero(missing)[0])} is >= {pos}, the number of classes")
    with np.errstate(invalid="ignore"):
        rank = np.sum(state.top_values > state.xt[:, None], axis=1)
    kl = None
    if state.has_reference:
        kl = (state.mz, state.sz, state.flags, state.kl_model_ref, state.kl_ref_model)
    rows = finish_rows(state.m, state.s, state.w, state.xt, state.counted, rank, state.argmax, ks, kl)
    return row_results(rows, state.lead, np.dtype(state.dtype), ks, state.counted, plan.kl_direction, plan.z_loss)
