"""The cuda backend's entry (``fastdiv._registry``): the kernel contract's functions and
``unavailable_reason``.

``kernels.py`` holds the row kernels' launchers and the device reductions, ``evaluate.py``
the evaluate state (it launches through ``kernels``), and only this module gathers them.
"""
from .evaluate import evaluate  # noqa: F401
from .kernels import (  # noqa: F401
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
