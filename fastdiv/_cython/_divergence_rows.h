/* Divergence-family row kernels (issue 5): a template instantiated by _inst.h after the row
 * templates, with the same parameters (inputs FD_TI read through FI(fd_ld / fd_ldt / fd_at) and
 * FI(fd_chunk2)).  No include guard on purpose.
 * Semantics: fastdiv/reference.py (js_rows, topk_kl_rows).
 */

/* ========================================================================================== */
/* Generalized Jensen-Shannon, 0 < beta < 1:                                                    */
/*   sum_j beta p_j (lp_j - lm_j) + (1 - beta) q_j (lq_j - lm_j),  lm = log(beta p + (1-beta) q) */
/* A term with p_j = 0 (q_j = 0) is exactly 0 (selected away, never 0 * -inf).  m is formed     */
/* from p and q directly: both are >= 0, so it does not cancel, and wherever p > 0,             */
/* m >= beta p > 0, so no term is infinite.  lp - lm is accurate to ~1e-7 absolute in float32    */
/* whatever |lp| (lm is log of p times (beta + (1 - beta) q / p), the rounding of exp(lp)       */
/* enters lp - lm only once).                                                                    */
/* mode 0: logits, lp = (x - shx) - lsx (both offsets from the first pass);                     */
/* mode 1: log-probabilities taken literally (lp = x);  mode 2: probabilities (p = x).         */
/* ========================================================================================== */
#define FD_JS_STEP(xv, zv)                                                                    \
    do {                                                                                      \
        FD_V lp_, lq_, p_, q_, tc_;                                                           \
        if (mode == 2) {                                                                      \
            p_ = (xv);                                                                        \
            q_ = (zv);                                                                        \
            lp_ = FN(fd_log)(p_);                                                             \
            lq_ = FN(fd_log)(q_);                                                             \
        } else {                                                                              \
            /* fenced: (x - sh) - ls must not become x - (sh + ls) (cancels at |x| ~ 1e4) */   \
            lp_ = FD_VBARRIER((xv) - shx) - lsx;                                              \
            lq_ = FD_VBARRIER((zv) - shz) - lsz;                                              \
            p_ = FN(fd_exp)(lp_, &tc_);                                                       \
            q_ = FN(fd_exp)(lq_, &tc_);                                                       \
        }                                                                                     \
        /* logpos: finite where the mixture underflows to 0 or is subnormal (p, q at the     \
           bottom of the range: their terms are as small); log gives -inf there, and a       \
           subnormal p times (lp + inf) is inf */                                            \
        FD_V lm_ = FN(fd_logpos)(bv * p_ + cv * q_);                                          \
        FD_V tp_ = FN(fd_sel)(FN(fd_eq)(p_, zero), zero, bv * p_ * (lp_ - lm_));              \
        FD_V tq_ = FN(fd_sel)(FN(fd_eq)(q_, zero), zero, cv * q_ * (lq_ - lm_));              \
        FD_V t_ = tp_ + tq_;                                                                  \
        if (mode == 2) {                                                                      \
            /* outside the domain: a negative p or q is rel_entr's +inf (as kl_div); an        \
               infinite one makes m infinite too: NaN, as a NaN p or q already made t_.       \
               (Checking the row's range at its end instead was slower.) */                  \
            t_ = FN(fd_sel)(FN(fd_lt)(p_, zero) | FN(fd_lt)(q_, zero), inf, t_);              \
            t_ = FN(fd_sel)(FN(fd_eq)(p_, inf) | FN(fd_eq)(q_, inf), nanv, t_);               \
        }                                                                                     \
        acc += t_;                                                                            \
    } while (0)

