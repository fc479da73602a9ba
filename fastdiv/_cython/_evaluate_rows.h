/* Template of _evaluate.h, instantiated by _inst.h after the row templates for native inputs (no
   include guard on purpose): one row of the evaluate op.  Chunk maxima and the NaN scan are
   _row_state.h's fd_chunk and fd_has_nan. */

/* First j with x[j] == v (0 if none): a vector compare per W entries, lanes only on a hit. */
static ptrdiff_t FI(fd_ev_first)(const FD_T *x, ptrdiff_t n, FD_T v)
{
    const FD_V vv = FN(fd_splat)(v);
    ptrdiff_t j = 0;
    for (; j + FD_W <= n; j += FD_W)
        if (FN(fd_popcount)(FN(fd_eq)(FN(fd_load)(x + j), vv))) break;
    for (; j < n; j++)
        if (x[j] == v) return j;
    return 0;
}

/* One vector of an exp-sum: t = x - shift <= 0; the entries with t == 0 (each exactly 1) are
   counted in ak, the others summed in ar (a NaN t enters ar). */
#define FD_EV_ACC(t, e, ak, ar)                                                               \
    do {                                                                                      \
        FD_M rest_ = FN(fd_ne)((t), (FD_V){0});                                               \
        (ar) = FN(fd_add_where)((ar), rest_, (e));                                            \
        (ak) = FN(fd_cnt_add)((ak), rest_);                                                   \
    } while (0)

/* x alone: s += sum e, w += sum e (x - sh) (clamped argument: a masked entry adds 0 * LO),
   cnt += #(x > xt).  kr: the chunk holds the current maximum, so entries equal to the shift
   are counted apart (FD_EV_ACC); other chunks have no such entry and take the cheaper sum
   (kr is a constant at each call: the branch is compiled away). */
FD_INLINE void FI(fd_ev_sums1)(const FD_T *xc, ptrdiff_t n, FD_T sh, FD_T xt, double *s,
                               double *w, int64_t *cnt, const int kr)
{
    const FD_V shv = FN(fd_splat)(sh), xtv = FN(fd_splat)(xt), one = FN(fd_splat)((FD_T)1);
    /* the count is kept in float lanes (exact: a chunk has far fewer than 2^24 entries): one
       masked add per vector instead of a mask move + popcount + add on the scalar ports */
    FD_V ar = {0}, aw = {0}, ac = {0}, tc;
    FD_CNT ak = {0};
    ptrdiff_t j = 0;
    for (; j + FD_W <= n; j += FD_W) {
        FD_PREFETCH_1(xc + j);
        FD_V xv = FN(fd_load)(xc + j), t = xv - shv;
        FD_V e = FN(fd_expn)(t, &tc);
        if (kr)
            FD_EV_ACC(t, e, ak, ar);
        else
            ar += e;
        aw += e * tc;
        ac = FN(fd_add_where)(ac, FN(fd_gt)(xv, xtv), one);
    }
    if (j < n) {
        FD_V xv = FN(fd_load_tail)(xc + j, n - j, (FD_T)-INFINITY), t = xv - shv;
        FD_V e = FN(fd_expn)(t, &tc);
        if (kr)
            FD_EV_ACC(t, e, ak, ar);
        else
            ar += e;
        aw += e * tc;
        ac = FN(fd_add_where)(ac, FN(fd_gt)(xv, xtv), one);
    }
    *s += FN(fd_cnt_total)(ak) + FN(fd_hsum)(ar);
    *w += FN(fd_hsum)(aw);
    *cnt += (int64_t)FN(fd_hsum)(ac);
}

/* x and z: the sums of fd_ev_sums1, sz, the KL sums over entries where both are unmasked,
   and the counts of entries where exactly one of them is masked.  exs / ezs (fd_compare_row;
   NULL for evaluate, where the stores are compiled away): the exponentials are also stored
   there, for fd_js_terms' second pass (a chunk's tail vector writes past n into padding). */
