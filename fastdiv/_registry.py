"""One registry of per-row kernels: ``(backend, op) -> callable``, availability and ``auto``.

The kernel contract (every CPU backend module implements exactly these names)
-----------------------------------------------------------------------------
All array arguments are already validated by ``fastdiv.api``: 2-D, C-contiguous rows
``(rows, V)`` with ``V >= 1``, one float dtype (float32 or float64) shared by every float
array of the call, ``out`` a 1-D C-contiguous array of ``rows`` elements of that dtype.
Indices are 64-bit.  Kernels never allocate ``rows x V`` temporaries, read each input
element once from memory, and compute each row on one thread, so results do not depend on
the thread count.  Semantics are those of ``fastdiv.reference`` (see its docstring).

    lse(x, out, nthreads)                    out[i] = logsumexp(x[i])
    entropy_logits(x, scale, out, nthreads)  H(softmax(scale * x[i]))   (scale = 1 / temperature)
    entropy_log_probs(l, out, nthreads)      -sum exp(l) * l           (literal, no renormalising)
    entropy_probs(p, out, nthreads)          -sum p * log p            (0 log 0 = 0)
    kl_logits(x, z, scale, out, nthreads)    D(softmax(scale x[i]) || softmax(scale z[i]))
    kl_log_probs(a, b, out, nthreads)        sum exp(a) * (a - b)
    kl_probs(p, q, out, nthreads)            sum p * (log p - log q)
    ce_hard(x, target, ignore_index, weight, eps, out, nthreads)
        target: int64[rows], each in [0, V) or == ignore_index; weight: float[V] (ones if the
        user gave none); out[i] = 0 if ignored, else
        (1 - eps) * w[t] * (lse - x[t]) + eps / V * sum_j w_j * (lse - x_j)
    ce_soft(x, p, weight, alpha, beta, scale, out, nthreads)
        out[i] = sum_j w_j * q_j * (lse - x_j) with q_j = alpha * p_j + beta, x = scale * logits
        (label smoothing is alpha = 1 - eps, beta = eps / V).
    evaluate(x, z, target, st, ix, nthreads)
        the mergeable per-row state of ``fastdiv.evaluate``, ``fastdiv.states`` and
        ``cross_entropy``'s options.  ``x``: logits; ``z``: reference logits of the same shape
        and dtype, or an array with 0 rows for "no reference"; ``target``: int64[rows], a
        class index, or any value outside [0, V) for "no target in this row" (ignored rows, or
        a vocabulary shard that does not hold the target).  Writes per row, in float64
        ``st[i, :8]`` (columns named in ``fastdiv._state``)::

            m    = max x                (NaN-propagating; +inf for a row with +inf and no NaN)
            s    = sum e^(x - m)        w = sum e^(x - m) (x - m)     (entropy = log s - w / s)
            xt   = x[t]                 (without a target: on the CPU backends the threshold
                                         the caller left in st[i, 3], read in x's dtype, NaN
                                         for none, as the callers fill st -- so a target held
                                         by another vocabulary tile gets its rank in this one,
                                         fastdiv.execute; cuda's kernel: NaN)
            mz, sz                       as m, s for z
            wxz  = sum_{x_j > -inf} e^(x_j - m) ((x_j - m) - (z_j - mz))
            wzx  = sum_{z_j > -inf} e^(z_j - mz) ((z_j - mz) - (x_j - m))

        and in int64 ``ix[i, :3]``: the first index of the maximum of x (meaningful only for
        a finite m), the number of j with ``x_j > xt``, and flags: 1 = some ``x_j > -inf``
        where ``z_j = -inf``, 2 = some ``z_j > -inf`` where ``x_j = -inf`` (a KL of +inf).
        ``st`` may have 10 columns: with a reference, ``st[i, 8]``, ``st[i, 9]`` = D(x || z),
        D(z || x) as ``kl_logits`` finishes them (a row pair whose one pass cancelled summed
        again while in cache; +inf by the flags), for rows where both maxima are finite; the
        others, and both columns without a reference, are left as the caller filled them.
        While a maximum is ``-inf`` its sums use the shift 0 (never ``-inf - -inf``);
        ``fastdiv._state.finish_rows`` turns the state into results with the row endings of
        ``fastdiv.reference``.  Columns of z are left untouched without a reference.

    compare(x, z, target, st, ix, nthreads)
        ``fastdiv.compare``'s per-row state (#19) in one read of the model's logits ``x`` and
        the base's ``z`` (same shape and dtype; the API calls it with every row of the base
        finite or not, as evaluate).  ``st[i, :6]`` and ``ix[i, 0]``, ``ix[i, 2]``: evaluate's
        columns for ``x`` with reference ``z`` and target ``target[i]`` (``st[i, 6:8]``, its KL
        sums, unspecified: the compiled kernels leave them unsummed); ``st[i, 8]`` =
        ``z[t]`` (NaN without a target); ``st[i, 9]`` = the Jensen-Shannon divergence (beta =
        0.5) of the two rows, as ``js_logits``; ``ix[i, 3]`` = the first index of the maximum
        of ``z`` (meaningful only where ``st[i, 4]`` is not NaN or -inf); ``ix[i, 1]`` = the
        number of ``j`` with ``x_j > x[ix[i, 3]]`` where ``z`` has a top-1 class (``st[i, 4]``
        finite or ``+inf``), ``x``'s maximum is finite and ``x[ix[i, 3]] > -inf``, else -1;
        ``st[i, 10]``, ``st[i, 11]`` = D(z || x) and D(x || z), summed class by class from
        terms that do not cancel as the rows' difference goes to 0 (``d = lq - lp``; near 0
        evaluate's one-pass ``wxz``, ``wzx`` lose the KL's relative accuracy in float32), +inf
        where ``ix[i, 2]``'s flags say so, for rows where both have a finite maximum, no +inf
        and no NaN; else left NaN (``fastdiv.comparison`` gives them to ``finish_rows`` as the
        row's KLs, and its endings replace them for empty, NaN and +inf rows).
        ``st[i, 4:6]`` are ``z``'s own (m, s) whatever ``x`` holds (Cython's evaluate pass stops
        at a +inf in either row, so it reads such a row pair's ``z`` again; numba's keeps ``z``'s
        sums going).  ``st`` comes filled with NaN, as for evaluate (Cython's and numpy's
        compare read ``st[i, 3]`` through evaluate's pass).  CPU backends only:
        ``fastdiv.compare`` refuses cuda.

Divergence family (contract v2, issue 5).  ``scale = 1 / temperature`` (positive, finite)
multiplies every logit before anything else; ``scale = 1.0`` gives today's results bit for bit.

    js_logits(x, z, beta, scale, out, nthreads)   generalized JSD of softmax(scale x), softmax(scale z):
        beta D(P||M) + (1 - beta) D(Q||M), M = beta P + (1 - beta) Q (the API calls it for
        0 < beta < 1 only; beta = 0 / 1 are kl_logits(x, z) / kl_logits(z, x))
    js_log_probs(a, b, beta, out, nthreads)       the same from log-probabilities (taken literally)
    js_probs(p, q, beta, out, nthreads)           the same from probabilities (0 log 0 = 0)
    topk_kl(idx, t, z, bucket, out, nthreads)
        idx: int64 (rows, k), each row strictly increasing in [0, V) (a row that is not gives
        NaN, never an out-of-bounds read); t: (rows, k) teacher log-probabilities, same float
        dtype as z; z: (rows, V) student logits; bucket: 0 renormalizes the teacher over its k
        classes, 1 puts its missing mass into one tail class (fastdiv.reference.topk_kl_rows).

A term whose probability or weight is exactly 0 contributes exactly 0 (no ``0 * inf``).

Half precision: a backend module with ``HALF_INPUTS = True`` also accepts float16 inputs as
``np.uint16`` bit patterns and bfloat16 inputs as ``np.int16`` bit patterns (every float input
of a call in the same format), with ``weight`` and ``out`` float32; it widens each element as
it reads it and accumulates in float32.
"""
from __future__ import annotations

