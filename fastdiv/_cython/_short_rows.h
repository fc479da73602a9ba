/* Short rows (V <= FD_BLOCK_V, e.g. C51's 51 atoms): fd_<op>_block(x, V, nrows, ..., out),
 * FD_W rows at a time.  A short row alone is a long dependency chain (max, reduce,
 * exponentiate, reduce, log) that out-of-order execution cannot overlap across rows; the
 * block driver does each step for FD_W rows, and replaces the per-row horizontal
 * reductions by transpose-reductions (one vector holding the W rows' results).  Each lane
 * depends on its own row only: results do not depend on the batch or the thread count
 * (rows past the end of a partial block alias row 0 and are discarded).
 * The per-row state, its accumulation steps and finishes are _row_state.h's.
 * A template instantiated by _inst.h once per input format (its parameters: FD_T, FD_TI, FD_V,
 * FD_M, FD_W, FN, FI, FD_HALF, ...).  Inputs (FD_TI) are read only through the
 * FI(fd_ld / fd_ldt / fd_gth / fd_at) functions of _simd.h and FI(fd_chunk); weights and
 * results are in the working precision FD_T.
 * No include guard on purpose.
 */

/* The gathered tail columns (cols[j], j < nt) are only read for j < nt; gcc cannot see it. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

/* ------------------------------------------------------------------------------------------ */
/* Block driver pieces.  A block is FD_W rows; each row is split into its first q = V - V % W */
/* elements, processed as full vectors row by row, and its nt = V % W trailing elements,       */
/* gathered as columns (lane i = row i) and processed for the W rows at once: no padding      */
/* lanes.  Per-row vector partial results become one vector (lane i = row i) by a             */
/* transpose-reduction.  The next block is prefetched during the exponential pass.            */
/* ------------------------------------------------------------------------------------------ */
#define FD_ROW(x, i) ((x) + (ptrdiff_t)((i) < nrows ? (i) : 0) * V)
#define FD_PREFETCH_NEXT(p) __builtin_prefetch((p) + FD_W * V, 0, 3)

/* Row maxima of a block (lane i = row i; NaN-ignoring), the gathered tail columns in cols. */
static inline FD_V FI(fd_block_max)(const FD_TI *x, ptrdiff_t V, int nrows, ptrdiff_t q, int nt,
                                    FD_IDX idx, FD_V *rowv, FD_V *cols)
{
    FD_V mt = FN(fd_splat)(FD_NEG_INF);
    for (int j = 0; j < nt; j++) {
        cols[j] = FI(fd_gth)(x + q + j, idx, q + j);
        mt = FN(fd_max)(mt, cols[j]);
    }
    if (q == 0) return mt;
    for (int i = 0; i < FD_W; i++) {
        const FD_TI *p = FD_ROW(x, i);
        FD_V a = FI(fd_ld)(p);
        for (ptrdiff_t j = FD_W; j < q; j += FD_W) a = FN(fd_max)(a, FI(fd_ld)(p + j));
        rowv[i] = a;
    }
    return FN(fd_max)(FN(fd_tmax)(rowv), mt);
}

/* Shifts of a block's rows from their maxima: the max, or 0 when it is -inf or +inf. */
static inline FD_V FI(fd_block_shift)(FD_V mc)
{
    FD_M inf = FN(fd_eq)(FN(fd_abs)(mc), FN(fd_splat)(FD_POS_INF));
    return FN(fd_sel)(inf, (FD_V){0}, mc);
}

#if FD_AVX512
/* Vector finish of the block drivers (AVX-512 builds): log s = log(k + r) for W rows at once
   with log1p's precision (libm's log1p was a quarter of the time of a C51 row).  Lanes with
   special values (non-finite max, NaN, ...) are redone by the scalar finish. */
