"""Every option of every public function, validated once into an immutable :class:`Plan`.

A public function (``fastdiv.api``, ``fastdiv.evaluate``, the meters, the states,
``fastdiv.dask``) hands its keyword arguments to the builder of the same name here
(:func:`cross_entropy`, :func:`evaluate`, ...) and from then on reads options only from the
returned plan: which kernel runs (``op``, its scalars in ``Plan.scalars``), on which backend,
how targets are read (class indices or probabilities, ``ignore_index``), the class weights
(``Plan.class_weight``), label smoothing's ``(alpha, beta)``, the temperature's scale, the
softcap, the z-loss coefficient and the reduction.  How rows are then reduced is
``fastdiv.reduce``'s job, the empty cases included.

Where to add an option
----------------------
1. Here: a validator next to the others (a clear error naming the argument), a field of
   :class:`Plan`, and a line in the builder of every function that takes it.  If it changes
   a kernel's scalars, :meth:`Plan.scalars` derives them.
2. The kernel contract (``fastdiv/_registry.py``) and each backend's kernels, only when the
   kernels must see it.  A rule for reducing rows goes in ``fastdiv/reduce.py``.
3. The tests.  Nothing else: the public modules pass arguments through, they never read them.

Builders validate in the order the arguments are documented and raise before reading any
data; checks of the data itself (targets in range, weights finite and non-negative,
``validate=True``) run where the data is read, on the rows they concern.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Any

import numpy as np

from . import _checks, _lazy, _registry
from ._cuda.interop import is_device_array        # no numba-cuda needed

__all__ = ["Plan", "on_device", "logsumexp", "entropy", "kl_div", "js_div", "topk_kl_div", "gaussian_kl",
           "cross_entropy", "evaluate", "row_state", "finalize", "meter", "compare"]

REDUCTIONS = ("none", "mean", "sum")
INPUT_KINDS = ("logits", "log_probs", "probs")
TAILS = ("renormalize", "bucket")
KL_DIRECTIONS = ("ref||model", "model||ref")
#: ``ignore_index``'s default: torch's, and the only kind of value (a negative one, naming no
#: class) accepted with probability targets, as in torch
IGNORE_INDEX = -100


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True, init=False)
class Plan:
    """What one call computes, every option validated (built once per call, never changed).

    ``backend`` is a concrete backend name, or the user's choice unresolved where the work
    runs elsewhere (``fastdiv.dask`` resolves it on the workers).  ``weight`` is the user's
    array as given; :meth:`class_weight` checks it against the classes and converts it.
    Built as ``Plan(function, backend, **options)``, each option a field below.
    """

    function: str                        # the public function this plan is for
    backend: str
    op: str | None = None                # the registry kernel run per row (fastdiv._registry.OPS)
    reduction: str = "none"
    inputs: str = "logits"               # how the float inputs are given
    scale: float = 1.0                   # 1 / temperature: multiplies every logit
    beta: float = 0.5                    # js_div's skew
    swap: bool = False                   # the two distributions go to the kernel swapped (js_div, beta = 1)
    target: str | None = None            # "indices" or "probs" (cross_entropy)
    ignore_index: int = IGNORE_INDEX
    weight: Any = None
    smoothing: float = 0.0               # label smoothing eps
    z_loss: float = 0.0
    softcap: float | None = None
    return_lse: bool = False
    topk: tuple = ()
    kl_direction: str = "ref||model"
    tail: str = "renormalize"
    offset: int = 0                      # fastdiv.states: the global index of a shard's first class
    validate: bool = False

    def __init__(self, function, backend, **options):
        # The generated __init__ of a frozen dataclass sets all 20 fields through
        # object.__setattr__: 3.7 us, a quarter of a small call's cost.  The defaults are
        # class attributes, so only the options given go into the instance's dict.
        unknown = options.keys() - _OPTIONS
        if unknown:
            raise TypeError(f"Plan got unknown options {sorted(unknown)}")
        d = self.__dict__
        d["function"], d["backend"] = function, backend
        d.update(options)

    @property
    def with_options(self):
        """cross_entropy: the options that return a CrossEntropyOutput or soft-cap the logits."""
        return bool(self.z_loss) or self.softcap is not None or self.return_lse

    def smoothing_scalars(self, v):
        """Label smoothing as the kernels take it: ``q = alpha * p + beta`` with
        ``(alpha, beta) = (1 - eps, eps / V)``."""
        return 1.0 - self.smoothing, self.smoothing / v

    def scalars(self, v):
        """The kernel's scalar arguments after its float arrays (``fastdiv._registry``)."""
        op = self.op
        if op in ("entropy_logits", "kl_logits"):
            return (self.scale,)
        if op == "js_logits":
            return self.beta, self.scale
        if op in ("js_log_probs", "js_probs"):
            return (self.beta,)
        if op == "ce_hard":
            return self.ignore_index, self.smoothing
        if op == "ce_soft":
            return (*self.smoothing_scalars(v), self.scale)
        if op == "topk_kl":
            return (int(self.tail == "bucket"),)
        return ()

    def class_weight(self, v, dtype):
        """The class weights as a contiguous array of the compute ``dtype`` (ones when none
        was given): a 1-D array of ``V`` finite, non-negative numbers.  Any real dtype is
        accepted, bfloat16 (``ml_dtypes`` or a torch tensor) included, as torch does."""
        if self.weight is None:
            return _unit_weights(v, np.dtype(dtype))
        return _checks.class_weight(self.weight, v, dtype)


