/* fastdiv Cython backend, divergence family (issue 5, kernel contract v2):
 *   - temperature: logits multiplied by `scale` = 1/T before anything else;
 *   - half-precision inputs read as raw bits (uint16: IEEE binary16, int16: bfloat16);
 *   - generalized Jensen-Shannon and top-k teacher KL row kernels (_div_rows.h).
 *
 * Scaled or half inputs run through one "staged" driver: each work item's rows (a block of
 * up to FD_W short rows, or one long row) are converted -- half -> float32 and/or times scale
 * -- into a per-thread buffer (at most max(V, FD_W * 2048) elements per input, so it stays in
 * L2), and the float32 / float64 code of _rows.h / _div_rows.h runs on the buffer.  Memory
 * traffic is that of the half input (each element read once from DRAM); there is no
 * full-size upcast copy; and since converting a half to float32 is exact, the result is
 * bit-identical to the float32 kernel on the upcast input (x * scale rounded to the working
 * precision once, as the float32 kernel with that scale does).  Exception: long half rows of
 * lse and unsmoothed hard-label CE are converted chunk by chunk (fd_half_lse_state), equal to
 * the float32 kernel's result to within float32 rounding.
 * Speed: the conversion adds work (0.03-0.1 ns per element in cache) and does not overlap
 * the row's arithmetic, so half input runs at 0.7-1.2x the float32 speed (6-7x faster than
 * converting blocks in numpy), not at half its time (benchmarks/NOTES.md).
 * Native float32/float64 inputs with scale = 1 never come here for the contract's first nine
 * kernels: they run on the existing entry points unchanged, bit for bit.  The new kernels
 * (JS, top-k) always run through this driver, reading native input in place.
 */
#ifndef FASTDIV_DIV_H
#define FASTDIV_DIV_H

#include <stdlib.h>
#include "_simd.h"

/* log x for x > 0 finite and normal, without the special-value selects of fd_log (10 % of
   the JS pass).  For x = 0 or subnormal the result is finite garbage; the JS pass multiplies
   it by a probability that is 0 or below 1e-37 there.  Same polynomials as fd_log. */
FD_INLINE fd_vf fd_logpos_f32(fd_vf x)
{
    fd_vu ix = (fd_vu)x + (0x3f800000u - 0x3f3504f3u);
    fd_vf kf = __builtin_convertvector((fd_vi)(ix >> 23) - 127, fd_vf);
    fd_vf f = (fd_vf)((ix & 0x007fffffu) + 0x3f3504f3u) - 1.0f;
    fd_vf z = f * f;
    fd_vf y = 7.0376836292E-2f * f - 1.1514610310E-1f;
    y = y * f + 1.1676998740E-1f;
    y = y * f - 1.2420140846E-1f;
    y = y * f + 1.4249322787E-1f;
    y = y * f - 1.6668057665E-1f;
    y = y * f + 2.0000714765E-1f;
    y = y * f - 2.4999993993E-1f;
    y = y * f + 3.3333331174E-1f;
    y = y * f * z - 0.5f * z;
    return kf * (float)FD_LN2 + (f + y);
}

FD_INLINE fd_vd fd_logpos_f64(fd_vd x)
{
    fd_vq ix = (fd_vq)x + (0x3ff0000000000000ull - 0x3fe6a09e667f3bcdull);
    fd_vd kf = __builtin_convertvector((fd_vl)(ix >> 52) - 1023, fd_vd);
    fd_vd f = (fd_vd)((ix & 0x000fffffffffffffull) + 0x3fe6a09e667f3bcdull) - 1.0;
    fd_vd s = f / (2.0 + f);
    fd_vd z = s * s, w = z * z;
    fd_vd t1 = w * (3.999999999940941908e-01 +
                    w * (2.222219843214978396e-01 + w * 1.531383769920937332e-01));
    fd_vd t2 = z * (6.666666666666735130e-01 +
                    w * (2.857142874366239149e-01 +
                         w * (1.818357216161805012e-01 + w * 1.479819860511658591e-01)));
    fd_vd hfsq = 0.5 * f * f;
    return kf * FD_LN2 + (f - (hfsq - s * (hfsq + t1 + t2)));
}

#define FD_T float
#define FD_V fd_vf
#define FD_V_U fd_vf_u
#define FD_M fd_mf
#define FD_SUF f32
#define FD_W FD_WF
#include "_div_rows.h"
#undef FD_T
#undef FD_V
#undef FD_V_U
#undef FD_M
#undef FD_SUF
#undef FD_W

#define FD_T double
#define FD_V fd_vd
#define FD_V_U fd_vd_u
#define FD_M fd_md
#define FD_SUF f64
#define FD_W FD_WD
#include "_div_rows.h"
#undef FD_T
#undef FD_V
#undef FD_V_U
#undef FD_M
#undef FD_SUF
#undef FD_W

