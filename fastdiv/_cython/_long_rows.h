/* Long rows (V > FD_BLOCK_V, one chunk): fd_<op>(row pointers, V), one row at a time, in
 * chunks of FD_CHUNK_BYTES:
 *     1. chunk max mc (NaN-ignoring; NaN is detected through s, see below);
 *     2. if mc > m: rescale the sums by exp(m - mc), a scalar per chunk; m = mc;
 *     3. accumulate s = sum exp(x - m) and the weighted sums over the chunk in vector lanes of
 *        the working precision (a float32 sum split over 16 lanes is 10-100x more accurate
 *        than a sequential one), then add the chunk totals to doubles.
 *   While the chunk is exponentiated, the next one is prefetched (FD_PREFETCH), so that DRAM
 *   traffic overlaps the arithmetic.
 * The per-row state, its accumulation steps and finishes are _row_state.h's.  Also the kernels
 * on probabilities and log-probabilities (one pass, no maximum), which serve every V.
 * A template instantiated by _inst.h once per input format (its parameters: FD_T, FD_TI, FD_V,
 * FD_M, FD_W, FN, FI, FD_HALF, ...).  Inputs (FD_TI) are read only through the
 * FI(fd_ld / fd_ldt / fd_gth / fd_at) functions of _simd.h and FI(fd_chunk); weights and
 * results are in the working precision FD_T.
 * No include guard on purpose.
 */

/* ------------------------------------------------------------------------------------------ */
/* lse                                                                                         */
/* ------------------------------------------------------------------------------------------ */

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
        double rc = 0.0;
        const FD_T *xc = FI(fd_chunk_fused)(xs, n, j0, m, xbuf, &mc, &rc, NULL);
        if (xc == NULL) { /* summed below the running maximum */
            r += rc;
            continue;
        }
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

static double FI(fd_lse)(const FD_TI *x, ptrdiff_t V)
{
    FD_T m;
    double k, r;
    FI(fd_lse_state)(x, V, 1, &m, &k, &r);
    return FI(fd_lse_finish)(m, k, r);
}

/* ------------------------------------------------------------------------------------------ */
/* entropy from logits                                                                         */
/* ------------------------------------------------------------------------------------------ */
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
        double rc = 0.0, wc = 0.0;
        const FD_T *xc = FI(fd_chunk_fused)(xs, n, j0, m, xbuf, &mc, &rc, &wc);
        if (xc == NULL) { /* summed below the running maximum */
            r += rc;
            w += wc;
            continue;
        }
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

/* ------------------------------------------------------------------------------------------ */
/* KL from logits                                                                              */
/* ------------------------------------------------------------------------------------------ */
/* One chunk's KL sums against the shifts of the references (mx, mz) into s[3] = (sx, sz, w):
   from xc, zc (the two-pass order, after fd_chunk2), or, when fused, from the inputs xs, zs
   with the chunk's maxima *mcx, *mcz found in the same pass. */