static double FI(fd_js_pass)(const FD_TI *x, const FD_TI *z, ptrdiff_t V, int mode, double beta,
                             FD_T shx_, FD_T lsx_, FD_T shz_, FD_T lsz_)
{
    const FD_V bv = FN(fd_splat)((FD_T)beta), cv = FN(fd_splat)((FD_T)(1.0 - beta));
    const FD_V shx = FN(fd_splat)(shx_), lsx = FN(fd_splat)(lsx_);
    const FD_V shz = FN(fd_splat)(shz_), lsz = FN(fd_splat)(lsz_);
    const FD_V zero = {0}, inf = FN(fd_splat)(FD_POS_INF), nanv = FN(fd_splat)((FD_T)NAN);
    const FD_T fill = mode == 2 ? (FD_T)0 : FD_NEG_INF; /* a class of probability 0 */
    double total = 0.0;
    for (ptrdiff_t j0 = 0; j0 < V; j0 += FD_CH) {
        const FD_TI *xc = x + j0, *zc = z + j0;
        ptrdiff_t n = V - j0 < FD_CH ? V - j0 : FD_CH;
        FD_V acc = {0};
        ptrdiff_t j = 0;
        for (; j + FD_W <= n; j += FD_W) {
            FD_PFI(xc + j);
            FD_PFI(zc + j);
            FD_V xv = FI(fd_ld)(xc + j), zv = FI(fd_ld)(zc + j);
            FD_JS_STEP(xv, zv);
        }
        if (j < n) {
            FD_V xv = FI(fd_ldt)(xc + j, n - j, fill);
            FD_V zv = FI(fd_ldt)(zc + j, n - j, fill);
            FD_JS_STEP(xv, zv);
        }
        total += FN(fd_hsum)(acc);
    }
    return total;
}

/* What fd_js_terms' log-based terms need beside the lanes: the rows' shifts, the logs of their
   sums, and LO, the clamp of log p (a masked class has p = 0 and adds 0 * (LO - lm), not
   0 * -inf). */
typedef struct { FD_V shx, shz, lsx, lsz, lo; } FI(fd_logc);

/* A vector's log-based JS terms bp (lp - lm) + cq (lq - lm), lm = log(bp + cq), and *dl =
   lq - lp for compare's KL terms: to the size of |d| where the logits are large (z - x
   rounds at the size of |z|).  A p that underflows keeps its lp; a masked class's lp is LO:
   its p d is 0, and its q d huge where the flags make the KL +inf anyway (masked in both
   rows: d = 0). */
FD_INLINE FD_V FI(fd_js_log_terms)(FD_V xv, FD_V zv, FD_V bp, FD_V cq, const FI(fd_logc) *lc,
                                   FD_V *dl)
{
    FD_V lp = FN(fd_clamp_lo)(FD_VBARRIER(xv - lc->shx) - lc->lsx, lc->lo);
    FD_V lq = FN(fd_clamp_lo)(FD_VBARRIER(zv - lc->shz) - lc->lsz, lc->lo);
    FD_V lm = FN(fd_logpos)(bp + cq); /* finite garbage where bp + cq is 0 */
    *dl = lq - lp;
    return bp * (lp - lm) + cq * (lq - lm);
}

/* At beta = 1/2 in float32, a vector's terms as m J(d / 2) (fd_jsd_f32) when each of its
   lanes has |d| < 2, d = lq - lp = (z - x) - c, c = (shz + log sz) - (shx + log sx): d is
   formed from the logits' difference, not from lp and lq (each rounded at the size of |lp|,
   1e-6 at lp ~ -12).  Then JS's relative accuracy holds as the rows' difference goes to 0:
   at model = base + N(0, 1e-3) (JS ~ 1e-7, 64 x 50257) the log-based terms were off by
   50 % (median), these by 1.3e-7 (benchmarks/js_nearby.py).  A vector with a far
   difference takes the log-based terms, which do not cancel there.  With kl (compare), the
   vector's KL(p || q) and Jeffreys terms too (fd_kl_near_f32) into *akp, *akj,
   half-weighted as bp = p / 2 and cq = q / 2.
   A vector with a few far lanes (fd_near_mixed; in a row whose probe says most lanes are
   near, `mixed`, fd_mixed_row) is taken lane by lane: its near lanes as
   above, its lanes masked in one row only (d = +-inf; looked for where `masks` says the row
   may have one) by their exact terms -- one of bp, cq is exactly 0 there, so the JS term is
   (bp + cq) ln 2 and the part of sum (q - p) is cq - bp (into *aqp), the other KL terms 0 --
   and its far lanes by the log-based terms (fd_js_log_terms, with *aqp, *apd, *aqd).  Sent
   there with them, the near lanes cancel: rows 1e-3 apart with one noisy class (|d| ~ 3) per
   190, JS 1.3 % off; P masked at 20 % of its classes, Q not, JS 2x off.  (Left to the
   caller's log-based terms under a mask, those lanes cost compare 1.03x and js_logits 1.07x
   on independent rows, where no vector is taken so: the masked sums' code in the hot loop.)
   lanes (fd_js_terms' second try, a constant at each call): every vector with a near lane is
   taken lane by lane.
   Returns whether it wrote *t (and those); else the caller takes the log-based terms. */
