"""The cuda backend's entry (``fastdiv._registry``): the kernel contract's functions and
``unavailable_reason``; only this module gathers them.

The package, by idea (each module imports only modules listed below it):

* ``evaluate.py``      the evaluate state, one block per row in float64 (launches through
  ``kernels``); ``softcap.py`` the soft-capping transform of a row block.
* ``kernels.py``       the ops' validation and launches: picks a launch shape from V
  (``launch_plan``), the tuning knobs, device sum / mean; imports without numba-cuda.
* ``divergences.py``   temperature-scaled entropy / KL / soft-target CE, JSD, top-k KL and
  float64 KL's exact pass: one block per row, several passes, float64 sums.
* ``short_rows.py``    tile and small launch shapes: whole rows per block (V <= 256).
* ``long_rows.py``     group and block launch shapes: an online pass over 16-byte loads per
  warp or block, rows split across blocks when there are few.
* ``codegen.py``       the unrolled chunk updates, generated and compiled.
* ``accumulators.py``  one mergeable per-row state per op, the edge-case rules in ``finish``.
* ``loaders.py``       input kinds: scalar and 16-byte loads per dtype, widened exactly.
* ``reductions.py``    device-side reductions: the deterministic sum / mean of per-row results.
* ``intrinsics.py``    device primitives (16-byte loads, fast exp / log, bit casts, shuffles)
  and their simulator twins.
* ``interop.py``       torch / CuPy / numba device arrays, zero-copy.
"""
from .evaluate import evaluate
from .kernels import (
    ce_hard,
    ce_soft,
    entropy_log_probs,
    entropy_logits,
    entropy_probs,
    js_log_probs,
    js_logits,
    js_probs,
    kl_log_probs,
    kl_logits,
    kl_probs,
    lse,
    topk_kl,
    unavailable_reason,
)

__all__ = [
    "ce_hard", "ce_soft", "entropy_log_probs", "entropy_logits", "entropy_probs", "evaluate",
    "js_log_probs", "js_logits", "js_probs", "kl_log_probs", "kl_logits", "kl_probs", "lse",
    "topk_kl", "unavailable_reason",
]
