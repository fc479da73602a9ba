/* One instantiation of the row templates (_row_state.h, _long_rows.h, _short_rows.h,
 * _row_items.h, _divergence_rows.h, _evaluate_rows.h, _softcap_rows.h), included by
 * _simd.h once per input format, selected by FD_INST:
 *   0: float inputs, float32 arithmetic (suffix f32)   1: double, float64 (f64)
 *   2: IEEE binary16 bits, float32 arithmetic (h16)   3: bfloat16 bits, float32 (b16)
 * Template parameters:
 *   FD_T (working precision), FD_V / FD_V_U / FD_M / FD_IDX / FD_CNT / FD_W (its vector types
 *   and lanes), FD_TI (input element type), FD_HALF (16-bit inputs),
 *   FN(name): the math of _simd.h for FD_T (name_f32 / name_f64),
 *   FI(name): the kernels and input reads of this format (name_f32 / f64 / h16 / b16).
 * No include guard on purpose; undefines everything it (and the caller) defined.
 */
#if FD_INST == 0 || FD_INST == 2 || FD_INST == 3
#define FD_T float
#define FD_V fd_vf
#define FD_V_U fd_vf_u
#define FD_M fd_mf
#define FD_IDX fd_idx_f32
#define FD_CNT fd_cnt_f32
#define FD_SUF f32
#define FD_W FD_WF
#else
#define FD_T double
#define FD_V fd_vd
#define FD_V_U fd_vd_u
#define FD_M fd_md
#define FD_IDX fd_idx_f64
#define FD_CNT fd_cnt_f64
#define FD_SUF f64
#define FD_W FD_WD
#endif
#if FD_INST == 0
#define FD_TI float
#define FD_ISUF f32
#define FD_HALF 0
#elif FD_INST == 1
#define FD_TI double
#define FD_ISUF f64
#define FD_HALF 0
#elif FD_INST == 2
#define FD_TI uint16_t
#define FD_ISUF h16
#define FD_HALF 1
#else
#define FD_TI uint16_t
#define FD_ISUF b16
#define FD_HALF 1
#endif
#define FN(name) FD_CAT(name, FD_SUF)
#define FI(name) FD_CAT(name, FD_ISUF)

#define FD_NEG_INF ((FD_T)-INFINITY)
#define FD_POS_INF ((FD_T)INFINITY)
/* Chunk of a long row, in elements (of the working precision: 16-bit inputs are converted
   into float32 chunk buffers of this size) */
#define FD_CH ((ptrdiff_t)(FD_CHUNK_BYTES / sizeof(FD_T)))
/* Prefetch of the inputs at p: as far ahead in elements as for the working precision */
#define FD_PFI(p) __builtin_prefetch((const char *)(p) + FD_PREFETCH_BYTES * sizeof(FD_TI) / sizeof(FD_T), 0, 3)
#define FD_PFI_1(p) __builtin_prefetch((const char *)(p) + 2 * FD_PREFETCH_BYTES * sizeof(FD_TI) / sizeof(FD_T), 0, 3)

/* The per-call float32 chunk buffer of a long-row kernel on 16-bit inputs (see fd_chunk):
   8 KiB of stack with AVX-512; native inputs need none. */
#if FD_HALF
#define FD_CHUNK_BUF(b) FD_T b[FD_CH] __attribute__((aligned(64)))
#else
#define FD_CHUNK_BUF(b) FD_T *const b = NULL
#endif

#include "_row_state.h"
#include "_long_rows.h"
#include "_short_rows.h"
#include "_row_items.h"
/* _row_state.h's accumulation steps, used by both drivers */
#undef FD_ACC_S
#undef FD_ACC_S_LANES
#undef FD_ACC_S_ROW
#undef FD_KL_STEP
#undef FD_KL_STEP_WITH
#undef FD_CE_STEP
#undef FD_CES_STEP
#include "_divergence_rows.h"
#if !FD_HALF /* evaluate and the softcap transform read native inputs only */
#include "_evaluate_rows.h"
#include "_softcap_rows.h"
#endif

#undef FD_CHUNK_BUF
#undef FD_PFI
#undef FD_PFI_1
#undef FD_NEG_INF
#undef FD_POS_INF
#undef FD_CH
#undef FN
#undef FI
#undef FD_T
#undef FD_V
#undef FD_V_U
#undef FD_M
#undef FD_IDX
#undef FD_CNT
#undef FD_SUF
#undef FD_W
#undef FD_TI
#undef FD_ISUF
#undef FD_HALF
#undef FD_INST
