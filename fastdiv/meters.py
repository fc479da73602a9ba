"""Streaming meters: accumulate evaluation metrics over batches, merge workers' meters.

Every meter keeps float64 sums and counts only (plain Python numbers: picklable, tiny), so
``compute()`` is the same, up to float64 rounding of the sums, whatever the batching, and
``merge`` of meters that saw disjoint batches equals one meter that saw them all.

>>> import numpy as np, fastdiv
>>> from fastdiv.meters import Perplexity
>>> x = np.random.default_rng(0).standard_normal((6, 10)); t = np.arange(6)
>>> a, b = Perplexity(), Perplexity()
>>> _ = a.update(x[:2], t[:2]); _ = b.update(x[2:], t[2:])
>>> bool(np.isclose(a.merge(b).compute(), fastdiv.evaluate(x, t).perplexity))
True
"""
from __future__ import annotations

import warnings

import numpy as np

from . import _checks, _gpu, execute, plan as _plan, reduce
from .api import cross_entropy
from .evaluation import evaluate

__all__ = ["CrossEntropyMeter", "Perplexity", "Evaluator"]


def _quiet(fn, *args, **kwargs):
    """``fn`` without the empty-mean warning: a batch of padding is normal in a stream
    (``compute()`` warns if no counted row was seen at all)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=reduce.EMPTY_MESSAGE.split(" (")[0], category=RuntimeWarning)
        return fn(*args, **kwargs)


def _batch_sums(res, topk):
    """``fastdiv.reduce.sums`` of one batch's :class:`fastdiv.Evaluation` (its per-row values
    as returned, on the host)."""
    keys = ["nll", "entropy"] + [f"correct@{k}" for k in topk] + [k for k in ("kl", "z_loss") if k in res]
    return reduce.sums({k: np.asarray(res.host(k)) for k in keys}, np.asarray(res.host("counted")), topk)


class _Meter:
    _sums: dict

    def reset(self):
        """Forget every batch seen."""
        self._sums = {k: 0.0 for k in self._sums}
        return self

    def merge(self, other):
        """Add the batches ``other`` has seen (a meter of the same class and settings); returns self."""
        if type(other) is not type(self) or other._settings() != self._settings():
            raise ValueError(f"cannot merge {other!r} into {self!r}: different meter or settings")
        for k, value in other._sums.items():
            self._sums[k] += value
        return self

    def _settings(self):
        return ()

    def state_dict(self):
        """The sums (a dict of floats) and settings; ``load_state_dict`` restores them."""
        return {"settings": self._settings(), "sums": dict(self._sums)}

    def load_state_dict(self, state):
        if tuple(state["settings"]) != tuple(self._settings()):
            raise ValueError("state_dict of a meter with different settings")
        self._sums = dict(state["sums"])
        return self

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v:.6g}' for k, v in self._sums.items())})"



class CrossEntropyMeter(_Meter):
    """Running mean cross-entropy with ``cross_entropy``'s rules: hard labels leave ignored rows
    out (with ``weight``: torch's weighted mean ``sum w_t nll / sum w_t``); probability targets
    average over rows.

    ``update(logits, target)`` takes a batch; ``compute()`` returns the mean over all batches.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> x = np.random.default_rng(0).standard_normal((8, 5)); t = np.arange(8) % 5
    >>> m = CrossEntropyMeter()
    >>> _ = m.update(x[:3], t[:3]).update(x[3:], t[3:])
    >>> bool(np.isclose(m.compute(), fastdiv.cross_entropy(x, t)))
    True
    """

    def __init__(self, *, ignore_index=-100, weight=None, label_smoothing=0.0, softcap=None, backend="auto"):
        settings = _plan.meter(ignore_index=ignore_index, label_smoothing=label_smoothing, softcap=softcap,
                               backend=backend)
        self.ignore_index = settings.ignore_index
        self.weight = None if weight is None else np.array(_checks.as_array("weight", weight), dtype=np.float64)
        self.label_smoothing = settings.smoothing
        self.softcap = settings.softcap
        self.backend = backend
        self._sums = {"loss": 0.0, "denominator": 0.0}

    def _settings(self):
        w = None if self.weight is None else tuple(self.weight.tolist())
        return (self.ignore_index, w, self.label_smoothing, self.softcap)

    def update(self, logits, target):
        kw = dict(ignore_index=self.ignore_index, weight=self.weight, label_smoothing=self.label_smoothing,
                  softcap=self.softcap, backend=self.backend)
        plan = _plan.cross_entropy(reduction="none", temperature=1.0, validate=False, z_loss=0.0, return_lse=False,
                                   logits=logits, target=target, **kw)
        per_row = _gpu.host_copy(cross_entropy(logits, target, reduction="none", **kw))
        t = w = None
        if plan.target == "indices":
            t = np.asarray(_gpu.host_copy(target))
            w = plan.class_weight(int(np.shape(logits)[-1]), execute.out_dtype(np.asarray(per_row)))
        loss, den = reduce.cross_entropy_sums(plan, per_row, t, w)
        self._sums["loss"] += loss
        self._sums["denominator"] += den
        return self

    def compute(self):
        return float(reduce.ratio(self._sums["loss"], self._sums["denominator"]))


class Perplexity(_Meter):
    """Running perplexity ``exp(sum nll / count)`` over the non-ignored rows of every batch.

    Examples
    --------
    >>> import numpy as np
    >>> p = Perplexity()
    >>> _ = p.update(np.zeros((4, 10)), np.array([1, 2, 3, -100]))   # uniform over 10 classes
    >>> round(p.compute(), 6)
    10.0
    """

    def __init__(self, *, ignore_index=-100, softcap=None, backend="auto"):
        settings = _plan.meter(ignore_index=ignore_index, softcap=softcap, backend=backend)
        self.ignore_index = settings.ignore_index
        self.softcap = settings.softcap
        self.backend = backend
        self._sums = {"nll": 0.0, "count": 0.0}

    def _settings(self):
        return (self.ignore_index, self.softcap)

    def update(self, logits, target):
        res = _quiet(evaluate, logits, target, topk=(), ignore_index=self.ignore_index, softcap=self.softcap,
                     backend=self.backend) if np.size(target) else None
        if res is not None and res.count:
            batch = _batch_sums(res, ())
            self._sums["nll"] += batch["nll"]
            self._sums["count"] += batch["count"]
        return self

    def compute(self):
        return reduce.perplexity(reduce.ratio(self._sums["nll"], self._sums["count"]))


class Evaluator(_Meter):
    """Streams :func:`fastdiv.evaluate` over batches: ``update(logits, target, reference=None)``,
    ``compute()`` -> dict with ``count``, ``mean_nll``, ``perplexity``, ``accuracy@k``,
    ``mean_entropy`` and (when references were given) ``mean_kl``, ``mean_z_loss``.

    The mean KL is over the counted rows of the batches that came with a reference.

    Examples
    --------
    >>> import numpy as np
    >>> ev = Evaluator(topk=(1,))
    >>> x = np.array([[3.0, 0.0], [0.0, 3.0]])
    >>> _ = ev.update(x[:1], np.array([0])).update(x[1:], np.array([0]))
    >>> ev.compute()["accuracy@1"]
    0.5
    """

    def __init__(self, *, topk=(1, 5), kl_direction="ref||model", ignore_index=-100, z_loss=0.0, softcap=None,
                 backend="auto"):
        settings = _plan.meter(topk=topk, kl_direction=kl_direction, ignore_index=ignore_index, z_loss=z_loss,
                               softcap=softcap, backend=backend)
        self.topk = settings.topk
        self.kl_direction = settings.kl_direction
        self.ignore_index = settings.ignore_index
        self.z_loss = settings.z_loss
        self.softcap = settings.softcap
        self.backend = backend
        keys = ["count", "nll", "entropy", "kl", "kl_count", "z_loss"] + [f"correct@{k}" for k in self.topk]
        self._sums = {k: 0.0 for k in keys}

    def _settings(self):
        return (self.topk, self.kl_direction, self.ignore_index, self.z_loss, self.softcap)

    def update(self, logits, target, reference=None):
        res = _quiet(evaluate, logits, target, topk=self.topk, reference=reference, kl_direction=self.kl_direction,
                     ignore_index=self.ignore_index, z_loss=self.z_loss, softcap=self.softcap,
                     backend=self.backend) if np.size(target) else None
        if res is not None and res.count:
            self._add(res, reference is not None)
        return self

    def _add(self, res, with_reference):
        """Add the counted rows of one batch's :class:`fastdiv.Evaluation` to the sums (the
        hook a subclass extends to keep more sums from the same single read)."""
        for key, value in _batch_sums(res, self.topk).items():
            self._sums[key] += value
        if with_reference:
            self._sums["kl_count"] += res.count

    def compute(self):
        s = {k: v for k, v in self._sums.items() if k != "z_loss" or self.z_loss}
        return reduce.means(s, kl_count=s["kl_count"])
