/* Per-row kernels: a template instantiated by _inst.h once per input format (its parameters:
 * FD_T, FD_TI, FD_V, FD_M, FD_W, FN, FI, FD_HALF, ...).  Inputs (FD_TI) are read only through
 * the FI(fd_ld / fd_ldt / fd_gth / fd_at) functions of _simd.h and FI(fd_chunk); weights and
 * results are in the working precision FD_T.
 * No include guard on purpose.
 *
 * Semantics are those of fastdiv/reference.py; comments say which case each select or branch
 * implements.  Every kernel reads its row(s) once from memory.
 *
 * Two drivers compute the same per-row state, which one scalar "finish" function per kernel
 * turns into the result (in double):
 *
 * - long rows (V > FD_BLOCK_V, one chunk): fd_<op>(row pointers, V), one row at a time, in
 *   chunks of FD_CHUNK_BYTES:
 *     1. chunk max mc (NaN-ignoring; NaN is detected through s, see below);
 *     2. if mc > m: rescale the sums by exp(m - mc), a scalar per chunk; m = mc;
 *     3. accumulate s = sum exp(x - m) and the weighted sums over the chunk in vector lanes of
 *        the working precision (a float32 sum split over 16 lanes is 10-100x more accurate
 *        than a sequential one), then add the chunk totals to doubles.
 *   While the chunk is exponentiated, the next one is prefetched (FD_PREFETCH), so that DRAM
 *   traffic overlaps the arithmetic.
 * - short rows (V <= FD_BLOCK_V, e.g. C51's 51 atoms): fd_<op>_block(x, V, nrows, ..., out),
 *   FD_W rows at a time.  A short row alone is a long dependency chain (max, reduce,
 *   exponentiate, reduce, log) that out-of-order execution cannot overlap across rows; the
 *   block driver does each step for FD_W rows, and replaces the per-row horizontal
 *   reductions by transpose-reductions (one vector holding the W rows' results).  Each lane
 *   depends on its own row only: results do not depend on the batch or the thread count
 *   (rows past the end of a partial block alias row 0 and are discarded).
 *
 * Invariants that make the edge cases fall out without per-element branches:
 *   - the shift is m, or 0 while m = -inf (every entry so far masked), so exp(-inf - -inf) is
 *     never formed and masked entries add exp(-inf) = 0;
 *   - s is NaN iff the row contains NaN: exp(NaN - m) = NaN enters s, the rescale factor is
 *     finite, and no finite input can make s NaN (all its terms are in [0, 1]);
 *   - m = +inf: every softmax quantity of the row is NaN (only lse looks for a NaN in the rest
 *     of the row, to choose between +inf and NaN).
 *
 * s is kept as k + r (see fd_log_kr): k counts the entries equal to the shift (exp(0) = 1
 * exactly), r sums the other exponentials; when m grows: (k, r) -> (0, (k + r) exp(m - mc)).
 */

/* The gathered tail columns (cols[j], j < nt) are only read for j < nt; gcc cannot see it. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

/* ========================================================================================== */
/* shared pieces                                                                               */
/* ========================================================================================== */

/* A chunk x[0..n) (n <= FD_CH) of a long row, read from memory once: its NaN-ignoring max
   *mc (-inf when every entry is -inf or NaN), and the chunk as working-precision values for
   the passes that follow (from L1).  Native inputs: x itself.  16-bit inputs: widened into
   buf (FD_CH elements, see FD_CHUNK_BUF) on the way, so that the compute-bound passes over
   the chunk read float32 and convert nothing; buf's lanes past n hold -inf and are never
   read.  The max is exact, so it is the float32 kernel's on the upcast chunk. */
static inline const FD_T *FI(fd_chunk)(const FD_TI *x, ptrdiff_t n, FD_T *buf, FD_T *mc)
{
    FD_V a0 = FN(fd_splat)(FD_NEG_INF), a1 = a0;
    ptrdiff_t j = 0;
#if FD_HALF
    for (; j + 2 * FD_W <= n; j += 2 * FD_W) {
        FD_V v0 = FI(fd_ld)(x + j), v1 = FI(fd_ld)(x + j + FD_W);
        *(FD_V *)(buf + j) = v0;
        *(FD_V *)(buf + j + FD_W) = v1;
        a0 = FN(fd_max)(a0, v0);
        a1 = FN(fd_max)(a1, v1);
    }
    for (; j + FD_W <= n; j += FD_W) {
        FD_V v = FI(fd_ld)(x + j);
        *(FD_V *)(buf + j) = v;
        a0 = FN(fd_max)(a0, v);
    }
    if (j < n) {
        FD_V v = FI(fd_ldt)(x + j, n - j, FD_NEG_INF);
        *(FD_V *)(buf + j) = v;
        a0 = FN(fd_max)(a0, v);
    }
    *mc = FN(fd_hmax)(FN(fd_max)(a0, a1));
    return buf;
#else
    (void)buf;
    for (; j + 2 * FD_W <= n; j += 2 * FD_W) {
        a0 = FN(fd_max)(a0, FN(fd_load)(x + j));
        a1 = FN(fd_max)(a1, FN(fd_load)(x + j + FD_W));
    }
    for (; j + FD_W <= n; j += FD_W) a0 = FN(fd_max)(a0, FN(fd_load)(x + j));
    if (j < n) a0 = FN(fd_max)(a0, FN(fd_load_tail)(x + j, n - j, FD_NEG_INF));
    *mc = FN(fd_hmax)(FN(fd_max)(a0, a1));
    return x;
#endif
}

/* The same for two arrays at once (one pass over both rows of a chunk). */
static inline void FI(fd_chunk2)(const FD_TI *x, const FD_TI *z, ptrdiff_t n, FD_T *bx,
                                 FD_T *bz, FD_T *mx, FD_T *mz, const FD_T **xc,
                                 const FD_T **zc)
{
    FD_V a = FN(fd_splat)(FD_NEG_INF), b = a;
    ptrdiff_t j = 0;
#if FD_HALF
    for (; j + FD_W <= n; j += FD_W) {
        FD_V u = FI(fd_ld)(x + j), v = FI(fd_ld)(z + j);
        *(FD_V *)(bx + j) = u;
        *(FD_V *)(bz + j) = v;
        a = FN(fd_max)(a, u);
        b = FN(fd_max)(b, v);
    }
    if (j < n) {
        FD_V u = FI(fd_ldt)(x + j, n - j, FD_NEG_INF), v = FI(fd_ldt)(z + j, n - j, FD_NEG_INF);
        *(FD_V *)(bx + j) = u;
        *(FD_V *)(bz + j) = v;
        a = FN(fd_max)(a, u);
        b = FN(fd_max)(b, v);
    }
    *xc = bx;
    *zc = bz;
#else
    (void)bx;
    (void)bz;
    for (; j + FD_W <= n; j += FD_W) {
        a = FN(fd_max)(a, FN(fd_load)(x + j));
        b = FN(fd_max)(b, FN(fd_load)(z + j));
    }
    if (j < n) {
        a = FN(fd_max)(a, FN(fd_load_tail)(x + j, n - j, FD_NEG_INF));
        b = FN(fd_max)(b, FN(fd_load_tail)(z + j, n - j, FD_NEG_INF));
    }
    *xc = x;
    *zc = z;
#endif
    *mx = FN(fd_hmax)(a);
    *mz = FN(fd_hmax)(b);
}

