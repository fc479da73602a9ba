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
   and the counts of entries where exactly one of them is masked. */
static inline void FI(fd_ev_sums2)(const FD_T *xc, const FD_T *zc, ptrdiff_t n, FD_T shx, FD_T shz,
                                   FD_T xt, double *acc, int64_t *cnt, int64_t *miss_z,
                                   int64_t *miss_x)
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
        FD_EV_ACC(dx, ex, ak, ar);
        aw += ex * tcx;
        FD_EV_ACC(dz, ez, akz, arz);
        FD_M px = FN(fd_gt)(dx, ninf), pz = FN(fd_gt)(dz, ninf);
        FD_M both = px & pz;
        FD_V d = dx - dz;
        axz = FN(fd_add_where)(axz, both, ex * d);
        azx = FN(fd_add_where)(azx, both, -(ez * d));
        c += FN(fd_popcount)(FN(fd_gt)(xv, xtv));
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

/* One row; z == NULL: no reference.  t outside [0, V): no target. */
static void FI(fd_eval_row)(const FD_T *x, const FD_T *z, ptrdiff_t V, int64_t t, double *st,
                            int64_t *ix)
{
    const FD_T xt = (t >= 0 && t < V) ? x[t] : (FD_T)NAN;
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
                if (mzc == (FD_T)INFINITY) {
                    z_inf = 1;
                    mz = mzc;
                } else {
                    if (mz == (FD_T)-INFINITY) {
                        acc[2] = acc[4] = 0.0;
                    } else {
                        double delta = (double)mz - (double)mzc, f = exp(delta);
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
            FI(fd_ev_sums2)(xc, zc, n, shx, shz, xt, acc, &cnt, &miss_z, &miss_x);
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

#undef FD_EV_ACC