/* Input formats (the dtype of every float input of one call). */
enum { FD_IN_F32 = 0, FD_IN_F64 = 1, FD_IN_F16 = 2, FD_IN_BF16 = 3 };

/* ------------------------------------------------------------------------------------------ */
/* half -> float32 (exact).  AVX-512: vcvtph2ps for binary16, a 16-bit shift for bfloat16     */
/* (its bits are the top half of a float32).  Portable: the same on scalars.                   */
/* ------------------------------------------------------------------------------------------ */
static inline float fd_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    if (e == 0x1f) {
        bits = sign | 0x7f800000u | (man << 13); /* inf, NaN (payload kept) */
    } else if (e == 0) {
        float f = (float)man * 0x1p-24f; /* zero and subnormals: man * 2^-24, exact */
        return sign ? -f : f;
    } else {
        bits = sign | ((e + 112u) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float fd_bf16_to_f32(int16_t b)
{
    uint32_t bits = (uint32_t)(uint16_t)b << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* dst[0..n) = float(src[0..n)) * scale, src in format `kind` (not FD_IN_F64). */
static void fd_stage_f32(int kind, const void *src, ptrdiff_t n, float scale, float *dst)
{
    ptrdiff_t j = 0;
    if (kind == FD_IN_F32) {
        const float *s = (const float *)src;
        for (; j < n; j++) dst[j] = s[j] * scale;
    } else if (kind == FD_IN_F16) {
        const uint16_t *s = (const uint16_t *)src;
#if FD_AVX512
        const __m512 sc = _mm512_set1_ps(scale);
        for (; j + 16 <= n; j += 16)
            _mm512_storeu_ps(dst + j, _mm512_mul_ps(
                _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + j))), sc));
#endif
        for (; j < n; j++) dst[j] = fd_f16_to_f32(s[j]) * scale;
    } else {
        const int16_t *s = (const int16_t *)src;
#if FD_AVX512
        const __m512 sc = _mm512_set1_ps(scale);
        for (; j + 16 <= n; j += 16) {
            __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + j)));
            _mm512_storeu_ps(dst + j, _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(w, 16)), sc));
        }
#endif
        for (; j < n; j++) dst[j] = fd_bf16_to_f32(s[j]) * scale;
    }
}

static void fd_stage_f64(const double *src, ptrdiff_t n, double scale, double *dst)
{
    for (ptrdiff_t j = 0; j < n; j++) dst[j] = src[j] * scale;
}

/* ------------------------------------------------------------------------------------------ */
/* The staged driver.                                                                            */
/* ------------------------------------------------------------------------------------------ */
enum {
    FD_OP_LSE, FD_OP_ENTROPY_LOGITS, FD_OP_ENTROPY_LOG_PROBS, FD_OP_ENTROPY_PROBS,
    FD_OP_KL_LOGITS, FD_OP_KL_LOG_PROBS, FD_OP_KL_PROBS, FD_OP_CE_HARD, FD_OP_CE_SOFT,
    FD_OP_JS_LOGITS, FD_OP_JS_LOG_PROBS, FD_OP_JS_PROBS, FD_OP_TOPK_KL
};

typedef struct {
    int op, kind, nin;
    const void *src[2];    /* float inputs: rows x width[i] elements of format `kind` */
    ptrdiff_t width[2];
    double scale[2];       /* per input (1.0: not scaled) */
    ptrdiff_t rows, V;
    double a, b;           /* ce_soft: alpha, beta; ce_hard: eps; js: beta; topk: bucket */
    const int64_t *target; /* ce_hard: targets; topk: rows x k sorted classes */
    int64_t ignore_index;
    const void *weight;    /* float32 (or float64 for FD_IN_F64) */
    void *out;             /* float32 (or float64 for FD_IN_F64) */
} fd_job;

/* Ops computed by the block driver of _rows.h for short rows (items of FD_W rows). */
static inline int fd_op_blocked(int op)
{
    return op == FD_OP_LSE || op == FD_OP_ENTROPY_LOGITS || op == FD_OP_KL_LOGITS ||
           op == FD_OP_CE_HARD || op == FD_OP_CE_SOFT;
}

