"""The numba backend's entry (``fastdiv._registry``): the kernel contract's functions; only this
module gathers them, and it picks each call's algorithm (short-row blocks or the row path).

The package, by algorithm (each module imports only modules listed below it):

* ``ops.py``         this entry: shape checks, the choice of path by V, and the row path's redo
  of the rows a block kernel could not finish (KL from logits).
* ``compare.py``     the compare op: evaluate's pass with a reference, then the JS pass of
  ``divergences.py`` from cache (one read of each row).
* ``divergences.py`` generalized JSD (logits, probabilities, log-probabilities) and top-k teacher
  KL, with their contract functions.
* ``evaluate.py``    the evaluate state (NLL, rank, entropy, optionally KL) in one read per row.
* ``short_rows.py``  short-row blocks (``1 < V <= SMALL_V``): lse / hard-label CE, entropy and KL
  from logits over blocks of rows treated as one flat array.
* ``long_rows.py``   the row path for every V: lse, entropy and KL of each input kind,
  hard- and soft-target cross-entropy, float64 KL's exact pass.
* ``row_state.py``   the one-pass row state ``(m, c, r, w)`` of a row of logits and its finishes
  (lse, entropy, NLL), shared by the row path, the blocks' redo and evaluate.
* ``softcap.py``     the soft-capping pre-pass ``c tanh(x / c)`` (used by ``fastdiv.execute``).
* ``threads.py``     the thread count and the split of a call's rows between threads.
* ``simd.py``        vector math: fast exp / log, exact sums and differences, half-precision loads.

Inputs may be float32, float64 or half-precision bits (``HALF_INPUTS``: float16 as uint16,
bfloat16 as int16); ``simd.load`` widens each element to the compute type as it is read.
"""
from __future__ import annotations

import numpy as np

from . import threads
from .compare import compare  # noqa: F401
from .divergences import js_log_probs, js_logits, js_probs, topk_kl  # noqa: F401
from .evaluate import evaluate  # noqa: F401
from .long_rows import (
    _ce_finish,
    _ce_finish_mt,
    _ce_hard,
    _ce_hard_mt,
    _ce_soft,
    _ce_soft_mt,
    _entropy_log_probs,
    _entropy_log_probs_mt,
    _entropy_logits,
    _entropy_logits_mt,
    _entropy_probs,
    _entropy_probs_mt,
    _kl_log_probs,
    _kl_log_probs_mt,
    _kl_logits,
    _kl_logits_mt,
    _kl_probs,
    _kl_probs_mt,
    _lse,
    _lse_mt,
    _row_parts,
    _row_parts_mt,
)
from .short_rows import (
    SMALL_GROUP,
    _small_entropy,
    _small_entropy_mt,
    _small_kl,
    _small_kl_mt,
    _small_lse,
    _small_lse_mt,
    block_align,
    unit_weights,
    use_blocks,
)
from .simd import guard, read_only
from .threads import max_threads  # noqa: F401

#: Kernels read float16/bfloat16 inputs directly (see the module docstring).
HALF_INPUTS = True


(_NO_TARGET,) = read_only(np.zeros(0, dtype=np.int64))      # read-only like every target (simd.read_only)


def _scale_arg(scale):
    """None for 1 (see simd.scale_of: the unscaled kernels skip the multiply), else a float."""
    return None if scale == 1.0 else float(scale)


def lse(x, out, nthreads):
    guard(out, x)
    (x,) = read_only(x)
    if use_blocks(x):
        threads.run(_small_lse, _small_lse_mt, "rrr=", nthreads, (x, out, _NO_TARGET, np.int64(0)), x,
                    block_align(x, 1))
    else:
        threads.run(_lse, _lse_mt, "rr", nthreads, (x, out), x)


