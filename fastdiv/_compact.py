"""Compact references for ``fastdiv compare``: a base model stored as its top-K classes per row.

A reference holds per row the base's K most probable classes (``topk_indices``, int32, most
probable first, ties to the lower index) and their log-probabilities (``topk_logprobs``,
float64), the log of the remaining probability mass (``tail_logprob``, computed from the full
row, not as ``1 - sum``) and, with targets, the targets and the target's log-probability
(``target_logprob``, exact even outside the top K; NaN in ignored rows).  Per row that is
12 K + 8 bytes (+ 16 with targets) against 4 V for float32 logits: at K = 64 and V = 32000,
776 + 16 bytes against 128000 (161 x smaller).

Comparing a model with it (:func:`per_row`): ``same_top1``, top-k agreement, ``delta_p`` and
the perplexities are exact (they need only the base's top-1 class and target log-probability);
KLD, reverse KLD and JS become those of the coarse-grained distributions -- the K classes and
one tail class holding the rest of each model's mass -- which by the data-processing inequality
are lower bounds of the full ones, exact when the tail holds at most one class (K >= V - 1).
"""
from __future__ import annotations

import json
import os
import struct
import warnings

import numpy as np

from . import _checks, plan as _plan, reduce
from .api import logsumexp
from .evaluation import evaluate

#: the safetensors metadata tag of a compact reference
FORMAT = "fastdiv-compact-reference-1"


def _quiet(fn, *args, **kwargs):
    """A call without evaluate's all-ignored and empty-mean warnings: compare decides what is
    counted (without targets every row is, and evaluate's aggregates are not used)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="evaluate: every target", category=RuntimeWarning)
        warnings.filterwarnings("ignore", message=reduce.EMPTY_MESSAGE.split(" (")[0], category=RuntimeWarning)
        return fn(*args, **kwargs)


def build(base, target, k, ignore_index, backend="auto"):
    """The reference tensors of a chunk of rows: ``base`` (rows, V), ``target`` (rows,) or None."""
    x = _checks.float_array("logits", base)
    rows, v = x.shape
    k = min(int(k), v)
    lse = np.asarray(logsumexp(x, backend=backend), dtype=np.float64).reshape(rows)
    if k < v:
        idx = np.argpartition(-np.asarray(x, dtype=np.float32 if x.dtype.itemsize <= 4 else np.float64), k - 1,
                              axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(v), (rows, v)).copy()
    vals = np.take_along_axis(np.asarray(x), idx, axis=1).astype(np.float64)
    order = np.lexsort((idx, -vals), axis=-1)              # most probable first, ties to the lower index
    idx = np.take_along_axis(idx, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    masked = np.array(x, dtype=np.float64 if x.dtype == np.float64 else np.float32, copy=True)
    np.put_along_axis(masked, idx, -np.inf, axis=1)
    tail_lse = np.asarray(logsumexp(masked, backend=backend), dtype=np.float64).reshape(rows)
    with np.errstate(invalid="ignore"):
        out = {"topk_indices": idx.astype(np.int32), "topk_logprobs": vals - lse[:, None],
               "tail_logprob": tail_lse - lse}
    if target is not None:
        t = _checks.class_targets(_checks.as_array("targets", target), (rows,), v, ignore_index)
        ev = _quiet(evaluate, x, t, topk=(), ignore_index=ignore_index, backend=backend) if rows else None
        counted = t != ignore_index
        nll = np.asarray(ev.nll, dtype=np.float64).reshape(rows) if rows else np.zeros(0)
        out["targets"] = t.astype(np.int64)
        out["target_logprob"] = np.where(counted, -nll, np.nan)
    return out


def per_row(ref, logits, *, ignore_index, topk, backend):
    """compare's per-row columns (``fastdiv.comparison.per_row``'s) from a chunk of a reference
    (``ref``: its tensors for these rows) and the model's logits; the model's side comes from
    ``fastdiv.evaluate`` and ``fastdiv.logsumexp``, like the dense path's."""
    x = _checks.float_array("logits", logits)
    idx = np.asarray(ref["topk_indices"], dtype=np.int64)
    rows, v = x.shape
    if idx.shape[0] != rows:
        raise ValueError(f"the reference has {idx.shape[0]} rows and logits {rows}")
    lp = np.asarray(ref["topk_logprobs"], dtype=np.float64)
    tail_p = np.asarray(ref["tail_logprob"], dtype=np.float64)
    with_target = "targets" in ref
    ks = _plan.compare(ignore_index=ignore_index, topk=topk, backend=backend).topk
    if with_target:
        t = np.asarray(ref["targets"], dtype=np.int64)
        counted = t != ignore_index
        t_eval, ignore_eval = t, ignore_index
    else:
        counted = np.ones(rows, dtype=bool)
        t_eval, ignore_eval = np.full(rows, -1, dtype=np.int64), -1
    rm = _quiet(evaluate, x, t_eval, topk=(), ignore_index=ignore_eval, backend=backend)
    lse_m = np.asarray(rm.lse, dtype=np.float64).reshape(rows)
    arg_m = np.asarray(rm.argmax).reshape(rows).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        lq = np.take_along_axis(np.asarray(x), idx, axis=1).astype(np.float64) - lse_m[:, None]
        masked = np.array(x, dtype=np.float64 if x.dtype == np.float64 else np.float32, copy=True)
        np.put_along_axis(masked, idx, -np.inf, axis=1)
        tail_q = np.asarray(logsumexp(masked, backend=backend), dtype=np.float64).reshape(rows) - lse_m
        # the coarse-grained distributions: the K classes, then the tail as one class
        a = np.concatenate([lp, tail_p[:, None]], axis=1)
        b = np.concatenate([lq, tail_q[:, None]], axis=1)
        pa, pb = np.exp(a), np.exp(b)
        lm = np.logaddexp(a, b) - np.log(2.0)
        kld = np.sum(np.where(pa > 0, pa * (a - b), 0.0), axis=1)
        rkld = np.sum(np.where(pb > 0, pb * (b - a), 0.0), axis=1)
        js = 0.5 * np.sum(np.where(pa > 0, pa * (a - lm), 0.0), axis=1) + \
            0.5 * np.sum(np.where(pb > 0, pb * (b - lm), 0.0), axis=1)
    has_top1 = np.isfinite(lp[:, 0]) if lp.shape[1] else np.zeros(rows, dtype=bool)
    top1 = idx[:, 0] if idx.shape[1] else np.full(rows, -1)
    cols = {"row": np.flatnonzero(counted).astype(np.int64), "kld": kld[counted], "reverse_kld": rkld[counted],
            "js": js[counted], "base_top1_prob": np.where(has_top1, np.exp(lp[:, 0]), np.nan)[counted],
            "same_top1": (has_top1 & (top1 == arg_m))[counted]}
    if any(k > 1 for k in ks):
        rk = _quiet(evaluate, x, np.where(has_top1, top1, -1), topk=tuple(k for k in ks if k > 1), ignore_index=-1,
                    backend=backend) if rows else None
        for k in ks:
            if k > 1:
                cols[f"top{k}"] = (np.asarray(rk[f"correct@{k}"]).reshape(rows) if rows
                                   else np.zeros(0, dtype=bool))[counted]
    if with_target:
        tl = np.asarray(ref["target_logprob"], dtype=np.float64)
        cols["nll_base"] = -tl[counted]
        cols["p_base"] = np.exp(tl[counted])
        cols["nll_model"] = np.asarray(rm.nll, dtype=np.float64).reshape(rows)[counted]
        cols["p_model"] = np.asarray(rm.target_prob, dtype=np.float64).reshape(rows)[counted]
    return cols, rows


