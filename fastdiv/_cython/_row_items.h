/* Work items for the Cython prange (_kernels.pyx): a block of FD_W rows (_short_rows.h) when
 * V <= FD_BLOCK_V, else one row (_long_rows.h).  A template instantiated by _inst.h after both;
 * no include guard on purpose.
 */
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