FD_INLINE int FI(fd_js_half_term)(FD_V xv, FD_V zv, FD_V d, FD_V bp, FD_V cq, FD_V *t,
                                  const int kl, const int masks, const int mixed,
                                  const int lanes, const FI(fd_logc) *lc, FD_V *akp,
                                  FD_V *akj, FD_V *aqp, FD_V *apd, FD_V *aqd)
{
#if FD_INST == 1
    (void)xv; (void)zv; (void)d; (void)bp; (void)cq; (void)t; (void)kl; (void)masks;
    (void)mixed; (void)lanes; (void)lc; (void)akp; (void)akj; (void)aqp; (void)apd; (void)aqd;
    return 0;
#else
    /* a class masked in both rows (a tail lane too: both loaded as -inf) has d = NaN and
       bp = cq = 0: taken as d = 0, its terms are 0 */
    FD_V s = fd_max0_f32(d * d);
    const fd_mf near = fd_lt_f32(s, fd_splat_f32(4.0f));
    if (!fd_all_f32(near)) {
        fd_mf one;
        if (lanes) {
            if (!fd_popcount_f32(near)) return 0;
            const fd_vf ninf = fd_splat_f32(-INFINITY);
            one = masks ? (fd_mf)(fd_eq_f32(xv, ninf) ^ fd_eq_f32(zv, ninf)) : fd_none_f32();
        } else if (!FI(fd_near_mixed)(xv, zv, s, masks, mixed, &one)) {
            return 0;
        }
        const fd_vf zero = {0};
        s = fd_sel_f32(near, s, zero);   /* far and one-sided lanes: J(0) = 0, E's terms 0 */
        *t = (bp + cq) * fd_sel_f32(one, fd_splat_f32((float)FD_LN2), fd_jsd_f32(s));
        if (kl) {
            d = fd_sel_f32(near, fd_sel_f32(fd_eq_f32(d, d), d, zero), zero);
            fd_vf e = fd_kl_near_f32(d), ps = bp * s;
            *akp += ps * e;
            *akj += ps * (d * e + 1.0f);
            *aqp = fd_add_where_f32(*aqp, one, cq - bp);
        }
        const fd_mf far = (fd_mf)~(near | one);
        if (fd_popcount_f32(far)) {
            fd_vf dl, tl = FI(fd_js_log_terms)(xv, zv, bp, cq, lc, &dl);
            *t = fd_add_where_f32(*t, far, tl);
            if (kl) {
                *aqp = fd_add_where_f32(*aqp, far, cq - bp);
                *apd = fd_add_where_f32(*apd, far, bp * dl);
                *aqd = fd_add_where_f32(*aqd, far, cq * dl);
            }
        }
        return 1;
    }
    *t = (bp + cq) * fd_jsd_f32(s);
    if (kl) {
        d = fd_sel_f32(fd_eq_f32(d, d), d, (fd_vf){0});
        fd_vf e = fd_kl_near_f32(d), ps = bp * s;
        *akp += ps * e;
        *akj += ps * (d * e + 1.0f);
    }
    return 1;
#endif
}

/* fd_js_logits' second pass, from the scratch rows of its first (ex = exp(x - shx_c[c]) in
   chunk c, likewise ez; mx, mz the rows' maxima, sx, sz their sums of e^(x - max)), shared
   with fd_compare_row (_evaluate_rows.h): the JS terms, and with `cmp` (compare, beta = 1/2,
   rows with a class each; a constant at each call: compiled away where 0) in the same read
   *cnt = #(x_j > xr), kl[0] = D(z || x) and kl[1] = D(x || z).  These KLs are summed class by
   class, with d = lq - lp, from terms that do not cancel as the rows' difference goes to 0,
   where the first pass's sum of p (x - z) less log sz - log sx does (float32 rows 1e-3 apart:
   2 % off): a vector with every |d| < 2 (float32) adds p (e^d - 1 - d) and the Jeffreys term
   (q - p) d from fd_kl_near_f32, any other q - p, p d and q d, which do not cancel where
   |d| >= 2 (float64: every vector).  sum (q - p) = 0 joins them: D(x || z) = sum p (e^d - 1
   - d) + sum (q - p) - sum p d and D(z || x) = sum (q - p) d - sum p (e^d - 1 - d) + sum q d
   - sum (q - p), each sum over its own vectors or lanes (fd_js_half_term).  masks: a class may
   be masked in one row only (fd_js_half_term).  lanes (a constant at each call): every vector
   with a near lane taken lane by lane (fd_js_terms); *logs: whether some vector took the
   log-based terms. */