/* Rare path (rows containing +inf): does x[0..n) contain a NaN? */
static int FI(fd_has_nan)(const FD_TI *x, ptrdiff_t n)
{
    for (ptrdiff_t j = 0; j < n; j++) {
        FD_T v = FI(fd_at)(x, j);
        if (v != v) return 1;
    }
    return 0;
}

static inline FD_T FI(fd_shift)(FD_T m) { return m == FD_NEG_INF ? (FD_T)0 : m; }

/* Rescale factor exp(m - mc) for mc > m; 0 when m = -inf (without a libm call). */
static inline double FI(fd_rescale)(FD_T m, FD_T mc)
{
    return m == FD_NEG_INF ? 0.0 : exp((double)m - (double)mc);
}

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
    return FN(fd_log)(k) + FN(fd_vlog1p)(r / k);
}
static inline FD_M FI(fd_nonfinite)(FD_V v)
{
    return ~FN(fd_lt)(FN(fd_abs)(v), FN(fd_splat)((FD_T)INFINITY)); /* +-inf or NaN */
}
#endif

/* One vector of the s accumulation: t = x - shift <= 0.  x == shift: e == 1 exactly, counted
   apart in the counter ak (see fd_cnt_add).  `kr` (loop-invariant, in scope): whether the
   segment can hold the shift at all.  A long row's chunk whose max is below the running max
   (most chunks of a row) has no such entry: every lane is "rest", so the masked add is a
   plain add and the count does not change -- the plain add gives the same bits, with two
   vector instructions less per vector (the compare and the mask move). */
#define FD_ACC_S(t, e, ak, ar, zero)                                                          \
    do {                                                                                      \
        if (kr) {                                                                             \
            FD_M rest_ = FN(fd_ne)((t), (zero)); /* true for NaN: a NaN e enters ar */         \
            (ar) = FN(fd_add_where)((ar), rest_, (e));                                        \
            (ak) = FN(fd_cnt_add)((ak), rest_);                                               \
        } else {                                                                              \
            (ar) += (e);                                                                      \
        }                                                                                     \
    } while (0)

/* ========================================================================================== */
/* lse                                                                                         */
/* ========================================================================================== */

/* The (m, k, r) state of a long row.  When m = +inf: r = NaN if the row has a NaN (only looked
   for when scan_nan), else r = +inf. */
static inline void FI(fd_lse_state)(const FD_TI *x, ptrdiff_t V, int scan_nan, FD_T *m_out,
                                    double *k_out, double *r_out)
{
    FD_T m = FD_NEG_INF;
    double k = 0.0, r = 0.0;
    const FD_V zero = {0};
    FD_CHUNK_BUF(xbuf);
    for (ptrdiff_t j0 = 0; j0 < V; j0 += FD_CH) {
        const FD_TI *xs = x + j0;
        ptrdiff_t n = V - j0 < FD_CH ? V - j0 : FD_CH;
        FD_T mc;
        const FD_T *xc = FI(fd_chunk)(xs, n, xbuf, &mc);
        if (mc > m) {
            r = (r + k) * FI(fd_rescale)(m, mc); /* a NaN in r survives the * 0 */
            k = 0.0;
            m = mc;
            if (m == FD_POS_INF) {
                int nan = isnan(r) || (scan_nan && FI(fd_has_nan)(xs, V - j0));
                *m_out = m;
                *k_out = 0.0;
                *r_out = nan ? NAN : INFINITY;
                return;
            }
        }
        const FD_V sh = FN(fd_splat)(FI(fd_shift)(m));
        const int kr = mc == m;
        FD_V ar = {0};
        FD_CNT ak = {0};
        ptrdiff_t j = 0;
        for (; j + FD_W <= n; j += FD_W) {
            FD_PFI_1(xs + j);
            FD_V t = FN(fd_load)(xc + j) - sh;
            FD_V e = FN(fd_expz)(t);
            FD_ACC_S(t, e, ak, ar, zero);
        }
        if (j < n) {
            FD_V t = FN(fd_load_tail)(xc + j, n - j, FD_NEG_INF) - sh;
            FD_V e = FN(fd_expz)(t);
            FD_ACC_S(t, e, ak, ar, zero);
        }
        r += FN(fd_hsum)(ar);
        k += FN(fd_cnt_total)(ak);
    }
    *m_out = m;
    *k_out = k;
    *r_out = r;
}

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
        FD_M top = FN(fd_eq)(t, zero);
        rv = FN(fd_add_unless)(rv, top, e);
        kv = FN(fd_add_where)(kv, top, one);
    }
    *(FD_V *)r = rv;
    *(FD_V *)k = kv;
    for (int i = 0; i < FD_W; i++)
        if (m[i] == FD_POS_INF) r[i] = FI(fd_has_nan)(FD_ROW(x, i), V) ? (FD_T)NAN : FD_POS_INF;
}

static inline double FI(fd_lse_finish)(FD_T m, double k, double r)
{
    if (isnan(r)) return NAN;              /* NaN anywhere in the row */
    if (m == FD_POS_INF) return INFINITY;
    if (m == FD_NEG_INF) return -INFINITY; /* every class masked */
    return (double)m + fd_log_kr(k, r);
}

static double FI(fd_lse)(const FD_TI *x, ptrdiff_t V)
{
    FD_T m;
    double k, r;
    FI(fd_lse_state)(x, V, 1, &m, &k, &r);
    return FI(fd_lse_finish)(m, k, r);
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
    for (int i = 0; i < nrows; i++)
        out[i] = (special >> i) & 1 ? (FD_T)FI(fd_lse_finish)(m[i], k[i], r[i]) : res[i];
#else
    for (int i = 0; i < nrows; i++) out[i] = (FD_T)FI(fd_lse_finish)(m[i], k[i], r[i]);
#endif
}

