"""The ``numpy`` backend: ``fastdiv.reference`` behind the kernel contract of ``_registry``.

Computes in float64 (it is the oracle), then stores into ``out`` of the caller's dtype.
"""
from . import reference


def lse(x, out, nthreads):
    out[:] = reference.logsumexp_rows(x)


def entropy_logits(x, out, nthreads):
    out[:] = reference.entropy_rows(x, "logits")


def entropy_log_probs(x, out, nthreads):
    out[:] = reference.entropy_rows(x, "log_probs")


def entropy_probs(x, out, nthreads):
    out[:] = reference.entropy_rows(x, "probs")


def kl_logits(p, q, out, nthreads):
    out[:] = reference.kl_rows(p, q, "logits")


def kl_log_probs(p, q, out, nthreads):
    out[:] = reference.kl_rows(p, q, "log_probs")


def kl_probs(p, q, out, nthreads):
    out[:] = reference.kl_rows(p, q, "probs")


def ce_hard(x, target, ignore_index, weight, eps, out, nthreads):
    out[:] = reference.cross_entropy_hard_rows(x, target, ignore_index, weight, eps)


def ce_soft(x, p, weight, alpha, beta, out, nthreads):
    # The API passes alpha = 1 - eps, beta = eps / V (label smoothing).
    out[:] = reference.cross_entropy_soft_rows(x, p, weight, 1.0 - alpha)