# --------------------------------------------------------------------------- scalar options


def _choice(name, value, options):
    """value, one of the strings ``options`` (an array's ``in`` would compare elementwise)."""
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {options}, got {value!r}")
    return value


def _real(value):
    """A real number, bools excepted (numbers.Real's ABC check only past float and int)."""
    return type(value) in (float, int) or (not isinstance(value, bool) and isinstance(value, numbers.Real))


def _integer(value):
    """An integer, bools excepted (numbers.Integral's ABC check only past int)."""
    return type(value) is int or (not isinstance(value, bool) and isinstance(value, numbers.Integral))


def _reduction(value):
    return _choice("reduction", value, REDUCTIONS)


def _input_kind(value):
    return _choice("inputs", value, INPUT_KINDS)


def _tail(value):
    return _choice("tail", value, TAILS)


def _kl_direction(value):
    return _choice("kl_direction", value, KL_DIRECTIONS)


def _label_smoothing(value):
    if not _real(value) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"label_smoothing must be a number in [0, 1], got {value!r}")
    return float(value)


def _ignore_index(value):
    if not _integer(value):
        raise TypeError(f"ignore_index must be an integer, got {value!r}")
    if not -2**63 <= int(value) < 2**63:              # the kernels compare it as int64
        raise ValueError(f"ignore_index must fit in int64, got {value!r}")
    return int(value)


def _temperature(value, inputs="logits"):
    """``1 / T`` for a positive finite temperature ``T``; only logits can be tempered."""
    if not _real(value):
        raise TypeError(f"temperature must be a positive finite number, got {value!r}")
    t = float(value)
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"temperature must be a positive finite number, got {value!r}")
    if t != 1.0 and inputs != "logits":
        raise ValueError(f"temperature divides logits; with inputs={inputs!r} it must be 1.0, got {value!r}")
    scale = 1.0 / t
    if not (math.isfinite(scale) and scale > 0.0):      # a subnormal temperature overflows 1/T
        raise ValueError(f"temperature={value!r} is too small: 1/temperature is not a finite number")
    return scale


def _beta(value):
    """The generalized Jensen-Shannon skew, a number in [0, 1]."""
    if not _real(value) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"beta must be a number in [0, 1], got {value!r}")
    return float(value)


def _z_loss(value):
    if not _real(value) or not 0.0 <= float(value) < float("inf"):
        raise ValueError(f"z_loss must be a finite number >= 0 (the coefficient of lse**2), got {value!r}")
    return float(value)


