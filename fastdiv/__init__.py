"""fastdiv: cross-entropy, KL divergence, entropy and log-sum-exp over large vocabularies,
in one read of the logits, with identical semantics on every backend.

Public names only; see ``fastdiv.api`` for the implementation and docs/semantics.rst for semantics.
"""
from .api import (
    cross_entropy,
    entropy,
    gaussian_kl,
    get_num_threads,
    js_div,
    kl_div,
    logsumexp,
    set_num_threads,
    threads,
    topk_kl_div,
)
from ._config import show_config
from ._linear import LinearLogits, linear
from .evaluation import CrossEntropyOutput, Evaluation, evaluate
from .comparison import Comparison, compare
from . import meters, states
from ._registry import BackendUnavailable, available_backends

__version__ = "0.1.0"

__all__ = [
    "logsumexp",
    "entropy",
    "cross_entropy",
    "kl_div",
    "evaluate",
    "Evaluation",
    "CrossEntropyOutput",
    "compare",
    "linear",
    "LinearLogits",
    "Comparison",
    "meters",
    "states",
    "js_div",
    "topk_kl_div",
    "gaussian_kl",
    "show_config",
    "set_num_threads",
    "get_num_threads",
    "threads",
    "available_backends",
    "BackendUnavailable",
    "__version__",
]
