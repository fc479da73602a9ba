"""``fastdiv.evaluate``: every per-token evaluation metric in one read of the logits.

One kernel (registry op ``evaluate``, contract in ``fastdiv/_registry.py``) writes a small
mergeable state per row -- max, scaled sums, the target's logit, the argmax, the number of
classes above the target and, with a reference, the KL sums and the two KLs -- which
``fastdiv._state.finish_rows`` turns into per-row results, once for every backend and for
merged vocabulary shards (``fastdiv.states``).  Options come from ``fastdiv.plan.evaluate``,
the aggregates from ``fastdiv.reduce``.  The KL sums' one pass cancels for nearly equal rows:
the CPU kernels finish each row's KLs as ``kl_div``'s kernels do, summing such a row pair again
while it is still in cache; by vocabulary tiles (``fastdiv.linear`` heads), where no tile holds
a whole row, each tile's own KLs, finished so, merge by the chain rule
(``fastdiv._state.chain_columns``).

Top-k and ties: ``rank`` is the number of classes whose logit is *strictly* greater than the
target's, and the target is within the top k iff ``rank < k``: a class tied with the target
never pushes it out (optimistic ties, like ``torchmetrics``' ``top_k`` on distinct logits and
``>=``-based ``in_top_k`` of TensorFlow).  A masked target (``-inf``) is never within the top k,
and a row whose softmax is undefined (NaN or ``+inf`` logits) counts as a miss.

Softcap: ``softcap=c`` replaces the logits by ``c * tanh(x / c)`` before anything else
(Gemma), a masked class (``-inf``) staying masked.  It is applied once for every CPU backend
(``fastdiv.execute.run_blocks``): one worker per thread writes blocks of its rows through a
compiled pass (``fastdiv.execute.apply_softcap``: the Cython extension's, or numba's where
it is not built) into a reused cache-sized buffer, which the
backend's kernel then reads from cache (O(block) extra memory per thread).  On cuda a device
pass does the same into a device buffer (``fastdiv._cuda.softcap``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import _checks, _gpu, _interop, _state, execute, plan as _plan, reduce
from ._typing import ArrayLike, Backend
from .reduce import CrossEntropyOutput

__all__ = ["evaluate", "Evaluation", "CrossEntropyOutput"]


# --------------------------------------------------------------------------- the result


class Evaluation:
    """Per-row metrics and dataset-level aggregates of :func:`evaluate`.

    Aggregates (Python floats, computed in float64 over the rows whose target is not
    ``ignore_index``) are reachable as ``res["mean_nll"]``, ``res["perplexity"]``,
    ``res["accuracy@1"]`` (one key per k), ``res["mean_entropy"]``, ``res["mean_kl"]`` (with
    a reference), ``res["mean_z_loss"]`` (with ``z_loss``) and ``res["count"]``, and as
    attributes where the name allows (``res.mean_nll``, ``res.accuracy[1]``).  Per-row arrays
    (shape ``logits.shape[:-1]``, the input's float dtype) are attributes and keys too:
    ``nll``, ``lse``, ``entropy``, ``target_prob``, ``argmax``, ``rank``, ``counted``,
    ``correct[k]`` (``res["correct@k"]``), ``kl``, ``kl_model_ref``, ``kl_ref_model``,
    ``z_loss``.  Target-dependent values of ignored rows are 0 (``correct`` False).  On the
    cuda backend with device logits the per-row arrays are device arrays of the logits'
    library (torch tensor, CuPy array, numba device array).
    """

    def __init__(self, rows, aggregates, topk, host_rows=None):
        self._rows = rows
        self._host_rows = rows if host_rows is None else host_rows
        self._agg = aggregates
        self.topk = tuple(topk)
        self.accuracy = {k: aggregates[f"accuracy@{k}"] for k in self.topk}
        self.correct = {k: rows[f"correct@{k}"] for k in self.topk}

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        for table in (self._agg, self._rows):
            if name in table:
                return table[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __getitem__(self, key):
        if key in self._agg:
            return self._agg[key]
        if key in self._rows:
            return self._rows[key]
        raise KeyError(f"{key!r}; aggregates: {list(self._agg)}, per-row: {list(self._rows)}")

    def __contains__(self, key):
        return key in self._agg or key in self._rows

    def keys(self):
        return list(self._agg) + list(self._rows)

    def aggregates(self):
        """The dataset-level numbers as a plain dict."""
        return dict(self._agg)

    def host(self, key):
        """The per-row array ``key`` as numpy: the array itself for host input, the host copy
        it was made from for device results.

        Parameters
        ----------
        key : str
            A per-row key: ``"nll"``, ``"correct@1"``, ...
        """
        return self._host_rows[key]

    def __repr__(self):
        parts = [f"rows={int(np.prod(self._rows['nll'].shape))}"]
        for key, value in self._agg.items():
            parts.append(f"{key}={value}" if key == "count" else f"{key}={value:.6g}")
        return f"Evaluation({', '.join(parts)})"


def row_results(rows, lead, dtype, topk, counted, kl_direction, z_coef):
    """Shape the per-row float64 results like the input and compute the aggregates
    (``fastdiv.reduce.aggregates``: means over the counted rows, NaN with a warning for none)."""
    if z_coef:
        rows["z_loss"] = reduce.z_loss_rows(z_coef, rows["lse"], counted)
    if "kl_model_ref" in rows:
        rows["kl"] = rows["kl_model_ref"] if kl_direction == "model||ref" else rows["kl_ref_model"]
    agg = reduce.aggregates(rows, counted, topk)
    shaped = {}
    for key, a in list(rows.items()) + [("counted", counted)]:
        a = a.reshape(lead)
        if a.dtype.kind == "f":
            a = a.astype(dtype)
        shaped[key] = a[()] if a.ndim == 0 else a     # 1-D logits: numpy scalars, as the API
    return Evaluation(shaped, agg, topk)


# --------------------------------------------------------------------------- evaluate


@_interop.native_arrays
def evaluate(logits: ArrayLike, target: ArrayLike, *, topk: int | Sequence[int] = (1, 5),
             reference: ArrayLike | None = None, kl_direction: str = "ref||model",
             ignore_index: int = -100, z_loss: float = 0.0, softcap: float | None = None,
             backend: Backend = "auto") -> Evaluation:
    """Per-token evaluation of a model in one read of ``logits`` (and of ``reference``).

    Computes per row the negative log-likelihood of the target (the hard-label
    cross-entropy), the log-sum-exp, whether the target ranks within each ``k`` of ``topk``,
    the predictive entropy, the argmax, the target's probability and, with ``reference``,
    the KL divergence between the reference's and the model's distributions; and the
    dataset-level aggregates over the rows whose target is not ``ignore_index``.

    Parameters
    ----------
    logits : array_like, shape (..., V)
        The model's logits (float16, bfloat16, float32 or float64; ``-inf`` = masked class).
    target : array_like of int, shape ``logits.shape[:-1]``
        Class indices in ``[0, V)`` or ``ignore_index``.
    topk : int or sequence of int
        One accuracy per k.  ``rank`` = the number of classes with a logit strictly greater
        than the target's; the target is within the top k iff ``rank < k`` (ties never push
        it out).  A masked target, and a row with NaN or ``+inf`` logits, is a miss.
    reference : array_like, shape of ``logits``, optional
        Reference logits (teacher / frozen model); never soft-capped.
    kl_direction : {"ref||model", "model||ref"}
        Which KL is ``kl`` / ``mean_kl``: ``D(P_ref || P_model)`` (distillation's forward KL,
        the default) or ``D(P_model || P_ref)`` (RLHF's penalty).  Both are always available
        per row as ``kl_ref_model`` and ``kl_model_ref``, as accurate near 0 as
        :func:`kl_div`'s (rows whose one pass cancelled are summed again as its kernel sums
        them, from cache; on cuda only float64 rows cancel).
    ignore_index : int
        Rows with this target are left out of every aggregate.
    z_loss : float >= 0
        Adds the per-row ``z_loss = coef * lse**2`` (PaLM's auxiliary loss) and its mean.
    softcap : float > 0, optional
        Logits become ``softcap * tanh(logits / softcap)`` first (masked classes stay masked).
    backend : {"auto", "numba", "cython", "numpy", "cuda"}

    Returns
    -------
    Evaluation
        ``res["mean_nll"]``, ``res["perplexity"]``, ``res["accuracy@k"]``,
        ``res["mean_entropy"]``, ``res["mean_kl"]``; per-row arrays ``res.nll`` etc.  With
        no counted row, the aggregates are NaN (with a RuntimeWarning).  The per-row arrays
        are numpy arrays for host input of any library (torch and JAX CPU tensors included);
        for device logits (cuda backend) they are device arrays of the logits' library,
        allocated by it on its current stream; the aggregates are Python numbers.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0]]); target = np.array([0, 2])
    >>> res = fastdiv.evaluate(logits, target, topk=(1, 2))
    >>> res["accuracy@1"], res["accuracy@2"]
    (0.5, 1.0)
    >>> round(res.mean_nll, 6) == round(float(fastdiv.cross_entropy(logits, target)), 6)
    True
    """
    plan = _plan.evaluate(topk=topk, kl_direction=kl_direction, ignore_index=ignore_index, z_loss=z_loss,
                          softcap=softcap, backend=backend, logits=logits, target=target, reference=reference)
    if plan.backend == "cuda":
        return _evaluate_cuda(plan, logits, target, reference)
    x = _checks.float_array("logits", logits)
    z = None
    if reference is not None:
        z = _checks.float_array("reference", reference)
        _checks.same_shape("logits", x, "reference", z)
    lead, v = x.shape[:-1], x.shape[-1]
    t, counted, local = execute.state_targets(plan, target, lead, v)
    st, ix, dtype = execute.run_state(plan.backend, x, local, z, plan.softcap)
    rows = _state.finish_state(st, ix, counted, plan.topk, z is not None)
    return row_results(rows, lead, dtype, plan.topk, counted, plan.kl_direction, plan.z_loss)


def _evaluate_cuda(plan, logits, target, reference):
    """evaluate on the device: the per-row state is computed there (``fastdiv._gpu.evaluate_state``)
    and finished on the host like the CPU backends' states.  For device logits the per-row
    arrays go back to the device in the caller's library (allocated by it, on its stream);
    aggregates are Python numbers."""
    call, st, ix, t, counted, lead, dtype, mend = _gpu.evaluate_state(plan, logits, target, reference)
    rows = _state.finish_state(st, ix, counted, plan.topk, reference is not None)
    if mend is not None:                   # float64 rows whose one pass cancelled, summed again
        mend(rows)
    res = row_results(rows, lead, dtype, plan.topk, counted, plan.kl_direction, plan.z_loss)
    if call.tag is None:                   # numpy in, numpy out
        return res
    on_device = {key: _gpu.to_caller(call, a, lead) for key, a in res._rows.items()}
    return Evaluation(on_device, res.aggregates(), plan.topk, host_rows=res._rows)