import functools
import importlib
import os

OPS = (
    "lse",
    "entropy_logits",
    "entropy_log_probs",
    "entropy_probs",
    "kl_logits",
    "kl_log_probs",
    "kl_probs",
    "ce_hard",
    "ce_soft",
    "evaluate",     # the mergeable per-row state of fastdiv.evaluate (contract above)
    "compare",      # fastdiv.compare's per-row state (CPU backends: see the contract)
    "js_logits",
    "js_log_probs",
    "js_probs",
    "topk_kl",
)

#: KL from logits: the one pass ``D = w / sx - log sx + log sz`` subtracts terms of order
#: ``L = 1 + |w / sx| + 2 (|log sx| + |log sz|)`` and carries an absolute error of a few eps L.
#: A row with ``D < KL_EXACT_BELOW * L`` (float64; nearly equal P and Q: D ~ |P - Q|^2) is
#: recomputed without cancellation (measured: the one pass stays within 1e-12 relative
#: elsewhere), one with ``D < KL32_NEAR_BELOW * L`` in float32 working precision summed again
#: class by class (relative error ~1e-7, against 2e-4 at D ~ 5e-5 and 2 % at D ~ 5e-7 for the
#: one pass; above it the one pass is ~1e-5).  numba's and CUDA's kernels read these, the
#: Cython kernels' FD_KL_EXACT_BELOW / FD_KL32_NEAR_BELOW (_simd.h) are the same literals
#: (tests/test_divergences.py checks them).
KL_EXACT_BELOW = 1e-3
KL32_NEAR_BELOW = 1e-4

