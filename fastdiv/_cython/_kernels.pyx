# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Cython / OpenMP per-row kernels of fastdiv (the ``cython`` backend).

Implements the kernel contract of :mod:`fastdiv._registry`: every function takes C-contiguous
2-D rows ``(rows, V)`` of one float dtype (float32 or float64; or, contract v2, half-precision
bits as uint16 / int16 with a float32 ``out``), a 1-D ``out`` of that dtype and ``nthreads``,
and writes one value per row.  The divergence family and the v2 entry points are at the end
of this file.  Work items (one row, or a block of 16 / 8 short rows for V <= 2048 / 1024
floats / doubles with AVX-512) are split statically over OpenMP threads; each row is computed by one thread with a fixed summation order that depends
on neither the thread count nor the row's position in the batch, so results are
bit-identical for any ``nthreads`` and any batching.

This module is the backend's entry: it checks shapes and loops over work items.  The arithmetic
is C with GCC vector extensions and AVX-512 intrinsics, in headers named for their algorithm:

* ``_divergences.h``     the divergence driver: temperature, half inputs staged or read in
  place, generalized JSD and top-k KL over rows (its job: ``_job.h``).
* ``_divergence_rows.h`` JSD and top-k teacher KL of one row.
* ``_evaluate.h``        the evaluate state; ``_evaluate_rows.h`` its one-row pass, and the
  compare op's (evaluate's pass with a reference, then the JS pass of ``_divergence_rows.h``).
* ``_row_items.h``       work items: a block of short rows or one long row, chosen by V.
* ``_short_rows.h``      short-row blocks: FD_W rows at once, transpose-reductions.
* ``_long_rows.h``       long rows: one chunked single-pass log-sum-exp per row, and the
  probability / log-probability kernels.
* ``_row_state.h``       what both drivers share: chunk reads, accumulation steps, finishes.
* ``_softcap_rows.h``    the soft-capping transform ``cap tanh(x / cap)`` of ``softcap=``.
* ``_inst.h``            instantiates the row templates once per input format (float32,
  float64, float16 bits, bfloat16 bits).
* ``_simd.h``            vector math: exp / log, exact sums, loads and gathers per format.
* ``_level.c`` / ``_dispatch.h``  one compilation per ISA level, and the table chosen at import.

ISA dispatch (issue 21): the C kernels are compiled once per instruction-set level
(``_level.c``; on x86-64 ``x86-64``, ``x86-64-v2``, ``x86-64-v3`` = AVX2 + FMA and
``x86-64-v4`` = AVX-512) into this one extension; at import the highest level the CPU supports
is selected (``__builtin_cpu_supports``, ``_dispatch.h``) and every kernel is called through
its table.  ``FASTDIV_ISA=<level>`` (read at import) caps the level, e.g. to test the lower
levels' code on an AVX-512 machine; a level above what the CPU supports runs the highest it
supports (RuntimeWarning), an unknown name is an ImportError.  Builds with
``FASTDIV_NATIVE=1`` (``-march=native``) or ``FASTDIV_PORTABLE=1``, and builds for other
architectures, hold one level (``"native"`` / ``"baseline"``) and no dispatch.

Build and run-time facts, for ``fastdiv`` diagnostics:

``OPENMP``         whether the extension was compiled with OpenMP (else ``prange`` is serial)
``DISPATCH``       whether it holds several ISA levels chosen at import
``ISA_LEVELS``     the levels it holds, lowest first (``("x86-64", ..., "x86-64-v4")``)
``ISA_SUPPORTED``  those this CPU runs
``ISA_LEVEL``      the level running (the highest supported, or FASTDIV_ISA's)
``ISA_REQUESTED``  FASTDIV_ISA as read at import (``""``: unset)
``SIMD_FLAGS``     the architecture flags the running level was compiled with
                   (``"-march=x86-64-v4"``, ``"-march=native"``, ``""`` for a portable build)
``SIMD_ISA``       the widest instruction set the running level uses (``"avx512f"``,
                   ``"avx2"``, ``"sse4.2"``, ``"sse2"``, ``"neon"``...)
``max_threads()``  ``omp_get_max_threads()``, or 1 without OpenMP
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t

cdef extern from "_dispatch.h" nogil:
    const int fd_openmp
    const int fd_dispatch
    int fd_max_threads()
    int fd_threads_used(int n)

    # The kernels of one ISA level (see _dispatch.h, _level.c): the row kernels of _row_items.h
    # / _evaluate_rows.h called by the prange loops below, and the divergence driver of
    # _divergences.h.
    ctypedef struct fd_table:
        const char *level
        const char *isa
        const char *flags
        # Work items (see _row_items.h): a block of rows for short rows, else one row.
        Py_ssize_t (*items_f32)(Py_ssize_t rows, Py_ssize_t V) noexcept nogil
        Py_ssize_t (*items_f64)(Py_ssize_t rows, Py_ssize_t V) noexcept nogil
        void (*lse_item_f32)(const float *x, Py_ssize_t rows, Py_ssize_t V, Py_ssize_t it,
                             float *out) noexcept nogil
        void (*lse_item_f64)(const double *x, Py_ssize_t rows, Py_ssize_t V, Py_ssize_t it,
                             double *out) noexcept nogil
        void (*entropy_logits_item_f32)(const float *x, Py_ssize_t rows, Py_ssize_t V,
                                        Py_ssize_t it, float *out) noexcept nogil
        void (*entropy_logits_item_f64)(const double *x, Py_ssize_t rows, Py_ssize_t V,
                                        Py_ssize_t it, double *out) noexcept nogil
        void (*kl_logits_item_f32)(const float *x, const float *z, Py_ssize_t rows, Py_ssize_t V,
                                   Py_ssize_t it, float *out) noexcept nogil
        void (*kl_logits_item_f64)(const double *x, const double *z, Py_ssize_t rows,
                                   Py_ssize_t V, Py_ssize_t it, double *out) noexcept nogil
        void (*ce_hard_item_f32)(const float *x, Py_ssize_t rows, Py_ssize_t V, Py_ssize_t it,
                                 const int64_t *target, int64_t ignore_index,
                                 const float *weight, double eps, float *out) noexcept nogil
        void (*ce_hard_item_f64)(const double *x, Py_ssize_t rows, Py_ssize_t V, Py_ssize_t it,
                                 const int64_t *target, int64_t ignore_index,
                                 const double *weight, double eps, double *out) noexcept nogil
        void (*ce_hard_prep_f32)(Py_ssize_t rows, Py_ssize_t V, const int64_t *target,
                                 int64_t ignore_index, const float *weight,
                                 float *out) noexcept nogil
        void (*ce_hard_prep_f64)(Py_ssize_t rows, Py_ssize_t V, const int64_t *target,
                                 int64_t ignore_index, const double *weight,
                                 double *out) noexcept nogil
        void (*ce_soft_item_f32)(const float *x, const float *p, const float *w, Py_ssize_t rows,
                                 Py_ssize_t V, Py_ssize_t it, double alpha, double beta,
                                 float *out) noexcept nogil
        void (*ce_soft_item_f64)(const double *x, const double *p, const double *w,
                                 Py_ssize_t rows, Py_ssize_t V, Py_ssize_t it, double alpha,
                                 double beta, double *out) noexcept nogil
        # One row at a time (no max pass, so no per-row reduction chain worth blocking).
        double (*entropy_log_probs_f32)(const float *x, Py_ssize_t V) noexcept nogil
        double (*entropy_log_probs_f64)(const double *x, Py_ssize_t V) noexcept nogil
        double (*entropy_probs_f32)(const float *x, Py_ssize_t V) noexcept nogil
        double (*entropy_probs_f64)(const double *x, Py_ssize_t V) noexcept nogil
        double (*kl_log_probs_f32)(const float *a, const float *b, Py_ssize_t V) noexcept nogil
        double (*kl_log_probs_f64)(const double *a, const double *b, Py_ssize_t V) noexcept nogil
        double (*kl_probs_f32)(const float *p, const float *q, Py_ssize_t V) noexcept nogil
        double (*kl_probs_f64)(const double *p, const double *q, Py_ssize_t V) noexcept nogil
        # evaluate (_evaluate.h)
        void (*eval_row_f32)(const float *x, const float *z, Py_ssize_t V, int64_t t,
                             double *st, int64_t *ix, int kl) noexcept nogil
        void (*eval_row_f64)(const double *x, const double *z, Py_ssize_t V, int64_t t,
                             double *st, int64_t *ix, int kl) noexcept nogil
        # compare (_evaluate_rows.h)
        int (*compare_rows_f32)(const float *x, const float *z, Py_ssize_t rows, Py_ssize_t V,
                                const int64_t *target, double *st, int64_t *ix, int nthreads) noexcept nogil
        int (*compare_rows_f64)(const double *x, const double *z, Py_ssize_t rows, Py_ssize_t V,
                                const int64_t *target, double *st, int64_t *ix, int nthreads) noexcept nogil
        # the softcap transform (_softcap_rows.h)
        void (*softcap_rows_f32)(const float *x, Py_ssize_t rows, Py_ssize_t V, Py_ssize_t ldx, float inv,
                                 float cap, float *out) noexcept nogil
        void (*softcap_rows_f64)(const double *x, Py_ssize_t rows, Py_ssize_t V, Py_ssize_t ldx, double inv,
                                 double cap, double *out) noexcept nogil
        # the divergence driver (_divergences.h; fd_job is declared with the v2 entry points below)
        int (*run_staged)(const void *J, int nthreads) noexcept nogil

    int fd_nlevels()
    const fd_table *fd_level(int i)
    int fd_level_ok(int i)


# ------------------------------------------------------------------------ the ISA level (issue 21)
import os as _os
import warnings as _warnings

# The levels this build holds, lowest first, and those this CPU runs.
ISA_LEVELS = tuple((<bytes>fd_level(i).level).decode() for i in range(fd_nlevels()))
ISA_SUPPORTED = tuple(ISA_LEVELS[i] for i in range(fd_nlevels()) if fd_level_ok(i))
DISPATCH = bool(fd_dispatch)
# Every level name any build knows (a build holds some of them), and aliases.
_KNOWN_LEVELS = ("x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4", "native", "baseline")
_ALIASES = {"x86-64-v1": "x86-64", "baseline": "x86-64"} if fd_dispatch else {}


cdef int _select_level() except -1:
    """The level to run: the highest this CPU supports, or at most FASTDIV_ISA's."""
    cdef int best = 0, i
    for i in range(fd_nlevels()):
        if fd_level_ok(i):
            best = i
    want = _os.environ.get("FASTDIV_ISA", "").strip().lower()
    if not want:
        return best
    want = _ALIASES.get(want, want)
    if want in ISA_LEVELS:
        i = ISA_LEVELS.index(want)
        if i > best:
            _warnings.warn(f"FASTDIV_ISA={want}: this CPU does not support that level; the Cython "
                           f"backend runs {ISA_LEVELS[best]}, the highest it supports",
                           RuntimeWarning, stacklevel=2)
            return best
        return i
    if want in _KNOWN_LEVELS:
        why = "" if fd_dispatch else (" (no run-time dispatch: built with FASTDIV_NATIVE=1 or "
                                      "FASTDIV_PORTABLE=1, or not for x86-64)")
        _warnings.warn(f"FASTDIV_ISA={want} ignored: this build of the Cython backend holds only "
                       f"{', '.join(ISA_LEVELS)}{why}; running {ISA_LEVELS[best]}",
                       RuntimeWarning, stacklevel=2)
        return best
    raise ImportError(f"FASTDIV_ISA={want!r} is not an ISA level: use one of "
                      f"{', '.join(ISA_LEVELS)} (or unset it for the highest this CPU supports)")


cdef const fd_table *T = fd_level(_select_level())
#: FASTDIV_ISA as read at import ("" when unset).
ISA_REQUESTED = _os.environ.get("FASTDIV_ISA", "").strip()

OPENMP = bool(fd_openmp)
#: The level the kernels run at (see ISA_LEVELS; FASTDIV_ISA caps it).
ISA_LEVEL = (<bytes>T.level).decode()
SIMD_FLAGS = (<bytes>T.flags).decode()
SIMD_ISA = (<bytes>T.isa).decode()


def _use_level(str level):
    """Switch the running level to `level` (one of ISA_SUPPORTED) and return the previous one.

    For benchmarks that compare the levels in one process; not thread-safe (no kernel may be
    running), and ISA_LEVEL / SIMD_FLAGS / SIMD_ISA follow."""
    global T, ISA_LEVEL, SIMD_FLAGS, SIMD_ISA
    if level not in ISA_SUPPORTED:
        raise ValueError(f"{level!r} is not one of the levels this CPU runs: {ISA_SUPPORTED}")
    previous = ISA_LEVEL
    T = fd_level(ISA_LEVELS.index(level))
    ISA_LEVEL = (<bytes>T.level).decode()
    SIMD_FLAGS = (<bytes>T.flags).decode()
    SIMD_ISA = (<bytes>T.isa).decode()
    return previous

def max_threads():
    """``omp_get_max_threads()`` (1 when built without OpenMP)."""
    return fd_max_threads()


def _threads_used(int nthreads):
    """How many threads an OpenMP region asked for ``nthreads`` really runs (for tests)."""
    cdef int n
    with nogil:
        n = fd_threads_used(max(nthreads, 1))
    return n


# Cheap shape checks: the API validates everything, but a wrong call must raise, never read
# out of bounds.
cdef inline int _check(Py_ssize_t rows, Py_ssize_t V, Py_ssize_t out_rows, int nthreads) except -1:
    if out_rows != rows:
        raise ValueError(f"out has {out_rows} elements for {rows} rows")
    if V < 1 and rows > 0:
        raise ValueError("rows must have at least one element (V >= 1)")
    return max(nthreads, 1)


cdef inline int _check2(Py_ssize_t r1, Py_ssize_t v1, Py_ssize_t r2, Py_ssize_t v2) except -1:
    if r1 != r2 or v1 != v2:
        raise ValueError(f"the two inputs differ in shape: ({r1}, {v1}) and ({r2}, {v2})")
    return 0


cdef inline Py_ssize_t _items(Py_ssize_t rows, Py_ssize_t V, bint single) noexcept nogil:
    return T.items_f32(rows, V) if single else T.items_f64(rows, V)


def _lse_native(const floating[:, ::1] x, floating[::1] out, int nthreads):
    """out[i] = logsumexp(x[i])."""
    cdef Py_ssize_t it, rows = x.shape[0], V = x.shape[1]
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    cdef const floating *px = &x[0, 0]
    cdef floating *po = &out[0]
    cdef Py_ssize_t n = _items(rows, V, floating is float)
    for it in prange(n, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            T.lse_item_f32(px, rows, V, it, po)
        else:
            T.lse_item_f64(px, rows, V, it, po)


def _entropy_logits_native(const floating[:, ::1] x, floating[::1] out, int nthreads):
    """out[i] = H(softmax(x[i]))."""
    cdef Py_ssize_t it, rows = x.shape[0], V = x.shape[1]
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    cdef const floating *px = &x[0, 0]
    cdef floating *po = &out[0]
    cdef Py_ssize_t n = _items(rows, V, floating is float)
    for it in prange(n, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            T.entropy_logits_item_f32(px, rows, V, it, po)
        else:
            T.entropy_logits_item_f64(px, rows, V, it, po)


def _entropy_log_probs_native(const floating[:, ::1] l, floating[::1] out, int nthreads):
    """out[i] = -sum exp(l[i]) * l[i] (taken literally, no renormalising)."""
    cdef Py_ssize_t i, rows = l.shape[0], V = l.shape[1]
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    for i in prange(rows, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            out[i] = <float>T.entropy_log_probs_f32(&l[i, 0], V)
        else:
            out[i] = T.entropy_log_probs_f64(&l[i, 0], V)


def _entropy_probs_native(const floating[:, ::1] p, floating[::1] out, int nthreads):
    """out[i] = -sum p[i] * log p[i], with 0 log 0 = 0."""
    cdef Py_ssize_t i, rows = p.shape[0], V = p.shape[1]
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    for i in prange(rows, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            out[i] = <float>T.entropy_probs_f32(&p[i, 0], V)
        else:
            out[i] = T.entropy_probs_f64(&p[i, 0], V)


def _kl_logits_native(const floating[:, ::1] x, const floating[:, ::1] z, floating[::1] out,
              int nthreads):
    """out[i] = D(softmax(x[i]) || softmax(z[i])), one read of both rows."""
    cdef Py_ssize_t it, rows = x.shape[0], V = x.shape[1]
    _check2(rows, V, z.shape[0], z.shape[1])
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    cdef const floating *px = &x[0, 0]
    cdef const floating *pz = &z[0, 0]
    cdef floating *po = &out[0]
    cdef Py_ssize_t n = _items(rows, V, floating is float)
    for it in prange(n, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            T.kl_logits_item_f32(px, pz, rows, V, it, po)
        else:
            T.kl_logits_item_f64(px, pz, rows, V, it, po)


def _kl_log_probs_native(const floating[:, ::1] a, const floating[:, ::1] b, floating[::1] out,
                 int nthreads):
    """out[i] = sum exp(a[i]) * (a[i] - b[i])."""
    cdef Py_ssize_t i, rows = a.shape[0], V = a.shape[1]
    _check2(rows, V, b.shape[0], b.shape[1])
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    for i in prange(rows, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            out[i] = <float>T.kl_log_probs_f32(&a[i, 0], &b[i, 0], V)
        else:
            out[i] = T.kl_log_probs_f64(&a[i, 0], &b[i, 0], V)


def _kl_probs_native(const floating[:, ::1] p, const floating[:, ::1] q, floating[::1] out,
             int nthreads):
    """out[i] = sum p[i] * (log p[i] - log q[i])."""
    cdef Py_ssize_t i, rows = p.shape[0], V = p.shape[1]
    _check2(rows, V, q.shape[0], q.shape[1])
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    for i in prange(rows, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            out[i] = <float>T.kl_probs_f32(&p[i, 0], &q[i, 0], V)
        else:
            out[i] = T.kl_probs_f64(&p[i, 0], &q[i, 0], V)


def _ce_hard_native(const floating[:, ::1] x, const int64_t[::1] target, int64_t ignore_index,
            const floating[::1] weight, double eps, floating[::1] out, int nthreads):
    """out[i] = 0 if target[i] == ignore_index, else
    (1 - eps) * w[t] * (lse - x[t]) + eps / V * sum_j w_j * (lse - x_j)   (zero-weight terms 0)."""
    cdef Py_ssize_t it, rows = x.shape[0], V = x.shape[1]
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    if target.shape[0] != rows:
        raise ValueError(f"target has {target.shape[0]} elements for {rows} rows")
    if weight.shape[0] != V:
        raise ValueError(f"weight has {weight.shape[0]} elements for V = {V}")
    cdef const floating *px = &x[0, 0]
    cdef const floating *pw = &weight[0]
    cdef const int64_t *pt = &target[0]
    cdef floating *po = &out[0]
    cdef Py_ssize_t n = _items(rows, V, floating is float)
    with nogil:
        if floating is float:
            T.ce_hard_prep_f32(rows, V, pt, ignore_index, pw, po)
        else:
            T.ce_hard_prep_f64(rows, V, pt, ignore_index, pw, po)
    for it in prange(n, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            T.ce_hard_item_f32(px, rows, V, it, pt, ignore_index, pw, eps, po)
        else:
            T.ce_hard_item_f64(px, rows, V, it, pt, ignore_index, pw, eps, po)


def _ce_soft_native(const floating[:, ::1] x, const floating[:, ::1] p, const floating[::1] weight,
            double alpha, double beta, floating[::1] out, int nthreads):
    """out[i] = sum_j w_j * q_j * (lse - x_j), q_j = alpha * p_j + beta (zero terms 0)."""
    cdef Py_ssize_t it, rows = x.shape[0], V = x.shape[1]
    _check2(rows, V, p.shape[0], p.shape[1])
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    if weight.shape[0] != V:
        raise ValueError(f"weight has {weight.shape[0]} elements for V = {V}")
    cdef const floating *px = &x[0, 0]
    cdef const floating *pp = &p[0, 0]
    cdef const floating *pw = &weight[0]
    cdef floating *po = &out[0]
    cdef Py_ssize_t n = _items(rows, V, floating is float)
    for it in prange(n, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            T.ce_soft_item_f32(px, pp, pw, rows, V, it, alpha, beta, po)
        else:
            T.ce_soft_item_f64(px, pp, pw, rows, V, it, alpha, beta, po)


# --------------------------------------------------------------------------- evaluate (_evaluate.h)

def evaluate(const floating[:, ::1] x, const floating[:, ::1] z, const int64_t[::1] target,
             double[:, ::1] st, int64_t[:, ::1] ix, int nthreads):
    """The evaluate state per row (contract: fastdiv/_registry.py); z with 0 rows: none; st with
    10 columns: the two KLs too."""
    cdef Py_ssize_t i, rows = x.shape[0], V = x.shape[1]
    cdef int nt = _check(rows, V, st.shape[0], nthreads)
    cdef bint has_ref = z.shape[0] != 0
    cdef int kl = has_ref and st.shape[1] == 10
    if has_ref:
        _check2(rows, V, z.shape[0], z.shape[1])
    if target.shape[0] != rows or ix.shape[0] != rows or st.shape[1] not in (8, 10) or ix.shape[1] != 3:
        raise ValueError(f"evaluate: target must have shape ({rows},), st ({rows}, 8 or 10), ix ({rows}, 3)")
    if rows == 0:
        return
    for i in prange(rows, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            T.eval_row_f32(&x[i, 0], &z[i, 0] if has_ref else NULL, V, target[i], &st[i, 0], &ix[i, 0], kl)
        else:
            T.eval_row_f64(&x[i, 0], &z[i, 0] if has_ref else NULL, V, target[i], &st[i, 0], &ix[i, 0], kl)


def compare(const floating[:, ::1] x, const floating[:, ::1] z, const int64_t[::1] target,
            double[:, ::1] st, int64_t[:, ::1] ix, int nthreads):
    """The compare state per row (contract: fastdiv/_registry.py): x the model, z the base."""
    cdef Py_ssize_t rows = x.shape[0], V = x.shape[1]
    cdef int nt = _check(rows, V, st.shape[0], nthreads), rc
    _check2(rows, V, z.shape[0], z.shape[1])
    if target.shape[0] != rows or ix.shape[0] != rows or st.shape[1] != 12 or ix.shape[1] != 4:
        raise ValueError(f"compare: target must have shape ({rows},), st ({rows}, 12), ix ({rows}, 4)")
    if rows == 0:
        return
    with nogil:
        if floating is float:
            rc = T.compare_rows_f32(&x[0, 0], &z[0, 0], rows, V, &target[0], &st[0, 0], &ix[0, 0], nt)
        else:
            rc = T.compare_rows_f64(&x[0, 0], &z[0, 0], rows, V, &target[0], &st[0, 0], &ix[0, 0], nt)
    if rc != 0:
        raise MemoryError("compare: no memory for the per-thread scratch rows")


# ============================================================================================
# Kernel contract v2 (issue 5): temperature (`scale` = 1/T on the logits), half-precision
# inputs as raw bits, and the divergence family.  The names of the contract dispatch here:
# native float32/float64 input with scale = 1 runs the kernels above unchanged (bit for bit);
# everything else runs the driver of _divergences.h: half input read in place by the kernels of its
# format (widened to float32 in their vector loads), scaled input through per-thread staging
# buffers (at most one long row or one block of short rows per input, never a full-size
# copy); the new kernels (js_*, topk_kl) always run there.
# ============================================================================================
import numpy as np

cdef extern from "_job.h" nogil:
    enum:
        FD_IN_F32
        FD_IN_F64
        FD_IN_F16
        FD_IN_BF16
    enum:
        FD_OP_LSE
        FD_OP_ENTROPY_LOGITS
        FD_OP_ENTROPY_LOG_PROBS
        FD_OP_ENTROPY_PROBS
        FD_OP_KL_LOGITS
        FD_OP_KL_LOG_PROBS
        FD_OP_KL_PROBS
        FD_OP_CE_HARD
        FD_OP_CE_SOFT
        FD_OP_JS_LOGITS
        FD_OP_JS_LOG_PROBS
        FD_OP_JS_PROBS
        FD_OP_TOPK_KL
    ctypedef struct fd_job:
        int op, kind, nin
        const void *src[2]
        Py_ssize_t width[2]
        double scale[2]
        Py_ssize_t rows, V
        double a, b
        const int64_t *target
        int64_t ignore_index
        const void *weight
        void *out

#: Every kernel accepts float16 (as uint16 bits) and bfloat16 (as int16 bits) inputs.
HALF_INPUTS = True

_KINDS = {np.dtype(np.float32): FD_IN_F32, np.dtype(np.float64): FD_IN_F64,
          np.dtype(np.uint16): FD_IN_F16, np.dtype(np.int16): FD_IN_BF16}


cdef inline bint _native(a):
    return a.dtype == np.float32 or a.dtype == np.float64


cdef const void *_data(a, Py_ssize_t rows, Py_ssize_t width, str name, str what) except NULL:
    """The address of a validated C-contiguous (rows, width) array (rows > 0)."""
    if a.ndim != 2 or a.shape[0] != rows or a.shape[1] != width:
        raise ValueError(f"{name} must have shape ({rows}, {width}) {what}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    cdef const unsigned char[::1] b = a.reshape(-1).view(np.uint8)
    return <const void *>&b[0]


cdef _run(int op, arrays, widths, scales, double a, double b, out, int nthreads,
          target=None, int64_t ignore_index=0, weight=None):
    """Validate the arguments of one contract call and run it through fd_run_staged."""
    x0 = arrays[0]
    if x0.ndim != 2:
        raise ValueError(f"inputs must be 2-D (rows, V), got shape {x0.shape}")
    kind = _KINDS.get(x0.dtype)
    if kind is None:
        raise TypeError(f"inputs must be float32, float64, or half-precision bits (uint16: float16, "
                        f"int16: bfloat16), got {x0.dtype}")
    cdef fd_job J
    cdef int i
    cdef Py_ssize_t rows = x0.shape[0]
    J.op = op
    J.kind = kind
    J.nin = len(arrays)
    J.rows = rows
    J.V = x0.shape[1]
    J.a = a
    J.b = b
    J.ignore_index = ignore_index
    J.target = NULL
    J.weight = NULL
    acc = np.float64 if kind == FD_IN_F64 else np.float32
    if out.dtype != acc or out.ndim != 1 or out.shape[0] != rows or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {np.dtype(acc)} array of {rows} elements")
    if not out.flags.writeable:
        raise ValueError("out must be writeable")
    if J.V < 1 and rows > 0:
        raise ValueError("rows must have at least one element (V >= 1)")
    for i in range(J.nin):
        if arrays[i].dtype != x0.dtype:
            raise TypeError(f"all float inputs must share one dtype, got {x0.dtype} and {arrays[i].dtype}")
    if rows == 0:
        return
    for i in range(J.nin):
        J.src[i] = _data(arrays[i], rows, widths[i], f"input {i}", "")
        J.width[i] = widths[i]
        J.scale[i] = scales[i]
    cdef const int64_t[::1] tv
    if target is not None:
        tv = target.reshape(-1)
        if tv.shape[0] != rows * (widths[1] if op == FD_OP_TOPK_KL else 1):
            raise ValueError(f"target / indices have {tv.shape[0]} elements for {rows} rows")
        J.target = &tv[0]
    cdef const unsigned char[::1] wv
    if weight is not None:
        if weight.dtype != acc or weight.ndim != 1 or weight.shape[0] != J.V or not weight.flags.c_contiguous:
            raise ValueError(f"weight must be a C-contiguous {np.dtype(acc)} array of V = {J.V} elements")
        wv = weight.view(np.uint8)
        J.weight = &wv[0]
    cdef unsigned char[::1] ov = out.view(np.uint8)
    J.out = &ov[0]
    cdef int rc, nt = max(nthreads, 1)
    with nogil:
        if op == FD_OP_CE_HARD:             # w[target] into out first (see fd_ce_hard_prep)
            if J.kind == FD_IN_F64:
                T.ce_hard_prep_f64(rows, J.V, J.target, ignore_index, <const double *>J.weight, <double *>J.out)
            else:
                T.ce_hard_prep_f32(rows, J.V, J.target, ignore_index, <const float *>J.weight, <float *>J.out)
        rc = T.run_staged(&J, nt)
    if rc != 0:
        raise MemoryError("could not allocate the per-thread row buffers")


def _softcap_native(const floating[:, :] x, floating[:, ::1] out, floating inv, floating cap):
    cdef Py_ssize_t rows = x.shape[0], V = x.shape[1], ldx
    if out.shape[0] != rows or out.shape[1] != V:
        raise ValueError(f"out must have x's shape ({rows}, {V}), got ({out.shape[0]}, {out.shape[1]})")
    if rows == 0 or V == 0:
        return
    if x.strides[1] != sizeof(floating) or x.strides[0] % sizeof(floating) != 0:
        raise ValueError("x's rows must be contiguous (unit stride along the last axis)")
    ldx = x.strides[0] // <Py_ssize_t>sizeof(floating)
    with nogil:
        if floating is float:
            T.softcap_rows_f32(&x[0, 0], rows, V, ldx, inv, cap, &out[0, 0])
        else:
            T.softcap_rows_f64(&x[0, 0], rows, V, ldx, inv, cap, &out[0, 0])


def softcap(x, inv, cap, out):
    """out = cap * tanh(x * inv) for a 2-D float32 / float64 ``x`` whose rows are contiguous
    (any row stride, read-only is fine) into a C-contiguous ``out`` of its shape and dtype; ``-inf``
    stays ``-inf`` (``fastdiv.reference.softcap_rows``).  One thread, GIL released."""
    if x.dtype != out.dtype:
        raise ValueError(f"x and out must share a dtype, got {x.dtype} and {out.dtype}")
    _softcap_native(x, out, x.dtype.type(inv), x.dtype.type(cap))


def lse(x, out, int nthreads):
    """out[i] = logsumexp(x[i])."""
    if _native(x):
        return _lse_native(x, out, nthreads)
    _run(FD_OP_LSE, (x,), (x.shape[1],), (1.0,), 0.0, 0.0, out, nthreads)


def entropy_logits(x, double scale, out, int nthreads):
    """out[i] = H(softmax(scale * x[i]))."""
    if _native(x) and scale == 1.0:
        return _entropy_logits_native(x, out, nthreads)
    _run(FD_OP_ENTROPY_LOGITS, (x,), (x.shape[1],), (scale,), 0.0, 0.0, out, nthreads)


def entropy_log_probs(l, out, int nthreads):
    """out[i] = -sum exp(l[i]) * l[i] (taken literally, no renormalising)."""
    if _native(l):
        return _entropy_log_probs_native(l, out, nthreads)
    _run(FD_OP_ENTROPY_LOG_PROBS, (l,), (l.shape[1],), (1.0,), 0.0, 0.0, out, nthreads)


def entropy_probs(p, out, int nthreads):
    """out[i] = -sum p[i] * log p[i], with 0 log 0 = 0."""
    if _native(p):
        return _entropy_probs_native(p, out, nthreads)
    _run(FD_OP_ENTROPY_PROBS, (p,), (p.shape[1],), (1.0,), 0.0, 0.0, out, nthreads)


def kl_logits(x, z, double scale, out, int nthreads):
    """out[i] = D(softmax(scale * x[i]) || softmax(scale * z[i])), one read of both rows."""
    if _native(x) and scale == 1.0:
        return _kl_logits_native(x, z, out, nthreads)
    _run(FD_OP_KL_LOGITS, (x, z), (x.shape[1], x.shape[1]), (scale, scale), 0.0, 0.0, out, nthreads)


def kl_log_probs(a, b, out, int nthreads):
    """out[i] = sum exp(a[i]) * (a[i] - b[i])."""
    if _native(a):
        return _kl_log_probs_native(a, b, out, nthreads)
    _run(FD_OP_KL_LOG_PROBS, (a, b), (a.shape[1], a.shape[1]), (1.0, 1.0), 0.0, 0.0, out, nthreads)


def kl_probs(p, q, out, int nthreads):
    """out[i] = sum p[i] * (log p[i] - log q[i])."""
    if _native(p):
        return _kl_probs_native(p, q, out, nthreads)
    _run(FD_OP_KL_PROBS, (p, q), (p.shape[1], p.shape[1]), (1.0, 1.0), 0.0, 0.0, out, nthreads)


def ce_hard(x, target, int64_t ignore_index, weight, double eps, out, int nthreads):
    """Hard-label cross-entropy (see _ce_hard_native)."""
    if _native(x):
        return _ce_hard_native(x, target, ignore_index, weight, eps, out, nthreads)
    _run(FD_OP_CE_HARD, (x,), (x.shape[1],), (1.0,), eps, 0.0, out, nthreads, target, ignore_index, weight)


def ce_soft(x, p, weight, double alpha, double beta, double scale, out, int nthreads):
    """out[i] = sum_j w_j * q_j * (lse - s x_j), q_j = alpha * p_j + beta, s = scale (zero terms 0)."""
    if _native(x) and scale == 1.0:
        return _ce_soft_native(x, p, weight, alpha, beta, out, nthreads)
    _run(FD_OP_CE_SOFT, (x, p), (x.shape[1], x.shape[1]), (scale, 1.0), alpha, beta, out, nthreads,
         None, 0, weight)


def js_logits(x, z, double beta, double scale, out, int nthreads):
    """out[i] = generalized JSD of softmax(scale x[i]) and softmax(scale z[i]) (0 < beta < 1)."""
    _run(FD_OP_JS_LOGITS, (x, z), (x.shape[1], x.shape[1]), (scale, scale), beta, 0.0, out, nthreads)


def js_log_probs(a, b, double beta, out, int nthreads):
    """out[i] = generalized JSD of the log-probability rows a[i], b[i] (taken literally)."""
    _run(FD_OP_JS_LOG_PROBS, (a, b), (a.shape[1], a.shape[1]), (1.0, 1.0), beta, 0.0, out, nthreads)


def js_probs(p, q, double beta, out, int nthreads):
    """out[i] = generalized JSD of the probability rows p[i], q[i] (0 log 0 = 0)."""
    _run(FD_OP_JS_PROBS, (p, q), (p.shape[1], p.shape[1]), (1.0, 1.0), beta, 0.0, out, nthreads)


def topk_kl(idx, t, z, int bucket, out, int nthreads):
    """out[i] = D(teacher || softmax(z[i])) from the teacher's sorted top-k classes idx[i] and
    log-probabilities t[i]; bucket: 0 renormalizes the teacher, 1 adds one tail class."""
    if idx.dtype != np.int64 or idx.ndim != 2 or idx.shape[0] != z.shape[0] or not idx.flags.c_contiguous:
        raise ValueError(f"idx must be a C-contiguous int64 array of shape ({z.shape[0]}, k), got {idx.dtype} {idx.shape}")
    if t.shape != idx.shape:
        raise ValueError(f"t must have the shape of idx {idx.shape}, got {t.shape}")
    _run(FD_OP_TOPK_KL, (z, t), (z.shape[1], idx.shape[1]), (1.0, 1.0), float(bool(bucket)), 0.0, out,
         nthreads, idx)


# ------------------------------------------------------------------------------------------
# The float64 sum of per-row values (fastdiv.reduce.sum64): numpy's np.sum(a, dtype=float64)
# casts float32 through small buffers on one thread, ~0.7 ns per value, 3 ms for C51's 2^22
# rows beside a ~45 ms kernel (0.5 ms here on 2 threads).  Here each block of SUM_BLOCK
# values is summed by one thread (the C loop vectorised, -fassociative-math) and the block
# sums are added in order, so the result depends on neither the thread count nor the batch's
# position in memory.

cdef Py_ssize_t SUM_BLOCK = 16384


cdef double _block_sum(const floating *a, Py_ssize_t n) noexcept nogil:
    cdef double s = 0.0
    cdef Py_ssize_t j
    for j in range(n):
        s += a[j]
    return s


def _sum64_native(const floating[::1] a, int nthreads):
    cdef Py_ssize_t n = a.shape[0], nb = (n + SUM_BLOCK - 1) // SUM_BLOCK, b, j0
    cdef double[::1] part = np.empty(nb)
    cdef double s = 0.0
    cdef int nt = max(nthreads, 1)
    for b in prange(nb, nogil=True, schedule='static', num_threads=nt):
        j0 = b * SUM_BLOCK
        part[b] = _block_sum(&a[j0], min(n - j0, SUM_BLOCK))
    for b in range(nb):
        s += part[b]
    return s


def sum64(a, int nthreads):
    """The sum of a 1-D C-contiguous float32 / float64 array, in float64, by fixed blocks (the
    same result for any ``nthreads``); 0.0 for no values."""
    if a.ndim != 1 or not a.flags.c_contiguous or a.dtype not in (np.float32, np.float64):
        raise ValueError(f"a must be a 1-D C-contiguous float32 or float64 array, got {a.dtype} {a.shape}")
    if a.shape[0] == 0:
        return 0.0
    return _sum64_native(a, nthreads)