/* ========================================================================================== */
/* entropy from logits: H = log s - w/s, w = sum e_j d_j, e_j = exp(d_j), d_j = x_j - m <= 0. */
/* Both terms are >= 0: no cancellation.  When m grows by -delta: w -> c (w + delta s).        */
/* ========================================================================================== */
static inline double FI(fd_entropy_finish)(FD_T m, double k, double r, double w)
{
    if (isnan(r) || m == FD_POS_INF) return NAN; /* NaN in the row / softmax undefined */
    if (m == FD_NEG_INF) return 0.0;             /* empty support */
    return fd_log_kr(k, r) - w / (k + r);
}

static double FI(fd_entropy_logits)(const FD_TI *x, ptrdiff_t V)
{
    FD_T m = FD_NEG_INF;
    double k = 0.0, r = 0.0, w = 0.0;
    const FD_V zero = {0};
    FD_CHUNK_BUF(xbuf);
    for (ptrdiff_t j0 = 0; j0 < V; j0 += FD_CH) {
        const FD_TI *xs = x + j0;
        ptrdiff_t n = V - j0 < FD_CH ? V - j0 : FD_CH;
        FD_T mc;
        const FD_T *xc = FI(fd_chunk)(xs, n, xbuf, &mc);
        if (mc > m) {
            if (mc == FD_POS_INF) return NAN; /* softmax undefined (inf/inf) */
            if (m == FD_NEG_INF) {
                r *= 0.0; /* keeps a NaN */
            } else {
                double delta = (double)m - (double)mc, c = exp(delta);
                w = c * (w + delta * (k + r));
                r = (r + k) * c;
                k = 0.0;
            }
            m = mc;
        }
        const FD_V sh = FN(fd_splat)(FI(fd_shift)(m));
        const int kr = mc == m;
        FD_V ar = {0}, aw = {0}, tc;
        FD_CNT ak = {0};
        ptrdiff_t j = 0;
        for (; j + FD_W <= n; j += FD_W) {
            FD_PFI_1(xs + j);
            FD_V t = FN(fd_load)(xc + j) - sh;
            FD_V e = FN(fd_expn)(t, &tc);
            FD_ACC_S(t, e, ak, ar, zero);
            aw += e * tc; /* tc = max(t, LO): a masked class gives 0 * LO = 0 */
        }
        if (j < n) {
            FD_V t = FN(fd_load_tail)(xc + j, n - j, FD_NEG_INF) - sh;
            FD_V e = FN(fd_expn)(t, &tc);
            FD_ACC_S(t, e, ak, ar, zero);
            aw += e * tc;
        }
        r += FN(fd_hsum)(ar);
        k += FN(fd_cnt_total)(ak);
        w += FN(fd_hsum)(aw);
    }
    return FI(fd_entropy_finish)(m, k, r, w);
}

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
        FD_M top = FN(fd_eq)(t, zero);
        rv = FN(fd_add_unless)(rv, top, e);
        kv = FN(fd_add_where)(kv, top, one);
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
    for (int i = 0; i < nrows; i++)
        out[i] = (special >> i) & 1 ? (FD_T)FI(fd_entropy_finish)(m[i], k[i], r[i], w[i]) : res[i];
#else
    for (int i = 0; i < nrows; i++) out[i] = (FD_T)FI(fd_entropy_finish)(m[i], k[i], r[i], w[i]);
#endif
}

/* ========================================================================================== */
/* KL from logits: P = softmax(x), Q = softmax(z), one pass over both rows.                    */
/*   w = sum_j e_j ((x_j - mx) - (z_j - mz)), e_j = exp(x_j - mx);                             */
/*   D = w/sx - log sx + log sz.                                                                */
/* Terms with z_j = -inf are kept out of w; instead mxz = max of x_j over them: any finite      */
/* x_j there has positive probability (even if exp() underflows), so D = +inf (reference.py).  */
/* ========================================================================================== */
/* float64 rows whose KL is too small for the one pass (see FD_KL_EXACT_BELOW): D recomputed
   from the rows (exact maxima mx, mz) without cancellation, in one more pass from cache.
   With a_j = (x_j - z_j) - (mx - mz) = log p_j - log q_j + c (both differences carried exactly
   by TwoSum), b_j = a_j - k (k: the one-pass estimate of c = log(sx / sz)) and
   nu = E_q[expm1(b)]:  D = (E_q[phi(b)] - psi(nu)) / (1 + nu),  phi(b) = b e^b - e^b + 1 >= 0,
   psi(nu) = (1 + nu) log1p(nu) - nu ~ nu^2 / 2.  E_q[phi(b)] sums terms >= 0 (the terms
   q (r log r - r + 1), r = p / q, of D), so D keeps its relative precision; q_j e^b_j is formed
   as exp((x_j - mx) - k).  E_q[phi] and psi share ~nu^2 / 2, nu ~ k - c ~ 1e-16: a D below
   ~1e-33 gets a second pass from k + log1p(nu) = c. */
static double FI(fd_kl_exact)(const FD_TI *x, const FD_TI *z, ptrdiff_t V, double mx, double mz,
                              double k)
{
    double dme, dm = fd_two_diff(mx, mz, &dme), d = 0.0;
    for (int it = 0; it < 2; it++) {
        double s = 0.0, nu = 0.0, phi = 0.0;
        for (ptrdiff_t j = 0; j < V; j++) {
            double xj = (double)FI(fd_at)(x, j), zj = (double)FI(fd_at)(z, j);
            if (zj == -INFINITY) continue; /* q_j = 0 (then p_j = 0 too, or D is +inf) */
            double ez = exp(zj - mz);
            s += ez;
            if (xj == -INFINITY) { /* p_j = 0: phi(-inf) = 1, expm1(-inf) = -1 */
                nu -= ez;
                phi += ez;
                continue;
            }
            double d1e, d1 = fd_two_diff(xj, zj, &d1e);
            double a = FD_VBARRIER(d1 - dm) + FD_VBARRIER(d1e - dme);
            double b = FD_VBARRIER(a - k);
            if (fabs(b) < 1.0) {
                double e1, ph;
                fd_expm1_phi(b, &e1, &ph);
                nu += ez * e1;
                phi += ez * ph;
            } else {
                double qe = exp(FD_VBARRIER(xj - mx) - k);
                nu += qe - ez;
                /* b = -inf (x_j - z_j - (mx - mz) past the float range): p_j / q_j = 0 and
                   the term q (r log r - r + 1) is q, where qe (b - 1) = 0 * -inf is NaN. */
                phi += b > -INFINITY ? qe * (b - 1.0) + ez : ez;
            }
        }
        nu /= s;
        phi /= s;
        double psi = fabs(nu) < 1e-5 ? nu * nu * (0.5 - nu / 6.0 + nu * nu / 12.0)
                                     : (1.0 + nu) * log1p(nu) - nu;
        d = (phi - psi) / (1.0 + nu);
        if (!(psi > 1e-3 * d)) break;
        k += log1p(nu);
    }
    return d;
}

