"""The numba backend's entry (``fastdiv._registry``): the kernel contract's functions.

``kernels.py`` holds the tuned per-row passes and the thread setting, ``evaluate.py`` the
evaluate state, ``divergences.py`` the divergence family; each imports only below itself
(``simd.py``, ``kernels.py``), and only this module gathers them.
"""
from .divergences import js_log_probs, js_logits, js_probs, topk_kl  # noqa: F401
from .evaluate import evaluate  # noqa: F401
from .threads import max_threads  # noqa: F401
from .kernels import (  # noqa: F401
    HALF_INPUTS,
    ce_hard,
    ce_soft,
    entropy_log_probs,
    entropy_logits,
    entropy_probs,
    kl_log_probs,
    kl_logits,
    kl_probs,
    lse,
)