FD_INLINE void FI(fd_ev_sums2)(const FD_T *xc, const FD_T *zc, ptrdiff_t n, FD_T shx, FD_T shz,
                               FD_T xt, double *acc, int64_t *cnt, int64_t *miss_z,
                               int64_t *miss_x, FD_T *exs, FD_T *ezs)
{
    const FD_V shxv = FN(fd_splat)(shx), shzv = FN(fd_splat)(shz), xtv = FN(fd_splat)(xt);
    const FD_V ninf = FN(fd_splat)((FD_T)-INFINITY);
    FD_V ar = {0}, aw = {0}, arz = {0}, axz = {0}, azx = {0}, tcx, tcz;
    FD_CNT ak = {0}, akz = {0};
    int64_t c = 0, mz_ = 0, mx_ = 0;
    for (ptrdiff_t j = 0; j < n; j += FD_W) {
        FD_V xv, zv;
        if (j + FD_W <= n) {
            FD_PREFETCH(xc + j);
            FD_PREFETCH(zc + j);
            xv = FN(fd_load)(xc + j);
            zv = FN(fd_load)(zc + j);
        } else {
            xv = FN(fd_load_tail)(xc + j, n - j, (FD_T)-INFINITY);
            zv = FN(fd_load_tail)(zc + j, n - j, (FD_T)-INFINITY);
        }
        /* fenced: (x - mx) - (z - mz) must not become ((x - mx) + mz) - z at |z| ~ 1e4 */
        FD_V dx = FD_VBARRIER(xv - shxv), dz = FD_VBARRIER(zv - shzv);
        FD_V ex = FN(fd_expn)(dx, &tcx), ez = FN(fd_expn)(dz, &tcz);
        if (exs) {
            *(FD_V_U *)(exs + j) = ex;
            *(FD_V_U *)(ezs + j) = ez;
        }
        FD_EV_ACC(dx, ex, ak, ar);
        aw += ex * tcx;
        FD_EV_ACC(dz, ez, akz, arz);
        FD_M px = FN(fd_gt)(dx, ninf), pz = FN(fd_gt)(dz, ninf);
        if (!exs) {
            /* compare sums its KLs class by class in its second pass instead (fd_js_terms),
               and counts against the base's top-1 there */
            FD_M both = px & pz;
            FD_V d = dx - dz;
            axz = FN(fd_add_where)(axz, both, ex * d);
            azx = FN(fd_add_where)(azx, both, -(ez * d));
            c += FN(fd_popcount)(FN(fd_gt)(xv, xtv));
        }
        mz_ += FN(fd_popcount)(px & FN(fd_eq)(dz, ninf));
        mx_ += FN(fd_popcount)(pz & FN(fd_eq)(dx, ninf));
    }
    acc[0] += FN(fd_cnt_total)(ak) + FN(fd_hsum)(ar);
    acc[1] += FN(fd_hsum)(aw);
    acc[2] += FN(fd_cnt_total)(akz) + FN(fd_hsum)(arz);
    acc[3] += FN(fd_hsum)(axz);
    acc[4] += FN(fd_hsum)(azx);
    *cnt += c;
    *miss_z += mz_;
    *miss_x += mx_;
}

/* fd_compare_row's scratch rows in scr: the two rows' exponentials (each padded to whole
   vectors: a chunk's tail vector is stored whole) and the two rows' per-chunk shifts.
   With scr == NULL (evaluate) every pointer is NULL.  Returns the elements it spans. */
static inline ptrdiff_t FI(fd_cmp_layout)(FD_T *scr, ptrdiff_t V, FD_T **ex, FD_T **ez, FD_T **shx_c,
                                          FD_T **shz_c)
{
    const ptrdiff_t Vp = (V + FD_W - 1) / FD_W * FD_W, nch = (V + FD_CH - 1) / FD_CH;
    *ex = scr;
    *ez = scr ? scr + Vp : NULL;
    *shx_c = scr ? scr + 2 * Vp : NULL;
    *shz_c = scr ? scr + 2 * Vp + nch : NULL;
    return 2 * Vp + 2 * nch;
}

/* One row; z == NULL: no reference.  t outside [0, V): no target.  scr (fd_compare_row;
   NULL for evaluate, a constant at each call): the scratch rows of fd_js_terms -- chunk c's
   exponentials against its shifts shx_c[c], shz_c[c] -- and in *amz the chunk holding z's
   first maximum, both valid for a row without +inf in x or z. */