#: The float32 nearby terms (JS's m J(d / 2), the KLs' p (e^d - 1 - d)) are chosen per vector
#: (Cython) or chunk (numba) where every class has |d| < 2.  One that fails with at most
#: 1 / NEAR_MIXED_SHARE of its classes wide (|d| >= NEAR_MIXED_WIDE, not masked in one row
#: only) is summed class by class, each class in its own form; the others take the log-based
#: terms.  A near class's log-based terms cancel down to m d^2 / 8, off by ~eps |lm| 8 / d^2
#: of itself: rows 1e-3 apart with one noisy class (|d| ~ 3) per 190 had JS 66 % off on
#: numba, 1.3 % on Cython.  Where most classes have |d| >= 1/2 the log-based terms are
#: accurate to ~1e-6 and cost less.  The Cython kernels' FD_NEAR_MIXED_SHARE and
#: FD_NEAR_MIXED_WIDE (_simd.h) are the same literals (tests/test_divergences.py).
NEAR_MIXED_SHARE = 2
NEAR_MIXED_WIDE = 0.5

#: The log-based terms of a near class with a large mass cancel to ~eps (p + q) of it, where a
#: vector or chunk of far classes holds it: rows with one class far above the rest in both
#: (p ~ q ~ 1 - 1e-10) and independent tails, JS ~1e-11, came out 1.6x off (2026-12-07).  A
#: float32 row pair whose JS (beta = 1/2) is below JS_LANES_BELOW after a pass where some
#: vector or chunk took those terms is summed again with every one that has a near class
#: taken class by class (and compare's KLs with it).  numba reads it; the Cython kernels'
#: FD_JS_LANES_BELOW (_simd.h) is the same literal (tests/test_divergences.py).
JS_LANES_BELOW = 1e-3

