/* The per-row state of the row kernels and what both of their drivers share: the chunk reads,
 * the accumulation steps, and one scalar "finish" function per kernel that turns the state into
 * the result (in double).  The drivers: _long_rows.h (one row at a time, in chunks) and
 * _short_rows.h (FD_W short rows at once); _row_items.h picks one by V.
 * A template instantiated by _inst.h once per input format (its parameters: FD_T, FD_TI, FD_V,
 * FD_M, FD_W, FN, FI, FD_HALF, ...).  Inputs (FD_TI) are read only through the
 * FI(fd_ld / fd_ldt / fd_gth / fd_at) functions of _simd.h and FI(fd_chunk); weights and
 * results are in the working precision FD_T.
 * No include guard on purpose.
 *
 * Semantics are those of fastdiv/reference.py; comments say which case each select or branch
 * implements.  Every kernel reads its row(s) once from memory.
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

/* ========================================================================================== */
/* chunk reads and shifts                                                                      */
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

/* The two-pass order's rows of a chunk pair (x, z) whose fused attempt (tried) did not keep
   its sums: native rows are read in place, their maxima (*mx, *mz) found by that attempt;
   else fd_chunk2 (16-bit rows go through its float buffers). */
static inline void FI(fd_chunk2_after)(const FD_TI *x, const FD_TI *z, ptrdiff_t n, int tried,
                                       FD_T *bx, FD_T *bz, FD_T *mx, FD_T *mz, const FD_T **xc,
                                       const FD_T **zc)
{
#if !FD_HALF
    if (tried) {
        *xc = x;
        *zc = z;
        return;
    }
#endif
    FI(fd_chunk2)(x, z, n, bx, bz, mx, mz, xc, zc);
}

/* A chunk of a long row past its first FD_FUSE_FROM, summed against the running maximum m
   (finite) in the same pass that finds the chunk's maximum *mc: one read from memory, where
   the two-pass order (fd_chunk, then the sums from L1) has the compute-bound pass wait for
   the max pass (on the 2-core Zen 4, 2026-12-06: logsumexp from memory at 82-85 % of the
   read probe in two passes, 93-99 % fused).  Returns 1 with *rc = sum exp(x_j - m) (and, if
   wc, *wc = sum exp(x_j - m) max(x_j - m, LO), entropy's sum) when every entry is below m
   (*mc < m; NaN entries included, as NaN sums): those are, bit for bit, the sums of the
   two-pass order (no new maximum and no tie with m: the same shift and terms, summed in the
   same order).  Returns 0 when the chunk reaches m (a tie, counted apart, or a new maximum):
   the caller sums it again from cache by the two-pass order, with *mc its maximum.  The
   running maximum of a random row is raised in about ln(chunks) of them, mostly the first:
   hence two-pass for the first FD_FUSE_FROM chunks (in cache, fused costs 3 % more at
   16 x 16000: 0.190 against 0.184 ns per element, for the chunks summed twice). */
#ifndef FD_FUSE_FROM
#define FD_FUSE_FROM 2
#endif
/* KL from logits (no k + r split) keeps a fused chunk's sums when its maxima rose above the
   references they were taken against by less than FD_STALE: its terms are then at most e^40
   (the sums stay finite in float32), and the totals with the chunk added move to the new
   maxima by the rescales of the two-pass order.  JS from logits takes a tighter bound
   (FD_JS_STALE, _divergence_rows.h, for its accuracy). */