/* moved: how far the references rose while sums were carried (the rescales' error) */
static inline double FI(fd_kl_finish)(FD_T mx, FD_T mz, double sx, double sz, double w, FD_T mxz,
                                      double moved, const FD_TI *x, const FD_TI *z, ptrdiff_t V)
{
    if (isnan(sx) || isnan(sz)) return NAN;               /* NaN in either row */
    if (mx == FD_POS_INF || mz == FD_POS_INF) return NAN; /* softmax undefined */
    if (mx == FD_NEG_INF) return 0.0;                     /* P has empty support */
    if (mxz != FD_NEG_INF) return INFINITY; /* some p_j > 0 where q_j = 0 (covers Q all masked) */
    double wsx = w / sx, lsx = log(sx), lsz = log(sz), d = wsx - lsx + lsz;
    if (sizeof(FD_T) == 8 && d < FD_KL_EXACT_BELOW * fd_kl_scale(wsx, lsx, lsz, moved))
        return FI(fd_kl_exact)(x, z, V, (double)mx, (double)mz, lsx - lsz);
    return d;
}

/* The KL accumulation over one segment [0, n) of both rows (shifts shx, shz). */
#define FD_KL_STEP(xv, zv)                                                                    \
    do {                                                                                      \
        /* fenced: else -fassociative-math turns tcx - (z - shz) into (tcx + shz) - z,      \
           which loses all the digits of d when z ~ 1e4 (a KL of 1e-6 came out -9e-5) */    \
        FD_V dz_ = FD_VBARRIER((zv) - shz);                                                   \
        FD_V ex_ = FN(fd_expn)((xv) - shx, &tcx);                                             \
        FD_V ez_ = FN(fd_expz)(dz_); /* same bits as fd_expn, without the clamp */         \
        asx += ex_;                                                                           \
        asz += ez_;                                                                           \
        FD_M zmask_ = FN(fd_eq)((zv), ninf);                                                  \
        /* x masked: ex = 0, tcx = LO, term 0 * finite = 0.  z masked: excluded (see mxz). */ \
        aw = FN(fd_add_unless)(aw, zmask_, ex_ * (tcx - dz_));                                \
        amxz = FN(fd_max_where)(amxz, zmask_, (xv));                                          \
    } while (0)

static double FI(fd_kl_logits)(const FD_TI *x, const FD_TI *z, ptrdiff_t V)
{
    FD_T mx = FD_NEG_INF, mz = FD_NEG_INF;
    double sx = 0.0, sz = 0.0, w = 0.0, moved = 0.0;
    const FD_V ninf = FN(fd_splat)(FD_NEG_INF);
    FD_V amxz = ninf;
    FD_CHUNK_BUF(xbuf);
    FD_CHUNK_BUF(zbuf);
    for (ptrdiff_t j0 = 0; j0 < V; j0 += FD_CH) {
        const FD_TI *xs = x + j0, *zs = z + j0;
        ptrdiff_t n = V - j0 < FD_CH ? V - j0 : FD_CH;
        FD_T mcx, mcz;
        const FD_T *xc, *zc;
        FI(fd_chunk2)(xs, zs, n, xbuf, zbuf, &mcx, &mcz, &xc, &zc);
        if (mcx == FD_POS_INF || mcz == FD_POS_INF) return NAN; /* softmax undefined */
        if (mcx > mx) {
            if (mx == FD_NEG_INF) {
                sx *= 0.0;
                w *= 0.0;
            } else {
                double delta = (double)mx - (double)mcx, c = exp(delta);
                w = c * (w + delta * sx);
                sx *= c;
                moved -= delta;
            }
            mx = mcx;
        }
        if (mcz > mz) {
            if (mz == FD_NEG_INF) {
                /* every z so far was -inf: those terms are not in w, nothing to shift */
                sz *= 0.0;
            } else {
                /* (z_j - mz) - (mz_new - mz): the included terms gain -delta each.  (sx also
                   counts the excluded z = -inf terms; their weight is < 1e-323 whenever the
                   result is finite, see mxz.) */
                double delta = (double)mz - (double)mcz;
                w -= delta * sx;
                sz *= exp(delta);
                moved -= delta;
            }
            mz = mcz;
        }
        const FD_V shx = FN(fd_splat)(FI(fd_shift)(mx)), shz = FN(fd_splat)(FI(fd_shift)(mz));
        FD_V asx = {0}, asz = {0}, aw = {0}, tcx;
        ptrdiff_t j = 0;
        for (; j + FD_W <= n; j += FD_W) {
            FD_PFI(xs + j);
            FD_PFI(zs + j);
            FD_V xv = FN(fd_load)(xc + j), zv = FN(fd_load)(zc + j);
            FD_KL_STEP(xv, zv);
        }
        if (j < n) {
            FD_V xv = FN(fd_load_tail)(xc + j, n - j, FD_NEG_INF);
            FD_V zv = FN(fd_load_tail)(zc + j, n - j, FD_NEG_INF);
            FD_KL_STEP(xv, zv);
        }
        sx += FN(fd_hsum)(asx);
        sz += FN(fd_hsum)(asz);
        w += FN(fd_hsum)(aw);
    }
    return FI(fd_kl_finish)(mx, mz, sx, sz, w, FN(fd_hmax)(amxz), moved, x, z, V);
}