FD_INLINE double FI(fd_js_terms_pass)(const FD_TI *x, const FD_TI *z, ptrdiff_t V, double beta,
                                      const FD_T *ex, const FD_T *ez, const FD_T *shx_c,
                                      const FD_T *shz_c, FD_T mx, FD_T mz, double sx, double sz,
                                      FD_T xr, int64_t *cnt, double *kl, const int cmp,
                                      const int masks, const int lanes, int *logs)
{
    const ptrdiff_t nch = (V + FD_CH - 1) / FD_CH;
    /* an all-masked row: every p is 0 and every lp is -inf */
    const FD_T shx = FI(fd_shift)(mx), shz = FI(fd_shift)(mz);
    const double lsxd = mx == FD_NEG_INF ? 0.0 : log(sx), lszd = mz == FD_NEG_INF ? 0.0 : log(sz);
    const FD_T lsx = (FD_T)lsxd, lsz = (FD_T)lszd;
    const FI(fd_logc) lc = {FN(fd_splat)(shx), FN(fd_splat)(shz), FN(fd_splat)(lsx),
                            FN(fd_splat)(lsz), FN(fd_splat)((FD_T)-1e30)};
    const FD_V xrv = FN(fd_splat)(xr), one = FN(fd_splat)((FD_T)1);
    /* rows with a class each: c (fd_near_c) is finite */
    const int half = sizeof(FD_T) == 4 && beta == 0.5 && mx > FD_NEG_INF && mz > FD_NEG_INF;
    int offset;
    const FD_V cdv = FN(fd_splat)(FI(fd_near_c)(shx, shz, lsxd, lszd, &offset));
    const int mixed = half && FI(fd_mixed_row)(x, z, V, lc.shx, lc.shz, cdv, offset);
    double total = 0.0, kp_total = 0.0, kj_total = 0.0, qp_total = 0.0, pd_total = 0.0, qd_total = 0.0;
    int64_t c_total = 0;
    int lg = 0;
    for (ptrdiff_t c = 0; c < nch; c++) {
        const ptrdiff_t j0 = c * FD_CH, n = V - j0 < FD_CH ? V - j0 : FD_CH;
        /* beta p = ex * beta exp(shift_c - max) / sx (and q alike), one product per element.
           shift_c <= max, except for a chunk read while the row was still all -inf (shift 0):
           its ex are all 0, and its factor is capped at e^0, never inf (0 * inf = NaN). */
        const double gx = mx == FD_NEG_INF ? 0.0 : exp(fmin((double)shx_c[c] - (double)shx, 0.0)) / sx;
        const double gz = mz == FD_NEG_INF ? 0.0 : exp(fmin((double)shz_c[c] - (double)shz, 0.0)) / sz;
        const FD_V fx = FN(fd_splat)((FD_T)(beta * gx)), fz = FN(fd_splat)((FD_T)((1.0 - beta) * gz));
        /* the count in float lanes: exact, a chunk has far fewer than 2^24 entries */
        FD_V acc = {0}, ac = {0}, akp = {0}, akj = {0}, aqp = {0}, apd = {0}, aqd = {0};
        ptrdiff_t j = 0;
#define FD_JSL_STEP(xv, zv, e1, e2)                                                           \
    do {                                                                                      \
        FD_V bp_ = (e1) * fx, cq_ = (e2) * fz, t_;                                            \
        FD_V d_ = FI(fd_near_dv)((xv), (zv), lc.shx, lc.shz, cdv, offset);                    \
        if (!(half && FI(fd_js_half_term)((xv), (zv), d_, bp_, cq_, &t_, cmp, masks, mixed,   \
                                          lanes, &lc, &akp, &akj, &aqp, &apd, &aqd))) {       \
            FD_V dl_;                                                                         \
            lg = 1;                                                                           \
            t_ = FI(fd_js_log_terms)((xv), (zv), bp_, cq_, &lc, &dl_);                        \
            if (cmp) {                                                                        \
                aqp += cq_ - bp_;                                                             \
                apd += bp_ * dl_;                                                             \
                aqd += cq_ * dl_;                                                             \
            }                                                                                 \
        }                                                                                     \
        acc += t_;                                                                            \
        if (cmp) ac = FN(fd_add_where)(ac, FN(fd_gt)((xv), xrv), one);                       \
    } while (0)
        for (; j + FD_W <= n; j += FD_W) {
            /* the next row pair, where the rows are contiguous (compare, direct inputs; a
               staged row or the last one prefetches what follows it, which never faults):
               this pass reads only L2, so the DRAM reads of the next row's first pass start
               here instead of all in that pass (2048 x 50257 from memory, two threads: JS
               0.94 -> 0.82 ns per pair per thread).  By prefetcht1 (to L2), not t0: with t0
               this pass took 0.44 ns per pair from memory against 0.32 in cache (perf, one
               thread); t1: JS 0.77 -> 0.70 ns per pair on one thread, 55-56 -> 60-61 % of
               the probe on two (35 GB/s) */
            __builtin_prefetch(x + V + j0 + j, 0, 2);
            __builtin_prefetch(z + V + j0 + j, 0, 2);
            FD_V xv = FI(fd_ld)(x + j0 + j), zv = FI(fd_ld)(z + j0 + j);
            FD_JSL_STEP(xv, zv, FN(fd_load)(ex + j0 + j), FN(fd_load)(ez + j0 + j));
        }
        if (j < n) {
            FD_V xv = FI(fd_ldt)(x + j0 + j, n - j, FD_NEG_INF);
            FD_V zv = FI(fd_ldt)(z + j0 + j, n - j, FD_NEG_INF);
            FD_JSL_STEP(xv, zv, FN(fd_load_tail)(ex + j0 + j, n - j, (FD_T)0),
                        FN(fd_load_tail)(ez + j0 + j, n - j, (FD_T)0));
        }
#undef FD_JSL_STEP
        total += FN(fd_hsum)(acc);
        if (cmp) {
            c_total += (int64_t)FN(fd_hsum)(ac);
            kp_total += FN(fd_hsum)(akp);
            kj_total += FN(fd_hsum)(akj);
            qp_total += FN(fd_hsum)(aqp);
            pd_total += FN(fd_hsum)(apd);
            qd_total += FN(fd_hsum)(aqd);
        }
    }
    if (cmp) {
        *cnt = c_total;
        /* bp = p / 2, cq = q / 2 */
        kl[0] = 2.0 * ((kj_total - kp_total) + (qd_total - qp_total));
        kl[1] = 2.0 * (kp_total + (qp_total - pd_total));
    }
    *logs = lg;
    return total;
}

