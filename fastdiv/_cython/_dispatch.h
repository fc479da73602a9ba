/* fastdiv Cython backend: run-time choice of the kernels' instruction-set level (issue 21).
 *
 * The kernels (_simd.h, _long_rows.h, _divergences.h, _evaluate.h, ...) are compiled several
 * times, once per ISA level, by _level.c: each level is its own object file, built by setup.py
 * with that level's -march flags (so that _simd.h's vector width and intrinsics follow from the
 * compiler's predefined macros, __AVX512F__, __AVX2__, ...), and exports one table of
 * function pointers, fd_table_<level>.  _kernels.pyx includes only this header (no vector
 * code: it is compiled for the baseline ISA), picks one table at import (fd_level_ok below,
 * FASTDIV_ISA) and calls every kernel through it.
 *
 * Builds (setup.py):
 *   FD_DISPATCH defined (x86-64, the default): four levels, fd_table_x86_64 (baseline,
 *     SSE2), fd_table_x86_64_v2 (SSE4.2, POPCNT), fd_table_x86_64_v3 (AVX2, FMA, F16C, BMI2)
 *     and fd_table_x86_64_v4 (AVX-512 F/BW/DQ/VL/CD);
 *   otherwise (FASTDIV_NATIVE=1, FASTDIV_PORTABLE=1, or not x86-64): one level, fd_table_one.
 */
#ifndef FASTDIV_DISPATCH_H
#define FASTDIV_DISPATCH_H

#include <stddef.h>
#include <stdint.h>
#include "_job.h"

typedef struct {
    const char *level; /* "x86-64-v3", ..., "native", "baseline" */
    const char *isa;   /* the widest vector ISA the level's code uses: "avx512f", "avx2", ... */
    const char *flags; /* its architecture flags ("-march=x86-64-v3") */
    /* the kernels of _row_items.h / _evaluate_rows.h that _kernels.pyx calls in its prange loops */
    ptrdiff_t (*items_f32)(ptrdiff_t rows, ptrdiff_t V);
    ptrdiff_t (*items_f64)(ptrdiff_t rows, ptrdiff_t V);
    void (*lse_item_f32)(const float *x, ptrdiff_t rows, ptrdiff_t V, ptrdiff_t it, float *out);
    void (*lse_item_f64)(const double *x, ptrdiff_t rows, ptrdiff_t V, ptrdiff_t it, double *out);
    void (*entropy_logits_item_f32)(const float *x, ptrdiff_t rows, ptrdiff_t V, ptrdiff_t it,
                                    float *out);
    void (*entropy_logits_item_f64)(const double *x, ptrdiff_t rows, ptrdiff_t V, ptrdiff_t it,
                                    double *out);
    void (*kl_logits_item_f32)(const float *x, const float *z, ptrdiff_t rows, ptrdiff_t V,
                               ptrdiff_t it, float *out);
    void (*kl_logits_item_f64)(const double *x, const double *z, ptrdiff_t rows, ptrdiff_t V,
                               ptrdiff_t it, double *out);
    void (*ce_hard_item_f32)(const float *x, ptrdiff_t rows, ptrdiff_t V, ptrdiff_t it,
                             const int64_t *target, int64_t ignore_index, const float *weight,
                             double eps, float *out);
    void (*ce_hard_item_f64)(const double *x, ptrdiff_t rows, ptrdiff_t V, ptrdiff_t it,
                             const int64_t *target, int64_t ignore_index, const double *weight,
                             double eps, double *out);
    void (*ce_hard_prep_f32)(ptrdiff_t rows, ptrdiff_t V, const int64_t *target,
                             int64_t ignore_index, const float *weight, float *out);
    void (*ce_hard_prep_f64)(ptrdiff_t rows, ptrdiff_t V, const int64_t *target,
                             int64_t ignore_index, const double *weight, double *out);
    void (*ce_soft_item_f32)(const float *x, const float *p, const float *w, ptrdiff_t rows,
                             ptrdiff_t V, ptrdiff_t it, double alpha, double beta, float *out);
    void (*ce_soft_item_f64)(const double *x, const double *p, const double *w, ptrdiff_t rows,
                             ptrdiff_t V, ptrdiff_t it, double alpha, double beta, double *out);
    double (*entropy_log_probs_f32)(const float *x, ptrdiff_t V);
    double (*entropy_log_probs_f64)(const double *x, ptrdiff_t V);
    double (*entropy_probs_f32)(const float *x, ptrdiff_t V);
    double (*entropy_probs_f64)(const double *x, ptrdiff_t V);
    double (*kl_log_probs_f32)(const float *a, const float *b, ptrdiff_t V);
    double (*kl_log_probs_f64)(const double *a, const double *b, ptrdiff_t V);
    double (*kl_probs_f32)(const float *p, const float *q, ptrdiff_t V);
    double (*kl_probs_f64)(const double *p, const double *q, ptrdiff_t V);
    void (*eval_row_f32)(const float *x, const float *z, ptrdiff_t V, int64_t t, double *st,
                         int64_t *ix, int kl);
    void (*eval_row_f64)(const double *x, const double *z, ptrdiff_t V, int64_t t, double *st,
                         int64_t *ix, int kl);
    /* the compare op of _evaluate_rows.h (its own OpenMP region; -1: out of memory) */
    int (*compare_rows_f32)(const float *x, const float *z, ptrdiff_t rows, ptrdiff_t V,
                            const int64_t *target, double *st, int64_t *ix, int nthreads);
    int (*compare_rows_f64)(const double *x, const double *z, ptrdiff_t rows, ptrdiff_t V,
                            const int64_t *target, double *st, int64_t *ix, int nthreads);
    /* the softcap transform of _softcap_rows.h (one thread) */
    void (*softcap_rows_f32)(const float *x, ptrdiff_t rows, ptrdiff_t V, ptrdiff_t ldx, float inv,
                             float cap, float *out);
    void (*softcap_rows_f64)(const double *x, ptrdiff_t rows, ptrdiff_t V, ptrdiff_t ldx, double inv,
                             double cap, double *out);
    /* the divergence driver of _divergences.h (its own OpenMP region) */
    int (*run_staged)(const fd_job *J, int nthreads);
} fd_table;