static void FI(fd_kl_logits_block)(const FD_TI *x, const FD_TI *z, ptrdiff_t V, int nrows,
                                   FD_T *out)
{
    const ptrdiff_t q = V / FD_W * FD_W;
    const int nt = (int)(V - q);
    const FD_IDX idx = FN(fd_block_idx)(V, nrows);
    FD_V rx[FD_W], rz[FD_W], rw[FD_W], rm[FD_W], cx[FD_W], cz[FD_W];
    FD_T mx[FD_W] __attribute__((aligned(64))), mz[FD_W] __attribute__((aligned(64)));
    FD_T shxs[FD_W] __attribute__((aligned(64))), shzs[FD_W] __attribute__((aligned(64)));
    FD_T sx[FD_W] __attribute__((aligned(64))), sz[FD_W] __attribute__((aligned(64)));
    FD_T w[FD_W] __attribute__((aligned(64))), mxz[FD_W] __attribute__((aligned(64)));
    const FD_V ninf = FN(fd_splat)(FD_NEG_INF);
    FD_V mcx = FI(fd_block_max)(x, V, nrows, q, nt, idx, rx, cx);
    FD_V mcz = FI(fd_block_max)(z, V, nrows, q, nt, idx, rz, cz);
    FD_V shxv = FI(fd_block_shift)(mcx), shzv = FI(fd_block_shift)(mcz);
    *(FD_V *)mx = mcx;
    *(FD_V *)mz = mcz;
    *(FD_V *)shxs = shxv;
    *(FD_V *)shzs = shzv;
    FD_V sxv = {0}, szv = {0}, wv = {0}, mxzv = ninf;
    if (q) {
        for (int i = 0; i < FD_W; i++) {
            const FD_TI *px = FD_ROW(x, i), *pz = FD_ROW(z, i);
            const FD_V shx = FN(fd_splat)(shxs[i]), shz = FN(fd_splat)(shzs[i]);
            FD_V asx = {0}, asz = {0}, aw = {0}, amxz = ninf, tcx;
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
        }
        sxv = FN(fd_tsum)(rx);
        szv = FN(fd_tsum)(rz);
        wv = FN(fd_tsum)(rw);
        mxzv = FN(fd_tmax)(rm);
    }
    {
        /* tail columns: FD_KL_STEP on row-lane vectors with the per-lane shifts */
        const FD_V shx = shxv, shz = shzv;
        FD_V asx = sxv, asz = szv, aw = wv, amxz = mxzv, tcx;
        for (int j = 0; j < nt; j++) FD_KL_STEP(cx[j], cz[j]);
        *(FD_V *)sx = asx;
        *(FD_V *)sz = asz;
        *(FD_V *)w = aw;
        *(FD_V *)mxz = amxz;
    }
#if FD_AVX512
    FD_T res[FD_W] __attribute__((aligned(64)));
    FD_V fsx = *(FD_V *)sx, fsz = *(FD_V *)sz;
    FD_V wsx = *(FD_V *)w / fsx, lsx = FN(fd_log)(fsx), lsz = FN(fd_log)(fsz);
    *(FD_V *)res = wsx - lsx + lsz;
    unsigned special = (unsigned)(FI(fd_nonfinite)(*(FD_V *)mx) | FI(fd_nonfinite)(*(FD_V *)mz) |
                                  FN(fd_isnan)(fsx) | FN(fd_isnan)(fsz) |
                                  FN(fd_gt)(*(FD_V *)mxz, ninf));
    if (sizeof(FD_T) == 8) { /* float64: a KL too small for the one pass (FD_KL_EXACT_BELOW) */
        const FD_V one = FN(fd_splat)((FD_T)1);
        FD_V scale = one + FN(fd_abs)(wsx) + (FD_T)2 * (FN(fd_abs)(lsx) + FN(fd_abs)(lsz));
        special |= (unsigned)FN(fd_lt)(*(FD_V *)res, (FD_T)FD_KL_EXACT_BELOW * scale);
    }
    for (int i = 0; i < nrows; i++)
        out[i] = (special >> i) & 1
                     ? (FD_T)FI(fd_kl_finish)(mx[i], mz[i], sx[i], sz[i], w[i], mxz[i], 0.0,
                                              FD_ROW(x, i), FD_ROW(z, i), V)
                     : res[i];
#else
    for (int i = 0; i < nrows; i++)
        out[i] = (FD_T)FI(fd_kl_finish)(mx[i], mz[i], sx[i], sz[i], w[i], mxz[i], 0.0,
                                        FD_ROW(x, i), FD_ROW(z, i), V);
#endif
}

/* ========================================================================================== */
/* hard-label cross-entropy                                                                    */
/*   nll = lse - x_t = (m - x_t) + log s   (two terms >= 0)                                    */
/*   loss = (w_t == 0 ? 0 : w_t nll) (1 - eps) + eps/V * smooth,                                */
/*   smooth = sum_{w_j != 0} w_j (lse - x_j) = u + W log s,  u = sum w_j (m - x_j), W = sum w_j */
/* u is kept relative to the running max: when m grows by D, u += W_before * D.               */
/* A row with NaN or +inf logits is NaN whatever the weights (reference.py); an ignored row is */
/* 0 and is not read (the caller checks ignore_index).                                          */
/* ========================================================================================== */
static inline double FI(fd_ce_hard_finish)(FD_T m, double k, double r, FD_T xt, double wt,
                                           double eps, double u, double W, ptrdiff_t V)
{
    if (isnan(r) || m == FD_POS_INF) return NAN;
    double nll = (m == FD_NEG_INF || xt == FD_NEG_INF) /* target has probability 0 */
                     ? INFINITY /* (m - x_t) first: (m + log s) - x_t would cancel */
                     : FD_ASSOC_BARRIER((double)m - (double)xt) + fd_log_kr(k, r);
    /* zero weight, or eps = 1 (the target term has weight 0): exactly 0, never 0 * inf */
    double loss = (wt == 0.0 || eps >= 1.0) ? 0.0 : wt * nll * (1.0 - eps);
    if (!(eps > 0.0)) return loss;
    /* all masked: u = sum_j w_j * (+inf) (0 for zero weights); else u + W log s */
    double smooth = m == FD_NEG_INF ? u : u + W * fd_log_kr(k, r);
    return loss + eps / (double)V * smooth;
}

/* One vector of the smoothing sums (t = x - shift, w the weights). */
#define FD_CE_STEP(t, wv, aW)                                                                 \
    do {                                                                                      \
        FD_V e_ = FN(fd_expz)(t);                                                             \
        FD_ACC_S((t), e_, ak, ar, zero);                                                      \
        /* w_j == 0: exactly 0 even for a masked class (0 * inf) */                           \
        au = FN(fd_add_unless)(au, FN(fd_eq)((wv), zero), (wv) * -(t));                        \
        (aW) += (wv);                                                                         \
    } while (0)

