"""The public API: arguments -> plan (``fastdiv.plan``) -> kernels over rows
(``fastdiv.execute``, or ``fastdiv._gpu`` on cuda) -> reduction (``fastdiv.reduce``).

Nothing here reads an option itself: each function hands its arguments to the plan builder
of the same name and its per-row results to ``fastdiv.reduce``.  Backends only provide the
per-row kernels listed in ``fastdiv._registry``.

Every public array function is wrapped by ``fastdiv._interop.native_arrays``: it takes numpy,
torch (CPU/CUDA), CuPy and JAX arrays and answers in the library of its first argument.
"""
from __future__ import annotations

import numpy as np

from . import _checks, _gpu, _interop, execute, plan as _plan, reduce
from ._typing import ArrayLike, Backend, Inputs, Reduction, Result
from .execute import get_num_threads, set_num_threads, threads

__all__ = [
    "logsumexp",
    "entropy",
    "cross_entropy",
    "kl_div",
    "js_div",
    "topk_kl_div",
    "gaussian_kl",
    "set_num_threads",
    "get_num_threads",
    "threads",
]


def _validate(plan, kind, **named):
    """``validate=True``: each row of the named host arrays is a distribution given as
    ``kind`` (``fastdiv._checks.distribution``: probabilities NaN-free, in [0, 1] and
    summing to 1 within ``_checks.PROB_SUM_TOL``; log-probabilities free of NaN and +inf
    with a row logsumexp within the same of 0).  The plan refused device arrays already."""
    if plan.validate:
        for name, a in named.items():
            _checks.distribution(name, _checks.float_array(name, a), kind)


def _rows_op(plan, named):
    """A per-row op on float arrays of one shape (``named``: [(name, array), ...]), reduced."""
    if plan.backend == "cuda":
        return _gpu.per_row_op(plan, named)
    arrays = [_checks.float_array(name, a) for name, a in named]
    if len(arrays) == 2:
        _checks.same_shape(named[0][0], arrays[0], named[1][0], arrays[1])
    per_row = execute.rows(plan, arrays)
    return reduce.finish(per_row, arrays[0].shape[:-1], plan.reduction, per_row.dtype)


# --------------------------------------------------------------------------- public functions


@_interop.native_arrays
def logsumexp(x: ArrayLike, *, backend: Backend = "auto") -> Result:
    """``log(sum(exp(x)))`` over the last axis, in one read of ``x``.

    Parameters
    ----------
    x : array_like, shape (..., V)
        float16, bfloat16, float32 or float64 values.  ``-inf`` entries are masked classes.
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        ``"auto"`` picks cython, then numba, then numpy for host arrays and cuda for device
        arrays; the environment variable ``FASTDIV_BACKEND`` overrides it.  A named backend
        that cannot run raises :class:`BackendUnavailable` saying why.

    Returns
    -------
    ndarray of shape ``x.shape[:-1]`` (a numpy scalar for 1-D ``x``), float32 or float64.
    A row of all ``-inf`` gives ``-inf``; a row with ``+inf`` gives ``+inf``; NaN gives NaN.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> float(fastdiv.logsumexp(np.log(np.array([1.0, 2.0, 5.0]))))  # log(8)
    2.0794415416798357
    """
    plan = _plan.logsumexp(backend=backend, x=x)
    return _rows_op(plan, [("x", x)])


@_interop.native_arrays
def entropy(p: ArrayLike, *, inputs: Inputs = "logits", reduction: Reduction = "none",
            temperature: float = 1.0, backend: Backend = "auto", validate: bool = False) -> Result:
    """Shannon entropy ``H(P) = -sum p log p`` (nats) over the last axis.

    Parameters
    ----------
    p : array_like, shape (..., V)
        The distribution, given as ``inputs``: ``"logits"`` (softmax taken), ``"log_probs"``
        or ``"probs"`` (taken literally, not renormalised; ``0 log 0 = 0``).
    inputs : {"logits", "log_probs", "probs"}
        How ``p`` is given (above).
    reduction : {"none", "mean", "sum"}
        ``"none"`` keeps one value per row (shape ``p.shape[:-1]``).
    temperature : float, positive and finite
        Logits are divided by it before the softmax: ``H(softmax(p / T))``.  Only for
        ``inputs="logits"``.
    validate : bool
        Check first that each row is a distribution: probabilities NaN-free, in [0, 1] and
        summing to 1 within 1e-4 (1e-2 for 16-bit inputs); log-probabilities free of NaN and
        +inf with a logsumexp within the same of 0 (``ValueError`` naming the argument and
        row).  Off by default: it reads the input once more.  Host arrays only.
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        As in :func:`logsumexp`.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> round(float(fastdiv.entropy(np.zeros(4))), 6)   # uniform over 4 classes: log 4
    1.386294
    """
    plan = _plan.entropy(inputs=inputs, reduction=reduction, temperature=temperature, backend=backend,
                         validate=validate, p=p)
    _validate(plan, plan.inputs, p=p)
    return _rows_op(plan, [("p", p)])


