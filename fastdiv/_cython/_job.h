/* fastdiv Cython backend: the job of the divergence driver (fd_run_staged in _divergences.h).
 * Shared by the kernels (compiled once per ISA level, see _level.c) and _kernels.pyx, which
 * fills it in and calls the selected level's fd_run_staged through the dispatch table
 * (_dispatch.h): no vector types here, so that the extension's own code compiles for the
 * baseline ISA.
 */
#ifndef FASTDIV_JOB_H
#define FASTDIV_JOB_H

#include <stddef.h>
#include <stdint.h>

/* Input formats (the dtype of every float input of one call). */
enum { FD_IN_F32 = 0, FD_IN_F64 = 1, FD_IN_F16 = 2, FD_IN_BF16 = 3 };

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

#endif /* FASTDIV_JOB_H */