/* wt = w[t], read by the caller before the rows are streamed (see fd_ce_hard_prep). */
static double FI(fd_ce_hard)(const FD_TI *x, ptrdiff_t V, int64_t t, double wt, const FD_T *wt_,
                             double eps)
{
    if (t < 0 || t >= V) return NAN; /* the API validates targets; never read out of bounds */
    FD_T m;
    double k, r;
    if (!(eps > 0.0)) {
        FI(fd_lse_state)(x, V, 0, &m, &k, &r);
        return FI(fd_ce_hard_finish)(m, k, r, FI(fd_at)(x, t), wt, eps, 0.0, 0.0, V); /* x[t]: in L2 */
    }
    m = FD_NEG_INF;
    k = 0.0;
    r = 0.0;
    double u = 0.0, Wb = 0.0;
    const FD_V zero = {0};
    FD_CHUNK_BUF(xbuf);
    for (ptrdiff_t j0 = 0; j0 < V; j0 += FD_CH) {
        const FD_TI *xs = x + j0;
        const FD_T *wc = wt_ + j0;
        ptrdiff_t n = V - j0 < FD_CH ? V - j0 : FD_CH;
        FD_T mc;
        const FD_T *xc = FI(fd_chunk)(xs, n, xbuf, &mc);
        if (mc > m) {
            if (mc == FD_POS_INF) return NAN; /* log-softmax undefined */
            /* While m was -inf every x so far was -inf: u already holds sum w_j * inf. */
            if (m != FD_NEG_INF) u += Wb * ((double)mc - (double)m);
            r = (r + k) * FI(fd_rescale)(m, mc);
            k = 0.0;
            m = mc;
        }
        const FD_V sh = FN(fd_splat)(FI(fd_shift)(m));
        const int kr = mc == m;
        FD_V ar = {0}, au = {0}, aW = {0};
        FD_CNT ak = {0};
        ptrdiff_t j = 0;
        for (; j + FD_W <= n; j += FD_W) {
            FD_PFI_1(xs + j);
            FD_V tv = FN(fd_load)(xc + j) - sh, wv = FN(fd_load)(wc + j);
            FD_CE_STEP(tv, wv, aW);
        }
        if (j < n) {
            FD_V tv = FN(fd_load_tail)(xc + j, n - j, FD_NEG_INF) - sh;
            FD_V wv = FN(fd_load_tail)(wc + j, n - j, (FD_T)0);
            FD_CE_STEP(tv, wv, aW);
        }
        r += FN(fd_hsum)(ar);
        k += FN(fd_cnt_total)(ak);
        u += FN(fd_hsum)(au);
        Wb += FN(fd_hsum)(aW);
    }
    return FI(fd_ce_hard_finish)(m, k, r, FI(fd_at)(x, t), wt, eps, u, Wb, V);
}

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
            FD_M top = FN(fd_eq)(t, zero);
            rv = FN(fd_add_unless)(rv, top, e);
            kv = FN(fd_add_where)(kv, top, one);
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

/* ========================================================================================== */
/* soft-target cross-entropy: sum_{c_j != 0} c_j (lse - x_j), c_j = w_j (alpha p_j + beta)     */
/*   = u + C log s, u = sum c_j (m - x_j), C = sum c_j (u relative to the running max).         */
/* A row with NaN or +inf logits is NaN whatever the targets (reference.py).                    */
/* ========================================================================================== */
static inline double FI(fd_ce_soft_finish)(FD_T m, double k, double r, double u, double C)
{
    if (isnan(r) || m == FD_POS_INF) return NAN; /* NaN / +inf in the row; NaN in p, w is in u */
    if (m == FD_NEG_INF) return u;               /* all masked: sum c_j (+inf), 0 if all c = 0 */
    return u + C * fd_log_kr(k, r);
}

#define FD_CES_STEP(t, pv, wv)                                                                \
    do {                                                                                      \
        FD_V e_ = FN(fd_expz)(t);                                                             \
        FD_ACC_S((t), e_, ak, ar, zero);                                                      \
        FD_V c_ = (wv) * (alpha * (pv) + beta);                                               \
        au = FN(fd_add_unless)(au, FN(fd_eq)(c_, zero), c_ * -(t)); /* c = 0: exactly 0 */   \
        aC += c_;                                                                             \
    } while (0)

static double FI(fd_ce_soft)(const FD_TI *x, const FD_TI *p, const FD_T *w_, ptrdiff_t V,
                             double alpha_, double beta_)
{
    const FD_T alpha = (FD_T)alpha_, beta = (FD_T)beta_;
    FD_T m = FD_NEG_INF;
    double k = 0.0, r = 0.0, u = 0.0, C = 0.0;
    const FD_V zero = {0};
    FD_CHUNK_BUF(xbuf);
    for (ptrdiff_t j0 = 0; j0 < V; j0 += FD_CH) {
        const FD_TI *xs = x + j0, *pc = p + j0;
        const FD_T *wc = w_ + j0;
        ptrdiff_t n = V - j0 < FD_CH ? V - j0 : FD_CH;
        FD_T mc;
        const FD_T *xc = FI(fd_chunk)(xs, n, xbuf, &mc);
        if (mc > m) {
            if (mc == FD_POS_INF) return NAN; /* log-softmax undefined */
            if (m != FD_NEG_INF) u += C * ((double)mc - (double)m);
            r = (r + k) * FI(fd_rescale)(m, mc);
            k = 0.0;
            m = mc;
        }
        const FD_V sh = FN(fd_splat)(FI(fd_shift)(m));
        const int kr = mc == m;
        FD_V ar = {0}, au = {0}, aC = {0};
        FD_CNT ak = {0};
        ptrdiff_t j = 0;
        for (; j + FD_W <= n; j += FD_W) {
            FD_PFI(xs + j);
            FD_PFI(pc + j);
            FD_V tv = FN(fd_load)(xc + j) - sh, pv = FI(fd_ld)(pc + j);
            FD_V wv = FN(fd_load)(wc + j);
            FD_CES_STEP(tv, pv, wv);
        }
        if (j < n) {
            FD_V tv = FN(fd_load_tail)(xc + j, n - j, FD_NEG_INF) - sh;
            FD_V pv = FI(fd_ldt)(pc + j, n - j, (FD_T)0);
            FD_V wv = FN(fd_load_tail)(wc + j, n - j, (FD_T)0);
            FD_CES_STEP(tv, pv, wv);
        }
        r += FN(fd_hsum)(ar);
        k += FN(fd_cnt_total)(ak);
        u += FN(fd_hsum)(au);
        C += FN(fd_hsum)(aC);
    }
    return FI(fd_ce_soft_finish)(m, k, r, u, C);
}

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
        FD_M top = FN(fd_eq)(t, zero);
        rv = FN(fd_add_unless)(rv, top, e);
        kv = FN(fd_add_where)(kv, top, one);
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
    for (int i = 0; i < nrows; i++)
        out[i] = (special >> i) & 1 ? (FD_T)FI(fd_ce_soft_finish)(m[i], k[i], r[i], u[i], C[i])
                                    : res[i];