#define FD_STAGED_ITEM(T, SUF, W, BLOCKV)                                                     \
    static void fd_staged_item_##SUF(const fd_job *J, ptrdiff_t it, T *buf0, T *buf1, T *scr) \
    {                                                                                         \
        const ptrdiff_t V = J->V;                                                             \
        ptrdiff_t r0 = it, nr = 1;                                                            \
        if (fd_op_blocked(J->op) && V <= (BLOCKV)) {                                          \
            r0 = it * (W);                                                                    \
            nr = J->rows - r0 < (W) ? J->rows - r0 : (W);                                     \
        }                                                                                     \
        T *bufs[2] = {buf0, buf1};                                                            \
        const T *x[2];                                                                        \
        for (int i = 0; i < J->nin; i++) {                                                    \
            const ptrdiff_t w = J->width[i];                                                  \
            if (J->kind == FD_IN_F32 || J->kind == FD_IN_F64) {                               \
                const T *src = (const T *)J->src[i] + r0 * w;                                  \
                if (J->scale[i] == 1.0) {                                                     \
                    x[i] = src;                                                               \
                    continue;                                                                 \
                }                                                                             \
            }                                                                                 \
            fd_stage_any_##SUF(J->kind, J->src[i], r0 * w, nr * w, J->scale[i], bufs[i]);     \
            x[i] = bufs[i];                                                                   \
        }                                                                                     \
        T *out = (T *)J->out + r0;                                                            \
        const T *w_ = (const T *)J->weight;                                                   \
        switch (J->op) {                                                                      \
        case FD_OP_LSE: fd_lse_item_##SUF(x[0], nr, V, 0, out); break;                        \
        case FD_OP_ENTROPY_LOGITS: fd_entropy_logits_item_##SUF(x[0], nr, V, 0, out); break;  \
        case FD_OP_ENTROPY_LOG_PROBS: *out = (T)fd_entropy_log_probs_##SUF(x[0], V); break;  \
        case FD_OP_ENTROPY_PROBS: *out = (T)fd_entropy_probs_##SUF(x[0], V); break;          \
        case FD_OP_KL_LOGITS: fd_kl_logits_item_##SUF(x[0], x[1], nr, V, 0, out); break;      \
        case FD_OP_KL_LOG_PROBS: *out = (T)fd_kl_log_probs_##SUF(x[0], x[1], V); break;      \
        case FD_OP_KL_PROBS: *out = (T)fd_kl_probs_##SUF(x[0], x[1], V); break;              \
        case FD_OP_CE_HARD:                                                                   \
            fd_ce_hard_item_##SUF(x[0], nr, V, 0, J->target + r0, J->ignore_index, w_, J->a,  \
                                  out);                                                       \
            break;                                                                            \
        case FD_OP_CE_SOFT:                                                                   \
            fd_ce_soft_item_##SUF(x[0], x[1], w_, nr, V, 0, J->a, J->b, out);                 \
            break;                                                                            \
        case FD_OP_JS_LOGITS: *out = (T)fd_js_logits_##SUF(x[0], x[1], V, J->a, scr); break; \
        case FD_OP_JS_LOG_PROBS: *out = (T)fd_js_log_probs_##SUF(x[0], x[1], V, J->a); break;\
        case FD_OP_JS_PROBS: *out = (T)fd_js_probs_##SUF(x[0], x[1], V, J->a); break;        \
        case FD_OP_TOPK_KL:                                                                   \
            *out = (T)fd_topk_kl_##SUF(x[0], V, J->target + r0 * J->width[1], x[1],           \
                                       J->width[1], J->a != 0.0);                             \
            break;                                                                            \
        }                                                                                     \
    }

static inline void fd_stage_any_f32(int kind, const void *src, ptrdiff_t off, ptrdiff_t n,
                                    double scale, float *dst)
{
    size_t es = kind == FD_IN_F32 ? 4 : 2;
    fd_stage_f32(kind, (const char *)src + off * es, n, (float)scale, dst);
}
static inline void fd_stage_any_f64(int kind, const void *src, ptrdiff_t off, ptrdiff_t n,
                                    double scale, double *dst)
{
    (void)kind; /* float64 input is only staged to be scaled */
    fd_stage_f64((const double *)src + off, n, scale, dst);
}

FD_STAGED_ITEM(float, f32, FD_WF, (ptrdiff_t)(FD_CHUNK_BYTES / 4))
FD_STAGED_ITEM(double, f64, FD_WD, (ptrdiff_t)(FD_CHUNK_BYTES / 8))
#undef FD_STAGED_ITEM