/* fd_js_terms_pass; where a float32 row pair at beta = 1/2 has JS < FD_JS_LANES_BELOW and some
   vector took the log-based terms, a second pass with every vector that has a near lane taken
   lane by lane.  Those terms of a near class with a large p cancel to ~eps (p + q) (the
   logs of p, q and m ~ 1 each round at ~eps), nothing beside a JS of ~1e-11: a row pair with
   one class far above the rest in both (p ~ q ~ 1 - 1e-10) and independent tails took that
   class by them, in a vector of far classes, and came out 1.6x off (compare's kld 0.9x;
   2026-12-07).  Rows with a larger JS keep the one pass (error below ~1e-4 of it);
   nearly equal rows have every vector near (or mixed), and take no second pass. */
FD_INLINE double FI(fd_js_terms)(const FD_TI *x, const FD_TI *z, ptrdiff_t V, double beta,
                                 const FD_T *ex, const FD_T *ez, const FD_T *shx_c,
                                 const FD_T *shz_c, FD_T mx, FD_T mz, double sx, double sz,
                                 FD_T xr, int64_t *cnt, double *kl, const int cmp,
                                 const int masks)
{
    int logs;
    double js = FI(fd_js_terms_pass)(x, z, V, beta, ex, ez, shx_c, shz_c, mx, mz, sx, sz, xr,
                                     cnt, kl, cmp, masks, 0, &logs);
    if (sizeof(FD_T) == 4 && logs && beta == 0.5 && js < FD_JS_LANES_BELOW && mx > FD_NEG_INF &&
        mz > FD_NEG_INF)
        js = FI(fd_js_terms_pass)(x, z, V, beta, ex, ez, shx_c, shz_c, mx, mz, sx, sz, xr, cnt,
                                  kl, cmp, masks, 1, &logs);
    return js;
}