def _softcap(value):
    if value is None:
        return None
    if not _real(value) or not 0.0 < float(value) < float("inf"):
        raise ValueError(f"softcap must be None or a finite number > 0, got {value!r}")
    return float(value)


def _topk(value):
    """A tuple of distinct positive integers (``topk=5`` is ``(5,)``), in the order given."""
    ks = (value,) if _integer(value) else value
    try:
        ks = tuple(ks)
    except TypeError:
        raise TypeError(f"topk must be a positive integer or a sequence of them, got {value!r}") from None
    for k in ks:
        if not _integer(k) or k < 1:
            raise ValueError(f"topk must hold positive integers, got {value!r}")
    if len(set(ks)) != len(ks):
        raise ValueError(f"topk must not repeat a value, got {value!r}")
    return tuple(int(k) for k in ks)


def _validate_flag(value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"validate must be True or False, got {value!r}")
    return bool(value)


def _return_lse(value):
    return bool(value)


@functools.lru_cache(maxsize=4)
def _unit_weights(v, dtype):
    """V read-only ones of ``dtype``, kept for the next call: ``np.ones`` costs 0.8 us at
    V = 51 and 10 us at V = 128256, a call at C51 ~15 us in all."""
    w = np.ones(v, dtype)
    w.flags.writeable = False
    return w


_OPTIONS = frozenset(f.name for f in dataclasses.fields(Plan)) - {"function", "backend"}


# --------------------------------------------------------------------------- devices and backends


def on_device(*objs):
    """Whether any of ``objs`` lives in CUDA device memory (torch CUDA tensors, CuPy and numba
    device arrays, any ``__cuda_array_interface__`` or CUDA DLPack exporter, ``fastdiv.linear``
    heads of device arrays)."""
    return any(o is not None and (is_device_array(o) or getattr(o, "on_device", False) is True) for o in objs)


def _backend(choice, named, *, resolve=True, host_only=(), op=None):
    """The concrete backend for the arrays ``named`` ({name: array}): ``auto`` picks cuda
    for device arrays, and for host arrays the CPU backend measured faster for kernel ``op``
    on the first array (``_registry.auto_order``).  ``host_only``: the names ``validate=True``
    reads, which must be host arrays.  A CPU backend gets host arrays only."""
    if all(a is None or type(a) is np.ndarray for a in named.values()):    # the common case: no checks
        return _registry.resolve(choice, op=op, x=next(iter(named.values()))) if resolve else choice
    lazy = [name for name, a in named.items() if _lazy.is_lazy(a)]
    on_host = [name for name in lazy if not named[name].on_device]
    if on_host and (choice == "cuda" or on_device(*named.values())):
        raise _registry.BackendUnavailable(
            f"{on_host[0]} is fastdiv.linear logits of host arrays, which run on the CPU backends; for cuda "
            "make the head from device arrays (torch CUDA tensors, CuPy or numba device arrays)")
    if not resolve:
        return choice
    device = [name for name, a in named.items() if on_device(a)]
    first = next(iter(named.values()))
    backend = _registry.resolve(choice, device=bool(device), op=op, x=None if lazy else first)
    for name in device:
        if name in host_only:
            raise ValueError(f"validate=True checks host arrays; {name} is a device array (validate it on "
                             "the device)")
    if backend != "cuda" and device:
        raise TypeError(f"{device[0]} is a CUDA array; use backend='cuda' (or 'auto')")
    return backend


def _logits_only(kind, named):
    """Lazy logits (``fastdiv.linear``) are logits: ``inputs`` must say so."""
    for name, a in named.items():
        if kind != "logits" and _lazy.is_lazy(a):
            raise ValueError(f"{name} is fastdiv.linear logits; inputs must be 'logits', got {kind!r}")


def target_kind(target):
    """``"probs"`` for a floating-point target (probabilities, soft labels: float16, bfloat16,
    float32, float64; on the host, a device or in dask), else ``"indices"`` (the class-index
    checks then say what is wrong with it)."""
    if hasattr(target, "is_floating_point"):                     # torch, any device
        return "probs" if target.is_floating_point() else "indices"
    dtype = getattr(target, "dtype", None)
    if dtype is None:
        dtype = _checks.as_array("target", target).dtype
    dtype = np.dtype(dtype)
    return "probs" if dtype.kind == "f" or dtype == _checks._bfloat16() else "indices"