FD_INLINE void FI(fd_eval_pass)(const FD_T *x, const FD_T *z, ptrdiff_t V, int64_t t, double *st,
                                int64_t *ix, FD_T *scr, ptrdiff_t *amz, double *moved)
{
    FD_T *ex, *ez, *shx_c, *shz_c;
    FI(fd_cmp_layout)(scr, V, &ex, &ez, &shx_c, &shz_c);
    /* without a target in the row: the threshold the caller left in st[3] (NaN: none), the
       rank of a target that another vocabulary tile holds */
    const FD_T xt = (t >= 0 && t < V) ? x[t] : (FD_T)st[3];
    FD_T m = (FD_T)-INFINITY, mz = (FD_T)-INFINITY;
    /* acc: s, w, sz, wxz, wzx */
    double acc[5] = {0, 0, 0, 0, 0};
    int64_t cnt = 0, am = 0, miss_z = 0, miss_x = 0;
    int x_inf = 0, x_nan = 0, z_inf = 0;
    for (ptrdiff_t j0 = 0; j0 < V; j0 += FD_CH) {
        const FD_T *xc = x + j0, *zc = z ? z + j0 : NULL;
        ptrdiff_t n = V - j0 < FD_CH ? V - j0 : FD_CH;
        if (x_inf) { /* settled: only a NaN changes the report */
            x_nan |= FI(fd_has_nan)(xc, n);
            continue;
        }
        FD_T mc;
        FI(fd_chunk)(xc, n, NULL, &mc);
        if (mc > m) {
            am = j0; /* the chunk holding the first maximum; searched once, at the end */
            if (mc == (FD_T)INFINITY) {
                x_inf = 1;
                m = mc;
                x_nan |= FI(fd_has_nan)(xc, n);
                continue;
            }
            /* the shift moves from m to mc (delta < 0): e^(x-m) scales by f = e^delta, every
               (x - m) moves by delta: w -> f (w + delta s), wxz -> f (wxz + delta s),
               wzx -> wzx - delta sz; from m = -inf the sums so far are exactly 0 */
            if (m == (FD_T)-INFINITY) {
                acc[0] = acc[1] = acc[3] = 0.0;
            } else {
                double delta = (double)m - (double)mc, f = exp(delta);
                if (moved) *moved -= delta;
                acc[1] = f * (acc[1] + delta * acc[0]);
                acc[3] = f * (acc[3] + delta * acc[0]);
                acc[4] -= delta * acc[2];
                acc[0] *= f;
            }
            m = mc;
        }
        if (z && !z_inf) {
            FD_T mzc;
            FI(fd_chunk)(zc, n, NULL, &mzc);
            if (mzc > mz) {
                if (scr) *amz = j0;
                if (mzc == (FD_T)INFINITY) {
                    z_inf = 1;
                    mz = mzc;
                } else {
                    if (mz == (FD_T)-INFINITY) {
                        acc[2] = acc[4] = 0.0;
                    } else {
                        double delta = (double)mz - (double)mzc, f = exp(delta);
                        if (moved) *moved -= delta;
                        acc[4] = f * (acc[4] + delta * acc[2]);
                        acc[3] -= delta * acc[0];
                        acc[2] *= f;
                    }
                    mz = mzc;
                }
            }
        }
        const FD_T shx = m == (FD_T)-INFINITY ? (FD_T)0 : m;
        if (z && !z_inf) {
            const FD_T shz = mz == (FD_T)-INFINITY ? (FD_T)0 : mz;
            if (scr) {
                shx_c[j0 / FD_CH] = shx;
                shz_c[j0 / FD_CH] = shz;
                FI(fd_ev_sums2)(xc, zc, n, shx, shz, xt, acc, &cnt, &miss_z, &miss_x, ex + j0, ez + j0);
            } else {
                FI(fd_ev_sums2)(xc, zc, n, shx, shz, xt, acc, &cnt, &miss_z, &miss_x, NULL, NULL);
            }
        } else {
            if (mc == m)
                FI(fd_ev_sums1)(xc, n, shx, xt, &acc[0], &acc[1], &cnt, 1);
            else
                FI(fd_ev_sums1)(xc, n, shx, xt, &acc[0], &acc[1], &cnt, 0);
        }
    }
    if (acc[0] != acc[0]) x_nan = 1; /* exp(NaN - m) entered s */
    if (m > (FD_T)-INFINITY) /* (searching at each new maximum cost ~15 % at V = 50257) */
        am += FI(fd_ev_first)(x + am, V - am < FD_CH ? V - am : FD_CH, m);
    st[0] = x_nan ? (double)NAN : (double)m;
    st[1] = acc[0];
    st[2] = acc[1];
    st[3] = (double)xt;
    ix[0] = am;
    ix[1] = cnt;
    ix[2] = 0;
    if (z) {
        st[4] = acc[2] != acc[2] ? (double)NAN : (double)mz;
        st[5] = acc[2];
        st[6] = acc[3];
        st[7] = acc[4];
        ix[2] = (miss_z > 0 ? 1 : 0) + (miss_x > 0 ? 2 : 0);
    }
}

