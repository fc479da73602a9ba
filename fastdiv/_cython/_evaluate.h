/* fastdiv Cython backend: the `evaluate` op (contract: fastdiv/_registry.py).
 *
 * Per row, in one read of the logits x (and of the reference z): the state
 *   st = (m, s, w, xt, mz, sz, wxz, wzx)   (float64)
 *   ix = (argmax, #(x_j > xt), flags)      (int64)
 * that fastdiv.evaluation finishes into NLL, lse, entropy, top-k, argmax and both KLs, and
 * that fastdiv.states merges across vocabulary shards.
 *
 * Rows are cut into chunks of FD_CHUNK_BYTES: the chunk maximum is found first (a read from
 * memory), sums are rescaled when the maximum grows (scalar exp in double), then the chunk is
 * exponentiated from L1 against the current maximum with the vector exp of _simd.h, its sums
 * kept in vector lanes of the working precision and added to doubles per chunk.  The count of
 * classes above the target is a compare + popcount per vector; the argmax is searched in a
 * chunk only when that chunk raises the maximum.  Edge cases without per-element branches:
 *   - while a maximum is -inf (everything masked so far) the shift is 0, so exp(-inf) = 0;
 *   - NaN: the chunk max ignores it, but exp(NaN - m) = NaN enters s (or sz), which marks the
 *     row: m (mz) is reported as NaN at the end;
 *   - +inf: the row's softmax quantities are settled (NaN); the rest of the row is only
 *     scanned for a NaN (which turns the reported m from +inf into NaN);
 *   - entries equal to the shift (exp(0) = 1 exactly) are counted apart from the lane sums, as
 *     in _row_state.h (see fd_log_kr): in a float32 lane holding 1.0 the terms of a confident row
 *     (below 6e-8) would round away, losing percents of a small NLL or entropy.
 * Template: _evaluate_rows.h, instantiated after the row templates by _inst.h for native inputs.
 */
#ifndef FASTDIV_EVALUATE_H
#define FASTDIV_EVALUATE_H

#include "_simd.h"

/* The row template _evaluate_rows.h is instantiated by _inst.h (f32 and f64). */

#endif /* FASTDIV_EVALUATE_H */