#ifndef FD_LEVEL /* _kernels.pyx's side */

#if defined(FD_DISPATCH)
extern const fd_table fd_table_x86_64, fd_table_x86_64_v2, fd_table_x86_64_v3, fd_table_x86_64_v4;
static const fd_table *const fd_tables[] = {&fd_table_x86_64, &fd_table_x86_64_v2,
                                            &fd_table_x86_64_v3, &fd_table_x86_64_v4};
static const int fd_dispatch = 1;
#else
extern const fd_table fd_table_one;
static const fd_table *const fd_tables[] = {&fd_table_one};
static const int fd_dispatch = 0;
#endif
#define FD_NLEVELS ((int)(sizeof(fd_tables) / sizeof(fd_tables[0])))
static inline int fd_nlevels(void) { return FD_NLEVELS; }
static inline const fd_table *fd_level(int i) { return fd_tables[i]; }

/* Whether this CPU (and its operating system, which must save the wider registers: libgcc's
   and compiler-rt's feature bits include that check) runs level i's code. */
static int fd_level_ok(int i)
{
#if defined(FD_DISPATCH)
    __builtin_cpu_init();
#if defined(__clang__) || !defined(__GNUC__) || __GNUC__ < 12
    /* feature names every GCC / Clang knows (the x86-64-vN names are GCC >= 12) */
    const int v2 = __builtin_cpu_supports("sse3") && __builtin_cpu_supports("ssse3") &&
                   __builtin_cpu_supports("sse4.1") && __builtin_cpu_supports("sse4.2") &&
                   __builtin_cpu_supports("popcnt");
    const int v3 = v2 && __builtin_cpu_supports("avx") && __builtin_cpu_supports("avx2") &&
                   __builtin_cpu_supports("fma") && __builtin_cpu_supports("bmi") &&
                   __builtin_cpu_supports("bmi2");
    const int v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                   __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
                   __builtin_cpu_supports("avx512cd");
#else
    const int v2 = __builtin_cpu_supports("x86-64-v2") != 0;
    const int v3 = __builtin_cpu_supports("x86-64-v3") != 0;
    const int v4 = __builtin_cpu_supports("x86-64-v4") != 0;
#endif
    switch (i) {
    case 0: return 1;
    case 1: return v2;
    case 2: return v2 && v3;
    case 3: return v2 && v3 && v4;
    default: return 0;
    }
#else
    return i == 0;
#endif
}

/* OpenMP of the extension's own code (its prange loops). */
#ifdef _OPENMP
#include <omp.h>
static inline int fd_max_threads(void) { return omp_get_max_threads(); }
static const int fd_openmp = 1;
/* How many threads a parallel region asked for n threads really gets (tests). */
static int fd_threads_used(int n)
{
    int used = 1;
#pragma omp parallel num_threads(n)
    {
#pragma omp single
        used = omp_get_num_threads();
    }
    return used;
}
#else
static inline int fd_max_threads(void) { return 1; }
static const int fd_openmp = 0;
static int fd_threads_used(int n) { (void)n; return 1; }
#endif

#endif /* !FD_LEVEL */

#endif /* FASTDIV_DISPATCH_H */