FD_INLINE void FI(fd_kl_chunk)(const FD_TI *xs, const FD_TI *zs, const FD_T *xc, const FD_T *zc,
                               ptrdiff_t n, FD_T mx, FD_T mz, int fused, FD_V *amxz_io, FD_T *mcx,
                               FD_T *mcz, double *s)
{
    const FD_V ninf = FN(fd_splat)(FD_NEG_INF);
    const FD_V shx = FN(fd_splat)(FI(fd_shift)(mx)), shz = FN(fd_splat)(FI(fd_shift)(mz));
    FD_V asx = {0}, asz = {0}, aw = {0}, tcx, amxz = *amxz_io, amx = ninf, amz = ninf;
    /* FD_KL_STEP's plain sums: a long row's maximum lies in one chunk of many, whose lanes
       hold a share of its tail (confident rows of 32000 classes: within 1e-6) */
    const int kr = 0;
    const FD_V zero = {0};
    FD_CNT akx = {0}, akz = {0};
#define FD_KL_CHUNK_STEP(LOAD_X, LOAD_Z)                                                      \
    do {                                                                                      \
        FD_V xv = (LOAD_X), zv = (LOAD_Z);                                                    \
        if (fused) {                                                                          \
            amx = FN(fd_max)(amx, xv);                                                        \
            amz = FN(fd_max)(amz, zv);                                                        \
        }                                                                                     \
        FD_KL_STEP(xv, zv);                                                                   \
    } while (0)
    ptrdiff_t j = 0;
    for (; j + FD_W <= n; j += FD_W) {
        FD_PFI(xs + j);
        FD_PFI(zs + j);
        if (fused)
            FD_KL_CHUNK_STEP(FI(fd_ld)(xs + j), FI(fd_ld)(zs + j));
        else
            FD_KL_CHUNK_STEP(FN(fd_load)(xc + j), FN(fd_load)(zc + j));
    }
    if (j < n) {
        if (fused)
            FD_KL_CHUNK_STEP(FI(fd_ldt)(xs + j, n - j, FD_NEG_INF), FI(fd_ldt)(zs + j, n - j, FD_NEG_INF));
        else
            FD_KL_CHUNK_STEP(FN(fd_load_tail)(xc + j, n - j, FD_NEG_INF),
                             FN(fd_load_tail)(zc + j, n - j, FD_NEG_INF));
    }
#undef FD_KL_CHUNK_STEP
    if (fused) {
        *mcx = FN(fd_hmax)(amx);
        *mcz = FN(fd_hmax)(amz);
    }
    *amxz_io = amxz;
    s[0] = FN(fd_hsum)(asx);
    s[1] = FN(fd_hsum)(asz);
    s[2] = FN(fd_hsum)(aw);
}

static double FI(fd_kl_logits)(const FD_TI *x, const FD_TI *z, ptrdiff_t V)
{
    FD_T mx = FD_NEG_INF, mz = FD_NEG_INF;
    double sx = 0.0, sz = 0.0, w = 0.0, moved = 0.0, s[3];
    FD_V amxz = FN(fd_splat)(FD_NEG_INF);
    FD_CHUNK_BUF(xbuf);
    FD_CHUNK_BUF(zbuf);
    for (ptrdiff_t j0 = 0; j0 < V; j0 += FD_CH) {
        const FD_TI *xs = x + j0, *zs = z + j0;
        ptrdiff_t n = V - j0 < FD_CH ? V - j0 : FD_CH;
        FD_T mcx, mcz;
        const FD_T *xc = NULL, *zc = NULL;
        const int tried = j0 >= FD_FUSE_FROM * FD_CH && mx > FD_NEG_INF && mz > FD_NEG_INF;
        int summed = 0;
        if (tried) {
            /* One read of the chunk, its sums against the running maxima (as numba's KL):
               kept when the maxima rose by less than FD_STALE (NaN-free maxima; +inf
               fails the test), added to the totals before the rescales below. */
            FI(fd_kl_chunk)(xs, zs, NULL, NULL, n, mx, mz, 1, &amxz, &mcx, &mcz, s);
            if ((double)mcx - (double)mx < FD_STALE && (double)mcz - (double)mz < FD_STALE) {
                sx += s[0];
                sz += s[1];
                w += s[2];
                summed = 1;
            }
        }
        if (!summed) FI(fd_chunk2_after)(xs, zs, n, tried, xbuf, zbuf, &mcx, &mcz, &xc, &zc);
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
        if (summed) continue;
        FI(fd_kl_chunk)(xs, zs, xc, zc, n, mx, mz, 0, &amxz, &mcx, &mcz, s);
        sx += s[0];
        sz += s[1];
        w += s[2];
    }
    return FI(fd_kl_finish)(mx, mz, sx, sz, w, FN(fd_hmax)(amxz), moved, x, z, V);
}

/* ------------------------------------------------------------------------------------------ */
/* hard-label cross-entropy                                                                    */
/* ------------------------------------------------------------------------------------------ */
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

/* ------------------------------------------------------------------------------------------ */
/* soft-target cross-entropy                                                                   */
/* ------------------------------------------------------------------------------------------ */
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

#undef FD_KLLP_STEP
#undef FD_KLP_STEP
