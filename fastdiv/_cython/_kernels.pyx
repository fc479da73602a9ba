# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Cython / OpenMP per-row kernels of fastdiv (the ``cython`` backend).

Implements the kernel contract of :mod:`fastdiv._registry`: every function takes C-contiguous
2-D rows ``(rows, V)`` of one float dtype (float32 or float64), a 1-D ``out`` of that dtype
and ``nthreads``, and writes one value per row.  Work items (one row, or a block of 16 / 8
short rows for V <= 2048 / 1024 floats / doubles with AVX-512) are split statically over
OpenMP threads; each row is computed by one thread with a fixed summation order that depends
on neither the thread count nor the row's position in the batch, so results are
bit-identical for any ``nthreads`` and any batching.

The arithmetic lives in ``_simd.h`` / ``_rows.h`` (C with GCC vector extensions and AVX-512
intrinsics: a vectorised exp/log, a chunked single-pass log-sum-exp for long rows, a
block driver for short rows); this module only checks shapes and loops over work items.

Build-time facts, for ``fastdiv`` diagnostics:

``OPENMP``      whether the extension was compiled with OpenMP (else ``prange`` is serial)
``SIMD_FLAGS``  the architecture flags it was compiled with (``""`` for a portable build)
``SIMD_ISA``    the widest instruction set the compiler targeted (``"avx512f"``, ``"avx2"``...)
``max_threads()``  ``omp_get_max_threads()``, or 1 without OpenMP
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t

cdef extern from "_simd.h" nogil:
    const int fd_openmp
    const char *fd_simd_flags
    const char *fd_simd_isa
    int fd_max_threads()
    int fd_threads_used(int n)

    # Work items (see _rows.h): a block of rows for short rows, else one row.
    Py_ssize_t fd_items_f32(Py_ssize_t rows, Py_ssize_t V)
    Py_ssize_t fd_items_f64(Py_ssize_t rows, Py_ssize_t V)
    void fd_lse_item_f32(const float *x, Py_ssize_t rows, Py_ssize_t V, Py_ssize_t it, float *out)
    void fd_lse_item_f64(const double *x, Py_ssize_t rows, Py_ssize_t V, Py_ssize_t it, double *out)
    void fd_entropy_logits_item_f32(const float *x, Py_ssize_t rows, Py_ssize_t V, Py_ssize_t it,
                                    float *out)
    void fd_entropy_logits_item_f64(const double *x, Py_ssize_t rows, Py_ssize_t V, Py_ssize_t it,
                                    double *out)
    void fd_kl_logits_item_f32(const float *x, const float *z, Py_ssize_t rows, Py_ssize_t V,
                               Py_ssize_t it, float *out)
    void fd_kl_logits_item_f64(const double *x, const double *z, Py_ssize_t rows, Py_ssize_t V,
                               Py_ssize_t it, double *out)
    void fd_ce_hard_item_f32(const float *x, Py_ssize_t rows, Py_ssize_t V, Py_ssize_t it,
                             const int64_t *target, int64_t ignore_index, const float *weight,
                             double eps, float *out)
    void fd_ce_hard_item_f64(const double *x, Py_ssize_t rows, Py_ssize_t V, Py_ssize_t it,
                             const int64_t *target, int64_t ignore_index, const double *weight,
                             double eps, double *out)
    void fd_ce_hard_prep_f32(Py_ssize_t rows, Py_ssize_t V, const int64_t *target,
                             int64_t ignore_index, const float *weight, float *out)
    void fd_ce_hard_prep_f64(Py_ssize_t rows, Py_ssize_t V, const int64_t *target,
                             int64_t ignore_index, const double *weight, double *out)
    void fd_ce_soft_item_f32(const float *x, const float *p, const float *w, Py_ssize_t rows,
                             Py_ssize_t V, Py_ssize_t it, double alpha, double beta, float *out)
    void fd_ce_soft_item_f64(const double *x, const double *p, const double *w, Py_ssize_t rows,
                             Py_ssize_t V, Py_ssize_t it, double alpha, double beta, double *out)

    # One row at a time (no max pass, so no per-row reduction chain worth blocking).
    double fd_entropy_log_probs_f32(const float *x, Py_ssize_t V)
    double fd_entropy_log_probs_f64(const double *x, Py_ssize_t V)
    double fd_entropy_probs_f32(const float *x, Py_ssize_t V)
    double fd_entropy_probs_f64(const double *x, Py_ssize_t V)
    double fd_kl_log_probs_f32(const float *a, const float *b, Py_ssize_t V)
    double fd_kl_log_probs_f64(const double *a, const double *b, Py_ssize_t V)
    double fd_kl_probs_f32(const float *p, const float *q, Py_ssize_t V)
    double fd_kl_probs_f64(const double *p, const double *q, Py_ssize_t V)

