/* fastdiv Cython backend, divergence family (issue 5, kernel contract v2): the driver of
 *   - temperature: logits multiplied by `scale` = 1/T before anything else;
 *   - half-precision inputs as raw bits (uint16: IEEE binary16, int16: bfloat16);
 *   - generalized Jensen-Shannon and top-k teacher KL (row kernels in _divergence_rows.h).
 *
 * Unscaled inputs of any format are read in place by the row kernels of their format
 * (_inst.h instantiates the row templates and _divergence_rows.h for f32, f64, h16 and b16):
 * 16-bit inputs are widened to float32 inside the kernels' vector loads -- long rows once per
 * element, into a float32 chunk buffer in L1 while the chunk maximum is taken (fd_chunk),
 * one-pass kernels and short-row blocks in each load -- so memory traffic is that of the 16-bit input, nothing
 * is staged, and results are bit-identical to the float32 kernels on the upcast input (the
 * widening is exact).
 * Scaled inputs (temperature != 1) run through the "staged" driver: each work item's rows
 * (a block of up to FD_W short rows, or one long row) are converted -- half -> float32 and
 * times scale -- into a per-thread buffer (at most max(V, FD_W * 2048) elements per input,
 * so it stays in L2), and the float32 / float64 kernels run on the buffer; the result is
 * the float32 kernel's on x * scale rounded to the working precision once.
 * Native float32/float64 inputs with scale = 1 never come here for the contract's first nine
 * kernels: they run on the entry points of _kernels.pyx unchanged, bit for bit.
 */
#ifndef FASTDIV_DIVERGENCES_H
#define FASTDIV_DIVERGENCES_H

#include <stdlib.h>
#include "_simd.h"
#include "_job.h" /* fd_job, FD_IN_*, FD_OP_* */

/* dst[0..n) = float(src[0..n)) * scale, src in format `kind` (not FD_IN_F64). */
static void fd_stage_f32(int kind, const void *src, ptrdiff_t n, float scale, float *dst)
{
    ptrdiff_t j = 0;
    if (kind == FD_IN_F32) {
        const float *s = (const float *)src;
        for (; j < n; j++) dst[j] = s[j] * scale;
    } else if (kind == FD_IN_F16) {
        const uint16_t *s = (const uint16_t *)src;
        for (; j + FD_WF <= n; j += FD_WF) *(fd_vf_u *)(dst + j) = fd_ld_h16(s + j) * scale;
        for (; j < n; j++) dst[j] = fd_f16_to_f32(s[j]) * scale;
    } else {
        const uint16_t *s = (const uint16_t *)src;
        for (; j + FD_WF <= n; j += FD_WF) *(fd_vf_u *)(dst + j) = fd_ld_b16(s + j) * scale;
        for (; j < n; j++) dst[j] = fd_bf16_to_f32(s[j]) * scale;
    }
}

static void fd_stage_f64(const double *src, ptrdiff_t n, double scale, double *dst)
{
    for (ptrdiff_t j = 0; j < n; j++) dst[j] = src[j] * scale;
}

/* ------------------------------------------------------------------------------------------ */
/* The driver.                                                                                  */
/* ------------------------------------------------------------------------------------------ */

/* Ops computed by the block driver of _short_rows.h for short rows (items of FD_W rows). */
static inline int fd_op_blocked(int op)
{
    return op == FD_OP_LSE || op == FD_OP_ENTROPY_LOGITS || op == FD_OP_KL_LOGITS ||
           op == FD_OP_CE_HARD || op == FD_OP_CE_SOFT;
}

/* One work item (rows r0 .. r0 + nr) of job J on the inputs x0, x1 (already at row r0) in the
   input format S (working precision T, inputs TI); scr: fd_js_logits' scratch rows. */