#: J(d / 2) = (d / 2) tanh(d / 2) - log cosh(d / 2) = s Q(s), s = d^2 in [0, 4): Q's
#: coefficients, highest degree first, as float32.  The Jensen-Shannon term at beta = 1/2 of a
#: class whose log-probabilities differ by d is m J(d / 2), m = (p + q) / 2, which the float32
#: js_logits / compare kernels take where |d| < 2 (docs/semantics.rst, "Jensen-Shannon of
#: nearby rows"): numba's and CUDA's read this tuple, the Cython kernels' fd_jsd_f32 (_simd.h)
#: the same literals (tests/test_divergences.py checks both, and the fit's 2.2e-7 relative).
JSD_HALF_POLY = (5.788427515085459e-08, -1.374143039356568e-06, 1.7764687072485685e-05,
                 -0.0001825586223276332, 0.0017348849214613438, -0.015624696388840675,
                 0.1249999850988388)

#: E(d) = (e^d - 1 - d) / d^2 for |d| < 2: its coefficients in d, highest degree first, as
#: float32 (degree 8, fitted on Chebyshev nodes toward the relative minimax: 2.3e-7 relative in
#: float32 Horner).  With q = p e^d, a class's KL(p || q) term is p d^2 E(d) and its Jeffreys
#: term (q - p) d is p d^2 (1 + d E(d)), both >= 0: compare's float32 kernels sum its kld and
#: reverse_kld so where |d| < 2 (docs/semantics.rst, "KL of nearby rows"); numba's read this
#: tuple, the Cython kernels' fd_kl_near_f32 (_simd.h) the same literals (tests/test_compare.py
#: checks both, and the bound).
KL_NEAR_POLY = (2.81619009001588e-07, 2.984316097354167e-06, 2.484798096702434e-05,
                0.00019774110114667565, 0.0013886974193155766, 0.00833404902368784,
                0.041666846722364426, 0.16666646301746368, 0.4999999701976776)

#: Backends in the order ``auto`` prefers them for host (numpy) input: Cython first (compiled
#: at install time, so no JIT latency; as fast or faster in benchmarks/NOTES.md), then numba.
CPU_BACKENDS = ("cython", "numba")

#: ``auto``'s measured exceptions to that order: {(LLVM's name of the CPU, the Cython ISA level
#: running): {op: backend}}, applied to float32 host arrays of at least AUTO_FROM_BYTES, for a
#: backend measured faster than Cython by more than auto's 10 % (benchmarks/auto_choice.py).  A
#: pair not listed keeps CPU_BACKENDS' order.  None is listed: on the Zen 4 at x86-64-v4 numba
#: was 10-17 % faster for logsumexp and hard-label cross-entropy (2026-12-05) until Cython's
#: long rows were summed in the max pass (2026-12-06, benchmarks/NOTES.md: numba's time over
#: Cython's 0.99-1.26 for every op and shape); on the Intel Xeon (AVX-512) every Cython kernel
#: was the faster (NOTES, 2026-11-24).
AUTO_FASTER: dict = {}

#: Inputs from which the exceptions apply: larger than a 32 MiB L3, the kernels read memory,
#: where the measured differences are; in cache the two backends are within ~5 % of each other
#: (the gate's in-cache figures), and Cython needs no JIT at the first call (numba loads its
#: cached machine code for an op in ~0.1-0.4 s, or compiles it for seconds).
AUTO_FROM_BYTES = 64 << 20
BACKENDS = ("numba", "cython", "cuda", "numpy")

_MODULES = {
    "numba": "fastdiv._numba.ops",
    "cython": "fastdiv._cython._kernels",
    "cuda": "fastdiv._cuda.ops",
    "numpy": "fastdiv._reference_kernels",
}

_loaded: dict = {}


class BackendUnavailable(RuntimeError):
    """An explicitly requested backend cannot run here; the message says why."""


def _load(backend):
    """Import a backend module once; remember the reason if it fails."""
    if backend not in _loaded:
        try:
            _loaded[backend] = (importlib.import_module(_MODULES[backend]), None)
        except Exception as exc:  # any import failure makes the backend unavailable
            _loaded[backend] = (None, f"{type(exc).__name__}: {exc}")
    return _loaded[backend]