/* From logits, two passes per row pair, only the first from memory (a 50257-float row pair
   is 400 KB, and with the exponentials below 800 KB: all in L2):
   1. the running maxima and normalisers, as in fd_kl_logits, storing ex = exp(x - shift_c)
      in the scratch row `ex` (and ez), shift_c the reference chunk c was summed against;
   2. p = ex * exp(shift_c - max) / sx, lp = (x - max) - log sx (q likewise), and the terms.
   So each element costs 2 exp + 1 log, not 4 exp + 1 log.
   Past the first FD_FUSE_FROM chunks, a chunk is read once (fd_js_chunk, fused): its
   exponentials against the running maxima, taken while its maxima are found, kept when those
   rose by less than FD_JS_STALE, so ex <= e and shift_c <= the row's max; else, and for the
   first chunks, the two-pass order: the chunk's maxima first, then its exponentials against
   the new running maxima (ex <= 1).
   FD_JS_STALE is 1, not KL's FD_STALE (40): pass 2 takes lp from the logits but p from the
   stored exponentials, so an entry exponentiated at t = x - shift_c > 0 brings the exp's
   reduction error (about t * 3e-9 relative, 1e-7 at t = 39) into JS uncorrected; for a row
   pair dominated by one class each (JS = ln 2) that was 1e-6 relative at rises of 30-45,
   against 3e-9 in the two-pass order.  Below a rise of 1 it stays within the latter, and
   random rows still read nearly every chunk once (a chunk's max rarely rises by 1).
   scratch: 2 V elements plus 2 per chunk.
   fd_js_chunk: one chunk's exponentials against shx, shz into ex, ez, their sums added to *sx,
   *sz (the trailing elements one by one, then the lanes), and when fused its maxima. */
#ifndef FD_JS_STALE
#define FD_JS_STALE 1.0
#endif
FD_INLINE void FI(fd_js_chunk)(const FD_TI *xs, const FD_TI *zs, const FD_T *xc, const FD_T *zc,
                               ptrdiff_t n, FD_T shx, FD_T shz, int fused, FD_T *ex, FD_T *ez,
                               FD_T *mcx, FD_T *mcz, double *sx, double *sz)
{
    const FD_V shxv = FN(fd_splat)(shx), shzv = FN(fd_splat)(shz), ninf = FN(fd_splat)(FD_NEG_INF);
    FD_V asx = {0}, asz = {0}, amx = ninf, amz = ninf;
    ptrdiff_t j = 0;
    for (; j + FD_W <= n; j += FD_W) {
        FD_PFI(xs + j);
        FD_PFI(zs + j);
        FD_V xv, zv;
        if (fused) {
            xv = FI(fd_ld)(xs + j);
            zv = FI(fd_ld)(zs + j);
            amx = FN(fd_max)(amx, xv);
            amz = FN(fd_max)(amz, zv);
        } else {
            xv = FN(fd_load)(xc + j);
            zv = FN(fd_load)(zc + j);
        }
        FD_V e1 = FN(fd_expz)(xv - shxv), e2 = FN(fd_expz)(zv - shzv);
        *(FD_V_U *)(ex + j) = e1;
        *(FD_V_U *)(ez + j) = e2;
        asx += e1;
        asz += e2;
    }
    FD_T mx = FD_NEG_INF, mz = FD_NEG_INF;
    for (; j < n; j++) { /* < FD_W trailing elements */
        FD_T u = fused ? FI(fd_at)(xs, j) : xc[j], v = fused ? FI(fd_at)(zs, j) : zc[j];
        if (u > mx) mx = u; /* NaN-ignoring, as fd_max */
        if (v > mz) mz = v;
        FD_T e1 = (FD_T)exp((double)u - (double)shx), e2 = (FD_T)exp((double)v - (double)shz);
        ex[j] = e1;
        ez[j] = e2;
        *sx += e1;
        *sz += e2;
    }
    if (fused) {
        FD_T a = FN(fd_hmax)(amx), b = FN(fd_hmax)(amz);
        *mcx = a > mx ? a : mx;
        *mcz = b > mz ? b : mz;
    }
    *sx += FN(fd_hsum)(asx);
    *sz += FN(fd_hsum)(asz);
}