#define FD_ITEM(T, TI, S)                                                                     \
    static void fd_item_##S(const fd_job *J, ptrdiff_t r0, ptrdiff_t nr, const TI *x0,        \
                            const TI *x1, T *scr)                                             \
    {                                                                                         \
        const ptrdiff_t V = J->V;                                                             \
        T *out = (T *)J->out + r0;                                                            \
        const T *w_ = (const T *)J->weight;                                                   \
        switch (J->op) {                                                                      \
        case FD_OP_LSE: fd_lse_item_##S(x0, nr, V, 0, out); break;                            \
        case FD_OP_ENTROPY_LOGITS: fd_entropy_logits_item_##S(x0, nr, V, 0, out); break;      \
        case FD_OP_ENTROPY_LOG_PROBS: *out = (T)fd_entropy_log_probs_##S(x0, V); break;      \
        case FD_OP_ENTROPY_PROBS: *out = (T)fd_entropy_probs_##S(x0, V); break;              \
        case FD_OP_KL_LOGITS: fd_kl_logits_item_##S(x0, x1, nr, V, 0, out); break;            \
        case FD_OP_KL_LOG_PROBS: *out = (T)fd_kl_log_probs_##S(x0, x1, V); break;            \
        case FD_OP_KL_PROBS: *out = (T)fd_kl_probs_##S(x0, x1, V); break;                    \
        case FD_OP_CE_HARD:                                                                   \
            fd_ce_hard_item_##S(x0, nr, V, 0, J->target + r0, J->ignore_index, w_, J->a, out); \
            break;                                                                            \
        case FD_OP_CE_SOFT: fd_ce_soft_item_##S(x0, x1, w_, nr, V, 0, J->a, J->b, out); break; \
        case FD_OP_JS_LOGITS: *out = (T)fd_js_logits_##S(x0, x1, V, J->a, scr); break;       \
        case FD_OP_JS_LOG_PROBS: *out = (T)fd_js_log_probs_##S(x0, x1, V, J->a); break;      \
        case FD_OP_JS_PROBS: *out = (T)fd_js_probs_##S(x0, x1, V, J->a); break;              \
        case FD_OP_TOPK_KL:                                                                   \
            *out = (T)fd_topk_kl_##S(x0, V, J->target + r0 * J->width[1], x1, J->width[1],    \
                                     J->a != 0.0);                                            \
            break;                                                                            \
        }                                                                                     \
    }
FD_ITEM(float, float, f32)
FD_ITEM(double, double, f64)
FD_ITEM(float, uint16_t, h16)
FD_ITEM(float, uint16_t, b16)
#undef FD_ITEM

/* The rows of work item `it`: a block of up to W short rows for the blocked ops, else one. */
static inline void fd_item_rows(const fd_job *J, ptrdiff_t it, ptrdiff_t W, ptrdiff_t blockv,
                                ptrdiff_t *r0, ptrdiff_t *nr)
{
    *r0 = it;
    *nr = 1;
    if (fd_op_blocked(J->op) && J->V <= blockv) {
        *r0 = it * W;
        *nr = J->rows - *r0 < W ? J->rows - *r0 : W;
    }
}

/* Whether every input is read in place (no scale to apply). */
static inline int fd_job_direct(const fd_job *J)
{
    for (int i = 0; i < J->nin; i++)
        if (J->scale[i] != 1.0) return 0;
    return 1;
}

static void fd_direct_item(const fd_job *J, ptrdiff_t it, void *scr)
{
    ptrdiff_t r0, nr;
    const int dbl = J->kind == FD_IN_F64;
    fd_item_rows(J, it, dbl ? FD_WD : FD_WF, (ptrdiff_t)(FD_CHUNK_BYTES / (dbl ? 8 : 4)), &r0, &nr);
    const size_t es = J->kind == FD_IN_F64 ? 8 : J->kind == FD_IN_F32 ? 4 : 2;
    const void *x0 = (const char *)J->src[0] + (size_t)(r0 * J->width[0]) * es;
    const void *x1 = J->nin > 1 ? (const char *)J->src[1] + (size_t)(r0 * J->width[1]) * es : NULL;
    switch (J->kind) {
    case FD_IN_F32: fd_item_f32(J, r0, nr, (const float *)x0, (const float *)x1, (float *)scr); break;
    case FD_IN_F64: fd_item_f64(J, r0, nr, (const double *)x0, (const double *)x1, (double *)scr); break;
    case FD_IN_F16: fd_item_h16(J, r0, nr, (const uint16_t *)x0, (const uint16_t *)x1, (float *)scr); break;
    default: fd_item_b16(J, r0, nr, (const uint16_t *)x0, (const uint16_t *)x1, (float *)scr); break;
    }
}