#else
    for (int i = 0; i < nrows; i++) out[i] = (FD_T)FI(fd_ce_soft_finish)(m[i], k[i], r[i], u[i], C[i]);
#endif
}

/* ========================================================================================== */
/* kernels on log-probabilities and probabilities (taken literally, no renormalising):        */
/* one pass, no max.  Sums are kept in vector lanes per chunk, chunk totals in double.          */
/* ========================================================================================== */

/* -sum exp(l) l.  e * tc with tc = l clamped to [LO, HI]: l = -inf gives 0 * LO = 0,
   l = +inf gives inf * HI = inf (the reference's -inf result); NaN stays NaN. */
static double FI(fd_entropy_log_probs)(const FD_TI *l, ptrdiff_t V)
{
    double acc_total = 0.0;
    for (ptrdiff_t j0 = 0; j0 < V; j0 += FD_CH) {
        const FD_TI *lc = l + j0;
        ptrdiff_t n = V - j0 < FD_CH ? V - j0 : FD_CH;
        FD_V acc = {0}, tc;
        ptrdiff_t j = 0;
        for (; j + FD_W <= n; j += FD_W) {
            FD_PFI_1(lc + j);
            FD_V e = FN(fd_exp)(FI(fd_ld)(lc + j), &tc);
            acc += e * tc;
        }
        if (j < n) {
            FD_V e = FN(fd_exp)(FI(fd_ldt)(lc + j, n - j, FD_NEG_INF), &tc);
            acc += e * tc;
        }
        acc_total += FN(fd_hsum)(acc);
    }
    return -acc_total;
}

/* -sum p log p with 0 log 0 = 0, term by term scipy.special.entr: p < 0 (outside the domain)
   is entr = -inf (+inf in the sum of p log p), p = +inf gives -inf, NaN stays NaN.  (Finding a
   negative p from the row's minimum at its end instead of this select was slower.) */
#define FD_PLOGP(pv) FN(fd_sel)(FN(fd_lt)((pv), zero), inf, (pv) * FN(fd_log)(pv))
static double FI(fd_entropy_probs)(const FD_TI *p, ptrdiff_t V)
{
    double acc_total = 0.0;
    const FD_V zero = {0}, inf = FN(fd_splat)(FD_POS_INF);
    for (ptrdiff_t j0 = 0; j0 < V; j0 += FD_CH) {
        const FD_TI *pc = p + j0;
        ptrdiff_t n = V - j0 < FD_CH ? V - j0 : FD_CH;
        FD_V acc = {0};
        ptrdiff_t j = 0;
        for (; j + FD_W <= n; j += FD_W) {
            FD_PFI_1(pc + j);
            FD_V pv = FI(fd_ld)(pc + j);
            acc = FN(fd_add_unless)(acc, FN(fd_eq)(pv, zero), FD_PLOGP(pv));
        }
        if (j < n) {
            FD_V pv = FI(fd_ldt)(pc + j, n - j, (FD_T)0);
            acc = FN(fd_add_unless)(acc, FN(fd_eq)(pv, zero), FD_PLOGP(pv));
        }
        acc_total += FN(fd_hsum)(acc);
    }
    return -acc_total;
}
#undef FD_PLOGP

/* sum exp(a) (a - b).  A term is 0 when exp(a) underflows (a < log(smallest denormal)),
   except that a finite a against b = -inf is +inf (positive probability where Q has none,
   reference.py); the row is NaN if b has a NaN anywhere (even where a = -inf).
   d = a - b = +-inf gives +-inf whatever exp(a) underflowed to in the working precision. */
#define FD_KLLP_STEP(av, bv)                                                                  \
    do {                                                                                      \
        FD_V e_ = FN(fd_exp)((av), &tc);                                                      \
        FD_V d_ = (av) - (bv);                                                                \
        FD_V term_ = FN(fd_sel)(FN(fd_eq)(FN(fd_abs)(d_), inf), d_, e_ * d_);                 \
        FD_V none_ = FN(fd_sel)(FN(fd_isnan)(bv), (bv), zero); /* zero-probability term */   \
        FD_V low_ = FN(fd_sel)(FN(fd_eq)(d_, inf), d_, none_);                                \
        acc += FN(fd_sel)(FN(fd_lt)((av), thr), low_, term_);                                 \
    } while (0)

static double FI(fd_kl_log_probs)(const FD_TI *a, const FD_TI *b, ptrdiff_t V)
{
    double acc_total = 0.0;
    const FD_V thr = FN(fd_splat)((FD_T)FD_LOG_DENORM_MIN), zero = {0};
    const FD_V inf = FN(fd_splat)(FD_POS_INF);
    for (ptrdiff_t j0 = 0; j0 < V; j0 += FD_CH) {
        const FD_TI *ac = a + j0, *bc = b + j0;
        ptrdiff_t n = V - j0 < FD_CH ? V - j0 : FD_CH;
        FD_V acc = {0}, tc;
        ptrdiff_t j = 0;
        for (; j + FD_W <= n; j += FD_W) {
            FD_PFI(ac + j);
            FD_PFI(bc + j);
            FD_V av = FI(fd_ld)(ac + j), bv = FI(fd_ld)(bc + j);
            FD_KLLP_STEP(av, bv);
        }
        if (j < n) {
            FD_V av = FI(fd_ldt)(ac + j, n - j, FD_NEG_INF);
            FD_V bv = FI(fd_ldt)(bc + j, n - j, (FD_T)0);
            FD_KLLP_STEP(av, bv);
        }
        acc_total += FN(fd_hsum)(acc);
    }
    return acc_total;
}

/* sum rel_entr(p, q), term by term scipy.special.rel_entr: p log(p / q) for p, q > 0, with
   log(p / q) from fd_logratio (nearly equal p and q keep the term's relative precision);
   0 where p = 0 <= q; +inf where p or q is negative (outside the domain) or p > 0 = q;
   p = +inf: +inf, q = +inf: -inf, both: NaN; a NaN in p or q (even where p = 0): NaN. */
#define FD_KLP_STEP(pv, qv)                                                                   \
    do {                                                                                      \
        FD_V lr_ = FN(fd_logratio)((pv), (qv));                                               \
        lr_ = FN(fd_sel)(FN(fd_eq)((pv), inf), inf, lr_);                                     \
        lr_ = FN(fd_sel)(FN(fd_eq)((qv), inf), ninf, lr_);                                    \
        FD_V o_ = FN(fd_sel)(FN(fd_eq)((pv), zero) & ~FN(fd_lt)((qv), zero), zero, inf);       \
        o_ = FN(fd_sel)(FN(fd_gt)((pv), zero) & FN(fd_gt)((qv), zero), (pv) * lr_, o_);        \
        acc += FN(fd_sel)(FN(fd_isnan)(pv) | FN(fd_isnan)(qv) |                               \
                              (FN(fd_eq)((pv), inf) & FN(fd_eq)((qv), inf)), nanv, o_);        \
    } while (0)

