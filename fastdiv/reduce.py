"""Every reduction of per-row values: ``"none"``, ``"sum"``, ``"mean"``, torch's weighted mean
for class-index cross-entropy, the z-loss, ``evaluate``'s aggregates, and the same rules for
meters (sums over batches), dask (lazy sums over chunks) and the cuda device reduction.

The rules, once for every door (API on each backend, ``evaluate``, meters, states, dask,
cuda):

* ``"sum"`` adds the per-row values in float64 (0 for no rows) and returns the result in the
  compute dtype (float32 for 16- and 32-bit inputs, float64 for float64).
* ``"mean"`` divides that sum by a denominator counted in float64: the number of rows; for
  class-index cross-entropy, torch's weighted mean ``sum_i w[t_i] loss_i / sum_i w[t_i]`` over
  the rows whose target is not ``ignore_index`` (with no ``weight``: their number); for the
  z-loss and ``evaluate``'s aggregates, the number of those rows (unweighted).  Probability
  targets average over all rows.
* **Empty means are NaN.**  A mean whose denominator is 0 -- no rows, every target equal to
  ``ignore_index``, or class weights summing to 0 over the counted rows -- is NaN, as in
  torch (``F.cross_entropy`` gives NaN with every target ignored) and numpy (the mean of
  nothing).  Sums are 0 and per-row values (``"none"``) are 0 for ignored rows.  Eager
  reductions on the host also warn (a ``RuntimeWarning`` starting
  ``"mean of an empty batch is NaN"``); a reduction on the device (cuda) or a lazy one
  (dask) cannot tell without a synchronisation or a ``compute()`` and returns the NaN
  silently (dask warns when the graph itself has no rows), and a meter warns at
  ``compute()`` only (a batch of padding is normal in a stream).
* Ignored rows never enter a sum: their per-row values are 0 and are left out of each
  denominator.
"""
from __future__ import annotations

import collections
import os
import sys
import warnings

import numpy as np

from . import _registry, execute

__all__ = ["CrossEntropyOutput", "EMPTY_MEAN", "EMPTY_MESSAGE"]

#: the value of a mean over nothing (see the module docstring)
EMPTY_MEAN = float("nan")
EMPTY_MESSAGE = "mean of an empty batch is NaN (no rows, every target equal to ignore_index, or zero total weight)"

#: ``cross_entropy(..., z_loss=c)`` / ``return_lse=True`` returns this named tuple: ``loss`` is
#: what ``cross_entropy`` returns without the options, ``z_loss`` the auxiliary term reduced
#: like the loss (``"mean"``: over the non-ignored rows, unweighted), ``lse`` the per-row
#: log-sum-exp (shape ``logits.shape[:-1]``) or None unless ``return_lse``.
CrossEntropyOutput = collections.namedtuple("CrossEntropyOutput", ["loss", "z_loss", "lse"])


def warn_empty():
    """Warn that a mean is empty, at the first caller outside fastdiv."""
    here = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(here):
        frame, level = frame.f_back, level + 1
    warnings.warn(EMPTY_MESSAGE, RuntimeWarning, stacklevel=level)


# --------------------------------------------------------------------------- eager, on the host


def ratio(total, denominator, *, warn=True):
    """``total / denominator`` in float64; :data:`EMPTY_MEAN` (with a warning) when the
    denominator is 0."""
    if denominator == 0:
        if warn:
            warn_empty()
        return np.float64(EMPTY_MEAN)
    return np.float64(total) / denominator


def rows(per_row, lead, dtype=None):
    """``reduction="none"``: per-row values shaped like the input's leading axes (a numpy
    scalar for 1-D input), in ``dtype`` when given."""
    res = per_row.reshape(lead)
    if dtype is not None:
        res = res.astype(dtype)
    return res[()] if res.ndim == 0 else res


#: from this many values on, :func:`sum64` runs the Cython backend's threaded sum (below it,
#: numpy's single-threaded one costs less than the call)
COMPILED_SUM_FROM = 1 << 16


def sum64(per_row):
    """The sum of per-row values in float64.  For a large float32 / float64 host array and a
    built Cython backend: its ``sum64``, block sums over fastdiv's threads (~0.5 ms for 2^22
    values on 2 threads, against ~3 ms for numpy's cast-and-sum on one thread), whose order
    depends on neither the thread count nor the backend that computed the rows; else
    ``np.sum``.  The two orders differ by float64 rounding, far below the float32 result's."""
    a = per_row.reshape(-1) if isinstance(per_row, np.ndarray) else None
    if (a is not None and a.size >= COMPILED_SUM_FROM and a.dtype in (np.float32, np.float64)
            and a.flags.c_contiguous):
        kernels = _registry._load("cython")[0]
        if kernels is not None:
            return np.float64(kernels.sum64(a, execute.get_num_threads()))
    return np.add.reduce(per_row, axis=None, dtype=np.float64)     # np.sum without its dispatch (2 us)