# --------------------------------------------------------------------------- the file


_CODES = {np.dtype(np.int32): "I32", np.dtype(np.int64): "I64", np.dtype(np.float64): "F64"}


class Writer:
    """A safetensors file of a reference, written chunk by chunk (rows in order): the header
    (sizes known from ``rows``) first, each chunk's rows then land at their offsets."""

    def __init__(self, path, rows, v, k, with_target, ignore_index):
        k = min(int(k), v)
        self.layout = {"topk_indices": (np.int32, (rows, k)), "topk_logprobs": (np.float64, (rows, k)),
                       "tail_logprob": (np.float64, (rows,))}
        if with_target:
            self.layout.update(targets=(np.int64, (rows,)), target_logprob=(np.float64, (rows,)))
        header = {"__metadata__": {"format": FORMAT, "vocab": str(v), "k": str(k), "ignore_index": str(ignore_index),
                                   "targets": "1" if with_target else "0"}}
        offset, self.offsets = 0, {}
        for name, (dtype, shape) in self.layout.items():
            size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            header[name] = {"dtype": _CODES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
            self.offsets[name] = offset
            offset += size
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)                    # data 8-byte aligned
        self.data_start = 8 + len(text)
        self.f = open(path, "wb")
        self.f.write(struct.pack("<Q", len(text)) + text)
        self.f.truncate(self.data_start + offset)

    def write(self, r0, chunk):
        for name, (dtype, shape) in self.layout.items():
            a = np.ascontiguousarray(chunk[name], dtype=dtype)
            row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize
            self.f.seek(self.data_start + self.offsets[name] + r0 * row_bytes)
            self.f.write(a.tobytes())

    def close(self):
        self.f.close()


def read_metadata(path):
    """The metadata of a compact reference, or None if ``path`` is not a safetensors file
    written by :class:`Writer`."""
    if os.path.splitext(path)[1].lower() != ".safetensors" or not os.path.isfile(path):
        return None
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            return None
        (n,) = struct.unpack("<Q", raw)
        if n > os.path.getsize(path):
            return None
        try:
            meta = json.loads(f.read(n)).get("__metadata__") or {}
        except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            return None
    return meta if meta.get("format") == FORMAT else None
