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
from .comparison import Comparison, per_row
from .evaluation import evaluate

__all__ = ["CrossEntropyMeter", "Perplexity", "Evaluator", "Comparator"]


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
        """Add the batches ``other`` has seen (a meter of the same class and settings); returns self.

        Parameters
        ----------
        other : meter
            A meter of the same class and settings (``ValueError`` otherwise).
        """
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

    Parameters
    ----------
    ignore_index, weight, label_smoothing, softcap, backend
        As in :func:`fastdiv.cross_entropy`.

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

    Parameters
    ----------
    ignore_index, softcap, backend
        As in :func:`fastdiv.evaluate`.

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

    Parameters
    ----------
    topk, kl_direction, ignore_index, z_loss, softcap, backend
        As in :func:`fastdiv.evaluate`.

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


class Comparator:
    """Streams :func:`fastdiv.compare` over batches: ``update(base, logits, target=None)``,
    ``compute()`` -> :class:`fastdiv.Comparison`, equal to one ``compare`` call over the
    concatenated rows (``row`` indices count the rows of every batch in order; ``merge``
    appends the other comparator's rows after this one's).

    Quantiles are exact, so the per-row values of the counted rows are kept: the row index and
    8 float64 columns with targets (72 bytes; 4 columns, 40 bytes, without), plus one byte for
    top-1 agreement and one per k > 1 of ``topk`` -- 74 bytes per counted row with targets and
    the default ``topk=(1, 5)`` (74 MB per million tokens), 42 without targets.  Either every
    batch has targets or none has (``ValueError`` otherwise).

    Parameters
    ----------
    ignore_index, topk, backend
        As in :func:`fastdiv.compare`.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> rng = np.random.default_rng(0)
    >>> base = rng.standard_normal((10, 50)); model = base + 0.1 * rng.standard_normal((10, 50))
    >>> c = Comparator()
    >>> _ = c.update(base[:4], model[:4]).update(base[4:], model[4:])
    >>> c.compute().to_dict()["kld"] == fastdiv.compare(base, model).to_dict()["kld"]
    True
    """

    def __init__(self, *, ignore_index=-100, topk=(1, 5), backend="auto"):
        settings = _plan.compare(ignore_index=ignore_index, topk=topk, backend=backend, resolve=False)
        self.ignore_index, self.topk, self.backend = settings.ignore_index, settings.topk, backend
        self.reset()

    def _settings(self):
        return (self.ignore_index, self.topk)

    def reset(self):
        """Forget every batch seen."""
        self._chunks = []
        self._rows = 0
        self._with_target = None
        return self

    def _check_targets(self, with_target):
        if self._with_target is not None and with_target is not None and self._with_target != with_target:
            raise ValueError("Comparator: every batch must come with targets, or none; "
                             f"this one {'has' if with_target else 'has none'}, earlier ones "
                             f"{'had' if self._with_target else 'had none'}")

    def update(self, base, logits, target=None):
        """Add a batch; returns self.

        Parameters
        ----------
        base, logits : array_like, same shape (..., V)
            The base's and the compared model's logits, as in :func:`fastdiv.compare`.
        target : array_like of int, optional
            Class indices of shape ``base.shape[:-1]`` or ``ignore_index``.
        """
        self._check_targets(target is not None)
        cols, rows = per_row(base, logits, target, ignore_index=self.ignore_index, topk=self.topk,
                             backend=self.backend)
        return self._add(cols, rows, target is not None)

    def _add(self, cols, rows, with_target):
        """Append a batch's per-row columns (``fastdiv.comparison.per_row``'s, or a compact
        reference's from ``fastdiv._compact.per_row``)."""
        self._check_targets(with_target)
        cols["row"] = cols["row"] + self._rows
        self._chunks.append(cols)
        self._rows += rows
        self._with_target = with_target
        return self

    def merge(self, other):
        """Append the batches ``other`` has seen after this one's (same settings); returns self.

        Parameters
        ----------
        other : Comparator
            A comparator with the same ``ignore_index`` and ``topk`` (``ValueError`` otherwise).
        """
        if type(other) is not type(self) or other._settings() != self._settings():
            raise ValueError(f"cannot merge {other!r} into {self!r}: different meter or settings")
        self._check_targets(other._with_target)
        for cols in other._chunks:
            shifted = dict(cols)
            shifted["row"] = cols["row"] + self._rows
            self._chunks.append(shifted)
        self._rows += other._rows
        if other._with_target is not None:
            self._with_target = other._with_target
        return self

    def compute(self):
        """The :class:`fastdiv.Comparison` of every row seen."""
        with_target = bool(self._with_target)
        keys = ["row", "kld", "reverse_kld", "js", "base_top1_prob", "same_top1"]
        keys += [f"top{k}" for k in self.topk if k > 1]
        if with_target:
            keys += ["nll_base", "nll_model", "p_base", "p_model"]
        empty = {"row": np.int64, "same_top1": bool}
        cols = {}
        for key in keys:
            parts = [c[key] for c in self._chunks]
            dtype = empty.get(key, bool if key.startswith("top") else np.float64)
            cols[key] = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
        return Comparison(cols, self._rows, self.topk, with_target)

    def nbytes(self):
        """Bytes held by the kept per-row values."""
        return sum(a.nbytes for c in self._chunks for a in c.values())

    def __repr__(self):
        return (f"Comparator(rows={self._rows}, counted={sum(c['row'].size for c in self._chunks)}, "
                f"topk={self.topk}, ignore_index={self.ignore_index})")