@_interop.native_arrays
def kl_div(p: ArrayLike, q: ArrayLike, *, inputs: Inputs = "logits", reduction: Reduction = "mean",
           temperature: float = 1.0, backend: Backend = "auto", validate: bool = False) -> Result:
    """Kullback-Leibler divergence ``D(P || Q) = sum p (log p - log q)`` over the last axis.

    The argument order is the mathematical one (like ``scipy.special.rel_entr(p, q)``),
    not torch's reversed ``kl_div(input=log q, target=p)``.  Reverse KL is ``kl_div(q, p)``:
    the same kernel with its arguments swapped, so it runs at the same speed.

    Parameters
    ----------
    p, q : array_like, same shape (..., V)
        Both given as ``inputs``: ``"logits"``, ``"log_probs"`` or ``"probs"``.
    inputs : {"logits", "log_probs", "probs"}
        How ``p`` and ``q`` are given (log-probabilities and probabilities literally).
    reduction : {"none", "mean", "sum"}
        ``"mean"`` averages over rows (torch's ``"batchmean"`` for 2-D input).
    temperature : float, positive and finite
        Both logit arrays are divided by ``T`` before the softmax (the distillation
        convention).  The result is the plain divergence of the tempered distributions: no
        ``T**2`` factor is applied (that factor only rescales gradients, and fastdiv computes
        values, not gradients).  Only for ``inputs="logits"``.
    validate : bool
        Check first that each row of ``p`` and ``q`` is a distribution, as in :func:`entropy`.
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        As in :func:`logsumexp`.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> p = np.array([0.5, 0.5]); q = np.array([0.9, 0.1])
    >>> round(float(fastdiv.kl_div(p, q, inputs="probs")), 6)
    0.510826
    """
    plan = _plan.kl_div(inputs=inputs, reduction=reduction, temperature=temperature, backend=backend,
                        validate=validate, p=p, q=q)
    _validate(plan, plan.inputs, p=p, q=q)
    return _rows_op(plan, [("p", p), ("q", q)])