def _ignore_for_probs(ignore, kind):
    """torch refuses a class ``ignore_index`` (>= 0) with probability targets: no row can be
    left out by it.  A negative one (the default -100) names no class and has no effect."""
    if kind == "probs" and ignore >= 0:
        raise ValueError(f"ignore_index={ignore} applies to class-index targets only; with probability targets "
                         "no row is left out (leave ignore_index at its default, as torch requires)")


# --------------------------------------------------------------------------- builders, one per public function


def logsumexp(*, backend, x):
    return Plan("logsumexp", _backend(backend, {"x": x}, op="lse"), op="lse")


def entropy(*, inputs, reduction, temperature, backend, validate, p, resolve=True):
    kind = _input_kind(inputs)
    _logits_only(kind, {"p": p})
    red = _reduction(reduction)
    scale = _temperature(temperature, kind)
    check = _validate_flag(validate) and kind != "logits"
    return Plan("entropy", _backend(backend, {"p": p}, resolve=resolve, host_only=("p",) if check else ()), op=f"entropy_{kind}",
                reduction=red, inputs=kind, scale=scale, validate=check)


def kl_div(*, inputs, reduction, temperature, backend, validate, p, q, resolve=True):
    kind = _input_kind(inputs)
    _logits_only(kind, {"p": p, "q": q})
    red = _reduction(reduction)
    scale = _temperature(temperature, kind)
    check = _validate_flag(validate) and kind != "logits"
    return Plan("kl_div", _backend(backend, {"p": p, "q": q}, resolve=resolve, host_only=("p", "q") if check else ()), op=f"kl_{kind}",
                reduction=red, inputs=kind, scale=scale, validate=check)


def js_div(*, beta, inputs, temperature, reduction, backend, validate, p, q):
    """``beta`` = 0 and 1 are the limits, forward and reverse KL: the ``kl_*`` kernel, its
    arguments swapped for 1 (``swap``)."""
    kind = _input_kind(inputs)
    _logits_only(kind, {"p": p, "q": q})
    red = _reduction(reduction)
    b = _beta(beta)
    scale = _temperature(temperature, kind)
    op = f"kl_{kind}" if b in (0.0, 1.0) else f"js_{kind}"
    check = _validate_flag(validate) and kind != "logits"
    return Plan("js_div", _backend(backend, {"p": p, "q": q}, host_only=("p", "q") if check else ()), op=op, reduction=red, inputs=kind,
                scale=scale, beta=b, swap=b == 1.0, validate=check)


def topk_kl_div(*, tail, reduction, backend, teacher_indices, teacher_logprobs, student_logits):
    t = _tail(tail)
    red = _reduction(reduction)
    named = {"teacher_indices": teacher_indices, "teacher_logprobs": teacher_logprobs,
             "student_logits": student_logits}
    return Plan("topk_kl_div", _backend(backend, named), op="topk_kl", reduction=red, tail=t)


def gaussian_kl(*, reduction):
    return Plan("gaussian_kl", "numpy", reduction=_reduction(reduction))


