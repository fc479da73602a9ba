/* fastdiv Cython backend: the kernels compiled for one ISA level (issue 21).
 *
 * setup.py compiles this file once per level with that level's architecture flags and
 *   -DFD_LEVEL=<symbol suffix>  (x86_64_v3: the table is fd_table_x86_64_v3; one: fd_table_one)
 *   -DFD_LEVEL_NAME="<level>"   (x86-64-v3, native, baseline, ...)
 *   -DFD_SIMD_FLAGS="<flags>"   (-march=x86-64-v3)
 * and links the objects into the one extension _kernels; _kernels.pyx selects a table at
 * import (_dispatch.h).  Everything here but the table is static, so the levels' copies of
 * the kernels do not collide.
 */
#ifndef FD_LEVEL
#error "compile with -DFD_LEVEL=<suffix> -DFD_LEVEL_NAME=\"<level>\" (see setup.py)"
#endif

#include "_simd.h"
#include "_divergences.h"
#include "_evaluate.h"
#include "_dispatch.h"

#define FD_TABLE_(s) fd_table_##s
#define FD_TABLE(s) FD_TABLE_(s)

__attribute__((visibility("hidden"))) const fd_table FD_TABLE(FD_LEVEL) = {
    FD_LEVEL_NAME,
    fd_simd_isa,
    fd_simd_flags,
    fd_items_f32,
    fd_items_f64,
    fd_lse_item_f32,
    fd_lse_item_f64,
    fd_entropy_logits_item_f32,
    fd_entropy_logits_item_f64,
    fd_kl_logits_item_f32,
    fd_kl_logits_item_f64,
    fd_ce_hard_item_f32,
    fd_ce_hard_item_f64,
    fd_ce_hard_prep_f32,
    fd_ce_hard_prep_f64,
    fd_ce_soft_item_f32,
    fd_ce_soft_item_f64,
    fd_entropy_log_probs_f32,
    fd_entropy_log_probs_f64,
    fd_entropy_probs_f32,
    fd_entropy_probs_f64,
    fd_kl_log_probs_f32,
    fd_kl_log_probs_f64,
    fd_kl_probs_f32,
    fd_kl_probs_f64,
    fd_eval_row_f32,
    fd_eval_row_f64,
    fd_compare_rows_f32,
    fd_compare_rows_f64,
    fd_softcap_rows_f32,
    fd_softcap_rows_f64,
    fd_run_staged,
};