@_interop.native_arrays
def cross_entropy(logits: ArrayLike, target: ArrayLike, *, reduction: Reduction = "mean",
                  ignore_index: int = -100, weight: ArrayLike | None = None,
                  label_smoothing: float = 0.0, temperature: float = 1.0, backend: Backend = "auto",
                  validate: bool = False, z_loss: float = 0.0, softcap: float | None = None,
                  return_lse: bool = False) -> Result:
    """Cross-entropy of ``softmax(logits)`` against class indices or target probabilities.

    Gives the numbers of ``torch.nn.functional.cross_entropy`` with the class axis last.

    Parameters
    ----------
    logits : array_like, shape (..., V)
    target : array_like
        Integer class indices of shape ``logits.shape[:-1]`` (hard labels), or floating
        probabilities of shape ``logits.shape`` (soft targets: ``H(P, Q)`` with ``P = target``).
    reduction : {"mean", "sum", "none"}
        Hard labels: ``"mean"`` is ``sum(loss) / sum(weight[target])`` over non-ignored rows
        (torch's weighted mean); it is NaN, with a ``RuntimeWarning``, when that denominator
        is 0 (no rows, every target ignored, zero total weight), as in torch
        (``fastdiv.reduce``).  Soft targets: ``"mean"`` divides by the number of rows.
    ignore_index : int
        Hard labels equal to it contribute 0 and are left out of the mean.  With probability
        targets no row can be left out: a class index (``>= 0``) raises ``ValueError`` as in
        torch, and a negative one (the default -100) has no effect.
    weight : array_like of shape (V,), optional
        Non-negative class weights, of any real dtype (bfloat16 included; converted to the
        compute dtype).
    label_smoothing : float in [0, 1]
        Mixes the target with the uniform distribution: ``(1 - eps) * target + eps / V``.
    temperature : float, positive and finite
        Soft targets only: the logits are divided by ``T`` before the softmax (the target
        probabilities are used as given).  No ``T**2`` factor is applied: fastdiv computes
        values, not gradients.  With class-index targets it must be 1.0.
    validate : bool
        With probabilities as ``target``, check first that each row is a distribution, as
        in :func:`entropy`; class indices are always checked.
    z_loss : float >= 0
        Coefficient of the auxiliary ``z_loss * lse**2`` per row (PaLM), returned separately:
        when it is not 0 (or with ``return_lse=True``) the result is a named tuple
        ``CrossEntropyOutput(loss, z_loss, lse)``, ``z_loss`` reduced like the loss (``"mean"``:
        over the non-ignored rows, unweighted; ignored rows contribute 0).  0 (the default)
        disables it and keeps the plain return value.
    softcap : float > 0, optional
        Logits become ``softcap * tanh(logits / softcap)`` first (Gemma); masked classes stay
        masked.  Applied block by block (O(block) extra memory).
    return_lse : bool
        Also return the per-row log-sum-exp (of the soft-capped logits) as ``.lse``.
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        As in :func:`logsumexp`.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> logits = np.array([[2.0, 0.0, 0.0]]); target = np.array([0])
    >>> round(float(fastdiv.cross_entropy(logits, target)), 6)
    0.239545
    """
    plan = _plan.cross_entropy(reduction=reduction, ignore_index=ignore_index, weight=weight,
                               label_smoothing=label_smoothing, temperature=temperature, backend=backend,
                               validate=validate, z_loss=z_loss, softcap=softcap, return_lse=return_lse,
                               logits=logits, target=target)
    _validate(plan, "probs", target=target)
    if plan.backend == "cuda":
        if plan.with_options:
            return _gpu.cross_entropy_with_options(plan, logits, target)
        return _gpu.cross_entropy(plan, logits, target)
    if plan.with_options:
        r = execute.cross_entropy_with_options(plan, logits, target)
        return reduce.cross_entropy_output(plan, r.loss, r.lse, r.counted, r.lead, r.dtype, r.t, r.w)
    r = execute.cross_entropy(plan, logits, target)
    return reduce.cross_entropy(plan, r.loss, r.lead, r.dtype, r.t, weight=r.w, n_ignored=r.n_ignored)


# --------------------------------------------------------------------------- divergence family (issue 5)


@_interop.native_arrays
def js_div(p: ArrayLike, q: ArrayLike, *, beta: float = 0.5, inputs: Inputs = "logits",
           temperature: float = 1.0, reduction: Reduction = "mean", backend: Backend = "auto",
           validate: bool = False) -> Result:
    """Generalized Jensen-Shannon divergence over the last axis (nats).

    For ``0 < beta < 1``::

        JS_beta(P, Q) = beta * D(P || M) + (1 - beta) * D(Q || M),   M = beta * P + (1 - beta) * Q

    It is symmetric for ``beta = 0.5`` and bounded by ``log 2`` there (in general by
    ``-beta log beta - (1 - beta) log(1 - beta)``); ``JS_beta(P, Q) = JS_{1-beta}(Q, P)``.
    Both terms vanish as ``beta`` tends to 0 or 1, like ``beta (1 - beta)``; the endpoints are
    defined as the limits of ``JS_beta / (beta (1 - beta))``, which are the two KLs (the
    convention of Liger-Kernel's JSD):

    * ``beta = 0``: ``D(P || Q)`` -- forward KL, ``kl_div(p, q)``;
    * ``beta = 1``: ``D(Q || P)`` -- reverse KL, ``kl_div(q, p)``.

    Parameters
    ----------
    p, q : array_like, same shape (..., V)
        Both given as ``inputs``: ``"logits"``, ``"log_probs"`` or ``"probs"`` (the latter two
        taken literally).
    beta : float in [0, 1]
    inputs : {"logits", "log_probs", "probs"}
        How ``p`` and ``q`` are given (above).
    temperature : float, positive and finite
        Both logit arrays are divided by ``T`` before the softmax; no ``T**2`` factor (fastdiv
        computes values, not gradients).  Only for ``inputs="logits"``.
    reduction : {"mean", "sum", "none"}
    validate : bool
        Check first that each row of ``p`` and ``q`` is a distribution, as in :func:`entropy`.
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        As in :func:`logsumexp`.

    Notes
    -----
    From logits, each row pair is read once from memory: a first pass forms both
    log-normalisers, a second computes the terms from cache.  A row of P whose classes are
    all masked (``-inf``) is an empty measure; the formula then gives
    ``-(1 - beta) log(1 - beta)`` (and symmetrically for Q).  NaN in a row gives NaN for it;
    a ``+inf`` logit makes its row's softmax undefined: NaN.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> p = np.array([1.0, 0.0]); q = np.array([0.0, 1.0])
    >>> round(float(fastdiv.js_div(p, q, inputs="probs")), 6)   # disjoint supports: log 2
    0.693147
    >>> x = np.array([2.0, 0.0, -1.0]); z = np.array([0.0, 1.0, 0.5])
    >>> bool(np.isclose(fastdiv.js_div(x, z, beta=0.0), fastdiv.kl_div(x, z)))
    True
    """
    plan = _plan.js_div(beta=beta, inputs=inputs, temperature=temperature, reduction=reduction, backend=backend,
                        validate=validate, p=p, q=q)
    _validate(plan, plan.inputs, p=p, q=q)
    return _rows_op(plan, [("q", q), ("p", p)] if plan.swap else [("p", p), ("q", q)])