static double FI(fd_kl_probs)(const FD_TI *p, const FD_TI *q, ptrdiff_t V)
{
    double acc_total = 0.0;
    const FD_V zero = {0}, inf = FN(fd_splat)(FD_POS_INF), ninf = FN(fd_splat)(FD_NEG_INF);
    const FD_V nanv = FN(fd_splat)((FD_T)NAN);
    for (ptrdiff_t j0 = 0; j0 < V; j0 += FD_CH) {
        const FD_TI *pc = p + j0, *qc = q + j0;
        ptrdiff_t n = V - j0 < FD_CH ? V - j0 : FD_CH;
        FD_V acc = {0};
        ptrdiff_t j = 0;
        for (; j + FD_W <= n; j += FD_W) {
            FD_PFI(pc + j);
            FD_PFI(qc + j);
            FD_V pv = FI(fd_ld)(pc + j), qv = FI(fd_ld)(qc + j);
            FD_KLP_STEP(pv, qv);
        }
        if (j < n) {
            FD_V pv = FI(fd_ldt)(pc + j, n - j, (FD_T)0);
            FD_V qv = FI(fd_ldt)(qc + j, n - j, (FD_T)1);
            FD_KLP_STEP(pv, qv);
        }
        acc_total += FN(fd_hsum)(acc);
    }
    return acc_total;
}

/* ========================================================================================== */
/* Work items for the Cython prange: a block of FD_W rows when V <= FD_BLOCK_V, else one row.  */
/* ========================================================================================== */
#define FD_BLOCK_V ((ptrdiff_t)(FD_CHUNK_BYTES / sizeof(FD_T)))
static inline ptrdiff_t FI(fd_items)(ptrdiff_t rows, ptrdiff_t V)
{
    return V <= FD_BLOCK_V ? (rows + FD_W - 1) / FD_W : rows;
}
#define FD_ITEM_BLOCK(it, rows) ptrdiff_t r0 = (it) * FD_W; \
    int nb = (int)((rows) - r0 < FD_W ? (rows) - r0 : FD_W)

static void FI(fd_lse_item)(const FD_TI *x, ptrdiff_t rows, ptrdiff_t V, ptrdiff_t it, FD_T *out)
{
    if (V <= FD_BLOCK_V) {
        FD_ITEM_BLOCK(it, rows);
        FI(fd_lse_block)(x + r0 * V, V, nb, out + r0);
    } else {
        out[it] = (FD_T)FI(fd_lse)(x + it * V, V);
    }
}

static void FI(fd_entropy_logits_item)(const FD_TI *x, ptrdiff_t rows, ptrdiff_t V, ptrdiff_t it,
                                       FD_T *out)
{
    if (V <= FD_BLOCK_V) {
        FD_ITEM_BLOCK(it, rows);
        FI(fd_entropy_logits_block)(x + r0 * V, V, nb, out + r0);
    } else {
        out[it] = (FD_T)FI(fd_entropy_logits)(x + it * V, V);
    }
}

static void FI(fd_kl_logits_item)(const FD_TI *x, const FD_TI *z, ptrdiff_t rows, ptrdiff_t V,
                                  ptrdiff_t it, FD_T *out)
{
    if (V <= FD_BLOCK_V) {
        FD_ITEM_BLOCK(it, rows);
        FI(fd_kl_logits_block)(x + r0 * V, z + r0 * V, V, nb, out + r0);
    } else {
        out[it] = (FD_T)FI(fd_kl_logits)(x + it * V, z + it * V, V);
    }
}

static void FI(fd_ce_hard_item)(const FD_TI *x, ptrdiff_t rows, ptrdiff_t V, ptrdiff_t it,
                                const int64_t *target, int64_t ignore_index, const FD_T *weight,
                                double eps, FD_T *out)
{
    if (V <= FD_BLOCK_V) {
        FD_ITEM_BLOCK(it, rows);
        FI(fd_ce_hard_block)(x + r0 * V, V, nb, target + r0, ignore_index, weight, eps, out + r0);
    } else {
        int64_t t = target[it];
        double wt = (double)out[it]; /* w[t], from fd_ce_hard_prep */
        out[it] = t == ignore_index ? (FD_T)0
                                    : (FD_T)FI(fd_ce_hard)(x + it * V, V, t, wt, weight, eps);
    }
}

#if !FD_HALF /* weights are in the working precision: the f32 version serves 16-bit inputs */
/* Long rows: out[i] = w[target[i]] before the row pass (the kernel then reads it from out,
   sequentially).  Reading w[t] at the end of each row instead cost ~1-2 us per row at
   V = 50257 with random targets (15% of the pass): a cache miss to the weight vector,
   evicted by the streamed rows, waits behind the streams' traffic and stalls the core.  */
static void FI(fd_ce_hard_prep)(ptrdiff_t rows, ptrdiff_t V, const int64_t *target,
                                int64_t ignore_index, const FD_T *weight, FD_T *out)
{
    if (V <= FD_BLOCK_V) return; /* the block driver reads w[t] from L1 */
    for (ptrdiff_t i = 0; i < rows; i++) {
        int64_t t = target[i];
        out[i] = (t != ignore_index && t >= 0 && t < V) ? weight[t] : (FD_T)0;
    }
}
#endif

static void FI(fd_ce_soft_item)(const FD_TI *x, const FD_TI *p, const FD_T *w, ptrdiff_t rows,
                                ptrdiff_t V, ptrdiff_t it, double alpha, double beta, FD_T *out)
{
    if (V <= FD_BLOCK_V) {
        FD_ITEM_BLOCK(it, rows);
        FI(fd_ce_soft_block)(x + r0 * V, p + r0 * V, w, V, nb, alpha, beta, out + r0);
    } else {
        out[it] = (FD_T)FI(fd_ce_soft)(x + it * V, p + it * V, w, V, alpha, beta);
    }
}
#undef FD_ITEM_BLOCK
#undef FD_BLOCK_V

#undef FD_ROW
#undef FD_PREFETCH_NEXT
#undef FD_ACC_S
#undef FD_KL_STEP
#undef FD_CE_STEP
#undef FD_CES_STEP
#undef FD_KLLP_STEP
#undef FD_KLP_STEP

#pragma GCC diagnostic pop