static double FI(fd_js_logits)(const FD_TI *x, const FD_TI *z, ptrdiff_t V, double beta,
                               FD_T *scratch)
{
    const ptrdiff_t nch = (V + FD_CH - 1) / FD_CH;
    FD_T *ex = scratch, *ez = scratch + V, *shx_c = scratch + 2 * V, *shz_c = shx_c + nch;
    FD_T mx = FD_NEG_INF, mz = FD_NEG_INF;
    double sx = 0.0, sz = 0.0;
    FD_CHUNK_BUF(xbuf);
    FD_CHUNK_BUF(zbuf);
    for (ptrdiff_t c = 0; c < nch; c++) {
        const ptrdiff_t j0 = c * FD_CH, n = V - j0 < FD_CH ? V - j0 : FD_CH;
        const FD_TI *xs = x + j0, *zs = z + j0;
        const FD_T *xc = NULL, *zc = NULL;
        FD_T mcx, mcz;
        const int tried = c >= FD_FUSE_FROM && mx > FD_NEG_INF && mz > FD_NEG_INF;
        int summed = 0;
        if (tried) {
            /* the chunk's sums join the totals against the old maxima, and move with them
               to the new ones below */
            const double sx0 = sx, sz0 = sz;
            FI(fd_js_chunk)(xs, zs, NULL, NULL, n, mx, mz, 1, ex + j0, ez + j0, &mcx, &mcz, &sx, &sz);
            if ((double)mcx - (double)mx < FD_JS_STALE && (double)mcz - (double)mz < FD_JS_STALE) {
                shx_c[c] = mx; /* the references of the chunk's exponentials */
                shz_c[c] = mz;
                summed = 1;
            } else {
                sx = sx0;
                sz = sz0;
            }
        }
        if (!summed) FI(fd_chunk2_after)(xs, zs, n, tried, xbuf, zbuf, &mcx, &mcz, &xc, &zc);
        if (mcx == FD_POS_INF || mcz == FD_POS_INF) return NAN; /* softmax undefined */
        if (mcx > mx) {
            sx *= FI(fd_rescale)(mx, mcx); /* keeps a NaN */
            mx = mcx;
        }
        if (mcz > mz) {
            sz *= FI(fd_rescale)(mz, mcz);
            mz = mcz;
        }
        if (summed) continue;
        const FD_T shx = FI(fd_shift)(mx), shz = FI(fd_shift)(mz);
        shx_c[c] = shx;
        shz_c[c] = shz;
        FI(fd_js_chunk)(xs, zs, xc, zc, n, shx, shz, 0, ex + j0, ez + j0, &mcx, &mcz, &sx, &sz);
    }
    if (isnan(sx) || isnan(sz)) return NAN; /* NaN in either row */
    /* masks: a class may be masked in one row only (the first pass does not look) */
    return FI(fd_js_terms)(x, z, V, beta, ex, ez, shx_c, shz_c, mx, mz, sx, sz, 0, NULL, NULL, 0, 1);
}

/* Scratch elements fd_js_logits needs for a row of V. */
static inline ptrdiff_t FI(fd_js_scratch)(ptrdiff_t V)
{
    return 2 * V + 2 * ((V + FD_CH - 1) / FD_CH);
}

static double FI(fd_js_log_probs)(const FD_TI *a, const FD_TI *b, ptrdiff_t V, double beta)
{
    return FI(fd_js_pass)(a, b, V, 1, beta, 0, 0, 0, 0);
}

static double FI(fd_js_probs)(const FD_TI *p, const FD_TI *q, ptrdiff_t V, double beta)
{
    return FI(fd_js_pass)(p, q, V, 2, beta, 0, 0, 0, 0);
}