@_interop.native_arrays
def topk_kl_div(teacher_indices: ArrayLike, teacher_logprobs: ArrayLike, student_logits: ArrayLike, *,
                tail: str = "renormalize", reduction: Reduction = "mean", backend: Backend = "auto") -> Result:
    """KL divergence ``D(P_teacher || Q_student)`` from a teacher stored as its top-k classes.

    Offline distillation datasets keep, per token, the teacher's k most likely classes and
    their log-probabilities; the student gives full logits.  ``Q = softmax(student_logits)``
    over all V classes; the teacher's missing mass ``r = 1 - sum_i p_i`` is handled by ``tail``:

    * ``"renormalize"``: the teacher is renormalized over its k classes,
      ``p~_i = p_i / sum_j p_j``, and is 0 elsewhere:
      ``sum_i p~_i (log p~_i - log q_i)``.  (``teacher_logprobs`` may then be any log-scores
      of the k classes.)  A row whose log-probabilities are all ``-inf`` gives 0.
    * ``"bucket"``: the other ``V - k`` classes are merged into one "tail" class on both
      sides: ``sum_i p_i (log p_i - log q_i) + r log(r / s)``, ``r = max(0, 1 - sum_i p_i)``,
      ``s`` = the student's total probability of the tail classes (computed directly from
      them, not as ``1 - sum q_i``, so a confident student does not cancel it away).  With
      ``k = V`` there is no tail class and no tail term.  The teacher's listed probabilities
      of a row must not add up to more than ``1 + 1e-3``.

    Either way, ``k = V`` equals the dense ``kl_div`` of the teacher against the student.

    Parameters
    ----------
    teacher_indices : array_like of int, shape (..., k)
        Distinct classes in ``[0, V)`` per row (any order).
    teacher_logprobs : array_like of float, shape (..., k)
        Their log-probabilities (``-inf`` for probability 0).
    student_logits : array_like, shape (..., V)
    tail : {"renormalize", "bucket"}
    reduction : {"mean", "sum", "none"}
    backend : {"auto", "numba", "cython", "numpy", "cuda"}
        As in :func:`logsumexp`.

    Notes
    -----
    Each student row is read once: the kernels walk the segments between the (sorted)
    teacher classes to form the tail's log-sum-exp, then gather the k classes.  A teacher
    probability > 0 on a class the student masks (``-inf``) gives ``+inf``, as does a tail
    mass ``r > 0`` against a student tail of probability 0.  NaN in a row gives NaN.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> student = np.array([2.0, 1.0, 0.0, -1.0])
    >>> teacher = np.log(np.array([0.7, 0.2, 0.06, 0.04]))
    >>> idx = np.array([0, 1]); top = teacher[idx]
    >>> round(float(fastdiv.topk_kl_div(idx, top, student)), 6)
    0.132706
    >>> round(float(fastdiv.topk_kl_div(idx, top, student, tail="bucket")), 6)
    0.007045
    """
    plan = _plan.topk_kl_div(tail=tail, reduction=reduction, backend=backend, teacher_indices=teacher_indices,
                             teacher_logprobs=teacher_logprobs, student_logits=student_logits)
    if plan.backend == "cuda":
        return _gpu.topk_kl(plan, teacher_indices, teacher_logprobs, student_logits)
    z = _checks.float_array("student_logits", student_logits)
    idx = _checks.as_array("teacher_indices", teacher_indices)
    t = _checks.as_array("teacher_logprobs", teacher_logprobs)
    _checks.compute_dtype("teacher_logprobs", t.dtype)
    lead, v = z.shape[:-1], z.shape[-1]
    idx, t = _checks.topk_teacher(idx, t, lead, v, plan.tail)
    per_row = execute.per_row("topk_kl", plan.backend, [z, t], scalars=plan.scalars(v), extra=(idx,))
    return reduce.finish(per_row, lead, plan.reduction, per_row.dtype)