def entropy_logits(x, scale, out, nthreads):
    guard(out, x)
    (x,) = read_only(x)
    if use_blocks(x):
        threads.run(_small_entropy, _small_entropy_mt, "r=r", nthreads, (x, _scale_arg(scale), out), x,
                    block_align(x, 2, SMALL_GROUP))
    else:
        threads.run(_entropy_logits, _entropy_logits_mt, "r=r", nthreads, (x, _scale_arg(scale), out), x)


def entropy_probs(p, out, nthreads):
    guard(out, p)
    (p,) = read_only(p)
    threads.run(_entropy_probs, _entropy_probs_mt, "rr", nthreads, (p, out), p)


def entropy_log_probs(lp, out, nthreads):
    guard(out, lp)
    (lp,) = read_only(lp)
    threads.run(_entropy_log_probs, _entropy_log_probs_mt, "rr", nthreads, (lp, out), lp)


#: KL from logits costs ~2x logsumexp per element: its shares may be half the size
#: (threads.parts; two threads at 600-700 x 51 0.82-0.89 of one, Zen 4, 2026-12-08)
KL_WORK = 2


def kl_logits(x, z, scale, out, nthreads):
    guard(out, x, z)
    x, z = read_only(x, z)
    sc = _scale_arg(float(scale))
    if not use_blocks(x):
        threads.run(_kl_logits, _kl_logits_mt, "rr=r", nthreads, (x, z, sc, out), x, work=KL_WORK)
        return
    redo = np.zeros(x.shape[0], dtype=np.bool_)
    threads.run(_small_kl, _small_kl_mt, "rr=rr", nthreads, (x, z, sc, out, redo), x, block_align(x, 2),
                work=KL_WORK)
    if redo.any():                      # rare: NaN/inf blocks, masked or far-below rows
        idx = np.flatnonzero(redo)
        part = np.empty(idx.size, dtype=out.dtype)
        xr, zr = read_only(x[idx], z[idx])
        threads.run(_kl_logits, _kl_logits_mt, "rr=r", nthreads, (xr, zr, sc, part), xr, work=KL_WORK)
        out[idx] = part


def kl_probs(p, q, out, nthreads):
    guard(out, p, q)
    p, q = read_only(p, q)
    threads.run(_kl_probs, _kl_probs_mt, "rrr", nthreads, (p, q, out), p)


def kl_log_probs(a, b, out, nthreads):
    guard(out, a, b)
    a, b = read_only(a, b)
    threads.run(_kl_log_probs, _kl_log_probs_mt, "rrr", nthreads, (a, b, out), a)


def ce_hard(x, target, ignore_index, weight, eps, out, nthreads):
    guard(out, x)
    x, target, weight = read_only(x, target, weight)
    if target.shape != (x.shape[0],) or weight.shape != (x.shape[1],):
        raise ValueError(f"target must have shape ({x.shape[0]},) and weight ({x.shape[1]},)")
    ignore = np.int64(ignore_index)
    if use_blocks(x) and eps == 0 and unit_weights(weight):
        threads.run(_small_lse, _small_lse_mt, "rrr=", nthreads, (x, out, target, ignore), x, block_align(x, 1))
    elif eps == 0:
        m = np.empty_like(out)
        ls = np.empty(out.shape[0], dtype=np.float64)
        threads.run(_row_parts, _row_parts_mt, "rrr", nthreads, (x, m, ls), x)
        # a row's finish reads its target's entry: split by rows, not elements
        threads.run(_ce_finish, _ce_finish_mt, "rr==rrr", nthreads, (x, target, ignore, weight, m, ls, out), out)
    else:
        threads.run(_ce_hard, _ce_hard_mt, "rr===r", nthreads, (x, target, ignore, weight, float(eps), out), x)


def ce_soft(x, p, weight, alpha, beta, scale, out, nthreads):
    guard(out, x, p)
    x, p, weight = read_only(x, p, weight)
    if weight.shape != (x.shape[1],):
        raise ValueError(f"weight must have shape ({x.shape[1]},)")
    threads.run(_ce_soft, _ce_soft_mt, "rr====r", nthreads, (x, p, weight, float(alpha), float(beta), float(scale), out), x)
