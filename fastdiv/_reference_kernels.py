"""The ``numpy`` backend: ``fastdiv.reference`` behind the kernel contract of ``_registry``.

Computes in float64 (it is the oracle), then stores into ``out`` of the caller's dtype.
"""
import numpy as np

from . import reference


def _scaled(x, scale):
    """Logits divided by the temperature (``scale = 1 / T``), in float64 like the reference."""
    return x if scale == 1.0 else np.asarray(x, dtype=np.float64) * scale


def lse(x, out, nthreads):
    out[:] = reference.logsumexp_rows(x)


def entropy_logits(x, scale, out, nthreads):
    out[:] = reference.entropy_rows(_scaled(x, scale), "logits")


def entropy_log_probs(x, out, nthreads):
    out[:] = reference.entropy_rows(x, "log_probs")


def entropy_probs(x, out, nthreads):
    out[:] = reference.entropy_rows(x, "probs")


def kl_logits(p, q, scale, out, nthreads):
    out[:] = reference.kl_rows(_scaled(p, scale), _scaled(q, scale), "logits")


def kl_log_probs(p, q, out, nthreads):
    out[:] = reference.kl_rows(p, q, "log_probs")


def kl_probs(p, q, out, nthreads):
    out[:] = reference.kl_rows(p, q, "probs")


def ce_hard(x, target, ignore_index, weight, eps, out, nthreads):
    out[:] = reference.cross_entropy_hard_rows(x, target, ignore_index, weight, eps)


def ce_soft(x, p, weight, alpha, beta, scale, out, nthreads):
    # The API passes alpha = 1 - eps, beta = eps / V (label smoothing).
    out[:] = reference.cross_entropy_soft_rows(_scaled(x, scale), p, weight, 1.0 - alpha)


def js_logits(x, z, beta, scale, out, nthreads):
    out[:] = reference.js_rows(_scaled(x, scale), _scaled(z, scale), beta, "logits")


def js_log_probs(a, b, beta, out, nthreads):
    out[:] = reference.js_rows(a, b, beta, "log_probs")


def js_probs(p, q, beta, out, nthreads):
    out[:] = reference.js_rows(p, q, beta, "probs")


def topk_kl(idx, t, z, bucket, out, nthreads):
    out[:] = reference.topk_kl_rows(idx, t, z, "bucket" if bucket else "renormalize")