def cross_entropy(*, reduction, ignore_index, weight, label_smoothing, temperature, backend, validate, z_loss,
                  softcap, return_lse, logits, target, resolve=True):
    """Class indices run ``ce_hard``, probabilities ``ce_soft``; ``z_loss``, ``softcap`` and
    ``return_lse`` take the options path (``Plan.with_options``), which has no temperature."""
    red = _reduction(reduction)
    ignore = _ignore_index(ignore_index)
    eps = _label_smoothing(label_smoothing)
    scale = _temperature(temperature)
    z = _z_loss(z_loss)
    cap = _softcap(softcap)
    lse = _return_lse(return_lse)
    if (z or cap is not None or lse) and scale != 1.0:
        raise ValueError("temperature cannot be combined with z_loss, softcap or return_lse")
    check = _validate_flag(validate)
    kind = target_kind(target)
    plain = kind == "indices" and weight is None and eps == 0.0 and not (z or cap is not None or lse)
    be = _backend(backend, {"logits": logits, "target": target, "weight": weight}, resolve=resolve,
                  host_only=("target",) if check else (), op="ce_hard" if plain else None)
    _ignore_for_probs(ignore, kind)
    if kind == "indices" and scale != 1.0:
        raise ValueError(f"temperature applies to soft (probability) targets; with class indices it must be 1.0, "
                         f"got {temperature!r}")
    return Plan("cross_entropy", be, op="ce_soft" if kind == "probs" else "ce_hard", reduction=red, scale=scale,
                target=kind, ignore_index=ignore, weight=weight, smoothing=eps, z_loss=z,
                softcap=cap, return_lse=lse, validate=check and kind == "probs")


def evaluate(*, topk, kl_direction, ignore_index, z_loss, softcap, backend, logits, target, reference=None,
             resolve=True):
    ks = _topk(topk)
    ignore = _ignore_index(ignore_index)
    direction = _kl_direction(kl_direction)
    z = _z_loss(z_loss)
    cap = _softcap(softcap)
    be = _backend(backend, {"logits": logits, "target": target, "reference": reference}, resolve=resolve)
    return Plan("evaluate", be, op="evaluate", topk=ks, kl_direction=direction, ignore_index=ignore, z_loss=z,
                softcap=cap)


def row_state(*, topk, ignore_index, softcap, offset, backend, logits_shard, reference_shard=None):
    """``fastdiv.states.row_state``: the evaluate kernel over a slice of the classes (CPU only)."""
    ks = _topk(topk)
    ignore = _ignore_index(ignore_index)
    cap = _softcap(softcap)
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ValueError(f"offset must be a non-negative integer, got {offset!r}")
    be = _registry.resolve(backend)
    if be == "cuda":
        raise _registry.BackendUnavailable("row_state runs on the CPU backends")
    be = _backend(be, {"logits_shard": logits_shard, "reference_shard": reference_shard})
    return Plan("row_state", be, op="evaluate", topk=ks, ignore_index=ignore, softcap=cap, offset=int(offset))


def finalize(*, topk, kl_direction, z_loss):
    """``fastdiv.states.finalize``: no kernel, only the finish and the aggregates."""
    return Plan("finalize", "numpy", topk=_topk(topk), kl_direction=_kl_direction(kl_direction),
                z_loss=_z_loss(z_loss))


def meter(*, topk=(), kl_direction="ref||model", ignore_index=IGNORE_INDEX, label_smoothing=0.0, z_loss=0.0,
          softcap=None, backend="auto"):
    """A meter's settings (``fastdiv.meters``), checked when it is made; each ``update``
    then runs the public function, whose plan is built from the batch."""
    return Plan("meter", backend, topk=_topk(topk), kl_direction=_kl_direction(kl_direction),
                ignore_index=_ignore_index(ignore_index), smoothing=_label_smoothing(label_smoothing),
                z_loss=_z_loss(z_loss), softcap=_softcap(softcap))


def compare(*, ignore_index, topk, backend, base=None, logits=None, resolve=True):
    """``fastdiv.compare`` (and ``meters.Comparator``, ``dask.compare``, the command): which rows
    count and the k of the top-k agreement.  It runs on the CPU backends only: device arrays
    and ``backend="cuda"`` raise ``BackendUnavailable``.  ``resolve=False`` (a meter's or a
    dask graph's settings) keeps the user's backend choice for each batch to resolve."""
    ks = _topk(topk)
    ignore = _ignore_index(ignore_index)
    if backend == "cuda" or on_device(base, logits):
        raise _registry.BackendUnavailable(
            "compare runs on the CPU backends (numba, cython, numpy) in this version; copy device arrays to the host")
    be = _backend(backend, {"base": base, "logits": logits}, resolve=resolve)
    return Plan("compare", be, topk=ks, ignore_index=ignore)