#ifndef FD_STALE
#define FD_STALE 40.0
#endif
FD_INLINE int FI(fd_sum_below)(const FD_TI *xs, ptrdiff_t n, FD_T m, FD_T *mc, double *rc, double *wc)
{
    const FD_V sh = FN(fd_splat)(m);
    FD_V ar = {0}, aw = {0}, am = FN(fd_splat)(FD_NEG_INF), tc;
#define FD_SUM_BELOW_STEP(v)                                                                  \
    do {                                                                                      \
        am = FN(fd_max)(am, (v));                                                             \
        if (wc) {                                                                             \
            FD_V e_ = FN(fd_expn)((v) - sh, &tc);                                             \
            ar += e_;                                                                         \
            aw += e_ * tc;                                                                    \
        } else {                                                                              \
            ar += FN(fd_expz)((v) - sh);                                                      \
        }                                                                                     \
    } while (0)
    ptrdiff_t j = 0;
    for (; j + FD_W <= n; j += FD_W) {
        FD_PFI_1(xs + j);
        FD_V v = FI(fd_ld)(xs + j);
        FD_SUM_BELOW_STEP(v);
    }
    if (j < n) {
        FD_V v = FI(fd_ldt)(xs + j, n - j, FD_NEG_INF);
        FD_SUM_BELOW_STEP(v);
    }
#undef FD_SUM_BELOW_STEP
    *mc = FN(fd_hmax)(am);
    if (!(*mc < m)) return 0;
    *rc = FN(fd_hsum)(ar);
    if (wc) *wc = FN(fd_hsum)(aw);
    return 1;
}

/* Chunk j0 of a long row (running maximum m) for the two-pass order, its maximum in *mc, or
   NULL when fd_sum_below summed it against m (*rc, *wc). */