def _real_array(name, a):
    a = _checks.as_array(name, a)
    if a.dtype.kind not in "fiu" and a.dtype != _checks._bfloat16():
        raise TypeError(f"{name} must be a real number or array, got dtype {a.dtype}")
    return a


@_interop.native_arrays
def gaussian_kl(mu: ArrayLike, logvar: ArrayLike, mu_prior: ArrayLike = 0.0, logvar_prior: ArrayLike = 0.0, *,
                reduction: Reduction = "mean") -> Result:
    """KL divergence between diagonal Gaussians, summed over the last axis: the VAE latent term.

    ``KL(N(mu, diag(exp(logvar))) || N(mu_prior, diag(exp(logvar_prior))))``, per element::

        (exp(d) - 1 - d + (mu - mu_prior)**2 * exp(-logvar_prior)) / 2,   d = logvar - logvar_prior

    evaluated in float64 from differences of log-variances: ``exp(d) - 1 - d`` by its Taylor
    series for ``|d| < 0.5`` (no cancellation near ``d = 0``) and ``expm1(d) - d`` beyond, and
    the mean term as ``((mu - mu_prior) * exp(-logvar_prior / 2))**2``.  So ``|logvar|`` in the
    hundreds neither overflows (``exp(logvar)`` is never formed) nor cancels; a result is
    ``+inf`` only if the true value overflows float64 (or a variance is 0).

    It is elementwise, so it runs in numpy (no compiled kernel): blocks of rows are
    converted to float64 in turn, O(block) extra memory.

    Parameters
    ----------
    mu, logvar : array_like, same shape (..., D)
        Mean and log-variance of the posterior.
    mu_prior, logvar_prior : float or array_like broadcastable to ``mu.shape``
        The prior (default: standard normal).
    reduction : {"mean", "sum", "none"}
        Over rows (the sum over the last axis is always taken).

    Returns
    -------
    float32 for float16 / bfloat16 / float32 input, float64 for float64 input.

    Examples
    --------
    >>> import numpy as np, fastdiv
    >>> round(float(fastdiv.gaussian_kl(np.array([1.0, 0.0]), np.array([0.0, np.log(2.0)]))), 6)
    0.653426
    """
    plan = _plan.gaussian_kl(reduction=reduction)
    mu = _checks.float_array("mu", mu)
    logvar = _checks.float_array("logvar", logvar)
    _checks.same_shape("mu", mu, "logvar", logvar)
    priors = []
    wide = False           # a float64 prior array widens the result, a Python float does not (NEP 50)
    for name, a in (("mu_prior", mu_prior), ("logvar_prior", logvar_prior)):
        weak = type(a) in (int, float)
        a = _real_array(name, a)
        wide = wide or (not weak and a.dtype == np.float64)
        try:
            priors.append(np.broadcast_to(a, mu.shape))
        except ValueError:
            raise ValueError(f"{name} of shape {a.shape} does not broadcast to mu's shape {mu.shape}") from None
    dtype = np.dtype(np.float64) if wide else execute.out_dtype(mu, logvar)
    lead, v = mu.shape[:-1], mu.shape[-1]
    nrows = int(np.prod(lead, dtype=np.int64))
    arrays = [a.reshape(1, v) if not lead else a for a in (mu, logvar, *priors)]
    per_row = np.empty(nrows, dtype=np.float64)
    step = execute.rows_per_block(v, 8 * 4)
    from .reference import gaussian_kl_elements
    for r0 in range(0, nrows, step):
        r1 = min(r0 + step, nrows)
        where = np.unravel_index(np.arange(r0, r1), lead) if lead else (np.zeros(1, np.intp),)
        per_row[r0:r1] = np.sum(gaussian_kl_elements(*(a[where] for a in arrays)), axis=1)
    return reduce.finish(per_row.astype(dtype), lead, plan.reduction, dtype)