/* One row of the evaluate op.  kl (with z): st[8], st[9] = D(x || z), D(z || x), finished from
   the pass's sums as kl_logits finishes its rows (fd_kl_one): a row pair whose one-pass KL
   has cancelled toward its rounding is summed again while it is still in L2 (fd_kl_again),
   in float32 both directions in one read (fd_kl_near32_pair); +inf where the flags say so.
   Where either row has no finite maximum (NaN, +inf, every class masked) both stay as the
   caller left them: finish_rows' endings take those rows.  moved: how far the two shifts rose
   while sums were carried (their rescales add to the one-pass error, as in fd_kl_long). */
static void FI(fd_eval_row)(const FD_T *x, const FD_T *z, ptrdiff_t V, int64_t t, double *st,
                            int64_t *ix, int kl)
{
    double moved = 0.0;
    FI(fd_eval_pass)(x, z, V, t, st, ix, NULL, NULL, &moved);
    if (!kl || !z || !isfinite(st[0]) || !isfinite(st[4])) return;
    const FD_T mx = (FD_T)st[0], mz = (FD_T)st[4];
    const int fwd = !(ix[2] & 1), bwd = !(ix[2] & 2); /* the flags' direction is +inf */
    double lsx = 0.0, lsz = 0.0, dmr = INFINITY, drm = INFINITY;
    int again_mr = 0, again_rm = 0;
    if (fwd) dmr = FI(fd_kl_one)(st[1], st[5], st[6], moved, &again_mr, &lsx, &lsz);
    if (bwd) drm = FI(fd_kl_one)(st[5], st[1], st[7], moved, &again_rm, &lsz, &lsx);
    if (sizeof(FD_T) == 4 && fwd && bwd && (again_mr || again_rm)) {
        dmr = FI(fd_kl_near32_pair)(x, z, V, mx, mz, lsx, lsz, &drm);
    } else {
        if (again_mr) dmr = FI(fd_kl_again)(x, z, V, mx, mz, lsx, lsz);
        if (again_rm) drm = FI(fd_kl_again)(z, x, V, mz, mx, lsz, lsx);
    }
    st[8] = dmr;
    st[9] = drm;
}

/* #(x_j > xr): compare's rank without its JS pass */
static int64_t FI(fd_count_gt)(const FD_T *x, ptrdiff_t V, FD_T xr)
{
    const FD_V xrv = FN(fd_splat)(xr), one = FN(fd_splat)((FD_T)1);
    int64_t c = 0;
    for (ptrdiff_t j0 = 0; j0 < V; j0 += FD_CH) {
        const ptrdiff_t n = V - j0 < FD_CH ? V - j0 : FD_CH;
        FD_V ac = {0};
        ptrdiff_t j = 0;
        for (; j + FD_W <= n; j += FD_W)
            ac = FN(fd_add_where)(ac, FN(fd_gt)(FN(fd_load)(x + j0 + j), xrv), one);
        if (j < n)
            ac = FN(fd_add_where)(ac, FN(fd_gt)(FN(fd_load_tail)(x + j0 + j, n - j, (FD_T)-INFINITY), xrv), one);
        c += (int64_t)FN(fd_hsum)(ac);
    }
    return c;
}

/* One row of the compare op (contract: fastdiv/_registry.py): x the model's logits, z the
   base's.  Pass 1 (from memory) is evaluate's pass with z as reference, also storing the
   exponentials (but not its one-pass KL sums); pass 2 (from L2: a 50257-float row pair and
   its exponentials are 800 KB) is fd_js_logits' second pass (one log per element) with both
   KLs summed class by class (exact near 0) and the count of the model's classes above the
   base's top-1 in the same read.  A row with +inf in x or z (rare: its softmax is
   undefined) gets the base's own state from a second pass over z, as evaluate would give it. */