static inline FD_V FI(fd_vlog_kr)(FD_V k, FD_V r)
{
    /* k = 1 in every lane (no tie for a row's maximum: nearly always): log k = 0 and r / k = r,
       so log1p(r) alone, without a log and a division (the value of the general form; its
       last bit may differ where -fassociative-math folded the 0 + differently) */
    if (!(unsigned)FN(fd_ne)(k, FN(fd_splat)((FD_T)1))) return FN(fd_vlog1p)(r);
    return FN(fd_log)(k) + FN(fd_vlog1p)(r / k);
}
/* Writes a block's results when no lane needs the scalar finish and the block is whole (one
   vector store); else returns 0 and the caller finishes lane by lane. */
static inline int FI(fd_block_out)(FD_T *out, const FD_T *res, unsigned special, int nrows)
{
    if (special || nrows != FD_W) return 0;
    memcpy(out, res, FD_W * sizeof(FD_T));
    return 1;
}
static inline FD_M FI(fd_nonfinite)(FD_V v)
{
    return ~FN(fd_lt)(FN(fd_abs)(v), FN(fd_splat)((FD_T)INFINITY)); /* +-inf or NaN */
}
#endif

/* ------------------------------------------------------------------------------------------ */
/* lse                                                                                         */
/* ------------------------------------------------------------------------------------------ */
/* The same state for FD_W short rows (rows >= nrows alias row 0).  A row with max +inf gets
   r = NaN if it has a NaN, else +inf, as above. */
static inline void FI(fd_lse_state_block)(const FD_TI *x, ptrdiff_t V, int nrows, FD_T *m,
                                          FD_T *k, FD_T *r)
{
    const int kr = 1; /* each row holds its max (FD_ACC_S) */
    const ptrdiff_t q = V / FD_W * FD_W;
    const int nt = (int)(V - q);
    FD_V rowv[FD_W], cols[FD_W];
    FD_T sh[FD_W] __attribute__((aligned(64))), kq[FD_W] __attribute__((aligned(64)));
    const FD_V zero = {0};
    FD_V mc = FI(fd_block_max)(x, V, nrows, q, nt, FN(fd_block_idx)(V, nrows), rowv, cols);
    FD_V shv = FI(fd_block_shift)(mc);
    *(FD_V *)m = mc;
    *(FD_V *)sh = shv;
    FD_V rv = zero;
    *(FD_V *)kq = zero;
    if (q) {
        for (int i = 0; i < FD_W; i++) {
            const FD_TI *p = FD_ROW(x, i);
            const FD_V s = FN(fd_splat)(sh[i]);
            FD_V ar = {0};
            FD_CNT ak = {0};
            for (ptrdiff_t j = 0; j < q; j += FD_W) {
                FD_PREFETCH_NEXT(p + j);
                FD_V t = FI(fd_ld)(p + j) - s;
                FD_V e = FN(fd_expz)(t);
                FD_ACC_S(t, e, ak, ar, zero);
            }
            rowv[i] = ar;
            kq[i] = (FD_T)FN(fd_cnt_total)(ak);
        }
        rv = FN(fd_tsum)(rowv);
    }
    FD_V kv = *(FD_V *)kq;
    const FD_V one = FN(fd_splat)((FD_T)1);
    for (int j = 0; j < nt; j++) { /* tail columns, all rows at once */
        FD_V t = cols[j] - shv;
        FD_V e = FN(fd_expz)(t);
        FD_ACC_S_LANES(t, e, kv, rv);
    }
    *(FD_V *)r = rv;
    *(FD_V *)k = kv;
    for (int i = 0; i < FD_W; i++)
        if (m[i] == FD_POS_INF) r[i] = FI(fd_has_nan)(FD_ROW(x, i), V) ? (FD_T)NAN : FD_POS_INF;
}