/* ========================================================================================== */
/* Top-k teacher KL.  idx: k classes, strictly increasing in [0, V); t: their teacher           */
/* log-probabilities; z: the student's logits.                                                   */
/* The student's tail (the V - k unlisted classes) is summed directly, segment by segment       */
/* between the listed classes, as merged (max, sum) states: its log-probability is then exact   */
/* even when the student puts nearly all its mass on the listed classes (1 - sum q_i would      */
/* cancel).  The k listed terms are computed in double.                                          */
/* ========================================================================================== */
static double FI(fd_topk_kl)(const FD_TI *z, ptrdiff_t V, const int64_t *idx, const FD_TI *t,
                             ptrdiff_t k, int bucket)
{
    for (ptrdiff_t i = 0; i < k; i++) /* the API sorts and validates: never read out of bounds */
        if (idx[i] < 0 || idx[i] >= V || (i > 0 && idx[i] <= idx[i - 1])) return NAN;
    double M = -INFINITY, S = 0.0; /* tail: sum exp(z - M) */
    ptrdiff_t a = 0;
    for (ptrdiff_t i = 0; i <= k; i++) {
        ptrdiff_t b = i < k ? (ptrdiff_t)idx[i] : V;
        if (b > a) {
            FD_T m;
            double kk, r;
            FI(fd_lse_state)(z + a, b - a, 0, &m, &kk, &r);
            if (isnan(r) || m == FD_POS_INF) return NAN; /* NaN / +inf in the row */
            if (m != FD_NEG_INF) {
                if ((double)m > M) {
                    S = (M == -INFINITY ? 0.0 : S * exp(M - (double)m)) + (kk + r);
                    M = (double)m;
                } else {
                    S += (kk + r) * exp((double)m - M);
                }
            }
        }
        a = b + 1;
    }
    double Mall = M;
    for (ptrdiff_t i = 0; i < k; i++) {
        double zi = (double)FI(fd_at)(z, idx[i]), ti = (double)FI(fd_at)(t, i);
        if (isnan(zi) || zi == INFINITY || isnan(ti)) return NAN;
        if (zi > Mall) Mall = zi;
    }
    /* log q_i = (z_i - Mall) - ls, ls = log sum exp(z - Mall) over all classes; lst = log s */
    double ls = 0.0, lst = -INFINITY;
    if (Mall != -INFINITY) {
        double Sall = M == -INFINITY ? 0.0 : S * exp(M - Mall);
        for (ptrdiff_t i = 0; i < k; i++) Sall += exp((double)FI(fd_at)(z, idx[i]) - Mall);
        ls = log(Sall);
        /* in log space: the tail's probability may be below the smallest double (logits ~1e4) */
        if (M != -INFINITY) lst = ((M - Mall) + log(S)) - ls;
    }
/* fenced: -fassociative-math would otherwise fold t_i - ((z_i - Mall) - ls) into             */
/* (t_i - z_i) + Mall + ls, which cancels for large logits (2e-10 relative at z ~ 2e4)         */
#define FD_LOGQ(i) (Mall == -INFINITY ? -INFINITY : FD_ASSOC_BARRIER(((double)FI(fd_at)(z, idx[i]) - Mall) - ls))
    double res = 0.0;
    if (!bucket) {
        double mt = -INFINITY, st = 0.0;
        for (ptrdiff_t i = 0; i < k; i++) mt = (double)FI(fd_at)(t, i) > mt ? (double)FI(fd_at)(t, i) : mt;
        if (mt == INFINITY) return NAN;
        if (mt == -INFINITY) return 0.0; /* empty teacher */
        for (ptrdiff_t i = 0; i < k; i++) st += exp((double)FI(fd_at)(t, i) - mt);
        double lt = log(st);
        for (ptrdiff_t i = 0; i < k; i++) {
            if ((double)FI(fd_at)(t, i) == -INFINITY) continue; /* probability 0: exactly 0 */
            double lpi = ((double)FI(fd_at)(t, i) - mt) - lt, lqi = FD_LOGQ(i);
            if (lqi == -INFINITY) return INFINITY;  /* p > 0 where the student has q = 0 */
            res += exp(lpi) * (lpi - lqi);
        }
        return res;
    }
    double sp = 0.0;
    int inf = 0;
    for (ptrdiff_t i = 0; i < k; i++) {
        double ti = (double)FI(fd_at)(t, i);
        if (ti == -INFINITY) continue;
        double pi = exp(ti), lqi = FD_LOGQ(i);
        sp += pi;
        if (lqi == -INFINITY) inf = 1;
        else res += pi * (ti - lqi);
    }
#undef FD_LOGQ
    if (inf) return INFINITY;
    double r = 1.0 - sp; /* the teacher's tail mass; none when every class is listed */
    if (k < V && r > 0.0) {
        if (lst == -INFINITY) return INFINITY;
        res += r * (log(r) - lst);
    }
    return res;
}

#undef FD_JS_STEP