def unavailable_reason(backend):
    """``None`` when ``backend`` can run here, else a sentence saying why not."""
    if backend == "cuda":
        # Importing numba.cuda is slow and may probe drivers: only on request.
        module, why = _load("cuda")
        if module is None:
            return f"the cuda backend could not be imported ({why}); install fastdiv[cuda]"
        return module.unavailable_reason()
    module, why = _load(backend)
    if module is None:
        hint = " (was the Cython extension built? reinstall with `pip install .`)" if backend == "cython" else ""
        return f"the {backend} backend could not be imported: {why}{hint}"
    return None


def available_backends() -> list[str]:
    """Backends usable for host arrays in this process, in ``auto`` preference order.

    Examples
    --------
    >>> import fastdiv
    >>> "numpy" in fastdiv.available_backends()       # the reference is always there
    True
    """
    return [b for b in CPU_BACKENDS + ("numpy",) if unavailable_reason(b) is None]


@functools.lru_cache(maxsize=None)
def _auto_rules():
    """``AUTO_FASTER``'s entry for this CPU and this process's Cython ISA level, or {}."""
    try:
        from llvmlite import binding as llvm

        cpu = llvm.get_host_cpu_name()
    except Exception:                   # no llvmlite, or a platform it cannot name
        return {}
    module, _ = _load("cython")
    level = getattr(module, "ISA_LEVEL", None) if module is not None else None
    return AUTO_FASTER.get((cpu, level), {})


def auto_order(op=None, x=None):
    """The CPU backends in the order ``auto`` tries them for kernel ``op`` on host array ``x``
    (numpy, or a torch CPU tensor): CPU_BACKENDS, or the backend AUTO_FASTER measured faster
    for this op first."""
    large = (op is not None and int(getattr(x, "nbytes", 0)) >= AUTO_FROM_BYTES
             and str(getattr(x, "dtype", "")) in ("float32", "torch.float32"))
    rules = _auto_rules() if large else {}          # llvmlite (~25 ms to import) only then
    if op in rules:
        first = rules[op]
        return (first,) + tuple(b for b in CPU_BACKENDS if b != first)
    return CPU_BACKENDS


def resolve(backend, *, device=False, op=None, x=None):
    """Turn a user's ``backend=`` (or ``FASTDIV_BACKEND`` for ``auto``) into a concrete name.

    An explicit choice that cannot run raises :class:`BackendUnavailable` with the reason;
    ``auto`` falls back silently to the next available backend.  ``op`` and ``x`` (the kernel
    and its main host array) let ``auto`` apply AUTO_FASTER; without them it takes
    CPU_BACKENDS' order.
    """
    if not isinstance(backend, str) or backend not in BACKENDS + ("auto",):
        raise ValueError(f"backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("FASTDIV_BACKEND", "").strip()
        if env and env != "auto":
            if env not in BACKENDS:
                raise ValueError(f"FASTDIV_BACKEND must be one of {BACKENDS + ('auto',)}, got {env!r}")
            backend = env
        elif device:
            backend = "cuda"
        else:
            for candidate in auto_order(op, x):
                if unavailable_reason(candidate) is None:
                    return candidate
            return "numpy"
    why = unavailable_reason(backend)
    if why is not None:
        raise BackendUnavailable(f"backend={backend!r} is not available: {why}")
    return backend


def kernel(backend, op):
    """The compiled per-row kernel ``op`` of ``backend`` (which must be available)."""
    module, _ = _load(backend)
    try:
        return getattr(module, op)
    except AttributeError:
        raise BackendUnavailable(f"backend={backend!r} has no {op!r} kernel in this build") from None


def half_inputs(backend):
    """Whether ``backend``'s kernels read float16 / bfloat16 inputs as raw bits (HALF_INPUTS)."""
    module, _ = _load(backend)
    return bool(getattr(module, "HALF_INPUTS", False))