static void FI(fd_lse_block)(const FD_TI *x, ptrdiff_t V, int nrows, FD_T *out)
{
    FD_T m[FD_W] __attribute__((aligned(64))), k[FD_W] __attribute__((aligned(64)));
    FD_T r[FD_W] __attribute__((aligned(64)));
    FI(fd_lse_state_block)(x, V, nrows, m, k, r);
#if FD_AVX512
    FD_T res[FD_W] __attribute__((aligned(64)));
    FD_V mv = *(FD_V *)m, rv = *(FD_V *)r;
    *(FD_V *)res = mv + FI(fd_vlog_kr)(*(FD_V *)k, rv);
    unsigned special = (unsigned)(FI(fd_nonfinite)(mv) | FN(fd_isnan)(rv));
    if (FI(fd_block_out)(out, res, special, nrows)) return;
    for (int i = 0; i < nrows; i++)
        out[i] = (special >> i) & 1 ? (FD_T)FI(fd_lse_finish)(m[i], k[i], r[i]) : res[i];
#else
    for (int i = 0; i < nrows; i++) out[i] = (FD_T)FI(fd_lse_finish)(m[i], k[i], r[i]);
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* entropy from logits                                                                         */
/* ------------------------------------------------------------------------------------------ */
static void FI(fd_entropy_logits_block)(const FD_TI *x, ptrdiff_t V, int nrows, FD_T *out)
{
    const int kr = 1; /* each row holds its max (FD_ACC_S) */
    const ptrdiff_t q = V / FD_W * FD_W;
    const int nt = (int)(V - q);
    FD_V rowv[FD_W], roww[FD_W], cols[FD_W];
    FD_T m[FD_W] __attribute__((aligned(64))), sh[FD_W] __attribute__((aligned(64)));
    FD_T r[FD_W] __attribute__((aligned(64))), w[FD_W] __attribute__((aligned(64)));
    FD_T k[FD_W] __attribute__((aligned(64)));
    const FD_V zero = {0};
    FD_V mc = FI(fd_block_max)(x, V, nrows, q, nt, FN(fd_block_idx)(V, nrows), rowv, cols);
    FD_V shv = FI(fd_block_shift)(mc);
    *(FD_V *)m = mc;
    *(FD_V *)sh = shv;
    FD_V rv = zero, wv = zero;
    *(FD_V *)k = zero;
    if (q) {
        for (int i = 0; i < FD_W; i++) {
            const FD_TI *p = FD_ROW(x, i);
            const FD_V s = FN(fd_splat)(sh[i]);
            FD_V ar = {0}, aw = {0}, tc;
            FD_CNT ak = {0};
            for (ptrdiff_t j = 0; j < q; j += FD_W) {
                FD_PREFETCH_NEXT(p + j);
                FD_V t = FI(fd_ld)(p + j) - s;
                FD_V e = FN(fd_expn)(t, &tc);
                FD_ACC_S(t, e, ak, ar, zero);
                aw += e * tc;
            }
            rowv[i] = ar;
            roww[i] = aw;
            k[i] = (FD_T)FN(fd_cnt_total)(ak);
        }
        rv = FN(fd_tsum)(rowv);
        wv = FN(fd_tsum)(roww);
    }
    FD_V kv = *(FD_V *)k;
    const FD_V one = FN(fd_splat)((FD_T)1);
    for (int j = 0; j < nt; j++) {
        FD_V tc, t = cols[j] - shv;
        FD_V e = FN(fd_expn)(t, &tc);
        FD_ACC_S_LANES(t, e, kv, rv);
        wv += e * tc;
    }
    *(FD_V *)r = rv;
    *(FD_V *)w = wv;
    *(FD_V *)k = kv;
#if FD_AVX512
    FD_T res[FD_W] __attribute__((aligned(64)));
    FD_V fm = *(FD_V *)m, fk = *(FD_V *)k, fr = *(FD_V *)r;
    *(FD_V *)res = FI(fd_vlog_kr)(fk, fr) - *(FD_V *)w / (fk + fr);
    unsigned special = (unsigned)(FI(fd_nonfinite)(fm) | FN(fd_isnan)(fr));
    if (FI(fd_block_out)(out, res, special, nrows)) return;
    for (int i = 0; i < nrows; i++)
        out[i] = (special >> i) & 1 ? (FD_T)FI(fd_entropy_finish)(m[i], k[i], r[i], w[i]) : res[i];
#else
    for (int i = 0; i < nrows; i++) out[i] = (FD_T)FI(fd_entropy_finish)(m[i], k[i], r[i], w[i]);
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* KL from logits                                                                              */
/* ------------------------------------------------------------------------------------------ */
static void FI(fd_kl_logits_block)(const FD_TI *x, const FD_TI *z, ptrdiff_t V, int nrows,
                                   FD_T *out)
{
    /* s = k + r per row and side, k the entries equal to the row's maximum (each row holds
       its own: FD_KL_STEP counts them apart), r the rest (see fd_log_kr) */
    const int kr = 1;
    const ptrdiff_t q = V / FD_W * FD_W;
    const int nt = (int)(V - q);
    const FD_IDX idx = FN(fd_block_idx)(V, nrows);
    FD_V rx[FD_W], rz[FD_W], rw[FD_W], rm[FD_W], cx[FD_W], cz[FD_W];
    FD_T mx[FD_W] __attribute__((aligned(64))), mz[FD_W] __attribute__((aligned(64)));
    FD_T shxs[FD_W] __attribute__((aligned(64))), shzs[FD_W] __attribute__((aligned(64)));
    FD_T sx[FD_W] __attribute__((aligned(64))), sz[FD_W] __attribute__((aligned(64)));
    FD_T kx[FD_W] __attribute__((aligned(64))), kz[FD_W] __attribute__((aligned(64)));
    FD_T w[FD_W] __attribute__((aligned(64))), mxz[FD_W] __attribute__((aligned(64)));
    const FD_V ninf = FN(fd_splat)(FD_NEG_INF), zero = {0};
    FD_V mcx = FI(fd_block_max)(x, V, nrows, q, nt, idx, rx, cx);
    FD_V mcz = FI(fd_block_max)(z, V, nrows, q, nt, idx, rz, cz);
    FD_V shxv = FI(fd_block_shift)(mcx), shzv = FI(fd_block_shift)(mcz);
    *(FD_V *)mx = mcx;
    *(FD_V *)mz = mcz;
    *(FD_V *)shxs = shxv;
    *(FD_V *)shzs = shzv;
    *(FD_V *)kx = zero;
    *(FD_V *)kz = zero;
    FD_V sxv = {0}, szv = {0}, wv = {0}, mxzv = ninf;
    if (q) {
        for (int i = 0; i < FD_W; i++) {
            const FD_TI *px = FD_ROW(x, i), *pz = FD_ROW(z, i);
            const FD_V shx = FN(fd_splat)(shxs[i]), shz = FN(fd_splat)(shzs[i]);
            FD_V asx = {0}, asz = {0}, aw = {0}, amxz = ninf, tcx;
            FD_CNT akx = {0}, akz = {0};
            for (ptrdiff_t j = 0; j < q; j += FD_W) {
                FD_PREFETCH_NEXT(px + j);
                FD_PREFETCH_NEXT(pz + j);
                FD_V xv = FI(fd_ld)(px + j), zv = FI(fd_ld)(pz + j);
                FD_KL_STEP(xv, zv);
            }
            rx[i] = asx;
            rz[i] = asz;
            rw[i] = aw;
            rm[i] = amxz;
            kx[i] = (FD_T)FN(fd_cnt_total)(akx);
            kz[i] = (FD_T)FN(fd_cnt_total)(akz);
        }
        sxv = FN(fd_tsum)(rx);
        szv = FN(fd_tsum)(rz);
        wv = FN(fd_tsum)(rw);
        mxzv = FN(fd_tmax)(rm);
    }
    {
        /* tail columns on row-lane vectors with the per-lane shifts, the entries equal to
           their row's maximum counted per lane */
        const FD_V shx = shxv, shz = shzv, one = FN(fd_splat)((FD_T)1);
        FD_V asx = sxv, asz = szv, aw = wv, amxz = mxzv, tcx, akx = *(FD_V *)kx, akz = *(FD_V *)kz;
        for (int j = 0; j < nt; j++)
            FD_KL_STEP_WITH(cx[j], cz[j], FD_ACC_S_LANES);
        *(FD_V *)sx = asx;
        *(FD_V *)sz = asz;
        *(FD_V *)kx = akx;
        *(FD_V *)kz = akz;
        *(FD_V *)w = aw;
        *(FD_V *)mxz = amxz;
    }
#if FD_AVX512
    FD_T res[FD_W] __attribute__((aligned(64)));
    FD_V fkx = *(FD_V *)kx, fkz = *(FD_V *)kz, frx = *(FD_V *)sx, frz = *(FD_V *)sz;
    FD_V wsx = *(FD_V *)w / (fkx + frx), lsx = FI(fd_vlog_kr)(fkx, frx), lsz = FI(fd_vlog_kr)(fkz, frz);
    *(FD_V *)res = wsx - lsx + lsz;
    unsigned special = (unsigned)(FI(fd_nonfinite)(*(FD_V *)mx) | FI(fd_nonfinite)(*(FD_V *)mz) |
                                  FN(fd_isnan)(frx) | FN(fd_isnan)(frz) |
                                  FN(fd_gt)(*(FD_V *)mxz, ninf));
    { /* a KL too small for the one pass (FD_KL_EXACT_BELOW, FD_KL32_NEAR_BELOW) */
        const FD_V one = FN(fd_splat)((FD_T)1);
        FD_V scale = one + FN(fd_abs)(wsx) + (FD_T)2 * (FN(fd_abs)(lsx) + FN(fd_abs)(lsz));
        const FD_T below = sizeof(FD_T) == 8 ? (FD_T)FD_KL_EXACT_BELOW : (FD_T)FD_KL32_NEAR_BELOW;
        special |= (unsigned)FN(fd_lt)(*(FD_V *)res, below * scale);
    }
    if (FI(fd_block_out)(out, res, special, nrows)) return;
    for (int i = 0; i < nrows; i++)
        out[i] = (special >> i) & 1
                     ? (FD_T)FI(fd_kl_finish)(mx[i], mz[i], (double)kx[i] + sx[i], (double)kz[i] + sz[i], w[i],
                                              mxz[i], 0.0, FD_ROW(x, i), FD_ROW(z, i), V)
                     : res[i];
#else
    for (int i = 0; i < nrows; i++)
        out[i] = (FD_T)FI(fd_kl_finish)(mx[i], mz[i], (double)kx[i] + sx[i], (double)kz[i] + sz[i], w[i], mxz[i],
                                        0.0, FD_ROW(x, i), FD_ROW(z, i), V);
#endif
}

/* ------------------------------------------------------------------------------------------ */
/* hard-label cross-entropy                                                                    */
/* ------------------------------------------------------------------------------------------ */
static void FI(fd_ce_hard_block)(const FD_TI *x, ptrdiff_t V, int nrows, const int64_t *target,
                                 int64_t ignore_index, const FD_T *weight, double eps,
                                 FD_T *out)
{
    const int kr = 1; /* each row holds its max (FD_ACC_S) */
    FD_T m[FD_W] __attribute__((aligned(64))), k[FD_W] __attribute__((aligned(64)));
    FD_T r[FD_W] __attribute__((aligned(64))), u[FD_W] __attribute__((aligned(64)));
    double W = 0.0;
    if (!(eps > 0.0)) {
        FI(fd_lse_state_block)(x, V, nrows, m, k, r);
    } else {
        const ptrdiff_t q = V / FD_W * FD_W;
        const int nt = (int)(V - q);
        FD_V rowv[FD_W], rowu[FD_W], cols[FD_W], aWs = {0};
        FD_T sh[FD_W] __attribute__((aligned(64)));
        const FD_V zero = {0};
        ptrdiff_t j = 0;
        for (; j + FD_W <= V; j += FD_W) aWs += FN(fd_load)(weight + j);
        if (j < V) aWs += FN(fd_load_tail)(weight + j, V - j, (FD_T)0);
        W = FN(fd_hsum)(aWs);
        FD_V mc = FI(fd_block_max)(x, V, nrows, q, nt, FN(fd_block_idx)(V, nrows), rowv, cols);
        FD_V shv = FI(fd_block_shift)(mc);
        *(FD_V *)m = mc;
        *(FD_V *)sh = shv;
        FD_V rv = zero, uv = zero;
        *(FD_V *)k = zero;
        if (q) {
            for (int i = 0; i < FD_W; i++) {
                const FD_TI *p = FD_ROW(x, i);
                const FD_V s = FN(fd_splat)(sh[i]);
                FD_V ar = {0}, au = {0}, unused = {0};
                FD_CNT ak = {0};
                for (j = 0; j < q; j += FD_W) {
                    FD_PREFETCH_NEXT(p + j);
                    FD_V tv = FI(fd_ld)(p + j) - s, wv = FN(fd_load)(weight + j);
                    FD_CE_STEP(tv, wv, unused);
                }
                (void)unused;
                rowv[i] = ar;
                rowu[i] = au;
                k[i] = (FD_T)FN(fd_cnt_total)(ak);
            }
            rv = FN(fd_tsum)(rowv);
            uv = FN(fd_tsum)(rowu);
        }
        FD_V kv = *(FD_V *)k;
        const FD_V one = FN(fd_splat)((FD_T)1);
        for (int c = 0; c < nt; c++) {
            FD_V t = cols[c] - shv, wc = FN(fd_splat)(weight[q + c]);
            FD_V e = FN(fd_expz)(t);
            FD_ACC_S_LANES(t, e, kv, rv);
            uv = FN(fd_add_unless)(uv, FN(fd_eq)(wc, zero), wc * -t);
        }
        *(FD_V *)r = rv;
        *(FD_V *)u = uv;
        *(FD_V *)k = kv;
    }
#if FD_AVX512
    FD_T res[FD_W] __attribute__((aligned(64)));
    FD_V xtv, wtv;
    unsigned valid;
    FI(fd_tgather)(x, weight, target, nrows, V, ignore_index, &xtv, &wtv, &valid);
    unsigned special = ~valid;
    FD_V mv = *(FD_V *)m, rv = *(FD_V *)r;
    FD_V L = FI(fd_vlog_kr)(*(FD_V *)k, rv);
    FD_V loss = wtv * (FD_VBARRIER(mv - xtv) + L) * (FD_T)(1.0 - eps);
    if (eps > 0.0) loss += (FD_T)(eps / (double)V) * (*(FD_V *)u + (FD_T)W * L);
    *(FD_V *)res = loss;
    special |= (unsigned)(FI(fd_nonfinite)(mv) | FN(fd_isnan)(rv) |
                          FN(fd_eq)(xtv, FN(fd_splat)(FD_NEG_INF)) |
                          FN(fd_eq)(wtv, (FD_V){0}));
    if (FI(fd_block_out)(out, res, special, nrows)) return;
    for (int i = 0; i < nrows; i++) {
        if (!((special >> i) & 1)) {
            out[i] = res[i];
            continue;
        }
#else
    for (int i = 0; i < nrows; i++) {
#endif
        int64_t t = target[i];
        if (t == ignore_index)
            out[i] = 0;
        else if (t < 0 || t >= V)
            out[i] = (FD_T)NAN;
        else
            out[i] = (FD_T)FI(fd_ce_hard_finish)(m[i], k[i], r[i], FI(fd_at)(x, i * V + t), weight[t], eps,
                                                 eps > 0.0 ? u[i] : 0.0, W, V);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* soft-target cross-entropy                                                                   */
/* ------------------------------------------------------------------------------------------ */
static void FI(fd_ce_soft_block)(const FD_TI *x, const FD_TI *p, const FD_T *w_, ptrdiff_t V,
                                 int nrows, double alpha_, double beta_, FD_T *out)
{
    const int kr = 1; /* each row holds its max (FD_ACC_S) */
    const FD_T alpha = (FD_T)alpha_, beta = (FD_T)beta_;
    const ptrdiff_t q = V / FD_W * FD_W;
    const int nt = (int)(V - q);
    const FD_IDX idx = FN(fd_block_idx)(V, nrows);
    FD_V rowv[FD_W], rowu[FD_W], rowc[FD_W], cols[FD_W];
    FD_T m[FD_W] __attribute__((aligned(64))), sh[FD_W] __attribute__((aligned(64)));
    FD_T r[FD_W] __attribute__((aligned(64))), u[FD_W] __attribute__((aligned(64)));
    FD_T C[FD_W] __attribute__((aligned(64))), k[FD_W] __attribute__((aligned(64)));
    const FD_V zero = {0};
    FD_V mc = FI(fd_block_max)(x, V, nrows, q, nt, idx, rowv, cols);
    FD_V shv = FI(fd_block_shift)(mc);
    *(FD_V *)m = mc;
    *(FD_V *)sh = shv;
    FD_V rv = zero, uv = zero, Cv = zero;
    *(FD_V *)k = zero;
    if (q) {
        for (int i = 0; i < FD_W; i++) {
            const FD_TI *px = FD_ROW(x, i), *pp = FD_ROW(p, i);
            const FD_V s = FN(fd_splat)(sh[i]);
            FD_V ar = {0}, au = {0}, aC = {0};
            FD_CNT ak = {0};
            for (ptrdiff_t j = 0; j < q; j += FD_W) {
                FD_PREFETCH_NEXT(px + j);
                FD_PREFETCH_NEXT(pp + j);
                FD_V tv = FI(fd_ld)(px + j) - s, pv = FI(fd_ld)(pp + j);
                FD_V wv = FN(fd_load)(w_ + j);
                FD_CES_STEP(tv, pv, wv);
            }
            rowv[i] = ar;
            rowu[i] = au;
            rowc[i] = aC;
            k[i] = (FD_T)FN(fd_cnt_total)(ak);
        }
        rv = FN(fd_tsum)(rowv);
        uv = FN(fd_tsum)(rowu);
        Cv = FN(fd_tsum)(rowc);
    }
    FD_V kv = *(FD_V *)k;
    const FD_V one = FN(fd_splat)((FD_T)1);
    for (int j = 0; j < nt; j++) {
        FD_V t = cols[j] - shv, pv = FI(fd_gth)(p + q + j, idx, q + j);
        FD_V c = FN(fd_splat)(w_[q + j]) * (alpha * pv + beta);
        FD_V e = FN(fd_expz)(t);
        FD_ACC_S_LANES(t, e, kv, rv);
        uv = FN(fd_add_unless)(uv, FN(fd_eq)(c, zero), c * -t);
        Cv += c;
    }
    *(FD_V *)r = rv;
    *(FD_V *)u = uv;
    *(FD_V *)C = Cv;
    *(FD_V *)k = kv;
#if FD_AVX512
    FD_T res[FD_W] __attribute__((aligned(64)));
    FD_V fm = *(FD_V *)m, fr = *(FD_V *)r;
    *(FD_V *)res = *(FD_V *)u + *(FD_V *)C * FI(fd_vlog_kr)(*(FD_V *)k, fr);
    unsigned special = (unsigned)(FI(fd_nonfinite)(fm) | FN(fd_isnan)(fr));
    if (FI(fd_block_out)(out, res, special, nrows)) return;
    for (int i = 0; i < nrows; i++)
        out[i] = (special >> i) & 1 ? (FD_T)FI(fd_ce_soft_finish)(m[i], k[i], r[i], u[i], C[i])
                                    : res[i];
#else
    for (int i = 0; i < nrows; i++) out[i] = (FD_T)FI(fd_ce_soft_finish)(m[i], k[i], r[i], u[i], C[i]);
#endif
}

#undef FD_ROW
#undef FD_PREFETCH_NEXT

#pragma GCC diagnostic pop
