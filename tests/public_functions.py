"""One row per public function (and per ``inputs=`` kind): the table that feeds the guarantee
tests -- the bad-input matrix (tests/bad_inputs.py), reproducibility, memory and
inputs-never-modified (tests/test_guarantees.py).

Adding a public function is adding one ``Fn`` row: how to call it, how to make good
arguments, which arguments are ``(..., V)`` float arrays, its options with an invalid value
each, and the documented per-row results for all-masked and ``+inf`` rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import fastdiv


def _logits(rng, lead, v, dtype):
    return (rng.standard_normal(lead + (v,)) * 3 + rng.uniform(-5, 5, lead + (1,))).astype(dtype)


def _probs(rng, lead, v, dtype):
    p = rng.dirichlet(np.full(v, 0.7), size=lead or None)
    return p.astype(dtype)


def _log_probs(rng, lead, v, dtype):
    return np.log(_probs(rng, lead, v, np.float64)).astype(dtype)


@dataclass(frozen=True)
class Fn:
    id: str
    #: ``call(args, backend, **options)``: the public call on a dict of arguments.
    call: Callable
    #: ``make(rng, lead, v, dtype)``: a dict of good arguments (float arrays of shape lead + (V,)).
    make: Callable
    #: names of the ``(..., V)`` float arguments, and what each holds: logits, log_probs or probs.
    arrays: dict
    #: option name -> an invalid value (an unknown option value must raise, naming the option).
    options: dict = field(default_factory=dict)
    #: keyword giving per-row results ({} for functions that always return per-row values).
    per_row: dict = field(default_factory=lambda: {"reduction": "none"})
    #: documented per-row result when the named array's rows are all -inf (None: not applicable).
    all_masked: dict = field(default_factory=dict)
    #: documented per-row result of a row holding +inf in the named logits array.
    pos_inf: dict = field(default_factory=dict)
    #: takes ``validate=True`` (checks the arrays given as probabilities / log-probabilities).
    validate: bool = False
    #: float arguments that also take integer class indices (cross-entropy's target): their
    #: dtype and shape errors are worded for both readings.
    indices_too: tuple = ()


def _entropy(kind):
    return Fn(
        f"entropy({kind})",
        lambda a, backend, **kw: fastdiv.entropy(a["p"], backend=backend, **{"inputs": kind, **kw}),
        lambda rng, lead, v, dt: {"p": {"logits": _logits, "probs": _probs, "log_probs": _log_probs}[kind](rng, lead, v, dt)},
        {"p": kind},
        options={"inputs": "logit", "reduction": "avg"},
        all_masked={"p": 0.0} if kind != "probs" else {},
        pos_inf={"p": np.nan} if kind == "logits" else {},
        validate=True,
    )


def _kl(kind):
    mk = {"logits": _logits, "probs": _probs, "log_probs": _log_probs}[kind]
    return Fn(
        f"kl_div({kind})",
        lambda a, backend, **kw: fastdiv.kl_div(a["p"], a["q"], backend=backend, **{"inputs": kind, **kw}),
        lambda rng, lead, v, dt: {"p": mk(rng, lead, v, dt), "q": mk(rng, lead, v, dt)},
        {"p": kind, "q": kind},
        options={"inputs": "prob", "reduction": "batchmean"},
        all_masked={"p": 0.0, "q": np.inf} if kind != "probs" else {},
        pos_inf={"p": np.nan, "q": np.nan} if kind == "logits" else {},
        validate=True,
    )


def _js(kind):
    mk = {"logits": _logits, "probs": _probs, "log_probs": _log_probs}[kind]
    return Fn(
        f"js_div({kind})",
        lambda a, backend, **kw: fastdiv.js_div(a["p"], a["q"], backend=backend,
                                               **{"beta": 0.3, "inputs": kind, **kw}),
        lambda rng, lead, v, dt: {"p": mk(rng, lead, v, dt), "q": mk(rng, lead, v, dt)},
        {"p": kind, "q": kind},
        options={"inputs": "prob", "reduction": "batchmean", "beta": 1.5, "temperature": 0.0},
        pos_inf={"p": np.nan, "q": np.nan} if kind == "logits" else {},
        validate=True,
    )


def _ce_hard_args(rng, lead, v, dt):
    return {"logits": _logits(rng, lead, v, dt), "target": rng.integers(0, v, lead)}


FUNCTIONS = [
    Fn("logsumexp",
       lambda a, backend, **kw: fastdiv.logsumexp(a["x"], backend=backend, **kw),
       lambda rng, lead, v, dt: {"x": _logits(rng, lead, v, dt)},
       {"x": "logits"}, per_row={},
       all_masked={"x": -np.inf}, pos_inf={"x": np.inf}),
    _entropy("logits"), _entropy("log_probs"), _entropy("probs"),
    _kl("logits"), _kl("log_probs"), _kl("probs"),
    _js("logits"), _js("probs"),
    Fn("cross_entropy(class indices)",
       lambda a, backend, **kw: fastdiv.cross_entropy(a["logits"], a["target"], backend=backend,
                                                      **{k: a[k] for k in ("weight",) if k in a}, **kw),
       _ce_hard_args,
       {"logits": "logits"},
       options={"reduction": "batchmean", "label_smoothing": 1.5, "ignore_index": 0.5},
       all_masked={"logits": np.inf}, pos_inf={"logits": np.nan}),
    Fn("cross_entropy(probabilities)",
       lambda a, backend, **kw: fastdiv.cross_entropy(a["logits"], a["target"], backend=backend, **kw),
       lambda rng, lead, v, dt: {"logits": _logits(rng, lead, v, dt), "target": _probs(rng, lead, v, dt)},
       {"logits": "logits", "target": "probs"},
       options={"reduction": "avg", "label_smoothing": -0.5},
       all_masked={"logits": np.inf}, pos_inf={"logits": np.nan},
       validate=True, indices_too=("target",)),
]

BY_ID = {f.id: f for f in FUNCTIONS}