/* ------------------------------------------------------------------------------------------ */
/* Long half rows of lse and hard-label CE without smoothing (LLM evaluation on bf16 logits):  */
/* converted one chunk (FD_CHUNK_BYTES of float32) at a time into a buffer that stays in L1     */
/* (in cache: 0.225 ns per element against 0.251 for whole-row staging; float32 0.171).        */
/* (Software prefetch of the source 2 or 4 chunks ahead made no measurable difference.)         */
/* Each chunk's (max, k, r) state (fd_lse_state) is merged into                                 */
/* the row's as fd_lse_state merges its own chunks; the sums of a chunk whose max is below the  */
/* running one are formed against the chunk's max and rescaled, so the result equals the        */
/* float32 kernel's to within float32 rounding (not bit for bit).                                */
/* ------------------------------------------------------------------------------------------ */
static void fd_half_lse_state(int kind, const void *src, ptrdiff_t V, float *buf, float *m_out,
                              double *k_out, double *r_out)
{
    const ptrdiff_t CH = (ptrdiff_t)(FD_CHUNK_BYTES / 4);
    const uint16_t *s16 = (const uint16_t *)src;
    float m = -INFINITY;
    double k = 0.0, r = 0.0;
    for (ptrdiff_t j0 = 0; j0 < V; j0 += CH) {
        const ptrdiff_t n = V - j0 < CH ? V - j0 : CH;
        fd_stage_f32(kind, s16 + j0, n, 1.0f, buf);
        float mc;
        double kc, rc;
        fd_lse_state_f32(buf, n, 1, &mc, &kc, &rc);
        if (isnan(rc) || isnan(r)) { /* NaN anywhere wins (fd_lse_finish looks at r first) */
            r = NAN;
            if (mc > m) m = mc;
        } else if (mc == INFINITY || m == INFINITY) {
            m = INFINITY;
            r = INFINITY;
        } else if (mc == -INFINITY) {
            /* an all-masked chunk adds nothing */
        } else if (m == -INFINITY) {
            m = mc;
            k = kc;
            r = rc;
        } else if (mc > m) {
            r = (r + k) * exp((double)m - (double)mc) + rc;
            k = kc;
            m = mc;
        } else if (mc == m) {
            k += kc;
            r += rc;
        } else {
            r += (kc + rc) * exp((double)mc - (double)m);
        }
    }
    *m_out = m;
    *k_out = k;
    *r_out = r;
}

static inline int fd_half_chunked(const fd_job *J)
{
    return J->kind >= FD_IN_F16 && J->V > (ptrdiff_t)(FD_CHUNK_BYTES / 4) &&
           (J->op == FD_OP_LSE || (J->op == FD_OP_CE_HARD && !(J->a > 0.0)));
}

static void fd_half_chunked_row(const fd_job *J, ptrdiff_t i, float *buf)
{
    const ptrdiff_t V = J->V;
    const char *row = (const char *)J->src[0] + (size_t)i * V * 2;
    float *out = (float *)J->out;
    float m;
    double k, r;
    if (J->op == FD_OP_CE_HARD) {
        int64_t t = J->target[i];
        if (t == J->ignore_index) { /* an ignored row is not read */
            out[i] = 0.0f;
            return;
        }
        if (t < 0 || t >= V) { /* the API validates targets; never read out of bounds */
            out[i] = NAN;
            return;
        }
        fd_half_lse_state(J->kind, row, V, buf, &m, &k, &r);
        float xt;
        fd_stage_f32(J->kind, row + 2 * t, 1, 1.0f, &xt);
        out[i] = (float)fd_ce_hard_finish_f32(m, k, r, xt, (double)out[i], 0.0, 0.0, 0.0, V);
        return;
    }
    fd_half_lse_state(J->kind, row, V, buf, &m, &k, &r);
    out[i] = (float)fd_lse_finish_f32(m, k, r);
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
    /* +FD_WF elements of slack: the float32 kernels may prefetch (never load) past the end */
    const size_t n0 = (size_t)(nr * J->width[0]) + FD_WF;
    const size_t n1 = J->nin > 1 ? (size_t)(nr * J->width[1]) + FD_WF : 0;
    /* fd_js_logits' scratch rows (exponentials, per-chunk shifts) */
    const size_t n2 = J->op != FD_OP_JS_LOGITS ? 0
                      : (size_t)(dbl ? fd_js_scratch_f64(J->V) : fd_js_scratch_f32(J->V)) + FD_WF;
    const int chunked = fd_half_chunked(J); /* items are rows, buffers of one chunk would do */
    int failed = 0;
    (void)nthreads;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        char *buf = (char *)aligned_alloc(64, ((n0 + n1 + n2) * es + 63) / 64 * 64);
        if (buf == NULL) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (ptrdiff_t it = 0; it < items; it++) {
            if (buf == NULL) continue;
            if (dbl)
                fd_staged_item_f64(J, it, (double *)buf, (double *)buf + n0, (double *)buf + n0 + n1);
            else if (chunked)
                fd_half_chunked_row(J, it, (float *)buf);
            else
                fd_staged_item_f32(J, it, (float *)buf, (float *)buf + n0, (float *)buf + n0 + n1);
        }
        free(buf);
    }
    return failed ? -1 : 0;
}

#endif /* FASTDIV_DIV_H */