static void FI(fd_compare_row)(const FD_T *x, const FD_T *z, ptrdiff_t V, int64_t t, double *st,
                               int64_t *ix, FD_T *scr)
{
    ptrdiff_t amz = 0;
    FI(fd_eval_pass)(x, z, V, t, st, ix, scr, &amz, NULL);
    const double mx = st[0], mz = st[4];
    const int inf_x = mx == INFINITY || (isnan(mx) && st[1] == st[1]); /* NaN m with a clean s: +inf met */
    const int inf_z = mz == INFINITY;
    if (inf_x || inf_z) {
        double sb[8] = {0, 0, 0, NAN, 0, 0, 0, 0};   /* sb[3]: no threshold */
        int64_t ib[3];
        FI(fd_eval_pass)(z, NULL, V, t, sb, ib, NULL, NULL, NULL);
        st[4] = sb[0];
        st[5] = sb[1];
        st[8] = sb[3];
        ix[3] = ib[0];
    } else {
        st[8] = (t >= 0 && t < V) ? (double)z[t] : NAN;
        if (mz > -INFINITY) /* (NaN: no top-1, the index is not used) */
            amz += FI(fd_ev_first)(z + amz, V - amz < FD_CH ? V - amz : FD_CH, (FD_T)mz);
        ix[3] = amz;
    }
    const double mb = st[4];
    const int has_top1 = mb > -INFINITY; /* finite or +inf; NaN is not */
    const int x_fin = mx > -INFINITY && mx < INFINITY; /* NaN is not */
    const FD_T xr = has_top1 ? x[ix[3]] : (FD_T)NAN;
    int64_t rank = 0;
    if (!inf_x && !inf_z && !isnan(mx) && !isnan(mb)) {
        FD_T *ex, *ez, *shx_c, *shz_c;
        FI(fd_cmp_layout)(scr, V, &ex, &ez, &shx_c, &shz_c);
        double kl[2];
        st[9] = FI(fd_js_terms)(x, z, V, 0.5, ex, ez, shx_c, shz_c, (FD_T)mx, (FD_T)mb, st[1], st[5], xr, &rank, kl, 1,
                                  ix[2] != 0);
        if (mx > -INFINITY && mb > -INFINITY) {
            /* flags 2: z has mass where x is masked; 1: the other way */
            st[10] = ix[2] & 2 ? INFINITY : kl[0];
            st[11] = ix[2] & 1 ? INFINITY : kl[1];
        }
    } else {
        st[9] = NAN;
        if (has_top1 && x_fin && xr > (FD_T)-INFINITY) rank = FI(fd_count_gt)(x, V, xr);
    }
    ix[1] = has_top1 && x_fin && xr > (FD_T)-INFINITY ? rank : -1;
}

/* The compare op over all rows, nthreads OpenMP threads (static schedule: a row is computed by
   one thread whatever the count), each with its own scratch rows.  0, or -1 when a scratch
   buffer could not be allocated. */
static int FI(fd_compare_rows)(const FD_T *x, const FD_T *z, ptrdiff_t rows, ptrdiff_t V,
                               const int64_t *target, double *st, int64_t *ix, int nthreads)
{
    int failed = 0;
    (void)nthreads;
#ifdef _OPENMP
#pragma omp parallel num_threads(nthreads)
#endif
    {
        FD_T *p_;
        const size_t bytes = ((size_t)FI(fd_cmp_layout)(NULL, V, &p_, &p_, &p_, &p_) * sizeof(FD_T) + 63) / 64 * 64;
        FD_T *scr = (FD_T *)aligned_alloc(64, bytes);
        if (scr == NULL) {
#ifdef _OPENMP
#pragma omp atomic write
#endif
            failed = 1;
        }
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (ptrdiff_t i = 0; i < rows; i++) {
            if (scr == NULL) continue;
            FI(fd_compare_row)(x + i * V, z + i * V, V, target[i], st + 12 * i, ix + 4 * i, scr);
        }
        free(scr);
    }
    return failed ? -1 : 0;
}

#undef FD_EV_ACC