OPENMP = bool(fd_openmp)
SIMD_FLAGS = (<bytes>fd_simd_flags).decode()
SIMD_ISA = (<bytes>fd_simd_isa).decode()



cdef _unit_scale(double scale):
    # Contract v2 passes 1 / temperature; this backend does not scale logits yet, and the
    # API does not offer a temperature yet, so anything but 1 is a caller's bug.
    if scale != 1.0:
        raise ValueError(f"scale must be 1.0 for the cython backend, got {scale}")

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
    return fd_items_f32(rows, V) if single else fd_items_f64(rows, V)


def lse(const floating[:, ::1] x, floating[::1] out, int nthreads):
    """out[i] = logsumexp(x[i])."""
    cdef Py_ssize_t it, rows = x.shape[0], V = x.shape[1]
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    cdef const floating *px = &x[0, 0]
    cdef floating *po = &out[0]
    cdef Py_ssize_t n = _items(rows, V, floating is float)
    for it in prange(n, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            fd_lse_item_f32(px, rows, V, it, po)
        else:
            fd_lse_item_f64(px, rows, V, it, po)


def entropy_logits(const floating[:, ::1] x, double scale, floating[::1] out, int nthreads):
    """out[i] = H(softmax(x[i]))."""
    cdef Py_ssize_t it, rows = x.shape[0], V = x.shape[1]
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    _unit_scale(scale)
    cdef const floating *px = &x[0, 0]
    cdef floating *po = &out[0]
    cdef Py_ssize_t n = _items(rows, V, floating is float)
    for it in prange(n, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            fd_entropy_logits_item_f32(px, rows, V, it, po)
        else:
            fd_entropy_logits_item_f64(px, rows, V, it, po)


def entropy_log_probs(const floating[:, ::1] l, floating[::1] out, int nthreads):
    """out[i] = -sum exp(l[i]) * l[i] (taken literally, no renormalising)."""
    cdef Py_ssize_t i, rows = l.shape[0], V = l.shape[1]
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    for i in prange(rows, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            out[i] = <float>fd_entropy_log_probs_f32(&l[i, 0], V)
        else:
            out[i] = fd_entropy_log_probs_f64(&l[i, 0], V)


def entropy_probs(const floating[:, ::1] p, floating[::1] out, int nthreads):
    """out[i] = -sum p[i] * log p[i], with 0 log 0 = 0."""
    cdef Py_ssize_t i, rows = p.shape[0], V = p.shape[1]
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    for i in prange(rows, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            out[i] = <float>fd_entropy_probs_f32(&p[i, 0], V)
        else:
            out[i] = fd_entropy_probs_f64(&p[i, 0], V)


def kl_logits(const floating[:, ::1] x, const floating[:, ::1] z, double scale,
              floating[::1] out, int nthreads):
    """out[i] = D(softmax(x[i]) || softmax(z[i])), one read of both rows."""
    cdef Py_ssize_t it, rows = x.shape[0], V = x.shape[1]
    _check2(rows, V, z.shape[0], z.shape[1])
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    _unit_scale(scale)
    cdef const floating *px = &x[0, 0]
    cdef const floating *pz = &z[0, 0]
    cdef floating *po = &out[0]
    cdef Py_ssize_t n = _items(rows, V, floating is float)
    for it in prange(n, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            fd_kl_logits_item_f32(px, pz, rows, V, it, po)
        else:
            fd_kl_logits_item_f64(px, pz, rows, V, it, po)


def kl_log_probs(const floating[:, ::1] a, const floating[:, ::1] b, floating[::1] out,
                 int nthreads):
    """out[i] = sum exp(a[i]) * (a[i] - b[i])."""
    cdef Py_ssize_t i, rows = a.shape[0], V = a.shape[1]
    _check2(rows, V, b.shape[0], b.shape[1])
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    for i in prange(rows, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            out[i] = <float>fd_kl_log_probs_f32(&a[i, 0], &b[i, 0], V)
        else:
            out[i] = fd_kl_log_probs_f64(&a[i, 0], &b[i, 0], V)


def kl_probs(const floating[:, ::1] p, const floating[:, ::1] q, floating[::1] out,
             int nthreads):
    """out[i] = sum p[i] * (log p[i] - log q[i])."""
    cdef Py_ssize_t i, rows = p.shape[0], V = p.shape[1]
    _check2(rows, V, q.shape[0], q.shape[1])
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    for i in prange(rows, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            out[i] = <float>fd_kl_probs_f32(&p[i, 0], &q[i, 0], V)
        else:
            out[i] = fd_kl_probs_f64(&p[i, 0], &q[i, 0], V)


def ce_hard(const floating[:, ::1] x, const int64_t[::1] target, int64_t ignore_index,
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
            fd_ce_hard_prep_f32(rows, V, pt, ignore_index, pw, po)
        else:
            fd_ce_hard_prep_f64(rows, V, pt, ignore_index, pw, po)
    for it in prange(n, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            fd_ce_hard_item_f32(px, rows, V, it, pt, ignore_index, pw, eps, po)
        else:
            fd_ce_hard_item_f64(px, rows, V, it, pt, ignore_index, pw, eps, po)


def ce_soft(const floating[:, ::1] x, const floating[:, ::1] p, const floating[::1] weight,
            double alpha, double beta, double scale, floating[::1] out, int nthreads):
    """out[i] = sum_j w_j * q_j * (lse - x_j), q_j = alpha * p_j + beta (zero terms 0)."""
    cdef Py_ssize_t it, rows = x.shape[0], V = x.shape[1]
    _check2(rows, V, p.shape[0], p.shape[1])
    cdef int nt = _check(rows, V, out.shape[0], nthreads)
    _unit_scale(scale)
    if weight.shape[0] != V:
        raise ValueError(f"weight has {weight.shape[0]} elements for V = {V}")
    cdef const floating *px = &x[0, 0]
    cdef const floating *pp = &p[0, 0]
    cdef const floating *pw = &weight[0]
    cdef floating *po = &out[0]
    cdef Py_ssize_t n = _items(rows, V, floating is float)
    for it in prange(n, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            fd_ce_soft_item_f32(px, pp, pw, rows, V, it, alpha, beta, po)
        else:
            fd_ce_soft_item_f64(px, pp, pw, rows, V, it, alpha, beta, po)


# --------------------------------------------------------------------------- evaluate (_eval.h)

cdef extern from "_eval.h" nogil:
    void fd_eval_row_f32(const float *x, const float *z, Py_ssize_t V, int64_t t, double *st,
                         int64_t *ix)
    void fd_eval_row_f64(const double *x, const double *z, Py_ssize_t V, int64_t t, double *st,
                         int64_t *ix)


def evaluate(const floating[:, ::1] x, const floating[:, ::1] z, const int64_t[::1] target,
             double[:, ::1] st, int64_t[:, ::1] ix, int nthreads):
    """The evaluate state per row (contract: fastdiv/_numba/evaluate.py); z with 0 rows: none."""
    cdef Py_ssize_t i, rows = x.shape[0], V = x.shape[1]
    cdef int nt = _check(rows, V, st.shape[0], nthreads)
    cdef bint has_ref = z.shape[0] != 0
    if has_ref:
        _check2(rows, V, z.shape[0], z.shape[1])
    if target.shape[0] != rows or ix.shape[0] != rows or st.shape[1] != 8 or ix.shape[1] != 3:
        raise ValueError(f"evaluate: target must have shape ({rows},), st ({rows}, 8), ix ({rows}, 3)")
    if rows == 0:
        return
    for i in prange(rows, nogil=True, schedule='static', num_threads=nt):
        if floating is float:
            fd_eval_row_f32(&x[i, 0], &z[i, 0] if has_ref else NULL, V, target[i], &st[i, 0], &ix[i, 0])
        else:
            fd_eval_row_f64(&x[i, 0], &z[i, 0] if has_ref else NULL, V, target[i], &st[i, 0], &ix[i, 0])