def finish(per_row, lead, reduction, dtype, denominator=None):
    """Per-row values reduced: ``"none"`` shaped, ``"sum"`` and ``"mean"`` in float64 and
    returned as ``dtype``; the mean's denominator is the number of rows unless given."""
    if reduction == "none":
        return rows(per_row, lead)
    total = sum64(per_row)
    if reduction == "sum":
        return dtype.type(total)
    return dtype.type(ratio(total, per_row.size if denominator is None else denominator))


def ce_denominator(t, ignore_index, weight=None, n_ignored=None):
    """torch's weighted-mean denominator of class-index cross-entropy, in float64: the rows
    whose target ``t`` (int64) is not ``ignore_index``, counted or weighted by ``weight[t]``.
    ``n_ignored=0`` says that no row is ignored (saves a pass)."""
    kept = t if n_ignored == 0 else t[t != ignore_index]
    if weight is None:
        return float(kept.size)
    return float(np.sum(weight[kept], dtype=np.float64))


def z_loss_rows(coef, lse, counted):
    """The z-loss ``coef * lse**2`` of each counted row (0 elsewhere), float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.where(counted, coef * lse ** 2, 0.0) if coef else np.zeros(lse.shape[0])


def cross_entropy(plan, per_row, lead, dtype, t=None, counted=None, weight=None, n_ignored=None):
    """``cross_entropy``'s loss from its per-row values: ``t`` (int64 targets) for class
    indices, where the mean is torch's weighted mean (``weight`` in the compute dtype, None
    for unweighted); probability targets average over rows."""
    if plan.reduction == "mean" and plan.target == "indices":
        if counted is not None:
            n_ignored = int(t.size - np.count_nonzero(counted))
        return finish(per_row, lead, "mean", dtype,
                      ce_denominator(t, plan.ignore_index, None if plan.weight is None else weight, n_ignored))
    return finish(per_row, lead, plan.reduction, dtype)


def cross_entropy_output(plan, loss, lse, counted, lead, dtype, t=None, weight=None, to=None):
    """``cross_entropy``'s result with the options (``z_loss``, ``return_lse``) from float64
    per-row ``loss`` and ``lse``: the loss reduced as :func:`cross_entropy`, and, when asked,
    a :class:`CrossEntropyOutput` with the z-loss reduced like the loss (``"mean"`` over the
    counted rows, unweighted) and the per-row lse.  ``to(array, shape)`` converts each
    returned array (the cuda path: to the caller's library)."""
    to = to or (lambda a, shape: a)
    shape = lead if plan.reduction == "none" else ()
    if plan.target == "probs":            # per-row values of the compute dtype: reduce them as such
        loss = loss.astype(dtype)
    out = cross_entropy(plan, loss if plan.reduction != "none" else loss.astype(dtype), lead, dtype, t,
                        counted, weight)
    if not (plan.z_loss or plan.return_lse):
        return to(out, shape)
    z_rows = z_loss_rows(plan.z_loss, lse, counted)
    if plan.reduction == "none":
        z_out = rows(z_rows, lead, dtype)
    else:
        z_out = finish(z_rows, lead, plan.reduction, dtype, int(np.count_nonzero(counted)))
    lse_out = to(rows(lse, lead, dtype), lead) if plan.return_lse else None
    return CrossEntropyOutput(to(out, shape), to(z_out, shape), lse_out)


def aggregates(rows_, counted, topk, *, warn=True):
    """``evaluate``'s dataset-level numbers from per-row float64 results: means over the
    counted rows (NaN for none), ``perplexity = exp(mean_nll)``, ``count``."""
    return means(sums(rows_, counted, topk), warn=warn)


def sums(rows_, counted, topk):
    """The float64 sums over the counted rows that ``evaluate``'s aggregates divide (a meter
    adds them over batches)."""
    out = {"count": int(np.count_nonzero(counted)), "nll": counted_sum(rows_["nll"], counted)}
    for k in topk:
        out[f"correct@{k}"] = counted_sum(rows_[f"correct@{k}"].astype(np.float64), counted)
    out["entropy"] = counted_sum(rows_["entropy"], counted)
    if "kl" in rows_:
        out["kl"] = counted_sum(rows_["kl"], counted)
    if "z_loss" in rows_:
        out["z_loss"] = counted_sum(rows_["z_loss"], counted)
    return out


def counted_sum(a, counted):
    """The float64 sum of per-row values ``a`` over the ``counted`` rows, as a Python float."""
    return float(np.sum(np.asarray(a, dtype=np.float64)[counted], dtype=np.float64))


def cross_entropy_sums(plan, per_row, t=None, weight=None):
    """``(sum of the per-row losses, the mean's denominator)`` of one batch in float64, what a
    meter adds over batches (:func:`cross_entropy`'s mean is their ratio): class indices ``t``
    give torch's weighted-mean denominator (``weight`` in the compute dtype), probabilities
    the number of rows."""
    total = float(np.sum(np.asarray(per_row, dtype=np.float64)))
    if plan.target == "probs":
        return total, float(np.size(per_row))
    return total, ce_denominator(np.asarray(t).reshape(-1), plan.ignore_index,
                                 None if plan.weight is None else weight)


def mean_of(total, count):
    """A float64 sum over ``count`` rows divided by it as a Python float; :data:`EMPTY_MEAN`
    for none (no warning: the caller warns once for all its means)."""
    return float(total / count) if count else EMPTY_MEAN


def means(s, *, kl_count=None, warn=True):
    """``evaluate``'s aggregates from :func:`sums` (``kl_count``: the rows that came with a
    reference, when not all of them; ``mean_kl`` is left out when none did)."""
    n = s["count"]
    if n == 0 and warn:
        warn_empty()

    def mean(total, count=n):
        return mean_of(total, count)

    agg = {"count": int(n), "mean_nll": mean(s["nll"])}
    agg["perplexity"] = perplexity(agg["mean_nll"])
    for key in s:
        if key.startswith("correct@"):
            agg["accuracy@" + key[8:]] = mean(s[key])
    agg["mean_entropy"] = mean(s["entropy"])
    if "kl" in s and (kl_count is None or kl_count):
        agg["mean_kl"] = mean(s["kl"], n if kl_count is None else kl_count)
    if "z_loss" in s:
        agg["mean_z_loss"] = mean(s["z_loss"])
    return agg


def perplexity(mean_nll):
    with np.errstate(over="ignore"):
        return float(np.exp(mean_nll))


# --------------------------------------------------------------------------- lazy (dask) and on the device


def lazy_finish(per_row, reduction, dtype, da, denominator=None):
    """:func:`finish` of a lazy 1-D dask array of per-row values (``da``: ``dask.array``):
    float64 sums over chunks, divided once.  ``denominator`` (a lazy float64 scalar) replaces
    the number of rows.  Warns only when the graph itself shows that there are no rows."""
    if reduction == "none":
        return per_row
    total = per_row.sum(dtype=np.float64)
    if reduction == "sum":
        return total.astype(dtype)
    n = per_row.size
    if isinstance(n, int) and n == 0:
        warn_empty()
        return da.from_array(np.array(EMPTY_MEAN, dtype))
    if denominator is None:
        if not (isinstance(n, float) and np.isnan(n)):
            return (total / n).astype(dtype)
        denominator = da.ones_like(per_row, dtype=np.int64).sum()     # unknown chunk sizes: count lazily
    safe = da.where(denominator == 0, 1.0, denominator)
    return da.where(denominator == 0, EMPTY_MEAN, total / safe).astype(dtype)


def lazy_means(rows_, topk, da):
    """:func:`means` of lazy per-row results (dask), counted rows only, 0-d dask arrays."""
    counted = rows_["counted"]
    n = counted.sum(dtype=np.int64)
    safe = da.maximum(n, 1)

    def mean(a):
        return da.where(n > 0, da.where(counted, a, 0).sum(dtype=np.float64) / safe, EMPTY_MEAN)

    agg = {"count": n, "mean_nll": mean(rows_["nll"])}
    agg["perplexity"] = da.exp(agg["mean_nll"])
    for k in topk:
        agg[f"accuracy@{k}"] = mean(rows_[f"correct@{k}"])
    agg["mean_entropy"] = mean(rows_["entropy"])
    if "kl" in rows_:
        agg["mean_kl"] = mean(rows_["kl"])
    if "z_loss" in rows_:
        agg["mean_z_loss"] = mean(rows_["z_loss"])
    return agg


def on_device(kernels, values, reduction, out, stream, *, target=None, ignore_index=-100, weight=None):
    """Reduce the 1-D device array ``values`` into the 1-element device array ``out`` on
    ``stream`` (``kernels``: ``fastdiv._cuda.kernels``): a deterministic float64 sum, divided
    by the number of rows, or with ``target`` (int64, device) by torch's weighted-mean
    denominator (``weight``: a device array, None for unweighted).  A zero denominator gives
    :data:`EMPTY_MEAN`, computed on the device: no synchronisation, so no warning."""
    if reduction == "sum":
        kernels.device_sum(values, out, stream=stream)
    else:
        kernels.device_mean(values, target, ignore_index, weight, out, stream=stream, empty=EMPTY_MEAN)