/* Staged: scaled inputs converted into buf0 / buf1 (see the top of this file). */
static void fd_staged_item_f32(const fd_job *J, ptrdiff_t it, float *buf0, float *buf1, float *scr)
{
    ptrdiff_t r0, nr;
    fd_item_rows(J, it, FD_WF, (ptrdiff_t)(FD_CHUNK_BYTES / 4), &r0, &nr);
    float *bufs[2] = {buf0, buf1};
    const float *x[2] = {NULL, NULL};
    const size_t es = J->kind == FD_IN_F32 ? 4 : 2;
    for (int i = 0; i < J->nin; i++) {
        const ptrdiff_t w = J->width[i];
        const char *src = (const char *)J->src[i] + (size_t)(r0 * w) * es;
        if (J->kind == FD_IN_F32 && J->scale[i] == 1.0) {
            x[i] = (const float *)src;
            continue;
        }
        fd_stage_f32(J->kind, src, nr * w, (float)J->scale[i], bufs[i]);
        x[i] = bufs[i];
    }
    fd_item_f32(J, r0, nr, x[0], x[1], scr);
}

static void fd_staged_item_f64(const fd_job *J, ptrdiff_t it, double *buf0, double *buf1, double *scr)
{
    ptrdiff_t r0, nr;
    fd_item_rows(J, it, FD_WD, (ptrdiff_t)(FD_CHUNK_BYTES / 8), &r0, &nr);
    double *bufs[2] = {buf0, buf1};
    const double *x[2] = {NULL, NULL};
    for (int i = 0; i < J->nin; i++) {
        const double *src = (const double *)J->src[i] + r0 * J->width[i];
        if (J->scale[i] == 1.0) {
            x[i] = src;
            continue;
        }
        fd_stage_f64(src, nr * J->width[i], J->scale[i], bufs[i]);
        x[i] = bufs[i];
    }
    fd_item_f64(J, r0, nr, x[0], x[1], scr);
}

/* Runs job J over all rows with nthreads OpenMP threads (static schedule: each work item is
   computed by one thread, whatever the thread count).  Returns 0, or -1 if a buffer could not
   be allocated. */
static int fd_run_staged(const fd_job *J, int nthreads)
{
    const int dbl = J->kind == FD_IN_F64;
    const size_t es = dbl ? 8 : 4;
    const ptrdiff_t blockv = (ptrdiff_t)(FD_CHUNK_BYTES / es), w = dbl ? FD_WD : FD_WF;
    const int blocked = fd_op_blocked(J->op) && J->V <= blockv;
    const ptrdiff_t items = blocked ? (J->rows + w - 1) / w : J->rows;
    const ptrdiff_t nr = blocked ? w : 1;
    const int direct = fd_job_direct(J);
    /* staging buffers, +FD_WF elements of slack: the kernels may prefetch (never load) past
       the end */
    const size_t n0 = direct ? 0 : (size_t)(nr * J->width[0]) + FD_WF;
    const size_t n1 = direct || J->nin < 2 ? 0 : (size_t)(nr * J->width[1]) + FD_WF;
    /* fd_js_logits' scratch rows (exponentials, per-chunk shifts) */
    const size_t n2 = J->op != FD_OP_JS_LOGITS ? 0
                      : (size_t)(dbl ? fd_js_scratch_f64(J->V) : fd_js_scratch_f32(J->V)) + FD_WF;
    int failed = 0;
    (void)nthreads;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        const size_t bytes = ((n0 + n1 + n2) * es + 63) / 64 * 64;
        char *buf = bytes ? (char *)aligned_alloc(64, bytes) : NULL;
        if (bytes && buf == NULL) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (ptrdiff_t it = 0; it < items; it++) {
            if (bytes && buf == NULL) continue;
            if (direct)
                fd_direct_item(J, it, buf);
            else if (dbl)
                fd_staged_item_f64(J, it, (double *)buf, (double *)buf + n0, (double *)buf + n0 + n1);
            else
                fd_staged_item_f32(J, it, (float *)buf, (float *)buf + n0, (float *)buf + n0 + n1);
        }
        free(buf);
    }
    return failed ? -1 : 0;
}

#endif /* FASTDIV_DIVERGENCES_H */