FD_INLINE const FD_T *FI(fd_chunk_fused)(const FD_TI *xs, ptrdiff_t n, ptrdiff_t j0, FD_T m, FD_T *buf,
                                         FD_T *mc, double *rc, double *wc)
{
    if (j0 >= FD_FUSE_FROM * FD_CH && m > FD_NEG_INF) {
        if (FI(fd_sum_below)(xs, n, m, mc, rc, wc)) return NULL;
#if !FD_HALF
        return xs; /* *mc is the chunk's max already */
#endif
    }
    return FI(fd_chunk)(xs, n, buf, mc);
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

/* The same on row-lane vectors (a block's tail columns: one row per lane, each lane its own
   shift): the entries equal to their lane's shift counted in the vector kv.  `zero` and `one`
   in scope. */
#define FD_ACC_S_LANES(t, e, kv, rv)                                                          \
    do {                                                                                      \
        FD_M top_ = FN(fd_eq)((t), zero);                                                     \
        (rv) = FN(fd_add_unless)((rv), top_, (e));                                            \
        (kv) = FN(fd_add_where)((kv), top_, one);                                             \
    } while (0)

/* ========================================================================================== */
/* lse                                                                                         */
/* ========================================================================================== */
static inline double FI(fd_lse_finish)(FD_T m, double k, double r)
{
    if (isnan(r)) return NAN;              /* NaN anywhere in the row */
    if (m == FD_POS_INF) return INFINITY;
    if (m == FD_NEG_INF) return -INFINITY; /* every class masked */
    return (double)m + fd_log_kr(k, r);
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

/* The constant c of d = lq - lp = (z - x) - c for two rows with a class each (shifts shx, shz;
   lsx, lsz the logs of the sums of e^(x - shx), e^(z - shz)), as the nearby terms form d
   (fd_js_terms, fd_kl_near32).  c's shift part is a float difference, as the lanes' z - x: with
   equal normalisers (a one-class row) d is then 0 to the bit, where the double shz - shx,
   rounded once with the logs' part, could round a tie the other way.  Where the maxima differ
   by 4 or more, z - x rounds at the size of the offset (rows 1e-3 apart and offset by 1e4: KL
   6 % off), so *offset says to form d as ((z - shz) - (x - shx)) - c, c = log sz - log sx,
   each difference rounded at the size of the log-probability: KL ~1e-6 off at any offset,
   against 1e-8 for (z - x) - c without an offset and 1e-6 at an offset of 4 (a numpy emulation
   of both over 50257 classes, benchmarks/NOTES.md). */
FD_INLINE FD_T FI(fd_near_c)(FD_T shx, FD_T shz, double lsx, double lsz, int *offset)
{
    const FD_T csh = FD_ASSOC_BARRIER(shz - shx);
    *offset = fabs((double)csh) >= 4.0;
    return (FD_T)((*offset ? 0.0 : (double)csh) + (lsz - lsx));
}

/* d = lq - lp of the nearby terms, formed from the logits' difference as fd_near_c says
   (cdv its c; offset: from the logits less their shifts). */
FD_INLINE FD_V FI(fd_near_dv)(FD_V xv, FD_V zv, FD_V shxv, FD_V shzv, FD_V cdv, int offset)
{
    return offset ? FD_VBARRIER(FD_VBARRIER(zv - shzv) - FD_VBARRIER(xv - shxv)) - cdv
                  : FD_VBARRIER(zv - xv) - cdv;
}

/* Whether a float32 vector that failed the nearby terms' test (some lane with |d| >= 2;
   s = d^2) is taken lane by lane (fd_js_half_term, fd_kl_near32): at most 1 /
   FD_NEAR_MIXED_SHARE of its lanes are wide (s >= FD_NEAR_MIXED_WIDE^2), not counting the
   lanes masked in one row only, *one (looked for where `masks` says there may be some).
   Where the row's probe found most lanes wide (not `mixed`, fd_mixed_row) only a vector with
   such a lane (s = +inf) is counted: the count in every vector of independent rows, where it
   always fails, cost js_logits 1.09x and compare 1.05x (benchmarks/js_nearby.py). */
FD_INLINE int FI(fd_near_mixed)(fd_vf xv, fd_vf zv, fd_vf s, const int masks, const int mixed,
                                fd_mf *one)
{
    const fd_vf inf = fd_splat_f32(INFINITY), ninf = fd_splat_f32(-INFINITY);
    if (!mixed && (!masks || fd_all_f32(fd_lt_f32(s, inf)))) return 0;
    const fd_mf narrow = fd_lt_f32(s, fd_splat_f32((float)(FD_NEAR_MIXED_WIDE * FD_NEAR_MIXED_WIDE)));
    const int wmax = FD_WF / FD_NEAR_MIXED_SHARE;
    const int wide = FD_WF - fd_popcount_f32(narrow);
    if (wide > wmax && (!masks || fd_all_f32(fd_lt_f32(s, inf)))) return 0;
    *one = masks ? (fd_mf)(fd_eq_f32(xv, ninf) ^ fd_eq_f32(zv, ninf)) : fd_none_f32();
    return wide <= wmax || FD_WF - fd_popcount_f32(narrow | *one) <= wmax;
}

/* Whether the vectors of a float32 row pair that fail the nearby terms' test may be taken lane
   by lane (fd_near_mixed's `mixed`): at most 1 / FD_NEAR_MIXED_SHARE of the lanes of three
   vectors (the row's first, middle and last; one for a row shorter than three) are wide.
   Independent rows (~90 % wide) and rows N(0, 1) apart (~62 %) are not; nearby rows with a
   few noisy classes, or a block of them at one of the three places, are. */
FD_INLINE int FI(fd_mixed_row)(const FD_TI *x, const FD_TI *z, ptrdiff_t V, FD_V shxv,
                               FD_V shzv, FD_V cdv, int offset)
{
#if FD_INST == 1
    (void)x; (void)z; (void)V; (void)shxv; (void)shzv; (void)cdv; (void)offset;
    return 0;
#else
    const fd_vf w2 = fd_splat_f32((float)(FD_NEAR_MIXED_WIDE * FD_NEAR_MIXED_WIDE));
    int narrow = 0, lanes = 0;
    if (V < 3 * FD_W) {  /* the first vector, or a short row's lanes (-inf past V: d = 0) */
        const ptrdiff_t n = V < FD_W ? V : FD_W;
        fd_vf d = FI(fd_near_dv)(FI(fd_ldt)(x, n, FD_NEG_INF), FI(fd_ldt)(z, n, FD_NEG_INF),
                                 shxv, shzv, cdv, offset);
        narrow = fd_popcount_f32(fd_lt_f32(fd_max0_f32(d * d), w2)) - (FD_W - (int)n);
        lanes = (int)n;
    } else {
        const ptrdiff_t at[3] = {0, (V / 2) & ~(ptrdiff_t)(FD_W - 1), V - FD_W};
        for (int k = 0; k < 3; k++) {
            fd_vf d = FI(fd_near_dv)(FI(fd_ld)(x + at[k]), FI(fd_ld)(z + at[k]), shxv, shzv, cdv, offset);
            narrow += fd_popcount_f32(fd_lt_f32(fd_max0_f32(d * d), w2));
        }
        lanes = 3 * FD_W;
    }
    return (lanes - narrow) * FD_NEAR_MIXED_SHARE <= lanes;
#endif
}

/* float32 rows whose KL is too small for the one pass (FD_KL32_NEAR_BELOW): D(P || Q) summed
   again from cache, class by class, as compare's second pass sums it (fd_js_terms,
   _divergence_rows.h), with d = lq - lp and q = p e^d: where a vector has every |d| < 2,
   p (e^d - 1 - d) = p d^2 E(d) (fd_kl_near_f32, terms >= 0), elsewhere q - p and p d with
   d = lq - lp, which do not cancel there; sum (q - p) = 0 joins them, D = sum p (e^d - 1 - d)
   + sum (q - p) - sum p d, with d as fd_near_c says.  both (a constant at each call): *rev =
   D(Q || P) from the same read, as compare sums it: the Jeffreys terms (q - p) d = p d^2
   (1 + d E(d)) where |d| < 2, q d elsewhere, D(Q || P) = sum (q - p) d - sum p (e^d - 1 - d)
   + sum q d - sum (q - p) (terms >= 0 but for the far sums, which do not cancel).
   Called with both rows finite, no class of P masked in Q (D would be +inf; with both, no
   class of Q masked in P either). */
FD_INLINE double FI(fd_kl_near32_body)(const FD_TI *x, const FD_TI *z, ptrdiff_t V, FD_T mx,
                                       FD_T mz, double lsxd, double lszd, double *rev,
                                       const int both)
{
#if FD_INST == 1
    (void)x; (void)z; (void)V; (void)mx; (void)mz; (void)lsxd; (void)lszd; (void)rev; (void)both;
    return NAN;
#else
    const fd_vf shxv = fd_splat_f32(mx), shzv = fd_splat_f32(mz);
    const fd_vf lsxv = fd_splat_f32((float)lsxd), lszv = fd_splat_f32((float)lszd);
    const fd_vf lo = fd_splat_f32(-1e30f), four = fd_splat_f32(4.0f), zero = {0};
    const fd_vf one1 = fd_splat_f32(1.0f);
    int offset;
    const fd_vf cdv = fd_splat_f32(FI(fd_near_c)(mx, mz, lsxd, lszd, &offset));
    double kp = 0.0, kj = 0.0, qp = 0.0, pd = 0.0, qd = 0.0;
    for (ptrdiff_t j0 = 0; j0 < V; j0 += FD_CH) {
        const ptrdiff_t n = V - j0 < FD_CH ? V - j0 : FD_CH;
        fd_vf akp = {0}, akj = {0}, aqp = {0}, apd = {0}, aqd = {0}, tc;
        for (ptrdiff_t j = 0; j < n; j += FD_W) {
            fd_vf xv, zv;
            if (j + FD_W <= n) {
                xv = FI(fd_ld)(x + j0 + j);
                zv = FI(fd_ld)(z + j0 + j);
            } else { /* a class masked in both rows adds 0 */
                xv = FI(fd_ldt)(x + j0 + j, n - j, FD_NEG_INF);
                zv = FI(fd_ldt)(z + j0 + j, n - j, FD_NEG_INF);
            }
            fd_vf lp = fd_clamp_lo_f32(FD_VBARRIER(xv - shxv) - lsxv, lo);
            fd_vf lq = fd_clamp_lo_f32(FD_VBARRIER(zv - shzv) - lszv, lo);
            fd_vf p = fd_expn_f32(lp, &tc);
            fd_vf d = FI(fd_near_dv)(xv, zv, shxv, shzv, cdv, offset);
            fd_vf s = fd_max0_f32(d * d);
            const fd_mf near = fd_lt_f32(s, four);
            if (fd_all_f32(near)) {
                d = fd_sel_f32(fd_eq_f32(d, d), d, zero); /* masked in both rows: p = 0 */
                fd_vf e = fd_kl_near_f32(d), ps = p * s;
                akp += ps * e;
                if (both) akj += ps * (d * e + one1);
            } else if (fd_popcount_f32(near)) {
                /* lane by lane: the near lanes as above, the others as below, a class
                   masked in P (d = +inf where Q is not) among them: p = 0, so it adds its
                   q - p = q and 0 * (lq - LO) = 0.  Sent to q - p - p d with them, a near
                   lane cancels to its p's rounding: P masked at 20 % of its classes, rows
                   1e-3 apart, KL 2 % off; rows with one class far above the rest in both
                   (p ~ q ~ 1 - 1e-10) and independent tails, KL ~1e-10, 10-90 % off where
                   only a vector with at most half its lanes wide was taken so (2026-12-07) */
                d = fd_sel_f32(near, fd_sel_f32(fd_eq_f32(d, d), d, zero), zero);
                fd_vf e = fd_kl_near_f32(d), ps = p * fd_sel_f32(near, s, zero);
                akp += ps * e;
                if (both) akj += ps * (d * e + one1);
                fd_vf q = fd_expn_f32(lq, &tc), dl = lq - lp;
                aqp = fd_add_unless_f32(aqp, near, q - p);
                apd = fd_add_unless_f32(apd, near, p * dl);
                if (both) aqd = fd_add_unless_f32(aqd, near, q * dl);
            } else {
                fd_vf q = fd_expn_f32(lq, &tc), dl = lq - lp;
                aqp += q - p;
                apd += p * dl;
                if (both) aqd += q * dl;
            }
        }
        kp += fd_hsum_f32(akp);
        qp += fd_hsum_f32(aqp);
        pd += fd_hsum_f32(apd);
        if (both) {
            kj += fd_hsum_f32(akj);
            qd += fd_hsum_f32(aqd);
        }
    }
    if (both) *rev = (kj - kp) + (qd - qp);
    return kp + (qp - pd);
#endif
}

static double FI(fd_kl_near32)(const FD_TI *x, const FD_TI *z, ptrdiff_t V, FD_T mx, FD_T mz,
                               double lsxd, double lszd)
{
    return FI(fd_kl_near32_body)(x, z, V, mx, mz, lsxd, lszd, NULL, 0);
}

/* Both directions of fd_kl_near32 in one read: returns D(P || Q), *rev = D(Q || P). */
static inline double FI(fd_kl_near32_pair)(const FD_TI *x, const FD_TI *z, ptrdiff_t V, FD_T mx,
                                    FD_T mz, double lsxd, double lszd, double *rev)
{
    return FI(fd_kl_near32_body)(x, z, V, mx, mz, lsxd, lszd, rev, 1);
}

/* The one-pass KL D = w / sx - log sx + log sz of a row pair with finite maxima and no class of
   P masked in Q; *again: D has cancelled toward the pass's rounding, so the row pair must be
   summed again (fd_kl_exact in float64, fd_kl_near32 in float32).  Its terms are of order
   fd_kl_scale (moved: how far the references rose while sums were carried, the rescales'
   error); *lsx, *lsz: the logs of the sums. */
static inline double FI(fd_kl_one)(double sx, double sz, double w, double moved, int *again,
                                   double *lsx, double *lsz)
{
    const double wsx = w / sx, d = wsx - (*lsx = log(sx)) + (*lsz = log(sz));
    *again = d < (sizeof(FD_T) == 8 ? FD_KL_EXACT_BELOW : FD_KL32_NEAR_BELOW) * fd_kl_scale(wsx, *lsx, *lsz, moved);
    return d;
}

/* D(P || Q) of a row pair fd_kl_one could not finish, summed again without cancelling (lsx,
   lsz: the logs of its sums). */
static inline double FI(fd_kl_again)(const FD_TI *x, const FD_TI *z, ptrdiff_t V, FD_T mx, FD_T mz,
                                     double lsx, double lsz)
{
    return sizeof(FD_T) == 8 ? FI(fd_kl_exact)(x, z, V, (double)mx, (double)mz, lsx - lsz)
                             : FI(fd_kl_near32)(x, z, V, mx, mz, lsx, lsz);
}

/* moved: how far the references rose while sums were carried (the rescales' error) */
static inline double FI(fd_kl_finish)(FD_T mx, FD_T mz, double sx, double sz, double w, FD_T mxz,
                                      double moved, const FD_TI *x, const FD_TI *z, ptrdiff_t V)
{
    if (isnan(sx) || isnan(sz)) return NAN;               /* NaN in either row */
    if (mx == FD_POS_INF || mz == FD_POS_INF) return NAN; /* softmax undefined */
    if (mx == FD_NEG_INF) return 0.0;                     /* P has empty support */
    if (mxz != FD_NEG_INF) return INFINITY; /* some p_j > 0 where q_j = 0 (covers Q all masked) */
    double lsx, lsz;
    int again;
    const double d = FI(fd_kl_one)(sx, sz, w, moved, &again, &lsx, &lsz);
    return again ? FI(fd_kl_again)(x, z, V, mx, mz, lsx, lsz) : d;
}

/* The KL accumulation over one segment [0, n) of both rows (shifts shx, shz).  In scope:
   `kr` (loop-invariant), `akx`, `akz`, `zero`: with kr, the entries equal to their shift
   (e = 1) are counted apart (FD_ACC_S), as the block path needs: there the shifts are the
   rows' maxima, and in a float32 lane holding 1 a confident row's tail terms round away
   (float32 KLs of rows sure of one class, KL ~1e-3, were up to 5.5e-4 off). */
#define FD_KL_STEP(xv, zv) FD_KL_STEP_WITH(xv, zv, FD_ACC_S_ROW)
#define FD_ACC_S_ROW(t, e, ak, ar) FD_ACC_S(t, e, ak, ar, zero)
/* ... with the s accumulation ACC(t, e, counter, sum): FD_ACC_S_ROW, or FD_ACC_S_LANES for a
   block's tail columns (shx, shz then hold each lane's shifts, akx, akz are vectors) */
#define FD_KL_STEP_WITH(xv, zv, ACC)                                                          \
    do {                                                                                      \
        /* fenced: else -fassociative-math turns tcx - (z - shz) into (tcx + shz) - z,      \
           which loses all the digits of d when z ~ 1e4 (a KL of 1e-6 came out -9e-5) */    \
        FD_V dz_ = FD_VBARRIER((zv) - shz);                                                   \
        FD_V tx_ = (xv) - shx;                                                                \
        FD_V ex_ = FN(fd_expn)(tx_, &tcx);                                                    \
        FD_V ez_ = FN(fd_expz)(dz_); /* same bits as fd_expn, without the clamp */         \
        ACC(tx_, ex_, akx, asx);                                                              \
        ACC(dz_, ez_, akz, asz);                                                              \
        FD_M zmask_ = FN(fd_eq)((zv), ninf);                                                  \
        /* x masked: ex = 0, tcx = LO, term 0 * finite = 0.  z masked: excluded (see mxz). */ \
        aw = FN(fd_add_unless)(aw, zmask_, ex_ * (tcx - dz_));                                \
        amxz = FN(fd_max_where)(amxz, zmask_, (xv));                                          \
    } while (0)

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
